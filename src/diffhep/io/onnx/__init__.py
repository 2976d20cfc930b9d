"""ONNX export of the event score (one exporter per observable)."""

from ...lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
