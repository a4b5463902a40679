"""imgclass: turn a folder of labelled images into a trustworthy image classifier, fast.

The Python API mirrors the command line (``imgclass VERB ...``)::

    import imgclass
    run = imgclass.train("data/", epochs=10, model="resnet")
    predictor = imgclass.load(run.dir)          # a run folder or a model.safetensors file
    predictor.predict(["cat.jpg"], top_k=3)
    imgclass.submit(run.dir, "test/", out="submission.csv")
    imgclass.evaluate(run.dir, split="test").metrics["macro_f1"]
"""
from .version import STARTED, __version__  # noqa: F401  (first: the clock starts at import)
from .api import check, compare, demo, evaluate, list_models, load, predict, submit, train  # noqa: E402,F401
