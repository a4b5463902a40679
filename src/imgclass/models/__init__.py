"""Model registry and the architectures imgclass defines or wraps.

Every model follows one small contract (after timm): ``features(x)`` returns pooled
features of size ``num_features``, ``head`` is the classification layer, and
``reset_head(num_classes)`` replaces it.
"""
from .registry import ModelSpec, create_model, get_spec, list_models, register  # noqa: F401
from . import fast, small, zoo  # noqa: F401  (registers the built-in models)
