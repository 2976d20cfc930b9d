"""Built-in event generators (blobs, INFERNO, toys) and their references."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
