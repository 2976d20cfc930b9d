"""``diffhep study black-box``: gradients, L-GSO and black-box searches on exact objectives.

Problem 1 (config ``data/black_box_cuts.yaml``): two cut thresholds of the 2-D cut toy, one
counting bin, the **exact** validation Z0 (hard cuts, exact fit). Methods: grid, random and
Bayesian optimisation (TPE) with ``diffhep optimize``'s machinery, and gradient training
through relaxed cuts (``train_run``; one exact validation evaluation per epoch). The true
optimum comes from a dense grid of the same exact objective.

L-GSO treats the hard selection as a black box with a Bernoulli surrogate
(:mod:`diffhep.studies.black_box_cuts`).

Problem 1b (:mod:`diffhep.studies.black_box_blobs`): 2, 4 and 6 bin edges of a fixed
observable of the neos blobs on the exact expected CLs: gradients through a soft histogram
against L-GSO (the hard histogram as the black box), TPE, random and grid search, the optimum
from a multi-start Nelder-Mead (and a dense grid for 2 edges); problem 1c: the same on the
exact median expected Z0.

Problem 2 (:mod:`diffhep.problems.black_box`): the resolution of a black-box detector against
its cost, known optimum ``(c / 2)^(1/3)`` per parameter, with 1, 2, 4 and 6 parameters: L-GSO
(:mod:`diffhep.surrogate.lgso`) against TPE, random and grid search on a Monte-Carlo estimate
of the objective, all counted in black-box events. The findings are computed from the tables
the study writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..problems import black_box as bb
from ..runs.config import load_config
from ..runs.results import read_history
from ..writers import write_atomic
from .common import DEFAULT_OUT, proposals, shipped_config

__all__ = ["black_box_study"]

SEARCHES = ("grid", "random", "bo")
DIMS = (1, 2, 4, 6)  # problem 2's numbers of parameters


def _dense_optimum(points: int) -> dict:
    """The exact validation Z0 on a ``points x points`` grid of the search box."""
    from ..search.objective import exact_evaluator

    cfg = load_config(shipped_config("black_box_cuts"))
    ev = exact_evaluator(cfg, str(shipped_config("black_box_cuts")))
    (p1, p2) = cfg.search.params
    best = {"value": -np.inf}
    for a in np.linspace(p1.low, p1.high, points):
        for b in np.linspace(p2.low, p2.high, points):
            c = load_config(shipped_config("black_box_cuts"), [f"{p1.name}={a}", f"{p2.name}={b}"])
            z = float(ev.evaluate(c)["validation"]["z0"])
            if z > best["value"]:
                best = {"value": z, "params": [float(a), float(b)]}
    return best | {"grid": f"{points} x {points}"}


def _searches(out: Path, seeds: int, budget: int) -> dict:
    from ..search.optimize import optimize

    rows = {}
    for method in SEARCHES:
        rows[method] = []
        for seed in range(seeds):
            d = out / f"{method}-seed{seed}"
            t0 = time.perf_counter()
            best = optimize(
                shipped_config("black_box_cuts"), d, method=method, budget=budget, seed=seed
            )
            trials = json.loads((d / "trials.json").read_text())
            values = [r["value"] if r["state"] == "complete" else np.nan for r in trials]
            rows[method].append({"seed": seed, "values": values, "best": best["best"],
                                 "trial_seconds": [r.get("seconds") for r in trials],
                                 "seconds": time.perf_counter() - t0})  # fmt: skip
    return rows


def _gradient(out: Path, epochs: int, overrides) -> dict:
    from ..runs.train import train_run

    cfg = load_config(shipped_config("black_box_cuts"),
                      ["training.loss=z0", f"training.epochs={epochs}", "selection.slope=2.0",
                       "selection.slope_final=50.0", *overrides])  # fmt: skip
    cfg = cfg.model_copy(update={"search": type(cfg.search)()})
    t0 = time.perf_counter()
    summary = train_run(cfg, out / "gradient", progress=False, plots=False, option="--runs-dir")
    records = read_history(out / "gradient")
    return {"values": [r["val_z0"] for r in records], "test": summary["z0"],
            "best_epoch": summary["best_epoch"],
            "selection": summary["selection"]["expression"],
            "seconds": time.perf_counter() - t0}  # fmt: skip


def _lgso_runs(seeds: int, dims=DIMS, iterations: int = 60, scaled: bool = False) -> dict:
    """L-GSO on the detector from 1.5: its default settings, or (``scaled``) N = max(16, 8 d)
    psi values per iteration and 16 hidden units (the defaults are N = 16 and 8 whatever d;
    N = 8 at d = 1 stopped early, 117% from the optimum, in a trial run)."""
    from jax.tree_util import Partial  # equal for equal costs: lgso's compiled code is reused

    from ..surrogate.lgso import Settings, lgso

    out = {}
    for d in dims:
        costs = bb.COSTS[:d]
        rows = []
        for seed in range(seeds):
            t0, stamps = time.perf_counter(), []
            extra = {"n_psi": max(16, 8 * d), "hidden": (16,)} if scaled else {}
            res = lgso(lambda x, p, rng: bb.detector(x, p, rng),
                       lambda rng, n, d=d: bb.sample_truth(rng, n, d), bb.squared_error,
                       [1.5] * d, cost=Partial(bb.cost, costs=costs),
                       bounds=[(0.05, 3.0)] * d,
                       settings=Settings(seed=seed, max_iterations=iterations, **extra),
                       callback=lambda r, s=stamps, t=t0: s.append(time.perf_counter() - t),
                       )  # fmt: skip
            curve = [_excess(p, costs) for p in res.path[1:]]
            rows.append(_detector_row(res.psi, costs, res.calls, time.perf_counter() - t0)
                        | {"converged": res.converged, "iterations": len(res.records),
                           "curve": {"excess": curve, "calls": [r["calls"] for r in res.records],
                                     "seconds": stamps},
                           "val_risk_error": res.records[-1].get("val_risk_error"),
                           "val_risk_se": res.records[-1].get("val_risk_se")})  # fmt: skip
        out[str(d)] = rows
    return out


def _excess(psi, costs) -> float:
    f = bb.expected_objective(psi, costs)
    return f / bb.expected_objective(bb.optimum(costs), costs) - 1


def _searches_detector(seeds: int, dims=DIMS, budget: int = 40, events: int = 2000) -> dict:
    """TPE, random and grid search on the Monte-Carlo objective (``events`` black-box events
    per trial, fresh random numbers each trial), psi in [0.05, 3] per parameter; the best trial
    is the one with the lowest Monte-Carlo value (judged by the closed form)."""
    out = {}
    for method in ("tpe", "random", "grid"):
        out[method] = {}
        for d in dims:
            costs = bb.COSTS[:d]
            rows = []
            for seed in range(seeds):
                t0 = time.perf_counter()

                def f(psi, k, seed=seed, costs=costs):
                    return bb.objective_mc(psi, costs, n=events, seed=seed * 100_000 + k)

                psis, values, stamps = _detector_search(method, d, budget, seed, f, t0)
                order = [int(np.argmin(values[: k + 1])) for k in range(len(values))]
                best = [_excess(psis[i], costs) for i in order]
                calls = [(k + 1) * events for k in range(len(values))]
                rows.append(
                    _detector_row(psis[order[-1]], costs, calls[-1], time.perf_counter() - t0)
                    | {"curve": {"excess": best, "seconds": stamps, "calls": calls}}
                )
            out[method][str(d)] = rows
    return out


def _detector_search(method, d, budget, seed, f, t0):
    """The trials' psi, values and times of one search (:func:`.common.proposals`; a grid
    with 6 parameters and 40 trials: one point, the centre of the box)."""
    psis, values, stamps = [], [], []
    for k, (psi, tell) in enumerate(proposals(method, d, budget, seed, 0.05, 3.0, "psi")):
        value = f(psi, k)
        tell(value)
        psis.append(psi)
        values.append(value)
        stamps.append(time.perf_counter() - t0)
    return psis, values, stamps


def _detector_row(psi, costs, calls, seconds) -> dict:
    psi = np.asarray(psi, dtype=float)
    star = bb.optimum(costs)
    f, f_star = bb.expected_objective(psi, costs), bb.expected_objective(star, costs)
    return {"psi": psi.tolist(), "distance": float(np.max(np.abs(psi - star))),
            "excess": f / f_star - 1, "calls": int(calls), "seconds": seconds}  # fmt: skip


def black_box_study(
    out: str | Path = DEFAULT_OUT,
    *,
    seeds: int = 3,
    epochs: int = 20,
    overrides=(),
    runs_dir: str | Path | None = None,
    budget: int = 30,
    dense: int = 41,
    lgso_iterations: int | None = None,
    blobs_budget: int = 60,
    blobs_dense: int = 141,
    detector_seeds: int = 5,
) -> Path:
    """Run the study; writes ``black-box.md``, ``black-box.json`` and the plots
    ``black-box-cuts.png`` (exact Z0 vs evaluations), ``black-box-cuts-time.png`` (vs wall
    time) and ``black-box-detector.png`` (problem 2: objective excess vs black-box events and
    vs wall time), ``black-box-blobs.png`` and ``black-box-blobs-z0.png`` into ``out``
    (searches and the gradient run under ``runs_dir``, default
    ``runs/black-box``); ``lgso_iterations`` caps L-GSO's iterations (default 40 on the cuts,
    60 on the detector and the blobs). Problems 1b and 1c: the blobs' bin edges on the exact
    CLs and Z0 (:mod:`diffhep.studies.black_box_blobs`), ``blobs_budget`` evaluations per
    search / gradient run and seed, a ``blobs_dense`` x ``blobs_dense`` grid checking the
    2-edge optima. Problem 2 runs ``detector_seeds`` seeds (5: its acceptance counts the
    seeds within :data:`TOLERANCE` of the known optimum).

    Each finished part (the cuts, the blobs per metric, the detector) is kept in
    ``runs_dir/parts`` with its settings and reused by a run with the same settings, so an
    interrupted study resumes (:func:`_part`)."""
    import os

    from .black_box_blobs import blobs_problem
    from .black_box_cuts import cuts_lgso
    from .black_box_report import render

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(runs_dir) if runs_dir else Path("runs") / "black-box"
    lgso_blobs = lgso_iterations or 60

    def cuts():
        return {"optimum": _dense_optimum(dense), "searches": _searches(runs, seeds, budget),
                "gradient": _gradient(runs, epochs, overrides),
                "lgso": [cuts_lgso(seed, iterations=lgso_iterations or 40)
                         for seed in range(seeds)]}  # fmt: skip

    def detector():
        it = lgso_iterations or 60
        return {"lgso": _lgso_runs(detector_seeds, iterations=it),
                "lgso_scaled": _lgso_runs(detector_seeds, iterations=it, scaled=True),
                **_searches_detector(detector_seeds)}  # fmt: skip

    common = {"seeds": seeds, "lgso_iterations": lgso_iterations}
    parts = {
        "cuts": ({**common, "epochs": epochs, "budget": budget, "dense": dense,
                  "overrides": list(overrides)}, cuts),
        "blobs": ({**common, "budget": blobs_budget, "dense": blobs_dense},
                  lambda: blobs_problem(seeds, blobs_budget, dense=blobs_dense,
                                        lgso_iterations=lgso_blobs)),
        "blobs_z0": ({**common, "budget": blobs_budget, "dense": blobs_dense},
                     lambda: blobs_problem(seeds, blobs_budget, dense=blobs_dense, metric="z0",
                                           lgso_iterations=lgso_blobs)),
        "detector": ({"seeds": detector_seeds, "lgso_iterations": lgso_iterations}, detector),
    }  # fmt: skip
    doc, machines = {}, {}
    for name, (settings, compute) in parts.items():
        doc[name], machines[name] = _part(runs, name, settings, compute)
    doc["machine"] = {
        "load_start": machines["cuts"]["load_start"],
        "load_end": machines["detector"]["load_end"],
        "cpu_count": os.cpu_count(),
        "cpu_seconds": sum(m["cpu_seconds"] for m in machines.values()),
        "wall_seconds": sum(m["wall_seconds"] for m in machines.values()),
        "reused": [n for n, m in machines.items() if m.get("reused")],
    }
    write_atomic(out / "black-box.json", _dumps(doc))
    return render(out)


def _part(runs: Path, name: str, settings: dict, compute) -> tuple[dict, dict]:
    """A part of the study and its machine record (CPU and wall seconds, load): read back from
    ``runs/parts/NAME.json`` if a run with the same ``settings`` finished it (marked
    ``reused``), else computed and saved there."""
    import os

    path = runs / "parts" / f"{name}.json"
    settings = json.loads(json.dumps(settings))
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            return saved["result"], saved["machine"] | {"reused": True}
    load, cpu, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    result = compute()
    machine = {"load_start": load, "load_end": os.getloadavg()[0],
               "cpu_seconds": time.process_time() - cpu,
               "wall_seconds": time.perf_counter() - t0}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, _dumps({"settings": settings, "result": result, "machine": machine}))
    return result, machine


def _dumps(doc) -> str:
    """JSON with one object key per line and each list of numbers on one line."""
    import re

    text = json.dumps(doc, indent=1, default=float)
    number = r"-?[0-9][0-9.eE+-]*|null|NaN|-?Infinity|true|false"
    flat = re.compile(rf"\[\s*((?:(?:{number})\s*,\s*)*(?:{number}))\s*\]")
    return flat.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
