"""Training with jointly learned weights: the analysis's parameters and the weight networks
(:class:`diffhep.weights.joint.JointWeights`) in one optax loop.

The trained state is :class:`WithWeights` (the analysis's :class:`~diffhep.analysis.pipeline.
Params` and the weight networks); the loss is the analysis loss on the batch with the
learned weights (stop-gradient) plus the weight networks' regression loss; the optimiser
steps the two parts separately (the analysis's optimiser, Adam at the weights' learning
rate). Validation, the saved model and the evaluation see the analysis part only. The
summary's ``training_weights.joint_report`` verifies the final learned weights on the
training split against the signed ones (:func:`diffhep.weights.verify.verify`).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax

from ..types import Events
from ..weights.joint import JointWeights
from ..weights.verify import verify
from .config import Config

__all__ = [
    "WithWeights",
    "analysis_params",
    "create",
    "joint_loss",
    "joint_optimizer",
    "options",
    "report",
]


class WithWeights(eqx.Module):
    """The analysis's parameters and the jointly trained weight networks."""

    analysis: Any
    weights: JointWeights


def analysis_params(params):
    """The analysis's parameters of a training state (itself without joint weights)."""
    return params.analysis if isinstance(params, WithWeights) else params


def options(cfg: Config):
    """The ``weights`` options of the jointly weighted samples (one set: the first's)."""
    return next(s.weights for s in cfg.analysis.samples if s.joint)


def create(cfg: Config, params, train: dict, names) -> WithWeights:
    """The initial state: ``params`` and weight networks for the event sets ``names``."""
    nets = JointWeights.create(
        train, names, hidden=tuple(options(cfg).hidden), key=jax.random.key(cfg.seed + 7919)
    )
    return WithWeights(params, nets)


def joint_loss(analysis_loss):
    """``(WithWeights, batch, hyper) -> (loss, aux)`` from the analysis's loss function: the
    analysis loss on the learned weights (no gradient into the weight networks) plus the
    regression loss (aux ``weight_regression``)."""

    def loss(params, batch, hyper):
        total, values = analysis_loss(params.analysis, params.weights.apply(batch), hyper)
        reg = params.weights.regression_loss(batch)
        return total + reg, {**values, "weight_regression": reg}

    return loss


def joint_optimizer(analysis_optimizer, learning_rate: float) -> optax.GradientTransformation:
    """The analysis's optimiser on ``.analysis``, Adam at ``learning_rate`` on ``.weights``."""
    weights_optimizer = optax.adam(learning_rate)

    def init(p):
        return (analysis_optimizer.init(p.analysis), weights_optimizer.init(p.weights))

    def update(g, state, p=None):
        ua, sa = analysis_optimizer.update(g.analysis, state[0], None if p is None else p.analysis)
        uw, sw = weights_optimizer.update(g.weights, state[1], None if p is None else p.weights)
        return WithWeights(ua, uw), (sa, sw)

    return optax.GradientTransformation(init, update)


def report(params: WithWeights, train: dict, features) -> dict:
    """Per jointly weighted event set: the learned weights (cross-fitted, clipped at 0,
    before normalisation) on the training split against the signed ones: sum ratio,
    negative fraction of the unclipped ``E[w | x]`` and :func:`verify`'s pulls and chi2/ndf
    per feature."""
    out = {}
    for name in params.weights.nets:
        ev = train[name]
        x, w = np.asarray(ev.x), np.asarray(ev.w, np.float64)
        learned = np.asarray(eqx.filter_jit(params.weights.mean_weights)(name, Events(x, w)))
        v = verify(x, w, learned, names=list(features), inputs=range(x.shape[1]))
        out[name] = {
            "sum_ratio": float(learned.sum() / w.sum()),
            "zero_fraction": float(np.mean(learned <= 0)),
            "verification": v,
        }
    return out
