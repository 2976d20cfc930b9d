"""Figures from arrays, hist.Hist and result objects (mplhep styles)."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
