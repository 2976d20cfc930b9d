"""A training run: config -> data -> pipeline -> train -> run directory (and its report)."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
