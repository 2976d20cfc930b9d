"""Plain data types shared by every layer (no JAX at import)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import jax

__all__ = ["Events"]


class Events(NamedTuple):
    """Events of one event set: features ``(n, f)`` and weights ``(n,)`` (expected yields)."""

    x: jax.Array
    w: jax.Array
