"""Elementwise functions that are safe to differentiate where a branch is not taken."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["safe_sqrt"]


def safe_sqrt(x):
    """``sqrt(x)`` for ``x > 0``, 0 elsewhere, with a zero (not NaN) gradient at 0.

    Example:
        >>> import jax
        >>> float(safe_sqrt(4.0)), float(safe_sqrt(-1.0)), float(jax.grad(safe_sqrt)(0.0))
        (2.0, 0.0, 0.0)
    """
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)
