"""The weight network trained together with the analysis (``weights: {strategy: learned,
joint: true}``).

The two-stage ``learned`` strategy fits ``E[w | x]`` first (:mod:`diffhep.weights.reweight`)
and the analysis then trains on the result. Here both train in one optimisation: every step
adds the weight networks' regression loss ``mean (g(x) - w)^2`` (minimiser ``E[w | x]``) to
the analysis loss, and the analysis loss sees the learned weights through a
**stop-gradient**.

Why this coupling: the weight networks' parameters then get gradient from the regression
loss only, and the analysis's from the analysis loss only (the regression loss does not
depend on them). So the weight network cannot learn to move weight onto events the
classifier likes, or away from events it gets wrong (which would lower the analysis loss
while biasing the weights): that is impossible by construction, and tested
(``tests/test_joint_weights.py``: zero gradient of the analysis loss in the weight networks).
Its regression target stays the signed weight ``w``, unbiased. A shared representation or
a gradient through the weights would both open that channel. Adam normalises the step of
each parameter, so a relative weight of the two losses would change nothing (the parameter
sets are disjoint); the weight networks get their own learning rate instead.

Honesty: two networks per event set, cross-fitted as in the two-stage strategy. Each event
belongs to a fold fixed by a hash of its features (:func:`fold_of`, the same in every batch
and epoch); network k learns from fold k's events and weights the other fold's. An event's
learned weight thus never comes from a network that regressed on its own weight (a network
that memorised single events would hand the signed weights, and the talk's exploit, back to
the analysis).

Failure modes, and what is done: (1) untrained weight networks at the start: they start at
the global mean weight (the last layer's bias), i.e. the ``ignore`` strategy normalised, and
learn from there; (2) a learned ``E[w | x] < 0`` is clipped at 0 (as two-stage; the summary
reports the fraction); (3) the learned weights of a batch are rescaled to the batch's signed
sum of weights, so the yields entering the likelihood losses are those of the signed
weights.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..nn.observables import MLPObservable
from ..types import Events
from .reweight import MeanWeightNet

__all__ = ["JointWeights", "fold_of"]


def fold_of(x) -> jax.Array:
    """The cross-fitting fold (0 or 1) of each event: a hash of the bits of its features
    (float32), fixed for an event whatever the batch."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
    h = jnp.sum(bits * jnp.uint32(2654435761), axis=1, dtype=jnp.uint32)  # Knuth's hash
    h = h ^ (h >> 15)
    return ((h * jnp.uint32(2246822519)) >> 13) & 1


class JointWeights(eqx.Module):
    """Cross-fitted ``E[w | x]`` networks of the event sets trained jointly.

    Attributes:
        nets: ``{event set: (network of fold 0, network of fold 1)}``.
    """

    nets: dict

    @classmethod
    def create(cls, events: dict, names, *, hidden=(32, 32), key) -> JointWeights:
        """Networks for the event sets ``names`` of the training split ``events``, standardised
        on their features, starting at the mean weight."""
        nets = {}
        for i, name in enumerate(sorted(names)):
            x, w = np.asarray(events[name].x), np.asarray(events[name].w, np.float64)
            scale = float(np.mean(np.abs(w)))
            if scale <= 0:
                raise ValueError(f"event set {name!r}: all weights are zero")
            pair = []
            for k in range(2):
                obs = MLPObservable.create(x, hidden, key=jax.random.fold_in(key, 2 * i + k))
                bias = jnp.full_like(obs.mlp.layers[-1].bias, float(np.mean(w)) / scale)
                obs = eqx.tree_at(lambda o: o.mlp.layers[-1].bias, obs, bias)
                inputs = tuple(range(x.shape[1]))
                pair.append(MeanWeightNet(obs, scale, "regression", inputs, (0.0, float(w.max()))))
            nets[name] = tuple(pair)
        return cls(nets)

    def _raw(self, name, x):
        """Per event: the regression output of its own fold's network and of the other's
        (``E[w | x] / scale``, unclipped), and the fold."""
        f = fold_of(x)
        a, b = (n.net.logits(x).astype(jnp.result_type(float)) for n in self.nets[name])
        return jnp.where(f == 0, a, b), jnp.where(f == 0, b, a), f

    def regression_loss(self, batch: dict) -> jax.Array:
        """Sum over the event sets of ``mean (g_own(x) - w / mean |w|)^2``: each network
        learns from its own fold's events only."""
        total = 0.0
        for name in self.nets:
            ev = batch[name]
            own, _, _ = self._raw(name, ev.x)
            w = jnp.asarray(ev.w, own.dtype)
            # a batch's weights are scaled to estimate the full yield: the target is w over
            # the batch's mean |w| (the training set's scale up to the batch's fluctuation)
            t = jax.lax.stop_gradient(w / jnp.mean(jnp.abs(w)))
            total = total + jnp.mean((own - t) ** 2)
        return total

    def mean_weights(self, name, ev: Events) -> jax.Array:
        """The cross-fitted ``E[w | x]`` of the events (the other fold's network), clipped at
        0 and at the largest training weight, in the units of ``ev.w``; no gradient flows
        into the networks."""
        net = self.nets[name][0]
        _, other, _ = self._raw(name, ev.x)
        return jax.lax.stop_gradient(jnp.clip(net.scale * other, *net.bounds))

    def apply(self, batch: dict) -> dict:
        """The batch with the learned weights (rescaled to each event set's signed sum of
        weights in the batch) in place of the signed ones, behind a stop-gradient."""
        out = dict(batch)
        for name in self.nets:
            ev = batch[name]
            w = jnp.asarray(ev.w)
            learned = self.mean_weights(name, Events(ev.x, w))
            total, norm = jnp.sum(w), jnp.sum(learned)
            ratio = jnp.where(norm > 0, total / jnp.where(norm > 0, norm, 1.0), 1.0)
            out[name] = Events(ev.x, jax.lax.stop_gradient(learned * ratio).astype(w.dtype))
        return out
