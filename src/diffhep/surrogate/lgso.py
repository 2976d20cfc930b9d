"""Local Generative Surrogate Optimisation (L-GSO, Shirobokov et al., arXiv:2002.04632).

Minimise ``E_x[R(F(x; psi), x)] + C(psi)`` over parameters ``psi`` of a black box ``F`` (a
simulator, a selection, a reconstruction step: any Python callable on NumPy arrays, never
differentiated) with the algorithm 1 of the paper:

1. sample ``N`` values ``psi_i`` uniformly in the trust region, the box ``psi +- epsilon``
   (inside ``bounds``), and ``M`` inputs ``x ~ q(x)`` for each; run the black box;
2. keep every sample in the history; the local history is the samples whose ``psi_l`` lies
   in the current box (reuse: earlier iterations' samples count while they are near);
3. train the generative surrogate ``S(z, x; psi)`` on the local history (warm-started;
   :class:`~diffhep.surrogate.gaussian.GaussianSurrogate`);
4. with its weights fixed, ``grad_psi = mean_k dR/dy dS(z_k, x_k; psi)/dpsi + dC/dpsi``
   over ``K`` fresh ``(z_k, x_k)``, and an Adam step on ``psi`` (clipped to ``bounds``);
5. stop when ``psi`` moved less than ``tolerance`` (in units of ``epsilon``) over the last
   ``window`` iterations (after at least ``2 window``), or after ``max_iterations``; the
   answer is the mean of the last ``window`` iterates (the steps of a noisy gradient
   scatter around the optimum).

The surrogate is validated where it is used: in each iteration the samples of a quarter of
the new ``psi_i`` are held out of its training (they join the history afterwards); its
held-out NLL and the error of its mean risk at those ``psi_i`` against the black box's (with
the black box's Monte-Carlo standard error for scale) are in every iteration's record.

Example (a black box that smears x by psi; risk (y - x)^2, cost 0.25 / psi; optimum 0.5):
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> def smear(x, psi, rng):
    ...     return x + psi[0] * rng.normal(size=x.shape)
    >>> res = lgso(smear, lambda rng, n: rng.normal(size=(n, 1)),
    ...            lambda y, x: jnp.sum((y - x) ** 2, axis=1), [1.5],
    ...            cost=lambda p: 0.25 / p[0], bounds=[(0.05, 3.0)],
    ...            settings=Settings(max_iterations=3, surrogate_steps=20))
    >>> len(res.records), res.calls
    (3, 3074)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .bernoulli import BernoulliSurrogate, Columns
from .gaussian import GaussianSurrogate, make_fit

__all__ = ["Result", "Settings", "lgso", "surrogate_gradient"]


@dataclass(frozen=True)
class Settings:
    """L-GSO's knobs (the paper's names: ``N``, ``M``, ``K``, ``epsilon``)."""

    n_psi: int = 16  # N: psi values per iteration
    m_x: int = 64  # M: inputs per psi value
    k_x: int = 4096  # K: surrogate samples per gradient
    epsilon: float | Sequence[float] = 0.3  # trust region half-width, per psi dimension
    learning_rate: float = 0.05  # Adam on psi
    max_iterations: int = 60
    window: int = 5
    tolerance: float = 0.5  # net move over `window` iterations, in units of epsilon
    surrogate_steps: int = 200  # Adam steps per iteration (warm-started)
    surrogate_learning_rate: float = 3e-3
    first_fit: int = 10  # the first surrogate gets this many times surrogate_steps
    hidden: tuple = (8,)  # small: a wider net fits the noise of each psi_i (bad slopes)
    capacity: int | None = None  # local samples used at most (default 3 N M; the newest)
    seed: int = 0
    # "gaussian" (continuous outputs) or "bernoulli" (0/1 outputs: a selection's pass/fail)
    surrogate: str = "gaussian"
    columns: tuple | None = None  # the columns of x the surrogate sees (default: all)


@dataclass
class Result:
    """What L-GSO found: ``psi`` (the mean of the last ``window`` iterates), whether it
    converged, the path, one record per iteration and the black-box calls (events)."""

    psi: np.ndarray
    converged: bool
    path: np.ndarray
    records: list[dict] = field(default_factory=list)
    calls: int = 0
    surrogate: GaussianSurrogate | None = None


class _History:
    """Every black-box sample: ``(psi, x, y)`` rows, and the iteration that made them."""

    def __init__(self):
        self.psi, self.x, self.y, self.it = [], [], [], []

    def add(self, psi, x, y, it):
        self.psi.append(np.broadcast_to(psi, (len(x), len(psi))))
        self.x.append(x)
        self.y.append(y)
        self.it.append(np.full(len(x), it))

    def local(self, centre, eps, capacity):
        """The samples in the box ``centre +- eps``, newest first, at most ``capacity``,
        padded to ``capacity`` with a mask."""
        psi, x, y = (np.concatenate(a) for a in (self.psi, self.x, self.y))
        it = np.concatenate(self.it)
        inside = np.all(np.abs(psi - centre) <= eps * (1 + 1e-9), axis=1)
        idx = np.flatnonzero(inside)
        idx = idx[np.argsort(-it[idx], kind="stable")][:capacity]
        mask = np.zeros(capacity)
        mask[: len(idx)] = 1.0
        pad = capacity - len(idx)

        def take(a):
            a = a[idx]
            return np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a

        return take(psi), take(x), take(y), mask


def _value_and_grad(model, risk, psi, x, z, cost):
    def objective(p):
        value = jnp.mean(risk(model.sample(z, x, p), x))
        return value + (cost(p) if cost is not None else 0.0)

    return jax.value_and_grad(objective)(psi)


# Compiled once per process for each (surrogate structure, risk, cost, shapes): the functions
# are arguments, static for eqx.filter_jit (hashed: module-level functions by identity,
# equinox Modules and jax.tree_util.Partial by their fields), so a second lgso() call on the
# same problem reuses the compiled code (a closure or lambda made per call recompiles).
_gradient = eqx.filter_jit(_value_and_grad)


@eqx.filter_jit
def _nll(model, x, psi, y):
    return model.nll(x, psi, y)


@eqx.filter_jit
def _risk_mean(model, risk, z, x, psi):
    return jnp.mean(risk(model.sample(z, x, psi), x))


@eqx.filter_jit
def _risk(risk, y, x):
    return risk(y, x)


def surrogate_gradient(model, risk, psi, x, z, cost=None):
    """The surrogate's estimate of the objective and of its gradient in ``psi``:
    ``mean_k R(S(z_k, x_k; psi), x_k) + C(psi)`` and its ``jax.grad`` (fixed ``z``, ``x``)."""
    value, grad = _value_and_grad(model, risk, jnp.asarray(psi, dtype=float), x, z, cost)
    return float(value), np.asarray(grad, dtype=float)


def _clip(psi, bounds):
    if bounds is None:
        return psi
    lo, hi = np.asarray(bounds, dtype=float).T
    return np.clip(psi, lo, hi)


def lgso(
    simulate: Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray],
    sample_x: Callable[[np.random.Generator, int], np.ndarray],
    risk: Callable,
    psi0: Sequence[float],
    *,
    cost: Callable | None = None,
    bounds: Sequence[tuple[float, float]] | None = None,
    settings: Settings = Settings(),
    callback: Callable[[dict], None] | None = None,
) -> Result:
    """Minimise ``E[risk(simulate(x, psi), x)] + cost(psi)`` over ``psi`` with L-GSO.

    Args:
        simulate: The black box ``(x (n, dx), psi (d,), rng) -> y (n, dy)`` (NumPy).
        sample_x: ``(rng, n) -> x (n, dx)``, the input distribution ``q(x)``.
        risk: ``(y, x) -> (n,)`` per-sample risk, in JAX (differentiable in ``y``), or one
            number for the batch (e.g. a significance of summed yields: the objective is
            then ``R`` of the batch, not a mean over samples).
        psi0: The starting parameters.
        cost: ``psi -> scalar``, a known differentiable term in ``psi`` (JAX), or None.
        bounds: ``[(low, high)]`` per parameter: the trust region and the steps stay inside.
        settings: :class:`Settings`.
        callback: Called with each iteration's record.

    The compiled surrogate code is shared by every call with equal ``risk`` and ``cost``
    (for ``eqx.filter_jit``: the same module-level function, or equal ``equinox.Module`` /
    ``jax.tree_util.Partial`` instances; arrays in them are arguments, not constants) and
    equal shapes; a lambda or closure made per call compiles anew (tens of CPU seconds).
    """
    s = settings
    rng = np.random.default_rng(s.seed)
    psi = _clip(np.asarray(psi0, dtype=float), bounds)
    d = psi.size
    eps = np.broadcast_to(np.asarray(s.epsilon, dtype=float), (d,)).copy()
    capacity = s.capacity or 3 * s.n_psi * s.m_x
    x_probe = np.asarray(sample_x(rng, 2))
    y_probe = np.asarray(simulate(x_probe, psi, rng))
    kinds = {"gaussian": GaussianSurrogate, "bernoulli": BernoulliSurrogate}
    if s.surrogate not in kinds:
        raise ValueError(f"surrogate {s.surrogate!r}: use one of {', '.join(kinds)}")
    dx = x_probe.shape[1] if s.columns is None else len(s.columns)
    model = kinds[s.surrogate].create(dx, d, y_probe.shape[1], s.hidden,
                                      key=jax.random.key(s.seed))  # fmt: skip
    if s.columns is not None:
        model = Columns(model, tuple(s.columns))
    fit, init = make_fit(s.surrogate_learning_rate, s.surrogate_steps)
    fit_state = init(model)
    opt = optax.adam(s.learning_rate)
    opt_state = opt.init(jnp.asarray(psi))
    history, path, records = _History(), [psi.copy()], []
    calls, converged = 2, False
    n_val = max(1, s.n_psi // 4)
    for it in range(s.max_iterations):
        box_lo, box_hi = psi - eps, psi + eps
        if bounds is not None:
            lo, hi = np.asarray(bounds, dtype=float).T
            box_lo, box_hi = np.maximum(box_lo, lo), np.minimum(box_hi, hi)
        psis = rng.uniform(box_lo, box_hi, size=(s.n_psi, d))
        held = []
        for i, p in enumerate(psis):
            x = np.asarray(sample_x(rng, s.m_x))
            y = np.asarray(simulate(x, p, rng), dtype=float).reshape(len(x), -1)
            calls += len(x)
            if i < s.n_psi - n_val:
                history.add(p, x, y, it)
            else:
                held.append((p, x, y))
        lp, lx, ly, mask = history.local(psi, eps, capacity)
        model = model.standardised_on(lx, lp, ly, mask)
        for _ in range(s.first_fit if it == 0 else 1):  # from scratch: train longer
            model, fit_state, train_nll = fit(model, fit_state, lx, lp, ly, mask)
        record = {"iteration": it, "psi": psi.tolist(), "local_samples": int(mask.sum()),
                  "train_nll": float(train_nll)}  # fmt: skip
        record |= _validate(model, risk, held, rng)
        for p, x, y in held:
            history.add(p, x, y, it)
        xk = np.asarray(sample_x(rng, s.k_x))
        zk = rng.normal(size=(s.k_x, ly.shape[1]))
        value, grad = _gradient(model, risk, jnp.asarray(psi), xk, zk, cost)
        value, grad = float(value), np.asarray(grad, dtype=float)
        updates, opt_state = opt.update(jnp.asarray(grad), opt_state)
        psi = _clip(np.asarray(optax.apply_updates(jnp.asarray(psi), updates)), bounds)
        path.append(psi.copy())
        record |= {"objective_surrogate": value, "gradient": grad.tolist(), "calls": calls}
        records.append(record)
        if callback is not None:
            callback(record)
        if len(path) > 2 * s.window:
            moved = np.abs(path[-1] - path[-1 - s.window]) / eps
            if np.all(moved < s.tolerance):
                converged = True
                break
    final = np.mean(path[-s.window :], axis=0)
    return Result(final, converged, np.asarray(path), records, calls, model)


def _validate(model, risk, held, rng) -> dict:
    """The surrogate on the held-out samples: NLL, and its mean risk at each held-out psi
    against the black box's (RMS error, and the black box's Monte-Carlo standard error)."""
    if not held:
        return {}
    nll, errors, ses = [], [], []
    for p, x, y in held:
        nll.append(float(_nll(model, x, p, y)))
        z = rng.normal(size=y.shape)
        surrogate = float(_risk_mean(model, risk, z, x, p))
        per = np.asarray(_risk(risk, y, x))
        errors.append(surrogate - float(per.mean()))
        if per.ndim:  # a batch-level risk (one number) has no per-sample spread
            ses.append(float(per.std(ddof=1) / np.sqrt(len(per))))
    return {
        "val_nll": float(np.mean(nll)),
        "val_risk_error": float(np.sqrt(np.mean(np.square(errors)))),
        "val_risk_se": float(np.sqrt(np.mean(np.square(ses)))) if ses else None,
    }
