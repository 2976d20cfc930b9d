"""A conditional generative surrogate: a Gaussian density network S(z, x; psi).

``S(z, x; psi) = mu(x, psi) + sigma(x, psi) * z`` with ``z ~ N(0, 1)`` per output, where an
MLP (Equinox) gives the mean and the width of every output dimension from the standardised
``(x, psi)``. It is trained by maximum likelihood (the Gaussian negative log-likelihood of
the simulated ``y``), and it is reparametrised: ``dS/dpsi`` is exact for fixed ``(z, x)``,
which is what L-GSO needs (:mod:`diffhep.surrogate.lgso`).

Why not the paper's GAN: L-GSO trains a surrogate in every iteration on a few thousand local
samples; a likelihood fit converges reliably in a few hundred full-batch steps and reports
its own goodness (the held-out NLL), where a GAN needs a discriminator, many more steps and
has no such measure. The price is the family: each output is Gaussian given ``(x, psi)``
(smearing, resolution and efficiency-like responses are; multi-modal responses are not).

Example:
    >>> import jax, numpy as np
    >>> s = GaussianSurrogate.create(dx=1, dpsi=1, dy=1, hidden=(8,), key=jax.random.key(0))
    >>> y = s.sample(np.zeros((5, 1)), np.ones((5, 1)), np.array([0.5]))
    >>> y.shape
    (5, 1)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["GaussianSurrogate", "make_fit"]

MIN_WIDTH = 1e-3  # floor on sigma, in units of the output's spread
DTYPE = jnp.float32  # the network (the objective's gradient needs no more)


class GaussianSurrogate(eqx.Module):
    """The surrogate network with its input and output standardisation (not trained).

    Attributes:
        mlp: ``(x, psi)`` standardised -> ``(mu, raw width)`` per output dimension.
        in_mean, in_scale: Standardisation of the concatenated ``(x, psi)``.
        out_mean, out_scale: Standardisation of ``y``.
    """

    mlp: eqx.nn.MLP
    in_mean: jax.Array
    in_scale: jax.Array
    out_mean: jax.Array
    out_scale: jax.Array

    @classmethod
    def create(cls, dx: int, dpsi: int, dy: int, hidden: Sequence[int] = (32, 32), *, key):
        """An untrained surrogate for ``dx`` inputs, ``dpsi`` parameters, ``dy`` outputs."""
        hidden = tuple(hidden)
        if hidden and any(h != hidden[0] for h in hidden):
            raise ValueError(f"hidden layers must have equal widths, got {hidden}")
        mlp = eqx.nn.MLP(dx + dpsi, 2 * dy, hidden[0] if hidden else 0, len(hidden),
                         activation=jax.nn.silu, key=key, dtype=DTYPE)  # fmt: skip
        zeros, ones = (lambda n: jnp.zeros(n, DTYPE)), (lambda n: jnp.ones(n, DTYPE))
        return cls(mlp, zeros(dx + dpsi), ones(dx + dpsi), zeros(dy), ones(dy))

    def standardised_on(self, x, psi, y, mask=None) -> GaussianSurrogate:
        """The same network with the standardisation of these (masked) samples."""
        w = np.ones(len(x)) if mask is None else np.asarray(mask, dtype=float)
        u = np.concatenate([np.asarray(x), np.asarray(psi)], axis=1)

        def stats(a):
            m = np.average(a, axis=0, weights=w)
            s = np.sqrt(np.average((a - m) ** 2, axis=0, weights=w))
            return jnp.asarray(m, DTYPE), jnp.asarray(np.where(s > 0, s, 1.0), DTYPE)

        (im, isc), (om, osc) = stats(u), stats(np.asarray(y))
        return eqx.tree_at(
            lambda s: (s.in_mean, s.in_scale, s.out_mean, s.out_scale), self, (im, isc, om, osc)
        )

    def moments(self, x, psi):
        """Mean and width of ``y`` given ``x`` (n, dx) and ``psi`` ((dpsi,) or (n, dpsi))."""
        x = jnp.asarray(x).astype(DTYPE)
        shape = (x.shape[0], self.in_mean.size - x.shape[1])
        psi = jnp.broadcast_to(jnp.asarray(psi).astype(DTYPE), shape)
        stop = jax.lax.stop_gradient
        u = (jnp.concatenate([x, psi], axis=1) - stop(self.in_mean)) / stop(self.in_scale)
        out = jax.vmap(self.mlp)(u)
        dy = self.out_mean.size
        mu = out[:, :dy] * stop(self.out_scale) + stop(self.out_mean)
        sigma = (jax.nn.softplus(out[:, dy:]) + MIN_WIDTH) * stop(self.out_scale)
        return mu, sigma

    def sample(self, z, x, psi):
        """``y = mu(x, psi) + sigma(x, psi) * z`` (differentiable in ``psi``)."""
        mu, sigma = self.moments(x, psi)
        return mu + sigma * jnp.asarray(z, dtype=mu.dtype)

    def nll(self, x, psi, y, mask=None):
        """Mean Gaussian negative log-likelihood per sample (in standardised units)."""
        mu, sigma = self.moments(x, psi)
        scale = jax.lax.stop_gradient(self.out_scale)
        r = (jnp.asarray(y).astype(DTYPE) - mu) / sigma
        per = jnp.sum(0.5 * r**2 + jnp.log(sigma / scale) + 0.5 * jnp.log(2 * jnp.pi), axis=1)
        w = jnp.ones_like(per) if mask is None else jnp.asarray(mask, dtype=per.dtype)
        return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


@functools.lru_cache(maxsize=16)
def make_fit(learning_rate: float, steps: int):
    """``(fit, init)``: ``fit(model, opt_state, x, psi, y, mask) -> (model, opt_state, final
    nll)`` runs ``steps`` full-batch Adam steps on the masked NLL, compiled once for a fixed
    data shape (pad and mask the data); ``init(model)`` gives the optimiser state. Cached on
    ``(learning_rate, steps)``: every L-GSO run with these settings shares the compiled
    ``fit``."""
    optimizer = optax.adam(learning_rate)

    @eqx.filter_jit
    def fit(model, opt_state, x, psi, y, mask):
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(p):
            return eqx.combine(p, static).nll(x, psi, y, mask)

        def step(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p)
            updates, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), None, length=steps)
        return eqx.combine(params, static), opt_state, losses[-1]

    def init(model):
        return optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    return fit, init
