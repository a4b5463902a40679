"""`imgclass export MODEL --format triton --out REPO`: a Triton Inference Server model repository, for whoever
outgrows `imgclass serve` and moves to a server built for fleets (`tritonserver --model-repository REPO`):

  REPO/NAME/config.pbtxt   backend (onnxruntime, or openvino with --backend openvino), dynamic batching, the
                           input pixels [3, S, S] and output probabilities [classes] (batch dimension implicit)
  REPO/NAME/labels.txt     one class a line, in output order (Triton's classification extension names them)
  REPO/NAME/imgclass.json  the model file's header: preprocessing to apply before sending pixels
  REPO/NAME/1/model.onnx   the parity-checked export (or 1/model.xml + model.bin for OpenVINO)

The config is written from a template (Triton's protobuf text format) and, where tritonclient is installed
(the `triton` extra), parsed back with Triton's own ModelConfig message before the repository is kept.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..core.errors import UserError
from ..core.files import building_folder

from ..models.header import ModelHeader
from ..models.modelfile import read_header, resolve_model_path
from ..inference.graph import export_model
from ..core.rundir import RunDir

BACKENDS = {"onnxruntime": "model.onnx", "openvino": "model.xml"}
MAX_BATCH_SIZE = 64
MAX_QUEUE_DELAY_US = 2000  # dynamic batching: how long a request may wait for others (2 ms, as serve's default)


def model_name(model_path: Path, name: str | None) -> str:
    """The repository's model name: --name, else the run folder's (Triton takes letters, digits, _ and -)."""
    run = RunDir.of_model(model_path)
    raw = name or (run.path.name if run is not None else model_path.stem)
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")
    if not clean or (name and clean != name):
        raise UserError(f"--name {name!r}: a Triton model name takes letters, digits, _ and - only")
    return clean


def config_text(name: str, backend: str, header: ModelHeader) -> str:
    """config.pbtxt for this model (Triton's protobuf text format)."""
    size, classes = header.preprocessing.img_size, len(header.classes)
    return f'''name: "{name}"
backend: "{backend}"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "pixels"
    data_type: TYPE_FP32
    dims: [ 3, {size}, {size} ]
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
'''


def parse_config(text: str):
    """The config parsed by Triton's own ModelConfig message (tritonclient), or None without the extra."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise UserError(f"the Triton config did not parse: {exc}") from None


def export_triton(model: str | Path, out: str | Path, backend: str = "onnxruntime", name: str | None = None
                  ) -> tuple[Path, float, list[str]]:
    """The repository folder `out` (new, or empty); returns (out, the export's parity, what was checked)."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}")
    if not out:
        raise UserError("--format triton needs --out NEW_FOLDER (the model repository)")
    model_path = resolve_model_path(model)
    name = model_name(model_path, name)
    header = read_header(model_path)
    text = config_text(name, backend, header)
    parsed = parse_config(text)
    with building_folder(Path(out)) as repo:
        folder = repo / name
        (folder / "1").mkdir(parents=True)
        if backend == "onnxruntime":
            _, diff = export_model(model_path, "onnx", folder / "1" / BACKENDS[backend])
        else:
            from ..inference.openvino import export_ir
            ir, diff = export_ir(model_path, repo / ".ir")
            for part in ("model.xml", "model.bin"):
                shutil.move(str(ir / part), str(folder / "1" / part))
            ir.rmdir()
        (folder / "config.pbtxt").write_text(text)
        (folder / "labels.txt").write_text("".join(f"{c}\n" for c in header.classes))
        (folder / "imgclass.json").write_text(header.to_json() + "\n")
    checked = [f"Triton repository: {name} ({backend}), input pixels [3, {header.img_size}, {header.img_size}], "
               f"output probabilities [{len(header.classes)}], dynamic batching up to {MAX_BATCH_SIZE}"]
    checked.append("config.pbtxt parsed by Triton's ModelConfig" if parsed is not None else
                   "config.pbtxt not parsed: the triton extra (tritonclient) is not installed")
    return Path(out).expanduser(), diff, checked
