"""The differentiable analysis: spec, cuts, histograms, losses, the pipeline."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
