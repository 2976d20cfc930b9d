"""A Deep Sets observable: a permutation-invariant network over jagged collections (jets, ...).

The training pipeline passes every observable one flat feature matrix ``(n, f)``. Collections
are laid out in it as blocks (see :class:`Layout`): the leading ``n`` objects of a collection,
each as its ``k`` per-object features followed by a mask (1 for an object, 0 for padding) —
the columns ``Jet_pt[0], Jet_eta[0], num(Jet_pt) > 0, Jet_pt[1], ...`` that
:mod:`diffhep.runs.ntuples` reads. :class:`DeepSetsObservable` un-flattens them:

    score = sigmoid(rho([event features, pool_j(mask_j * phi(object_j)) per collection]))

with ``phi`` a per-object MLP (one per collection), ``pool`` the masked sum or mean, and
``rho`` an event-level MLP (Zaheer et al., "Deep Sets", 2017; the energy-flow networks of
Komiske, Metodiev and Thaler). The output does not depend on the order of the objects nor on
the values of padded slots. Standardisation (stored in the model, like
:class:`~diffhep.nn.observables.MLPObservable`): event features per column; per-object features
with one mean and scale per feature over all real objects of all slots; masks untouched.

Example:
    >>> import jax, numpy as np
    >>> lay = Layout(event=(0,), collections=((1, 2, 1),))  # met, then 2 jets x (pt, mask)
    >>> x = np.array([[10.0, 50.0, 1.0, 30.0, 1.0], [20.0, 40.0, 1.0, 0.0, 0.0]])
    >>> obs = DeepSetsObservable.create(x, lay, (4,), (4,), 2, key=jax.random.key(0))
    >>> swapped = x[:, [0, 3, 4, 1, 2]]  # the two jets exchanged
    >>> bool(np.allclose(obs(x), obs(swapped), rtol=1e-6)), obs(x).shape
    (True, (2,))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .observables import ACTIVATIONS, Standardised, _mlp_with_widths, check_activation

__all__ = ["DeepSetsObservable", "Layout"]


class Layout(NamedTuple):
    """Where the inputs sit in the flat feature vector.

    Attributes:
        event: Column indices of the event-level features.
        collections: ``(start, n, k)`` per collection: ``n`` objects of ``k`` features plus a
            mask each, in the ``n * (k + 1)`` columns from ``start`` on.
    """

    event: tuple
    collections: tuple

    @property
    def size(self) -> int:
        ends = [s + n * (k + 1) for s, n, k in self.collections]
        return max([*ends, *(i + 1 for i in self.event)], default=0)


def _mlp(in_size, hidden, activation, key, dtype, out_size):
    hidden = tuple(int(h) for h in hidden)
    if hidden and len(set(hidden)) > 1:
        mlp = _mlp_with_widths(in_size, hidden, activation, key, dtype)
        if out_size == "scalar":
            return mlp
        last = eqx.nn.Linear(hidden[-1], out_size, key=jax.random.fold_in(key, 1), dtype=dtype)
        return eqx.tree_at(lambda m: m.layers, mlp, (*mlp.layers[:-1], last))
    return eqx.nn.MLP(
        in_size,
        out_size,
        hidden[0] if hidden else 1,
        len(hidden),
        activation=activation,
        key=key,
        dtype=dtype,
    )


class DeepSetsObservable(Standardised):
    """Per-object MLPs, masked pooling and an event-level MLP; sigmoid output.

    Attributes:
        mean, scale: Standardisation of every input column (not trained).
        phis: One per-object MLP per collection (``k -> latent``).
        rho: The event-level MLP (event features + pooled latents -> logit).
        layout: The :class:`Layout` (static).
        pooling: ``"sum"`` or ``"mean"`` over the real objects (static).
    """

    phis: tuple
    rho: eqx.nn.MLP
    layout: Layout = eqx.field(static=True)
    pooling: str = eqx.field(static=True, default="sum")

    @classmethod
    def create(
        cls,
        features,
        layout: Layout,
        hidden: Sequence[int] = (64, 64),
        object_hidden: Sequence[int] = (32, 32),
        latent: int = 16,
        *,
        key: jax.Array,
        pooling: str = "sum",
        activation: str = "relu",
        dtype=jnp.float32,
    ) -> DeepSetsObservable:
        """An untrained network standardised on ``features`` (rows = events).

        Args:
            features: Training features ``(n, f)`` in the layout ``layout``.
            layout: Column layout of events and collections.
            hidden: Widths of ``rho``'s hidden layers.
            object_hidden: Widths of each ``phi``'s hidden layers.
            latent: Output size of ``phi`` (per-object representation).
            key: PRNG key.
            pooling: ``"sum"`` or ``"mean"``.
            activation: One of :data:`~diffhep.nn.observables.ACTIVATIONS`.
            dtype: Network dtype.
        """
        check_activation(activation)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; use 'sum' or 'mean'")
        layout = Layout(
            tuple(int(i) for i in layout.event),
            tuple(tuple(int(v) for v in c) for c in layout.collections),
        )
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < layout.size:
            raise ValueError(f"features of shape {x.shape} do not fit the layout {layout}")
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
        ev = list(layout.event)
        if ev:
            mean[ev] = x[:, ev].mean(axis=0)
            std = x[:, ev].std(axis=0)
            scale[ev] = np.where(std > 0, std, 1.0)
        for start, n, k in layout.collections:
            block = x[:, start : start + n * (k + 1)].reshape(len(x), n, k + 1)
            real = block[..., k] > 0.5
            objs = block[..., :k][real] if real.any() else np.zeros((1, k))
            m, s = objs.mean(axis=0), objs.std(axis=0)
            for j in range(n):
                cols = slice(start + j * (k + 1), start + j * (k + 1) + k)
                mean[cols], scale[cols] = m, np.where(s > 0, s, 1.0)
        act = ACTIVATIONS[activation]
        keys = jax.random.split(key, len(layout.collections) + 1)
        phis = tuple(
            _mlp(k, object_hidden, act, kk, dtype, int(latent))
            for (_, _, k), kk in zip(layout.collections, keys[1:], strict=True)
        )
        rho_in = len(ev) + int(latent) * len(layout.collections)
        rho = _mlp(rho_in, hidden, act, keys[0], dtype, "scalar")
        return cls(
            jnp.asarray(mean, dtype=dtype), jnp.asarray(scale, dtype=dtype), phis, rho, layout,
            pooling,
        )  # fmt: skip

    @eqx.filter_jit  # one program per shape where called eagerly, not one per operation
    def logits(self, x) -> jax.Array:
        """Pre-sigmoid outputs for a batch ``(n, f)`` -> ``(n,)``."""
        raw = jnp.asarray(x, dtype=self.dtype)
        z = self.standardise(raw)
        parts = [z[:, list(self.layout.event)]]
        for phi, (start, n, k) in zip(self.phis, self.layout.collections, strict=True):
            stop = start + n * (k + 1)
            objs = z[:, start:stop].reshape(-1, n, k + 1)[..., :k]
            mask = (raw[:, start:stop].reshape(-1, n, k + 1)[..., k] > 0.5).astype(self.dtype)
            h = jax.vmap(jax.vmap(phi))(objs) * mask[..., None]
            pooled = jnp.sum(h, axis=1)
            if self.pooling == "mean":
                pooled = pooled / jnp.maximum(jnp.sum(mask, axis=1), 1.0)[:, None]
            parts.append(pooled)
        return jax.vmap(self.rho)(jnp.concatenate(parts, axis=1))

    def __call__(self, x) -> jax.Array:
        """Scores in [0, 1] for a batch ``(n, f)`` -> ``(n,)``."""
        return jax.nn.sigmoid(self.logits(x))
