"""imgclass: turn a folder of labelled images into a trustworthy image classifier, fast.

The Python API mirrors the command line (``imgclass VERB ...``)::

    import imgclass
    run = imgclass.train("data/", epochs=10, model="resnet")
    predictor = imgclass.load(run.dir)          # a run folder or a model.safetensors file
    predictor.predict(["cat.jpg"], top_k=3)
    imgclass.submit(run.dir, "test/", out="submission.csv")
    imgclass.evaluate(run.dir, split="test").metrics["macro_f1"]
"""
import time as _time

STARTED = _time.perf_counter()  # when imgclass was imported: `imgclass train --time-budget` counts from here
__version__ = "0.1.0"

from .api import check, compare, demo, evaluate, list_models, load, predict, submit, train  # noqa: E402,F401
