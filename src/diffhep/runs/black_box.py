"""Training with a black-box stage (config section ``black_box``): its parameters psi stepped by
L-GSO's surrogate gradient in the same optax loop as the analysis's exact gradients.

The trained state is :class:`WithBlackBox` (the analysis's :class:`~diffhep.analysis.pipeline.
Params` and ``psi``). Per epoch, :meth:`StageRun.epoch_events` runs one L-GSO iteration
(:meth:`diffhep.surrogate.stage.Stage.iterate`) and the black box on every training event of the
staged event sets at the current psi; the events carry the black box's inputs and the
surrogate's noise ``z*`` in extra columns, and the surrogate rides in the batch (key
:data:`KEY`), so nothing recompiles. The loss (:meth:`StageRun.loss`) replaces the output
columns with :func:`~diffhep.surrogate.stage.transported` -- the black box's values, with the
surrogate's derivative in psi -- and passes the plain events to the analysis's loss, so the
network, cuts and binning get the gradients of the black box's events. Validation runs the black
box on the validation split at the epoch's psi (same random numbers every epoch) and records
``psi_<name>`` and the surrogate's validation (``bb_*``); the evaluation runs it at the best
epoch's psi on the splits. A resumed run continues from the checkpoint's psi; its surrogate
starts from fresh samples (its numbers then differ from an uninterrupted run's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..nn.training import read_checkpoint_meta
from ..surrogate.stage import BlackBox, BlackBoxError, Stage, StageSettings, load_function
from ..surrogate.stage import transported as _transported
from ..types import Events
from ..writers import write_atomic
from .config import Config, ConfigError

__all__ = ["KEY", "STATE_FILE", "StageRun", "WithBlackBox", "analysis_params", "restore_parts"]

KEY = "__black_box__"  # the batch entry holding the surrogate and psi0
STATE_FILE = "black_box.json"  # the run's best psi and L-GSO summary
_VALIDATION_SEED = 7_777_777  # the validation split's black-box draws (the same every epoch)


class WithBlackBox(eqx.Module):
    """The analysis's parameters and the black-box stage's parameters ``psi``."""

    analysis: Any
    psi: jax.Array


def analysis_params(params):
    """The analysis's parameters of a training state."""
    return params.analysis if isinstance(params, WithBlackBox) else params


class StageRun:
    """The black-box stage of one training run."""

    def __init__(self, cfg: Config, features, parts: dict, file=None):
        b = cfg.black_box
        self.features = tuple(features)
        self.nf = len(self.features)
        where = "black_box"
        for key in ("inputs", "outputs"):
            for f in getattr(b, key):
                if f not in self.features:
                    fix = f"use features of the data: {', '.join(features)}"
                    raise ConfigError(f"black-box {key[:-1]} {f!r} is not a feature", file=file,
                                      where=f"{where}.{key}", fix=fix)  # fmt: skip
        sets = list(parts["train"])
        self.sets = tuple(b.event_sets) if b.event_sets is not None else tuple(sets)
        unknown = [n for n in self.sets if n not in sets]
        if unknown:
            fix = f"use {', '.join(sets)}"
            raise ConfigError(f"unknown event set(s) {', '.join(unknown)}", file=file,
                              where=f"{where}.event_sets", fix=fix)  # fmt: skip
        self.in_idx = np.array([self.features.index(f) for f in b.inputs])
        self.out_idx = np.array([self.features.index(f) for f in b.outputs])
        self.names = [p.name for p in b.params]
        self.lo = np.array([p.low for p in b.params])
        self.hi = np.array([p.high for p in b.params])
        eps = [p.epsilon or (p.high - p.low) / 10 for p in b.params]
        try:
            box = BlackBox(function=b.function, command=b.command, options=dict(b.options),
                           timeout=b.timeout, outputs=len(b.outputs))  # fmt: skip
            self.cost = load_function(b.cost) if b.cost else None
        except BlackBoxError as exc:
            raise ConfigError(str(exc), file=file, where=where) from None
        settings = StageSettings(n_psi=b.n_psi, m_x=b.m_x, surrogate_steps=b.surrogate_steps,
                                 surrogate_learning_rate=b.surrogate_learning_rate,
                                 first_fit=b.first_fit, hidden=tuple(b.hidden),
                                 capacity=b.capacity)  # fmt: skip
        self.stage = Stage(box, np.stack([self.lo, self.hi], axis=1), eps, len(self.in_idx),
                           len(self.out_idx), settings, seed=cfg.seed)  # fmt: skip
        self.learning_rate = b.learning_rate
        self.psi = np.array([p.init for p in b.params], dtype=float)
        self.seed = cfg.seed
        self.record: dict = {}
        self.extra = None

    # ---------------------------------------------------------------- the training state
    def create(self, params) -> WithBlackBox:
        return WithBlackBox(params, jnp.asarray(self.psi))

    def resume_from(self, run_dir, resume: bool) -> None:
        """Start from the psi of the run's checkpoint (its last epoch's ``psi_<name>``)."""
        if not (resume and (run_dir / "checkpoint.json").is_file()):
            return
        history = read_checkpoint_meta(run_dir)["history"]
        if history and all(f"psi_{n}" in history[-1] for n in self.names):
            self.psi = np.array([history[-1][f"psi_{n}"] for n in self.names], dtype=float)

    def optimizer(self, analysis_optimizer) -> optax.GradientTransformation:
        """The analysis's optimiser on ``.analysis``; Adam on ``psi``, kept in its bounds."""
        psi_optimizer = optax.adam(self.learning_rate)
        lo, hi = jnp.asarray(self.lo), jnp.asarray(self.hi)

        def init(p):
            return (analysis_optimizer.init(p.analysis), psi_optimizer.init(p.psi))

        def update(g, state, p=None):
            ua, sa = analysis_optimizer.update(g.analysis, state[0],
                                               None if p is None else p.analysis)  # fmt: skip
            up, sp = psi_optimizer.update(g.psi, state[1], None if p is None else p.psi)
            if p is not None:
                up = jnp.clip(p.psi + up, lo, hi) - p.psi
            return WithBlackBox(ua, up), (sa, sp)

        return optax.GradientTransformation(init, update)

    # ---------------------------------------------------------------- per epoch
    def _inputs(self, events) -> np.ndarray:
        return np.concatenate([np.asarray(events[n].x)[:, self.in_idx] for n in self.sets])

    def epoch_events(self, train: dict, epoch: int) -> dict:
        """One L-GSO iteration at the current psi and the training events for the epoch:
        outputs from the black box at psi, the inputs and ``z*`` as extra columns."""
        x_in = self._inputs(train)
        y0, z, self.record = self.stage.iterate(self.psi, x_in, x_in, epoch)
        self.extra = {"model": self.stage.model, "psi0": jnp.asarray(self.psi)}
        out, start = dict(train), 0
        for n in self.sets:
            x = np.asarray(train[n].x)
            sl = slice(start, start + len(x))
            start += len(x)
            feats = x.copy()
            feats[:, self.out_idx] = y0[sl]
            out[n] = Events(np.concatenate([feats, x_in[sl], z[sl]], axis=1).astype(x.dtype),
                            train[n].w)  # fmt: skip
        return out

    def batch(self, batch: dict) -> dict:
        return {**batch, KEY: self.extra}

    def loss(self, analysis_loss):
        """``(WithBlackBox, batch, hyper) -> (loss, aux)``: the analysis's loss on the events
        with the stage's outputs (values of the black box, derivative of the surrogate in psi),
        plus the cost term (aux ``black_box_cost``)."""
        nf, dx, out_idx = self.nf, len(self.in_idx), jnp.asarray(self.out_idx)
        sets, cost, lo, hi = self.sets, self.cost, self.lo, self.hi

        def loss(params, batch, hyper):
            extra = batch[KEY]
            psi = jnp.clip(params.psi, lo, hi)
            events = {}
            for n, ev in batch.items():
                if n == KEY:
                    continue
                if n in sets:
                    feats, x_in, z = ev.x[:, :nf], ev.x[:, nf : nf + dx], ev.x[:, nf + dx :]
                    y = _transported(extra["model"], x_in, z, feats[:, out_idx], psi,
                                     extra["psi0"])  # fmt: skip
                    ev = Events(feats.at[:, out_idx].set(y.astype(feats.dtype)), ev.w)
                events[n] = ev
            total, values = analysis_loss(params.analysis, events, hyper)
            if cost is not None:
                c = cost(psi)
                total, values = total + c, {**values, "black_box_cost": c}
            return total, values

        return loss

    # ---------------------------------------------------------------- evaluation
    def simulate(self, events: dict, psi, seed: int) -> dict:
        """``events`` with the staged sets' outputs from the black box at ``psi`` (no
        surrogate: what validation and the evaluation see)."""
        psi = np.clip(np.asarray(psi, dtype=float), self.lo, self.hi)
        x_in = self._inputs(events)
        y = self.stage.black_box(x_in, psi, seed=seed)
        out, start = dict(events), 0
        for n in self.sets:
            x = np.array(events[n].x)
            x[:, self.out_idx] = y[start : start + len(x)]
            start += len(x)
            out[n] = Events(x, events[n].w)
        return out

    def validation(self, params, events: dict) -> tuple[dict, dict]:
        """The validation events at the params' psi (which the next epoch starts from) and the
        epoch's record: ``psi_<name>``, the surrogate's validation (``bb_*``)."""
        self.psi = np.clip(np.asarray(params.psi, dtype=float), self.lo, self.hi)
        rec = {f"psi_{n}": float(v) for n, v in zip(self.names, self.psi, strict=True)}
        rec |= {f"bb_{k}": v for k, v in self.record.items() if k != "psi"}
        return self.simulate(events, self.psi, _VALIDATION_SEED), rec

    def test_events(self, events: dict) -> dict:
        """The test split at the current psi (``track_test``)."""
        return self.simulate(events, self.psi, self.seed * 1000 + 13)

    def splits(self, parts: dict, psi) -> dict:
        """``parts`` with the train, validation and test splits through the black box at
        ``psi`` (fixed random numbers: the same events whenever this is called)."""
        out = dict(parts)
        for i, k in enumerate(("train", "validation", "test")):
            seed = _VALIDATION_SEED if k == "validation" else self.seed * 1000 + 11 + i
            out[k] = self.simulate(parts[k], psi, seed)
        return out

    def finish_parts(self, parts: dict, best, run_dir) -> dict:
        """The splits at the best epoch's psi, and ``parts["black_box"]`` for the summary;
        the psi is also written to ``black_box.json`` (for ``diffhep evaluate``)."""
        psi = np.clip(np.asarray(best.psi, dtype=float), self.lo, self.hi)
        out = self.splits(parts, psi)
        out["black_box"] = {
            "psi": {n: float(v) for n, v in zip(self.names, psi, strict=True)},
            "calls": int(self.stage.black_box.calls),
            "lgso_iterations": self.stage.iterations,
            "last_iteration": {k: v for k, v in self.record.items()},
        }
        write_atomic(Path(run_dir) / STATE_FILE, json.dumps(out["black_box"], indent=1))
        return out


def restore_parts(cfg: Config, features, parts: dict, run_dir, file=None) -> dict:
    """The splits of a saved run with a stage, through the black box at its saved psi (the
    events its evaluation saw)."""
    path = Path(run_dir) / STATE_FILE
    try:
        saved = json.loads(path.read_text())["psi"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"the run's black-box state is unreadable: {exc}", file=str(path),
                          fix="retrain: diffhep train CONFIG --out DIR") from None  # fmt: skip
    run = StageRun(cfg, features, parts, file)
    out = run.splits(parts, [saved[n] for n in run.names])
    out["black_box"] = json.loads(path.read_text())
    return out
