"""Exports beyond the graph files (inference/graph.py, openvino.py, quantize.py): TFLite, Core ML, Triton, the hub
folder, and the one entry for every format (formats.py). Named `exports` so that `imgclass.export`, the API
function, is never shadowed by this package once it is imported."""
