"""Learned positive event weights: replace each weight by the local mean weight E[w | x].

A weighted loss ``sum_i w_i L(y_i, f(x_i))`` with negative weights is unbounded below (the
network can *raise* the loss of negative-weight events wherever it can tell them apart;
J. Rübenach's talk). Every distribution of the inputs ``x`` is unchanged if each weight is
replaced by ``E[w | x]``: in the talk's example, three events at x = 15 with weights 1, 1, -1
all get 1/3. :func:`fit_mean_weight` learns it with an MLP (:class:`~diffhep.nn.observables.
MLPObservable`, trained by :func:`diffhep.nn.training.train`; Adam with a cosine-decayed
learning rate, the last epoch kept), in one of two formulations:

- ``regression`` (default): least squares ``(g(x) - w)^2``, bounded, whose minimiser is
  ``E[w | x]`` of either sign. Negative predictions are reported
  (:class:`NegativeMeanWeightWarning`, with their fraction) and clipped to ``floor``
  (default 0: those events drop out);
- ``classifier`` (the talk's): every event appears twice, with label 1 and sample weight
  ``w``, and with label 0 and weight 1; the minimiser of the weighted binary cross-entropy has
  ``f / (1 - f) = E[w | x]``, so ``E[w | x] = exp(logit)`` is positive by construction. But
  this loss is itself unbounded below wherever the *sample's* local mean weight is negative
  (the logit runs to -inf), which happens by fluctuation where ``E[w | x]`` is small: on the
  Gaussian toy (20,000 events, 20 bins of x) its chi2 of the reweighted vs original
  histogram reached 62 where the regression's stayed below 33, over 8 seeds.

Predictions are clipped to ``[min w, max w]`` (a mean lies there; a ReLU network
extrapolates linearly beyond the data). :func:`learn_positive_weights` cross-fits (2 folds by
default): each event's ``E[w | x]`` comes from a network that did not see it, so the new
weights cannot follow the event's own weight and the verification pulls
(:mod:`diffhep.weights.verify`) are honest. Targets are divided by ``mean |w|`` (the network
works at unit scale). :func:`resample` is the uncertainty-preserving step of Nachman & Thaler
(arXiv:2007.11586): keep an event with probability ``p = E[w|x]^2 / E[w^2|x]`` and give it
weight ``E[w|x] / p``, so that per-bin sums of w and of w^2 are both preserved in
expectation; ``E[w^2 | x]`` is learned the same way (or known, when all weights have one
magnitude).

Example (the talk's five events):
    >>> import numpy as np
    >>> x = np.array([[15.0], [23.0], [15.0], [15.0], [90.0]])
    >>> w = np.array([1.0, 1.0, 1.0, -1.0, 1.0])
    >>> net = fit_mean_weight(x, w, method="classifier", hidden=(16,), epochs=200,
    ...                       learning_rate=0.05)
    >>> [round(float(v), 2) for v in net(x)]
    [0.33, 1.0, 0.33, 0.33, 1.0]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..nn.observables import MLPObservable
from ..nn.training import train

__all__ = [
    "METHODS",
    "MeanWeightNet",
    "NegativeMeanWeightWarning",
    "Reweighting",
    "cross_fit",
    "fit_mean_weight",
    "learn_positive_weights",
    "predict",
    "predict_mean",
    "resample",
]

METHODS = ("classifier", "regression")
#: Fewest optimiser steps of :func:`fit_mean_weight` by default (small samples get more epochs).
MIN_STEPS = 800


class NegativeMeanWeightWarning(UserWarning):
    """The learned local mean weight is negative for some events (they are clipped)."""


class MeanWeightNet(eqx.Module):
    """A learned local mean ``E[t | x]`` of a per-event quantity ``t`` (``w`` or ``w^2``).

    Attributes:
        net: The MLP (its logit is the output before the link function).
        scale: ``mean |t|`` of the training events (the network learns ``t / scale``).
        method: ``classifier`` (``scale * exp(logit)``) or ``regression`` (``scale * logit``).
        inputs: Columns of ``x`` the network reads (the others are not inputs).
        bounds: ``(min t, max t)`` of the training events: a local mean lies between them,
            so predictions are clipped to this range (a ReLU network extrapolates linearly
            beyond the data, and ``exp`` of it grows without bound).
    """

    net: MLPObservable
    scale: float = eqx.field(static=True)
    method: str = eqx.field(static=True)
    inputs: tuple = eqx.field(static=True)
    bounds: tuple = eqx.field(static=True, default=(-np.inf, np.inf))

    def link(self, logits):
        """``E[t | x] / scale`` from the network's logits."""
        logits = logits.astype(jnp.result_type(float))
        return jnp.exp(logits) if self.method == "classifier" else logits

    def __call__(self, x) -> jax.Array:
        """``E[t | x]`` for events ``x (n, features)`` (all columns; ``inputs`` are used)."""
        x = jnp.asarray(x)[:, jnp.asarray(self.inputs)]
        return jnp.clip(self.scale * self.link(self.net.logits(x)), *self.bounds)


def _loss(net: MeanWeightNet, x, t):
    """Mean loss per event (``x``: the input columns only; ``t``: target / scale): weighted
    BCE of the duplicated events, or squared error."""
    logits = net.net.logits(x).astype(t.dtype)
    if net.method == "classifier":
        # label 1 with weight t, label 0 with weight 1
        return jnp.mean(t * jax.nn.softplus(-logits) + jax.nn.softplus(logits))
    return jnp.mean((logits - t) ** 2)


@eqx.filter_jit
def _predict(net: MeanWeightNet, x):
    return net(x)


def _check(x, t, inputs):
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    t = np.asarray(t, dtype=np.float64)
    if x.ndim != 2 or t.shape != (len(x),) or len(x) == 0:
        raise ValueError(f"need features (n, f) and targets (n,), got {x.shape} and {t.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t))):
        raise ValueError("features and weights must be finite")
    inputs = tuple(range(x.shape[1])) if inputs is None else tuple(int(i) for i in inputs)
    if not inputs or any(i < 0 or i >= x.shape[1] for i in inputs):
        raise ValueError(f"inputs {inputs} are not columns of features with {x.shape[1]} columns")
    return x, t, inputs


def fit_mean_weight(
    x,
    t,
    *,
    method: str = "regression",
    inputs=None,
    hidden=(32, 32),
    epochs: int | None = None,
    batch_size: int = 1024,
    learning_rate: float = 3e-3,
    validation: float = 0.0,
    patience: int | None = None,
    seed: int = 0,
) -> MeanWeightNet:
    """Learn ``E[t | x]`` (``t = w`` for the mean weight, ``w**2`` for :func:`resample`).

    Args:
        x: Features ``(n, f)``.
        t: Per-event targets ``(n,)``, any sign (``classifier`` needs ``E[t | x] > 0``).
        method: ``classifier`` or ``regression`` (see the module docstring).
        inputs: Columns of ``x`` used as inputs (default: all).
        hidden: Widths of the hidden layers (ReLU).
        epochs: Passes over the training events (Adam, learning rate cosine-decayed to 2%);
            default: 60, or more to make at least :data:`MIN_STEPS` steps (on 3,000 events
            of the 2-D toy, 180 steps left the mean |error| of E[w|x] at 0.14, 800 at 0.026).
        batch_size: Events per step.
        learning_rate: Adam's initial learning rate.
        validation: Fraction of the events held out to pick the best epoch (and stop early
            with ``patience``); 0 (default): train on all events and take the last epoch.
            The validation loss of signed weights is noisy: on the Gaussian toy it stopped
            classifier runs after ~12 of 60 epochs, far from converged.
        patience: Stop after this many epochs without a better validation loss.
        seed: Seeds the initial weights, the hold-out and the batches.

    Returns:
        The trained :class:`MeanWeightNet`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    x, t, inputs = _check(x, t, inputs)
    xi = x[:, inputs]
    scale = float(np.mean(np.abs(t)))
    if scale <= 0:
        raise ValueError("all targets are zero")
    tt = (t / scale).astype(np.float32)
    rng = np.random.default_rng([seed, 83])
    perm = rng.permutation(len(x))
    n_val = round(validation * len(x)) if len(x) > 1 else 0
    val, tr = perm[:n_val], perm[n_val:]
    obs = MLPObservable.create(xi[tr], hidden, key=jax.random.key(seed))
    # start at the global mean: exp(b) = mean(t) (classifier), b = mean(t) (regression)
    mean_t = float(np.mean(tt[tr]))
    bias = np.log(mean_t) if method == "classifier" and mean_t > 0 else mean_t
    obs = eqx.tree_at(
        lambda o: o.mlp.layers[-1].bias, obs, jnp.full_like(obs.mlp.layers[-1].bias, bias)
    )
    net = MeanWeightNet(obs, scale, method, inputs, (float(t.min()), float(t.max())))
    x_tr, t_tr = jnp.asarray(xi[tr], jnp.float32), jnp.asarray(tt[tr])
    b = min(batch_size, len(tr))
    steps = max(1, len(tr) // b)
    if epochs is None:
        epochs = max(60, -(-MIN_STEPS // steps))

    def batches(epoch):
        order = np.random.default_rng([seed, 89, epoch]).permutation(len(tr))
        for k in range(steps):
            idx = jnp.asarray(order[k * b : (k + 1) * b])
            yield x_tr[idx], t_tr[idx]

    def loss_fn(params, batch, hyper):
        return _loss(params, *batch), {}

    validate = select = None
    if n_val:
        x_val, t_val = jnp.asarray(xi[val], jnp.float32), jnp.asarray(tt[val])
        val_loss = eqx.filter_jit(_loss)

        def validate(params):
            return {"val_loss": float(val_loss(params, x_val, t_val))}

        select = "val_loss"
    # cosine decay of the learning rate over the run: the late, small steps average the
    # noise of the signed weights instead of following it
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps, alpha=0.02)
    state = train(
        net,
        loss_fn,
        optax.adam(schedule),
        epochs=epochs,
        batches=batches,
        validate=validate,
        select_on=select,
        patience=patience if n_val else None,
        progress=False,
    )
    # without held-out events the last epoch (end of the decay) is taken: the mean training
    # loss of an epoch is too noisy to pick one
    return state.best_params if n_val else state.params


@dataclass
class Reweighting:
    """Result of :func:`learn_positive_weights`.

    Attributes:
        weights: The new weights ``max(E[w | x], floor)`` (or resampled, if requested).
        mean_weight: The learned ``E[w | x]`` of every event before clipping (cross-fitted:
            from the network that did not see the event).
        negative_fraction: Fraction of events with a learned ``E[w | x] < 0``.
        clipped: Number of events whose weight was raised to ``floor``.
        models: The networks of ``E[w | x]``, one per fold (:func:`predict_mean` averages
            them for new events).
        kept: For resampling: which events were kept (the others have weight 0).
        models_w2: The networks of ``E[w^2 | x]`` (resampling with weights of several
            magnitudes; empty if all weights have one magnitude).
    """

    weights: np.ndarray
    mean_weight: np.ndarray
    negative_fraction: float
    clipped: int
    models: tuple
    kept: np.ndarray | None = None
    models_w2: tuple = ()


def predict(net: MeanWeightNet, x, batch: int = 65536) -> np.ndarray:
    """``net(x)`` as float64 numpy, in batches (bounded memory for large samples)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    out = [
        np.asarray(_predict(net, jnp.asarray(x[i : i + batch]))) for i in range(0, len(x), batch)
    ]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def predict_mean(models, x) -> np.ndarray:
    """The mean prediction of several networks (e.g. the folds of a cross-fit) for new
    events."""
    return np.mean([predict(m, x) for m in models], axis=0)


def cross_fit(x, t, *, folds: int = 2, seed: int = 0, **options):
    """Learn ``E[t | x]`` with ``folds``-fold cross-fitting: every event's prediction comes
    from the network trained on the other folds, so it cannot follow the event's own weight
    (with ``folds=1`` one network is trained and evaluated on all events).

    Returns:
        ``(prediction per event, networks)``.
    """
    n = len(t)
    if folds < 1 or folds > n:
        raise ValueError(f"need 1 <= folds <= events, got folds={folds} for {n} events")
    if folds == 1:
        net = fit_mean_weight(x, t, seed=seed, **options)
        return predict(net, x), (net,)
    fold = np.random.default_rng([seed, 101]).permutation(n) % folds
    pred, nets = np.zeros(n), []
    for k in range(folds):
        net = fit_mean_weight(x[fold != k], t[fold != k], seed=seed + k, **options)
        pred[fold == k] = predict(net, x[fold == k])
        nets.append(net)
    return pred, tuple(nets)


def resample(mean_w, mean_w2, seed: int = 0):
    """Nachman-Thaler resampling: keep an event with ``p = E[w]^2 / E[w^2]`` (clipped to
    (0, 1]) and weight it ``E[w] / p``; dropped events get weight 0.

    Per event, ``E[new] = E[w | x]`` and ``E[new^2] = E[w^2 | x]``, so every bin's sum w and
    sum w^2 are preserved in expectation. Requires ``mean_w >= 0``.

    Returns:
        ``(weights, kept)``.

    Example:
        >>> w, kept = resample(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
        >>> float(w[1]), bool(kept[1]), float(w[0]) in (0.0, 2.0)  # p = 0.25 and 1
        (1.0, True, True)
    """
    m = np.asarray(mean_w, dtype=np.float64)
    m2 = np.asarray(mean_w2, dtype=np.float64)
    if np.any(m < 0):
        raise ValueError("resampling needs non-negative mean weights (clip them first)")
    p = np.clip(np.where(m2 > 0, m**2 / np.where(m2 > 0, m2, 1.0), 1.0), 1e-12, 1.0)
    kept = np.random.default_rng([seed, 97]).uniform(size=m.shape) < p
    return np.where(kept, m / p, 0.0), kept


def learn_positive_weights(
    x,
    w,
    *,
    method: str = "regression",
    inputs=None,
    floor: float = 0.0,
    folds: int = 2,
    resampling: bool = False,
    seed: int = 0,
    **fit_options,
) -> Reweighting:
    """Learn ``E[w | x]`` (cross-fitted, :func:`cross_fit`) and return the new weights,
    clipped at ``floor`` and optionally resampled. Warns (:class:`NegativeMeanWeightWarning`)
    if the learned ``E[w | x] < floor`` anywhere.

    ``fit_options`` go to :func:`fit_mean_weight` (``hidden``, ``epochs``, ...).
    """
    x, w, inputs = _check(x, w, inputs)
    opts = dict(method=method, inputs=inputs, **fit_options)
    mean_w, nets = cross_fit(x, w, folds=folds, seed=seed, **opts)
    low = mean_w < floor
    neg_frac = float(np.mean(mean_w < 0))
    if low.any():
        warnings.warn(
            f"learned E[w|x] < {floor:g} for {int(low.sum())} of {len(w)} events "
            f"({100 * np.mean(low):.2f}%; negative: {100 * neg_frac:.2f}%, sum of their "
            f"learned weights {float(mean_w[low].sum()):.4g} = "
            f"{100 * float(mean_w[low].sum() / mean_w.sum()):.2f}% of the total); clipped to "
            f"{floor:g}: histograms in those regions gain that yield",
            NegativeMeanWeightWarning,
            stacklevel=2,
        )
    new = np.maximum(mean_w, floor)
    out = Reweighting(new, mean_w, neg_frac, int(low.sum()), nets)
    if resampling:
        mag = np.abs(w)
        if np.allclose(mag, mag[0], rtol=1e-12, atol=0.0):
            mean_w2 = np.full(len(w), mag[0] ** 2)  # one magnitude: E[w^2 | x] is known
        else:
            mean_w2, out.models_w2 = cross_fit(x, w**2, folds=folds, seed=seed + 7919, **opts)
        out.weights, out.kept = resample(new, mean_w2, seed)
    return out
