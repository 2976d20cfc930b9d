"""Reading and writing events: expressions, readers, datasets, apply, ONNX."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
