"""Elementwise functions that are safe to differentiate where a branch is not taken, and a
branch that stays one under ``vmap``."""

from __future__ import annotations

import equinox.internal as eqxi
import jax
import jax.numpy as jnp

__all__ = ["branch", "safe_sqrt"]


def branch(pred, true_fn, false_fn, *operands):
    """``lax.cond(pred, true_fn, false_fn, *operands)`` that stays a branch under ``vmap``.

    Under ``vmap`` a ``lax.cond`` with a batched predicate becomes a select: both branches
    run for every member. Here that select runs only where ``pred`` holds for at least one
    member (equinox's ``unvmap_any``), else ``false_fn`` alone; each member takes the value
    of its own branch. Without ``vmap`` it is ``lax.cond``. Meant for an expensive branch
    that few members of a batch take (a restart of a fit, a probe of its minimum).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = lambda p, x: branch(p, lambda y: 2.0 * y, lambda y: y, x)
        >>> jax.vmap(f)(jnp.array([True, False]), jnp.array([1.0, 1.0])).tolist()
        [2.0, 1.0]
    """

    def per_member(*ops):  # a select under vmap, a branch without
        return jax.lax.cond(pred, true_fn, false_fn, *ops)

    return jax.lax.cond(eqxi.unvmap_any(pred), per_member, false_fn, *operands)


def safe_sqrt(x):
    """``sqrt(x)`` for ``x > 0``, 0 elsewhere, with a zero (not NaN) gradient at 0.

    Example:
        >>> import jax
        >>> float(safe_sqrt(4.0)), float(safe_sqrt(-1.0)), float(jax.grad(safe_sqrt)(0.0))
        (2.0, 0.0, 0.0)
    """
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)
