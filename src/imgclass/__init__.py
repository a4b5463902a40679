"""imgclass: turn a folder of labelled images into a trustworthy image classifier, fast.

The Python API mirrors the command line (``imgclass VERB ...``)::

    import imgclass
    run = imgclass.train("data/", epochs=10, model="resnet")
    predictor = imgclass.load(run.dir)          # a run folder or a model.safetensors file
    predictor.predict(["cat.jpg"], top_k=3)
    imgclass.submit(run.dir, "test/", out="submission.csv")
    imgclass.evaluate(run.dir, split="test").metrics["macro_f1"]
"""
from .core.version import STARTED, __version__  # noqa: F401  (first: the clock starts at import)

# The API is imported on first use (PEP 562), so `import imgclass` stays light: no torch, scikit-learn,
# matplotlib or web stack until a function is called (`imgclass.train` then imports what training needs).
__all__ = ["check", "compare", "demo", "evaluate", "list_models", "load", "predict", "submit", "train",
           "cache_info", "cache_clear", "cache_dir", "pretrained_models", "sweep", "tune", "augment_preview",
           "explain", "lr_find", "export", "serve", "embed", "similar", "Callback", "Event", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'imgclass' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
