"""The pyhf-compatible HistFactory likelihood, fits, tests and limits (no networks)."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
