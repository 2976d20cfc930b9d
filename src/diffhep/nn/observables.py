"""Neural observables: event features -> a score in [0, 1].

An observable is an Equinox module mapping a batch of events ``(n, features)`` to scores
``(n,)``. The :class:`MLPObservable` stores the input standardisation (mean and scale of the
training features) inside the model, so a saved observable is self-contained: it is applied
to raw features, in training, evaluation, export and by the analyst.

The network runs in float32 by default (the statistics downstream are float64): a float64
network is what dominates the step time of the reference implementation, and float32 is
plenty for a classifier.

Example:
    >>> import jax, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 2))
    >>> obs = MLPObservable.create(x, hidden=(8, 8), key=jax.random.key(0))
    >>> s = obs(x)
    >>> s.shape, s.dtype.name, bool((s >= 0).all() & (s <= 1).all())
    ((100,), 'float32', True)
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ACTIVATIONS", "MLPObservable", "Standardised"]

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
}


class Standardised(eqx.Module):
    """Base of the observables: a per-feature input standardisation stored in the model.

    Attributes:
        mean, scale: Per-feature standardisation (not trained; gradients are stopped). Their
            dtype is the network's.
    """

    mean: jax.Array
    scale: jax.Array

    @property
    def dtype(self):
        return self.mean.dtype

    def standardise(self, x) -> jax.Array:
        mean, scale = jax.lax.stop_gradient((self.mean, self.scale))
        return (jnp.asarray(x, dtype=self.dtype) - mean) / scale


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")


class MLPObservable(Standardised):
    """A multi-layer perceptron with built-in input standardisation and a sigmoid output.

    Attributes:
        mean, scale: Per-feature standardisation (not trained; gradients are stopped).
        mlp: The network, ``features -> hidden... -> 1`` logit.
    """

    mlp: eqx.nn.MLP

    @classmethod
    def create(
        cls,
        features,
        hidden: Sequence[int] = (1024, 1024),
        *,
        key: jax.Array,
        activation: str = "relu",
        dtype=jnp.float32,
        weights=None,
    ) -> MLPObservable:
        """An untrained observable standardised on ``features`` (e.g. the training set).

        Args:
            features: Array ``(n, f)`` of training features (used for mean and scale).
            hidden: Widths of the hidden layers.
            key: PRNG key for the initial weights.
            activation: One of :data:`ACTIVATIONS`.
            dtype: Network dtype (float32 by default, whatever the JAX x64 setting).
            weights: Optional per-event weights for the standardisation (absolute values
                are used, so negative weights do not produce a negative variance).
        """
        check_activation(activation)
        x = np.asarray(features, dtype=np.float64)
        w = np.ones(len(x)) if weights is None else np.abs(np.asarray(weights, np.float64))
        mean = np.average(x, axis=0, weights=w)
        std = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
        scale = np.where(std > 0, std, 1.0)
        hidden = tuple(int(h) for h in hidden)
        mlp = eqx.nn.MLP(
            in_size=x.shape[1],
            out_size="scalar",
            width_size=hidden[0] if hidden else 1,
            depth=len(hidden),
            activation=ACTIVATIONS[activation],
            key=key,
            dtype=dtype,
        )
        if hidden and len(set(hidden)) > 1:
            mlp = _mlp_with_widths(x.shape[1], hidden, ACTIVATIONS[activation], key, dtype)
        return cls(jnp.asarray(mean, dtype=dtype), jnp.asarray(scale, dtype=dtype), mlp)

    @eqx.filter_jit  # one program per shape where called eagerly, not one per operation
    def logits(self, x) -> jax.Array:
        """Pre-sigmoid outputs for a batch ``(n, f)`` -> ``(n,)``."""
        return jax.vmap(self.mlp)(self.standardise(x))

    def __call__(self, x) -> jax.Array:
        """Scores in [0, 1] for a batch ``(n, f)`` -> ``(n,)``."""
        return jax.nn.sigmoid(self.logits(x))


def _mlp_with_widths(in_size, hidden, activation, key, dtype) -> eqx.nn.MLP:
    """An ``eqx.nn.MLP`` whose hidden layers have different widths."""
    sizes = (in_size, *hidden, "scalar")
    keys = jax.random.split(key, len(sizes) - 1)
    layers = tuple(
        eqx.nn.Linear(a, b, key=k, dtype=dtype)
        for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
    )
    mlp = eqx.nn.MLP(in_size, "scalar", 1, len(hidden), activation=activation, key=key, dtype=dtype)
    return eqx.tree_at(lambda m: m.layers, mlp, layers)
