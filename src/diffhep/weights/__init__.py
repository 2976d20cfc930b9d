"""Signed event weights: strategies, learned E[w|x], calibration, verification."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
