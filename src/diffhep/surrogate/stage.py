"""A black-box stage inside a gradient training: L-GSO for the stage, exact gradients elsewhere.

A stage ``y = F(x; psi)`` (a Python function or a command run on files, never differentiated)
turns input columns ``x`` of every event into output columns ``y`` that feed a differentiable
chain (a network, cuts, binning, a likelihood). Once per epoch, :meth:`Stage.iterate` does one
L-GSO iteration (:mod:`diffhep.surrogate.lgso`, algorithm 1 of arXiv:2002.04632): ``N`` values
``psi_i`` in the trust region ``psi +- epsilon``, ``M`` inputs for each drawn from the training
events, the black box on them, the local history (reused while it is inside the box), the
Gaussian surrogate :class:`~diffhep.surrogate.gaussian.GaussianSurrogate` trained on it and
validated on held-out ``psi_i``. In the same black-box call it simulates every training event
at the current ``psi``: ``y0``.

The chain then sees, for each event, :func:`transported`:

    y(psi) = y0 + S(z*, x; psi) - S(z*, x; psi0),   z* = (y0 - mu(x, psi0)) / sigma(x, psi0)

with ``psi0`` the value the black box ran at and ``z*`` fixed (the noise that reproduces the
event under the surrogate). At ``psi = psi0`` the value is the black box's output exactly, so
the loss and the gradients of every other parameter are those of training on the black box's
events; ``dy/dpsi = dmu/dpsi + z* dsigma/dpsi`` is the surrogate's reparametrised (pathwise)
derivative at the event's own noise, the L-GSO gradient estimate with the black box's draws in
place of fresh ``z``. When ``psi`` moves during the epoch the events follow the surrogate
(first order inside the trust region) until the next epoch re-simulates them.

The black box sees one call per batch of rows: ``x (n, dx)``, ``psi (n, d)`` (a row per event:
the L-GSO samples and the training events in one call), a seed. A function is called as
``f(x, psi, rng, **options) -> y (n, dy)``; a command gets ``{input}`` and ``{output}`` in its
arguments replaced by two ``.npz`` paths: it reads ``x``, ``psi`` and ``seed`` from the first
and writes ``y`` to the second.

Example:
    >>> import numpy as np
    >>> bb = BlackBox(function="diffhep.problems.black_box:focus")
    >>> y = bb(np.zeros((4, 1)), np.full((4, 1), 0.4), seed=0)  # focus: resolution |psi - 0.4|
    >>> y.ravel().tolist()
    [0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import importlib
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DiffhepError
from .gaussian import GaussianSurrogate, make_fit
from .lgso import _History

__all__ = ["BlackBox", "BlackBoxError", "Stage", "StageSettings", "load_function", "transported"]


class BlackBoxError(DiffhepError):
    """The black box failed or returned something unusable (the command line prints the
    message, no traceback)."""


def load_function(spec: str) -> Callable:
    """The function ``module.path:name`` (or ``module.path.name``)."""
    module, sep, name = spec.partition(":")
    if not sep:
        module, _, name = spec.rpartition(".")
    if not module or not name:
        raise BlackBoxError(f"{spec!r} is not 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise BlackBoxError(f"cannot load {spec!r}: {exc}") from None
    if not callable(fn):
        raise BlackBoxError(f"{spec!r} is not callable")
    return fn


@dataclass
class BlackBox:
    """The black box: a ``function`` (``module:name``, called with ``options``) or a
    ``command`` (argument list with ``{input}`` and ``{output}``)."""

    function: str | None = None
    command: Sequence[str] | None = None
    options: dict | None = None
    timeout: float | None = None  # seconds per command call
    outputs: int | None = None  # columns of y expected (checked)

    def __post_init__(self):
        if (self.function is None) == (self.command is None):
            raise BlackBoxError("give either a function or a command")
        self._fn = load_function(self.function) if self.function else None
        self.calls = 0  # rows simulated

    def __call__(self, x, psi, seed: int) -> np.ndarray:
        """``y (n, dy)`` for rows ``x (n, dx)`` and ``psi`` ((n, d) or (d,))."""
        x = np.asarray(x, dtype=np.float64)
        psi = np.atleast_1d(np.asarray(psi, dtype=np.float64))
        if psi.ndim == 1:
            psi = np.broadcast_to(psi, (len(x), psi.size)).copy()
        if self._fn is not None:
            y = self._fn(x, psi, np.random.default_rng(seed), **(self.options or {}))
        else:
            y = self._run(x, psi, seed)
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.shape[0] != len(x) or not np.all(np.isfinite(y)):
            raise BlackBoxError(
                f"the black box returned {y.shape} for {len(x)} rows"
                + ("" if y.shape[0] != len(x) else " with non-finite values")
            )
        if self.outputs is not None and y.shape[1] != self.outputs:
            raise BlackBoxError(f"the black box returned {y.shape[1]} output column(s) where "
                                f"{self.outputs} are expected (the config's outputs)")  # fmt: skip
        self.calls += len(x)
        return y

    def _run(self, x, psi, seed):
        with tempfile.TemporaryDirectory(prefix="diffhep-bb-") as tmp:
            src, dst = Path(tmp) / "input.npz", Path(tmp) / "output.npz"
            np.savez(src, x=x, psi=psi, seed=np.int64(seed))
            argv = [a.replace("{input}", str(src)).replace("{output}", str(dst))
                    for a in self.command]  # fmt: skip
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BlackBoxError(f"the black-box command {argv[0]!r} failed: {exc}") from None
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-5:]
                raise BlackBoxError(f"the black-box command exited with {done.returncode}: "
                                    + " | ".join(tail))  # fmt: skip
            try:
                with np.load(dst) as f:
                    return np.asarray(f["y"])
            except (OSError, KeyError, ValueError) as exc:
                raise BlackBoxError(f"the black-box command wrote no usable {dst.name} "
                                    f"(an array 'y'): {exc}") from None  # fmt: skip


@dataclass(frozen=True)
class StageSettings:
    """L-GSO's knobs for a stage (as :class:`~diffhep.surrogate.lgso.Settings`)."""

    n_psi: int = 16
    m_x: int = 64
    surrogate_steps: int = 200
    surrogate_learning_rate: float = 3e-3
    first_fit: int = 10
    hidden: tuple = (8,)
    capacity: int | None = None  # default 3 N M


def transported(model, x, z, y0, psi, psi0):
    """``y0 + S(z, x; psi) - S(z, x; psi0)``: the black box's outputs ``y0`` (simulated at
    ``psi0``) moved with the surrogate to ``psi``; differentiable in ``psi`` (``z``, ``x``,
    ``y0``, ``psi0`` and the surrogate are constants)."""
    stop = jax.lax.stop_gradient
    model = jax.tree.map(lambda a: stop(a) if eqx.is_array(a) else a, model)
    x, z, y0, psi0 = (stop(jnp.asarray(a)) for a in (x, z, y0, psi0))
    shift = model.sample(z, x, psi) - model.sample(z, x, psi0)
    return y0 + shift.astype(jnp.result_type(y0))


class Stage:
    """L-GSO state of one black-box stage: the history, the surrogate and its optimiser."""

    def __init__(self, black_box: BlackBox, bounds, epsilon, dx: int, dy: int,
                 settings: StageSettings = StageSettings(), seed: int = 0):  # fmt: skip
        self.black_box, self.settings, self.seed = black_box, settings, seed
        self.bounds = np.asarray(bounds, dtype=float).reshape(-1, 2)
        self.eps = np.asarray(epsilon, dtype=float).reshape(-1)
        self.history = _History()
        d = len(self.bounds)
        self.model = GaussianSurrogate.create(dx, d, dy, settings.hidden,
                                              key=jax.random.key(seed))  # fmt: skip
        self._fit, init = make_fit(settings.surrogate_learning_rate, settings.surrogate_steps)
        self._fit_state = init(self.model)
        self._moments = eqx.filter_jit(lambda m, x, p: m.moments(x, p))
        self._nll = eqx.filter_jit(lambda m, x, p, y: m.nll(x, p, y))
        self.iterations = 0

    def clip(self, psi):
        return np.clip(np.asarray(psi, dtype=float), self.bounds[:, 0], self.bounds[:, 1])

    def iterate(self, psi, x_pool, x_events, epoch: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """One L-GSO iteration at ``psi`` (inputs drawn from ``x_pool``) and the black box on
        ``x_events`` at ``psi``: their outputs ``y0``, the surrogate's ``z*`` for them, and the
        iteration's record (surrogate validation included)."""
        s = self.settings
        psi = self.clip(psi)
        rng = np.random.default_rng([self.seed, epoch, 24])
        lo = np.maximum(psi - self.eps, self.bounds[:, 0])
        hi = np.minimum(psi + self.eps, self.bounds[:, 1])
        psis = rng.uniform(lo, hi, size=(s.n_psi, len(psi)))
        rows = rng.integers(0, len(x_pool), size=(s.n_psi, s.m_x))
        xs = x_pool[rows.ravel()]
        x_events = np.asarray(x_events, dtype=float)
        x_all = np.concatenate([xs, x_events])
        psi_all = np.concatenate([np.repeat(psis, s.m_x, axis=0),
                                  np.broadcast_to(psi, (len(x_events), len(psi)))])  # fmt: skip
        y_all = self.black_box(x_all, psi_all, seed=int(rng.integers(2**31)))
        ys, y0 = y_all[: len(xs)], y_all[len(xs) :]
        n_val = max(1, s.n_psi // 4)
        held = []
        for i, p in enumerate(psis):
            sl = slice(i * s.m_x, (i + 1) * s.m_x)
            if i < s.n_psi - n_val:
                self.history.add(p, xs[sl], ys[sl], self.iterations)
            else:
                held.append((p, xs[sl], ys[sl]))
        capacity = s.capacity or 3 * s.n_psi * s.m_x
        lp, lx, ly, mask = self.history.local(psi, self.eps, capacity)
        self.model = self.model.standardised_on(lx, lp, ly, mask)
        for _ in range(s.first_fit if self.iterations == 0 else 1):
            self.model, self._fit_state, train_nll = self._fit(self.model, self._fit_state,
                                                               lx, lp, ly, mask)  # fmt: skip
        for p, x, y in held:
            self.history.add(p, x, y, self.iterations)
        record = {"psi": psi.tolist(), "local_samples": int(mask.sum()),
                  "train_nll": float(train_nll)} | self._validate(held)  # fmt: skip
        mu, sigma = (np.asarray(a, dtype=float) for a in self._moments(self.model, x_events, psi))
        z = (y0 - mu) / sigma
        record["events_z_mean"] = float(np.mean(z))
        record["events_z_std"] = float(np.std(z))
        record["calls"] = self.black_box.calls
        self.iterations += 1
        return y0, z, record

    def _validate(self, held) -> dict:
        """The surrogate on the held-out ``psi_i`` (not in its training): NLL, the pulls of
        the black box's outputs ``(y - mu) / sigma`` (mean 0 and width 1 if it is right), and
        the error of its mean output per ``psi_i`` against the black box's sample mean, in
        units of that mean's standard error (RMS over ``psi_i`` and outputs; ~1 if right)."""
        nll, pulls, errs = [], [], []
        for p, x, y in held:
            nll.append(float(self._nll(self.model, x, p, y)))
            mu, sigma = (np.asarray(a, dtype=float) for a in self._moments(self.model, x, p))
            pulls.append((y - mu) / sigma)
            se = np.maximum(y.std(axis=0, ddof=1), 1e-12) / np.sqrt(len(y))
            errs.append((mu.mean(axis=0) - y.mean(axis=0)) / se)
        pulls = np.concatenate(pulls)
        return {"val_nll": float(np.mean(nll)), "val_pull_mean": float(pulls.mean()),
                "val_pull_std": float(pulls.std()),
                "val_mean_error_se": float(np.sqrt(np.mean(np.square(errs))))}  # fmt: skip
