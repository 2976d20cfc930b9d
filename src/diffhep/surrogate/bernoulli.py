"""A conditional surrogate of a pass/fail black box: ``p(pass | x, psi) = sigmoid(MLP(x, psi))``.

For a selection (cuts, a trigger, an external tagger) the black box's output is 0 or 1 per
event. A Gaussian surrogate (:class:`~diffhep.surrogate.gaussian.GaussianSurrogate`) would
draw values outside [0, 1] and its noise dominates a significance of summed yields (tried:
Z0 estimates from 6 to 31 where the exact one is 3.2, ``docs/lgso.md``). This one is a
Bernoulli model trained by its likelihood (binary cross-entropy), and its "sample" is the
pass probability itself: in summed yields ``E[sum_i w_i pass_i] = sum_i w_i p(x_i, psi)``,
so the objective of expected yields needs no noise and ``d/dpsi`` goes through ``p``. It has
the interface of the Gaussian surrogate (``create``, ``standardised_on``, ``moments``,
``sample``, ``nll``), so :func:`~diffhep.surrogate.lgso.lgso` takes either
(``Settings(surrogate="bernoulli")``).

Example:
    >>> import jax, numpy as np
    >>> s = BernoulliSurrogate.create(dx=2, dpsi=2, dy=1, hidden=(8,), key=jax.random.key(0))
    >>> p = s.sample(None, np.zeros((3, 2)), np.array([0.5, 0.5]))
    >>> p.shape, bool(((p > 0) & (p < 1)).all())
    ((3, 1), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .gaussian import DTYPE

__all__ = ["BernoulliSurrogate", "Columns"]


class BernoulliSurrogate(eqx.Module):
    """An MLP from the standardised ``(x, psi)`` to the logit of passing, per output."""

    mlp: eqx.nn.MLP
    in_mean: jax.Array
    in_scale: jax.Array

    @classmethod
    def create(cls, dx: int, dpsi: int, dy: int, hidden: Sequence[int] = (16, 16), *, key):
        hidden = tuple(hidden)
        if hidden and any(h != hidden[0] for h in hidden):
            raise ValueError(f"hidden layers must have equal widths, got {hidden}")
        mlp = eqx.nn.MLP(dx + dpsi, dy, hidden[0] if hidden else 0, len(hidden),
                         activation=jax.nn.silu, key=key, dtype=DTYPE)  # fmt: skip
        return cls(mlp, jnp.zeros(dx + dpsi, DTYPE), jnp.ones(dx + dpsi, DTYPE))

    def standardised_on(self, x, psi, y=None, mask=None) -> BernoulliSurrogate:
        w = np.ones(len(x)) if mask is None else np.asarray(mask, dtype=float)
        u = np.concatenate([np.asarray(x), np.asarray(psi)], axis=1)
        m = np.average(u, axis=0, weights=w)
        s = np.sqrt(np.average((u - m) ** 2, axis=0, weights=w))
        scale = jnp.asarray(np.where(s > 0, s, 1.0), DTYPE)
        return eqx.tree_at(lambda b: (b.in_mean, b.in_scale), self, (jnp.asarray(m, DTYPE), scale))

    def logits(self, x, psi):
        x = jnp.asarray(x).astype(DTYPE)
        psi = jnp.broadcast_to(jnp.asarray(psi).astype(DTYPE),
                               (x.shape[0], self.in_mean.size - x.shape[1]))  # fmt: skip
        stop = jax.lax.stop_gradient
        u = (jnp.concatenate([x, psi], axis=1) - stop(self.in_mean)) / stop(self.in_scale)
        return jax.vmap(self.mlp)(u)

    def moments(self, x, psi):
        """Mean (the pass probability) and standard deviation of the output."""
        p = jax.nn.sigmoid(self.logits(x, psi))
        return p, jnp.sqrt(p * (1 - p))

    def sample(self, z, x, psi):
        """The pass probability (the expected output; ``z`` is ignored)."""
        return jax.nn.sigmoid(self.logits(x, psi))

    def nll(self, x, psi, y, mask=None):
        """Mean binary cross-entropy of the 0/1 outputs ``y``."""
        logits = self.logits(x, psi)
        per = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(y, logits.dtype)),
                      axis=1)  # fmt: skip
        w = jnp.ones_like(per) if mask is None else jnp.asarray(mask, dtype=per.dtype)
        return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


class Columns(eqx.Module):
    """A surrogate that sees only the ``columns`` of ``x`` (the black box's inputs), where the
    risk needs more (e.g. an event's class and weight)."""

    inner: eqx.Module
    columns: tuple = eqx.field(static=True)

    def _x(self, x):
        return x[:, list(self.columns)]

    def standardised_on(self, x, psi, y, mask=None) -> Columns:
        return Columns(self.inner.standardised_on(np.asarray(x)[:, list(self.columns)], psi, y,
                                                  mask), self.columns)  # fmt: skip

    def moments(self, x, psi):
        return self.inner.moments(self._x(x), psi)

    def sample(self, z, x, psi):
        return self.inner.sample(z, self._x(x), psi)

    def nll(self, x, psi, y, mask=None):
        return self.inner.nll(self._x(x), psi, y, mask)
