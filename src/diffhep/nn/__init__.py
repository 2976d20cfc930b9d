"""Observables (networks) and the generic optax training loop (no physics)."""

from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
