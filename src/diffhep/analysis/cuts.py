"""Differentiable selection cuts: relaxed per-event weights with learnable thresholds.

A :class:`Cut` turns a hard requirement on one input feature (``x > c``, ``x < c`` or the
window ``a < x < b``) into a per-event weight in [0, 1] (G. Watts, "Differentiable
programming: neural networks and selection cuts working together"):

- ``sigmoid``: ``sigmoid(k (x - c) / s)``, slope ``k`` in units of the feature's spread ``s``;
- ``erf``: the normal CDF ``Phi(k (x - c) / s)``;
- ``straight_through``: the hard 0/1 cut forward and the sigmoid's gradient backward.

A :class:`Selection` multiplies the weights of its cuts; nothing is normalised across events
(a softmax over the batch makes the cuts drift to -infinity). The selection weights multiply
the event weights entering every histogram and every loss. Raising the slope during training
(annealing) turns the relaxed cuts into the hard ones they stand for: on the 1-D toy, after
annealing to slope 200 the relaxed s/sqrt(b) is within 2% of the hard-cut value at the same
threshold (tests/test_cuts.py).

Example:
    >>> import numpy as np
    >>> sel = Selection.create([CutSpec("x1", ">", init=1.0)], ("x1", "x2"), np.zeros((1, 2)))
    >>> sel.expression()
    'x1 > 1'
    >>> [round(float(w), 4) for w in sel.weights(np.array([[0.0, 0.0], [2.0, 0.0]]), slope=5.0)]
    [0.0067, 0.9933]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

__all__ = ["DIRECTIONS", "RELAXATIONS", "Cut", "CutSpec", "Selection"]

RELAXATIONS = ("sigmoid", "erf", "straight_through")
DIRECTIONS = (">", "<", "window")
#: Default starting quantiles of the data: ``x > c`` keeps 90% of the events, ``x < c`` 90%,
#: a window the central 90%. Inside the data, so that every cut starts with a gradient.
INIT_QUANTILES = {">": (0.1,), "<": (0.9,), "window": (0.05, 0.95)}
#: A cut whose relaxed weight has a derivative below this for every event is "dead".
DEAD_GRADIENT = 1e-6


@dataclass(frozen=True)
class CutSpec:
    """Configuration of one cut (the YAML ``cuts:`` entries).

    Args:
        feature: Name of the input feature.
        direction: ``">"``, ``"<"`` or ``"window"``.
        init: Starting threshold (a pair ``(a, b)`` for a window); ``None`` starts from data
            quantiles (:data:`INIT_QUANTILES`).
        trainable: ``False`` keeps the threshold fixed.
        relaxation: One of :data:`RELAXATIONS`.
    """

    feature: str
    direction: str = ">"
    init: float | tuple | None = None
    trainable: bool = True
    relaxation: str = "sigmoid"

    def __post_init__(self):
        where = f"cut on {self.feature!r}"
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{where}: direction {self.direction!r} is not one of {DIRECTIONS}")
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"{where}: relaxation {self.relaxation!r} is not one of {RELAXATIONS}")
        if self.init is not None:
            n = 2 if self.direction == "window" else 1
            values = np.atleast_1d(np.asarray(self.init, dtype=float))
            if values.shape != (n,):
                raise ValueError(f"{where}: init needs {n} value(s), got {self.init!r}")
            if n == 2 and not values[0] < values[1]:
                raise ValueError(f"{where}: window init needs a < b, got {tuple(values)}")


def _gate(z, relaxation: str):
    """Relaxed step function of ``z`` (0 for z << 0, 1 for z >> 0)."""
    if relaxation == "erf":
        return ndtr(z)
    soft = jax.nn.sigmoid(z)
    if relaxation == "straight_through":
        hard = (z > 0).astype(soft.dtype)
        return soft + jax.lax.stop_gradient(hard - soft)
    return soft


class Cut(eqx.Module):
    """One relaxed cut on feature ``index``; ``thresholds`` is ``(c,)`` or ``(a, b)``."""

    thresholds: jax.Array
    feature: str = eqx.field(static=True)
    index: int = eqx.field(static=True)
    direction: str = eqx.field(static=True)
    relaxation: str = eqx.field(static=True)
    trainable: bool = eqx.field(static=True)
    scale: float = eqx.field(static=True)  # the feature's spread: slopes are relative to it

    def _values(self):
        t = self.thresholds
        return t if self.trainable else jax.lax.stop_gradient(t)

    def _z(self, x, slope):
        """Signed distances (in units of scale / slope) to each boundary, ``(n, k)``."""
        v = jnp.asarray(x)[:, self.index][:, None]
        t = self._values().astype(v.dtype)
        k = jnp.asarray(slope, dtype=v.dtype) / self.scale
        if self.direction == ">":
            return k * (v - t)
        if self.direction == "<":
            return k * (t - v)
        return k * jnp.concatenate([v - t[0], t[1] - v], axis=1)

    def weight(self, x, slope):
        """Relaxed weight of every event, shape ``(n,)``."""
        return jnp.prod(_gate(self._z(x, slope), self.relaxation), axis=1)

    @eqx.filter_jit  # one program per shape where called eagerly, not one per operation
    def passes(self, x) -> jax.Array:
        """The hard cut, a boolean per event (``x > c`` strictly, as in the expression)."""
        v = jnp.asarray(x)[:, self.index]
        t = self.thresholds.astype(v.dtype)
        if self.direction == ">":
            return v > t[0]
        if self.direction == "<":
            return v < t[0]
        return (v > t[0]) & (v < t[1])

    def max_gradient(self, x, slope) -> float:
        """Largest derivative of any event's relaxed weight with respect to a threshold."""
        z = self._z(x, slope)
        k = float(slope) / self.scale
        # elementwise derivative of the gate (the sigmoid's for straight-through)
        _, dgate = jax.jvp(lambda u: _gate(u, self.relaxation), (z,), (jnp.ones_like(z),))
        return float(k * jnp.max(dgate))

    def expression(self, digits: int = 4) -> str:
        t = [float(f"{float(v):.{digits}g}") for v in np.asarray(self.thresholds)]
        fmt = [f"{v:g}" for v in t]
        if self.direction == "window":
            return f"{self.feature} > {fmt[0]} && {self.feature} < {fmt[1]}"
        return f"{self.feature} {self.direction} {fmt[0]}"

    def to_dict(self) -> dict:
        t = [float(v) for v in np.asarray(self.thresholds)]
        return {
            "feature": self.feature,
            "direction": self.direction,
            "thresholds": t,
            "relaxation": self.relaxation,
            "trainable": self.trainable,
        }


class Selection(eqx.Module):
    """The product of relaxed cuts; the learnable part of an event selection."""

    cuts: tuple

    @classmethod
    def create(cls, specs, features, x, weights=None) -> Selection:
        """Build the cuts of ``specs`` on the named ``features``; thresholds without an
        ``init`` start at data quantiles of ``x`` (rows = events, columns = ``features``),
        and every slope is relative to the feature's interquartile spread in ``x``."""
        features = tuple(features)
        x = np.asarray(x, dtype=float)
        cuts = []
        for spec in specs:
            if spec.feature not in features:
                raise ValueError(
                    f"cut on unknown feature {spec.feature!r}; features are {features}"
                )
            i = features.index(spec.feature)
            column = x[:, i]
            q75, q25 = np.percentile(column, [75, 25]) if column.size else (1.0, 0.0)
            scale = float(q75 - q25) / 1.349 if q75 > q25 else 1.0  # = sigma for a normal
            if spec.init is None:
                if not column.size:
                    raise ValueError(f"cut on {spec.feature!r}: no events to start it from")
                init = np.quantile(column, INIT_QUANTILES[spec.direction])
            else:
                init = np.atleast_1d(np.asarray(spec.init, dtype=float))
            cuts.append(
                Cut(
                    jnp.asarray(init, dtype=jnp.float32),
                    spec.feature,
                    i,
                    spec.direction,
                    spec.relaxation,
                    spec.trainable,
                    scale,
                )
            )
        return cls(tuple(cuts))

    def weights(self, x, slope) -> jax.Array:
        """Relaxed selection weight of every event (the product over cuts), ``(n,)``."""
        out = jnp.ones(jnp.shape(x)[0], dtype=jnp.result_type(float))
        for cut in self.cuts:
            out = out * cut.weight(x, slope).astype(out.dtype)
        return out

    @eqx.filter_jit  # one program per shape where called eagerly, not one per operation
    def passes(self, x) -> jax.Array:
        """Hard selection: events passing every cut."""
        out = jnp.ones(jnp.shape(x)[0], dtype=bool)
        for cut in self.cuts:
            out = out & cut.passes(x)
        return out

    def dead_cuts(self, x, slope) -> list[str]:
        """Messages for cuts whose relaxed weight has no gradient on these events (started
        or drifted far outside the data): gradient descent cannot move them."""
        out = []
        for cut in self.cuts:
            if cut.trainable and cut.max_gradient(x, slope) < DEAD_GRADIENT:
                v = np.asarray(x)[:, cut.index]
                out.append(
                    f"cut '{cut.expression()}' has zero gradient: it lies outside the data "
                    f"({cut.feature} spans {v.min():.4g} to {v.max():.4g} at slope {slope:g}); "
                    f"start it inside, e.g. at a quantile (leave 'init' empty)"
                )
        return out

    def warn_dead(self, x, slope) -> list[str]:
        messages = self.dead_cuts(x, slope)
        for m in messages:
            warnings.warn(m, stacklevel=2)
        return messages

    def expression(self, digits: int = 4) -> str:
        """The selection as a readable expression, e.g. ``x1 > 1.234 && x2 < 4.56``."""
        return " && ".join(c.expression(digits) for c in self.cuts)

    def to_json(self) -> list[dict]:
        return [c.to_dict() for c in self.cuts]

    def with_thresholds(self, values) -> Selection:
        """The same cuts with new thresholds (a list like ``to_json``'s)."""
        cuts = tuple(
            eqx.tree_at(lambda c: c.thresholds, c, jnp.asarray(v, dtype=c.thresholds.dtype))
            for c, v in zip(self.cuts, values, strict=True)
        )
        return Selection(cuts)

    def cutflow(self, events: dict, features, passes: dict | None = None) -> list[dict]:
        """Hard cut flow: per sample, the events and weighted yield after each successive cut.

        Args:
            events: ``{sample: (x, w)}``.
            features: Feature names (columns of ``x``).
            passes: Optional ``{sample: bool (n_cuts, n)}``, each cut's :meth:`Cut.passes`
                of the sample's events computed already (e.g. in one compiled call per
                chunk of a streamed run).

        Returns:
            Rows ``{"cut": expression, sample: {"events": n, "yield": sum w}, ...}``, the
            first row (``"cut": "all"``) before any cut.
        """
        rows = [{"cut": "all"}]
        masks = {s: np.ones(len(np.asarray(w)), dtype=bool) for s, (_, w) in events.items()}
        for s, (_, w) in events.items():
            rows[0][s] = {"events": int(masks[s].sum()), "yield": float(np.sum(w))}
        for i, cut in enumerate(self.cuts):
            row = {"cut": cut.expression()}
            for s, (x, w) in events.items():
                hard = cut.passes(np.asarray(x)) if passes is None else passes[s][i]
                masks[s] &= np.asarray(hard)
                row[s] = {
                    "events": int(masks[s].sum()),
                    "yield": float(np.sum(np.asarray(w)[masks[s]])),
                }
            rows.append(row)
        return rows
