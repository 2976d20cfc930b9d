"""``diffhep optimize``: a black-box search of config keys on the exact objective (Optuna).

Methods: ``bo`` (Optuna's TPE sampler, multivariate), ``gp`` (Optuna's Gaussian-process
sampler; needs PyTorch), ``grid`` (every point of :func:`~diffhep.search.space.grid`, in a
seeded order, queued as fixed trials: Optuna's GridSampler stops the study from inside
``tell``, which the ask-and-tell loop here cannot use) and ``random``.

The study lives in an Optuna storage: by default a journal file ``OUT/study.journal``
(file locks, no database server), or any Optuna storage URL (``sqlite:///...``). Several
processes or machines sharing the storage work on one study (each stops when the study has
``budget`` trials); running the command again resumes it: finished trials are kept, a
trial whose process died is run again (a training trial continues from its checkpoint:
its run directory is named by its values).

Outputs in ``OUT`` (atomic, rewritten after each trial): ``trials.csv`` and ``trials.json``
(every trial: values, validation objective, test objective, state, seconds, worker),
``best.json`` and ``objective.png`` (objective vs evaluations).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..runs.config import ConfigError
from ..writers import write_atomic
from .objective import DIRECTIONS, Objective, TrialFailed, objective_name
from .space import check_space, distributions, grid, load_search_config

__all__ = ["METHODS", "optimize"]

METHODS = ("bo", "gp", "grid", "random")
STUDY_ATTR = "diffhep"


def _sampler(method: str, space, budget: int, seed: int):
    import optuna

    if method in ("grid", "random"):  # grid points are queued by _next_grid_point
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(3, min(10, budget // 3))
    if method == "gp":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ConfigError(
                "--method gp needs PyTorch (Optuna's Gaussian-process sampler)",
                where="--method",
                fix="pip install torch, or use --method bo (TPE, no extra dependency)",
            )
        return optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=startup, deterministic_objective=True
        )
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)


def _storage(spec: str | None, out: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if spec is not None and "://" in spec:
        return spec  # an RDB URL (Optuna's RDBStorage)
    path = Path(spec) if spec is not None else out / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _worker_id() -> str:
    """This process, as recorded on its trials: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _grid_points(space, budget: int, seed: int) -> list[dict]:
    """Every point of the grid, in a seeded order."""
    import itertools

    import numpy as np

    axes = grid(space, budget)
    points = [dict(zip(axes, v, strict=True)) for v in itertools.product(*axes.values())]
    order = np.random.default_rng(seed).permutation(len(points))
    return [points[i] for i in order]


def _queue_grid_point(study, points: list[dict]) -> None:
    """Queue the first grid point no trial has taken (unless a point waits already)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return
    attrs = study.user_attrs
    taken = [t.params for t in trials if not attrs.get(f"interrupted_{t.number}")]
    for p in points:
        if p not in taken:
            study.enqueue_trial(p)
            return


def _alive(worker: str | None) -> bool:
    """Whether a worker (``host:pid``) of this machine still runs (others are assumed to)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(study) -> int:
    """Mark the running trials of dead processes of this machine failed and queue their values
    again; returns how many."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive(t.user_attrs.get("worker")):
            study.set_user_attr(f"interrupted_{t.number}", True)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            n += 1
    return n


def _used(study) -> int:
    """Trials counted against the budget: finished (not interrupted) and running."""
    from optuna.trial import TrialState

    attrs = study.user_attrs
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and not attrs.get(f"interrupted_{t.number}"))
        for t in study.get_trials(deepcopy=False)
    )


def _check_study(study, meta: dict, storage_name: str) -> None:
    old = study.user_attrs.get(STUDY_ATTR)
    if old is None:
        study.set_user_attr(STUDY_ATTR, meta)
        return
    for key in ("params", "objective", "config"):
        if old.get(key) != meta.get(key):
            raise ConfigError(
                f"the study {study.study_name!r} in {storage_name} was started with another "
                f"{'search space' if key == 'params' else key}",
                where="--storage",
                fix="use another --out / --storage or --study-name for a new study, or the "
                "same config and search space to resume",
            )
    # the method: recorded with the study (by an older diffhep: on its trials)
    methods = [t.user_attrs.get("method") for t in study.get_trials(deepcopy=False)]
    method = old.get("method") or next((m for m in methods if m), None)
    if method is not None and method != meta["method"]:
        raise ConfigError(
            f"the study {study.study_name!r} in {storage_name} was run with --method {method}",
            where="--method",
            fix=f"use --method {method} to resume it, or another --out / --storage or "
            "--study-name for a new study",
        )


def optimize(
    config,
    out,
    *,
    method: str = "bo",
    budget: int = 20,
    params: Sequence[str] = (),
    overrides: Sequence[str] = (),
    seed: int | None = None,
    storage: str | None = None,
    study_name: str = "diffhep",
    report: Callable[[str], None] | None = None,
) -> dict:
    """Search the config's ``search.params`` (and ``--param`` ``params``) with ``method``
    until the study has ``budget`` trials; returns ``best.json``'s content.

    Raises:
        ConfigError: A bad config, search space, method or storage (exit 2).
        TrialFailed: No trial succeeded (exit 1).
    """
    import optuna

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}", where="--method", fix=f"use {METHODS}")
    if budget < 1:
        raise ConfigError(f"--budget {budget}: must be >= 1", where="--budget")
    out = Path(out)
    cfg = load_search_config(config, overrides, params)
    space = check_space(config, overrides, cfg)
    name = objective_name(cfg)
    direction = DIRECTIONS[name]
    if method == "grid":
        budget = min(budget, math.prod(len(v) for v in grid(space, budget).values()))
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = _storage(storage, out)
    study = optuna.create_study(
        storage=store, study_name=study_name, direction=direction, load_if_exists=True
    )
    base = cfg.model_copy(update={"search": type(cfg.search)()}).to_yaml()
    meta = {
        "params": [p.model_dump(by_alias=True) for p in space],
        "objective": name,
        "config": base,
        "method": method,
    }
    _check_study(study, meta, storage or str(out / "study.journal"))
    _recover(study)
    seed = cfg.seed if seed is None else seed
    study.sampler = _sampler(method, space, budget, seed + len(study.trials))
    points = _grid_points(space, budget, seed) if method == "grid" else None
    objective = Objective(config, overrides, cfg, out)
    dists = distributions(space)
    worker = _worker_id()
    while _used(study) < budget:
        if points is not None:
            _queue_grid_point(study, points)
        trial = study.ask(dists)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("method", method)
        t0 = time.perf_counter()
        try:
            res = objective(dict(trial.params))
        except TrialFailed as exc:
            trial.set_user_attr("error", str(exc))
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if report:
                report(f"trial {trial.number}: failed ({exc})")
        else:
            for k, v in res.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            study.tell(trial, res["value"])
            if report:
                report(f"trial {trial.number}: {name} = {res['value']:.6g}  {trial.params}")
        _write_tables(_rows(study), out)
    return _write_outputs(study, out, name, direction, method)


def _rows(study) -> list[dict]:
    rows = []
    attrs = study.user_attrs
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if attrs.get(f"interrupted_{t.number}"):
            state = "interrupted"
        u = t.user_attrs
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "value": t.value,
                "test": u.get("test"),
                "test_converged": u.get("test_converged"),
                "test_trusted": u.get("test_trusted"),
                **{f"param:{k}": v for k, v in t.params.items()},
                "seconds": u.get("seconds"),
                "method": u.get("method"),
                "worker": u.get("worker"),
                "run": u.get("run"),
                "error": u.get("error"),
            }
        )
    return rows


def _write_tables(rows: list[dict], out: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "trials.csv", buf.getvalue())
    write_atomic(out / "trials.json", json.dumps(rows, indent=1))


def _write_outputs(study, out: Path, name: str, direction: str, method: str) -> dict:
    """The tables, ``best.json`` and ``objective.png``; returns ``best.json``'s content."""
    from ..plotting.search import plot_search_history

    rows = _rows(study)
    _write_tables(rows, out)
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        raise TrialFailed(f"no trial succeeded ({len(rows)} failed); see {out / 'trials.csv'}")
    pick = max if direction == "maximize" else min
    best = pick(done, key=lambda r: r["value"])
    summary = {
        "objective": name,
        "direction": direction,
        "split": "validation (the search); test reported for the best trial",
        "best": {
            "trial": best["trial"],
            "value": best["value"],
            "test": best["test"],
            "test_converged": best["test_converged"],
            "test_trusted": best["test_trusted"],
            "params": {k[6:]: v for k, v in best.items() if k.startswith("param:")},
            "run": best["run"],
        },
        "trials": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
        "method": method,
        "study": study.study_name,
    }
    write_atomic(out / "best.json", json.dumps(summary, indent=1))
    values = [r["value"] if r["state"] == "complete" else math.nan for r in rows]
    plot_search_history(
        {method: values}, out / "objective.png", ylabel=f"{name} (validation)",
        maximize=direction == "maximize",
    )  # fmt: skip
    return summary
