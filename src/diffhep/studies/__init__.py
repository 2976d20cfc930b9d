"""Reproducible studies, one module each (`diffhep study NAME`)."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
