"""Optimising through a black box: local generative surrogates (L-GSO). Knows no physics."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
