"""Black-box searches over the keys of a training config (`diffhep optimize`, Optuna)."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
