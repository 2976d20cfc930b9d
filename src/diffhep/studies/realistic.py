"""``diffhep study realistic``: does systematic-aware training still win on an analysis?

The semileptonic Z' -> ttbar search of issue 23 (:mod:`diffhep.problems.ttbar_resonance`,
config ``data/ttbar_resonance.yaml``: signal region >= 2 b-tags with the trained observable,
ttbar control region with a free ttbar normalisation, 20 named nuisance parameters of which
four are feature-level jet-pT variations, MC statistics) trained with each loss and each way
of building the selection of :data:`ROWS`, on files generated once per study
(:func:`generate_events`). The likelihood losses see every bin's background floored at
:data:`MIN_BACKGROUND_MC_EVENTS` background MC events' weight (:func:`min_background`,
``histogram.min_background``), so that they cannot gain from a bin with signal and no
background MC events.

Every trained analysis is evaluated on its run's test split (events never used for training
nor for choosing the epoch) with hard histograms and exact fits, on the background-only
Asimov data at the nominal parameters (:func:`exact_metrics`): the expected CLs (mu = 1),
Z0 and sigma_mu of the run's summary, the expected 95% CL upper limit on mu, and the
post-fit width and impact on mu of every nuisance parameter from the covariance at the
Asimov fit with mu = 1 (impact: ``cov(mu, theta) / sigma_theta``, the shift of mu when
theta moves by its post-fit width). Next to them the cost of each run: median step time,
time per epoch, events per second (every event set of a step) and the peak resident memory
of the process during the run (``VmHWM`` reset before it, so it counts the compilations too).
Events per second count the nominal events of the training split in a step (what BCE sees;
the likelihood losses and BCE with augmentation also pass every variation's events).

All rows of a seed train on the same events with the same batches, so their times per
step are comparable with the BCE row's. The markdown, the table and the findings are
written by :mod:`diffhep.studies.realistic_report` from the numbers of the run only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..runs.config import load_config
from ..runs.results import read_history
from ..runs.train import train_run
from ..writers import write_atomic
from .common import DEFAULT_OUT, shipped_config
from .realistic_report import write_report

__all__ = [
    "ROWS",
    "exact_metrics",
    "generate_events",
    "memory_maps",
    "min_background",
    "realistic_study",
    "release_compiled",
    "row_overrides",
]

CONFIG = "ttbar_resonance"
HT = "sum(Jet_pt * (Jet_pt > 30))"
#: the trained cuts of the rows with cuts (started at the 10% quantiles of the data)
CUTS = [{"feature": HT, "direction": ">"}, {"feature": "MET_pt", "direction": ">"}]
#: label -> (loss, selection). NN only for every loss; the other selections with the
#: expected CLs (BCE gives no gradient to cuts or to bin edges): 8 of the 20 combinations.
ROWS = {
    "BCE / NN": ("bce", "nn"),
    "BCE + syst. augmentation / NN": ("bce_aug", "nn"),
    "INFERNO (sigma_mu) / NN": ("sigma_mu", "nn"),
    "expected CLs / NN": ("cls", "nn"),
    "discovery Z0 / NN": ("z0", "nn"),
    "expected CLs / cuts only": ("cls", "cuts"),
    "expected CLs / NN + cuts": ("cls", "nn+cuts"),
    "expected CLs / learnable bin edges": ("cls", "edges"),
}
BASELINE = "BCE / NN"
#: the study's defaults for the training (every row; ``overrides`` change them)
TRAINING = ("observable.hidden=[32, 32]", "training.batch_size=4000",
            "report.diagnostics=false", "training.select_on=sigma_mu")  # fmt: skip
#: clear JAX's in-process caches after a run when the process's memory maps exceed this
#: fraction of ``vm.max_map_count`` (:func:`release_compiled`)
MAPS_FRACTION = 0.4
CLEAR_EVERY = 6  # runs between clearing the caches where the memory maps cannot be read
#: the likelihood losses' floor on every bin's background (``histogram.min_background``), in
#: background MC events of the training split: 3 is the 95% CL upper limit on a Poisson mean
#: when 0 events are seen, so a bin without background MC events has at most about this
MIN_BACKGROUND_MC_EVENTS = 3.0


def generate_events(data_dir: Path, events: int, seed: int, lumi: float) -> Path:
    """The study's ROOT files (reused if ``samples.json`` records the same settings)."""
    from ..problems.ttbar_resonance import generate

    record = data_dir / "samples.json"
    if record.is_file():
        old = json.loads(record.read_text())
        total = sum(s["events"] for n, s in old["samples"].items() if n != "data")
        if old.get("seed") == seed and total == events and old.get("lumi_fb") == lumi:
            return data_dir
    generate(data_dir, events=events, seed=seed, lumi=lumi, formats=("root",))
    return data_dir


def min_background(data_dir: Path, train_fraction: float) -> float:
    """:data:`MIN_BACKGROUND_MC_EVENTS` times the mean weight of a background MC event of the
    training split (expected events): the backgrounds' generated yield over their generated
    events (``samples.json``), over ``train_fraction`` (the split's weights are scaled up by
    it). 9.4 events for the study's files at 10 fb^-1 (1.9 per generated event)."""
    samples = json.loads((data_dir / "samples.json").read_text())["samples"]
    bkg = [s for n, s in samples.items() if n != "data" and not n.startswith("zprime")]
    weight = sum(s["expected_yield"] for s in bkg) / sum(s["events"] for s in bkg)
    return MIN_BACKGROUND_MC_EVENTS * weight / train_fraction


def row_overrides(base, loss: str, selection: str) -> list[str]:
    """The ``--set`` overrides of one row on the loaded base config ``base``."""
    out = [f"training.loss={loss}"]
    channels = [c.model_dump(exclude_defaults=True) for c in base.analysis.channels]
    if selection in ("cuts", "nn+cuts"):
        out.append("selection=" + json.dumps({"cuts": CUTS, "slope": 2.0, "slope_final": 50.0}))
    if selection == "cuts":  # the signal region counts the selected events
        channels[0] = {k: v for k, v in channels[0].items() if k not in ("edges",)}
        channels[0] |= {"bins": 1, "observable": "count"}
    elif selection == "edges":
        channels[0]["learnable_edges"] = True
    if selection in ("cuts", "edges"):
        out.append("analysis.channels=" + json.dumps(channels))
    return out


def _is_signal(sample: dict, poi: str) -> bool:
    return any(m["type"] == "normfactor" and m["name"] == poi for m in sample["modifiers"])


def floor_workspace(workspace: dict, floor: float) -> dict:
    """A copy of the pyhf ``workspace`` whose every bin has a total nominal background of at
    least ``floor``: the evaluation's counterpart of ``histogram.min_background`` (the same
    rule as :meth:`~diffhep.analysis.pipeline.Pipeline.floor_background`: a bin's deficit
    is added to the background samples in proportion to their yields in the channel, and
    to their histosys templates; staterror and normsys unchanged). The POI is the
    measurement's; the observations are left as they are."""
    import copy

    ws = copy.deepcopy(workspace)
    poi = ws["measurements"][0]["config"]["poi"]
    for channel in ws["channels"]:
        bkg = [s for s in channel["samples"] if not _is_signal(s, poi)]
        data = [np.asarray(s["data"], float) for s in bkg]
        totals = np.array([max(float(d.sum()), 0.0) for d in data])
        share = totals / totals.sum() if totals.sum() > 0 else np.full(len(bkg), 1 / len(bkg))
        deficit = np.maximum(floor - np.sum(data, axis=0), 0.0)
        for sample, d, f in zip(bkg, data, share, strict=True):
            sample["data"] = (d + f * deficit).tolist()
            for m in sample["modifiers"]:
                if m["type"] == "histosys":
                    for key in ("hi_data", "lo_data"):
                        m["data"][key] = (np.asarray(m["data"][key], float) + f * deficit).tolist()
    return ws


def exact_metrics(workspace: dict, floor: float = 0.0) -> dict:
    """Expected upper limit, post-fit widths and impacts of a trained analysis's workspace
    on its background-only Asimov data (nominal parameters, mu = 0 for the limit; mu = 1
    for the covariance, as the training's sigma_mu).

    With ``floor`` > 0 every number is computed on :func:`floor_workspace` (the expected
    CLs, Z0 and sigma_mu too; the count of empty background bins on the workspace as it is).

    Returns:
        ``{"expected_cls", "z0", "sigma_mu", "upper_limit", "limit_range", "widths": {name:
        sigma}, "impacts": {name: ...}}``
        for every nuisance parameter with a Gaussian constraint of width 1 (the alphas);
        ``"empty_background_bins"``: bins with signal and no background (where the
        asymptotic CLs tends to 0 whatever the signal); the limit is ``None`` outside
        the scanned range ``limit_range`` or where a hypotest of the scan does not
        converge (``limit_error`` says which).
    """
    from ..analysis.losses import discovery_significance
    from ..errors import FitError
    from ..stats import covariance, limits
    from ..stats.hypotest import hypotest
    from ..stats.workspace import Workspace

    model = Workspace(floor_workspace(workspace, floor) if floor else workspace).model()
    poi = model.config.poi_index
    pars = covariance.nominal_parameters(model)
    pars[poi] = 1.0
    post = covariance.postfit(model, np.asarray(model.expected_data(pars)))
    sigma_mu = float(post.uncertainty[poi])
    pars[poi] = 0.0
    asimov_b = np.asarray(model.expected_data(pars))
    cls = float(hypotest(1.0, model, asimov_b).cls_exp[2])
    z0 = float(discovery_significance(model))
    hi = float(max(10.0, 6.0 * sigma_mu))
    try:
        limit, limit_error = limits.upper_limit(model, asimov_b, bounds=(0.0, hi)).expected[2], None
    except FitError as exc:  # recorded, not hidden: the table shows n/a and the JSON why
        limit, limit_error = None, exc.message
    widths, impacts = {}, {}
    poi_name = model.config.par_names[poi]
    empty = 0  # bins where the signal is > 0 and the background's nominal total is not
    for channel in workspace["channels"]:
        sig = np.zeros(len(channel["samples"][0]["data"]))
        bkg = np.zeros_like(sig)
        for sample in channel["samples"]:
            is_signal = _is_signal(sample, poi_name)
            (sig if is_signal else bkg)[:] += np.asarray(sample["data"], float)
        empty += int(np.sum((sig > 0) & (bkg <= 1e-9)))
    for i, name in enumerate(post.names):
        if i == poi or "[" in name or post.fixed[i]:
            continue  # the POI, per-bin (MC-stat) and fixed parameters
        if name.startswith("k_"):  # free normalisations: no pre-fit width
            continue
        widths[name] = float(post.uncertainty[i])
        impacts[name] = float(post.covariance[poi, i] / max(post.uncertainty[i], 1e-300))
    return {
        "expected_cls": cls,
        "z0": z0,
        "sigma_mu": sigma_mu,
        "evaluation_floor": floor,
        "upper_limit": limit,
        "limit_error": limit_error,
        "empty_background_bins": empty,
        "limit_range": [0.0, hi],
        "sigma_mu_covariance": sigma_mu,
        "widths": widths,
        "impacts": impacts,
    }


def _count_lines(path: str) -> int | None:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def memory_maps() -> tuple[int, int] | None:
    """(memory maps of this process, the kernel's limit ``vm.max_map_count``), or None where
    they cannot be read (not Linux)."""
    used = _count_lines("/proc/self/maps")
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None
    return None if used is None else (used, limit)


def release_compiled(maps=None, fraction: float = MAPS_FRACTION, clear=None) -> bool:
    """Clear JAX's in-process caches (the compiled programs) if the process's memory maps
    ``maps = (used, limit)`` (default :func:`memory_maps`) exceed ``fraction`` of the
    limit; returns whether it cleared.

    Every compiled XLA CPU program stays loaded as JIT code, three memory maps per object
    (code, read-only data, data), until its cache entry goes: one run of the study, the
    learnable-edges row trained and evaluated in a fresh process, took it from 38 to 17,400
    maps (``jax.clear_caches()`` and a garbage collection: back to 1,400). At the
    kernel's limit (``vm.max_map_count``, 65,530 by default) every further mmap fails
    and XLA aborts the next compilation with "LLVM compilation error: Cannot allocate
    memory" whatever the free RAM: the 3-seed study died so on its 6th trained run after
    a clear (clearing every 6 runs, reused runs included). ``clear`` (default
    ``jax.clear_caches`` and ``gc.collect``) is for tests."""
    maps = memory_maps() if maps is None else maps
    if maps is None or maps[0] <= fraction * maps[1]:
        return False
    if clear is None:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()
    else:
        clear()
    return True


def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cost(cfg, summary, run_dir) -> dict:
    """Step and epoch times and events per second of a run (from its summary/history)."""
    history = read_history(run_dir)
    steps = history[0]["step"] if history else None
    step_s = summary.get("median_step_seconds")
    ratio = cfg.data.split.train / cfg.data.split.test
    bs = cfg.training.batch_size
    sizes = {k: round(n * ratio) for k, n in summary["test_events"].items()}
    nominal = {s.name for s in cfg.analysis.samples if s.role != "data"}
    per_step = sum(min(bs, n) for k, n in sizes.items() if k in nominal)
    return {
        "step_seconds": step_s,
        "steps_per_epoch": steps,
        "epoch_seconds": step_s * steps if step_s and steps else None,
        "events_per_step": per_step,  # nominal events (what BCE sees) of the training split
        "event_sets_per_step": sum(min(bs, n) for n in sizes.values()),  # with variations
        "events_per_second": per_step / step_s if step_s else None,
    }


def _one(cfg, run_dir: Path, floor: float = 0.0) -> dict:
    """Train (or reuse) one run and evaluate it (a reused run's record is evaluated again
    if it was with another ``floor``)."""
    record = run_dir / "study.json"
    if record.is_file() and (run_dir / "config.yaml").is_file():
        if load_config(run_dir / "config.yaml") == cfg:  # reused; the cost recomputed
            summary = json.loads((run_dir / "summary.json").read_text())
            rec = json.loads(record.read_text())
            if rec.get("evaluation_floor", 0.0) != floor:
                for key in ("expected_cls", "z0", "sigma_mu"):
                    rec.setdefault(f"{key}_unfloored", summary[key])
                ws = json.loads((run_dir / "workspace.json").read_text())
                rec |= exact_metrics(ws, floor)
                write_atomic(record, json.dumps(rec, indent=1))
            return rec | _cost(cfg, summary, run_dir)
    exact_ok = _peak_reset()
    t0 = time.perf_counter()
    summary = train_run(cfg, run_dir, progress=False, plots=False, resume=False)
    wall = time.perf_counter() - t0
    peak = _peak_mb() if exact_ok else None
    ws = json.loads((run_dir / "workspace.json").read_text())
    rec = {
        # the run's own hard metrics (test split, no floor); exact_metrics's replace them
        "expected_cls": summary["expected_cls"],
        "z0": summary["z0"],
        "sigma_mu": summary["sigma_mu"],
        "expected_cls_unfloored": summary["expected_cls"],
        "z0_unfloored": summary["z0"],
        "sigma_mu_unfloored": summary["sigma_mu"],
        "observed_cls": summary.get("observed_cls"),
        "selected_fraction": summary["selected_fraction"],
        "selection": summary.get("selection", {}).get("expression"),
        "best_epoch": summary["best_epoch"],
        **exact_metrics(ws, floor),
        **_cost(cfg, summary, run_dir),
        "run_seconds": wall,
        "peak_rss_mb": peak,
    }
    write_atomic(record, json.dumps(rec, indent=1))
    return rec


def realistic_study(
    out: str | Path = DEFAULT_OUT,
    *,
    seeds: int = 3,
    epochs: int = 8,
    events: int = 300_000,
    lumi: float = 10.0,
    data_seed: int = 0,
    rows=None,
    overrides=(),
    runs_dir: str | Path | None = None,
    name: str = "realistic-analysis",
    evaluation_floor: bool = True,
) -> Path:
    """Run the study and write ``<name>.md``, ``.json`` and ``.png`` figures into ``out``.

    Args:
        out: Directory of the markdown, JSON and figures.
        seeds: Training seeds per row (the events are the same for every seed).
        epochs: Epochs per run.
        events: Simulated events generated (all samples), split 60/20/20 per run.
        lumi: Integrated luminosity (fb^-1) of the expected yields.
        data_seed: Seed of the generator.
        rows: Labels of :data:`ROWS` to train (default: all).
        overrides: Config overrides for every run (after the study's own).
        runs_dir: Where data and runs go (default ``runs/realistic``); finished runs are
            reused.
        name: Base name of the written files.
        evaluation_floor: Evaluate on the test histograms with every bin's background
            floored at :data:`MIN_BACKGROUND_MC_EVENTS` test-split MC events' weight
            (:func:`floor_workspace`; the unfloored numbers stay in the JSON).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir) if runs_dir else Path("runs") / "realistic"
    rows = list(rows or ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(ROWS)}")
    t0 = time.perf_counter()
    data = generate_events(runs_dir / "data", events, data_seed, lumi)
    common = [f"data.base_dir={data.resolve()}", f"training.epochs={epochs}", *TRAINING]
    split = load_config(shipped_config(CONFIG), common).data.split
    common.append(f"histogram.min_background={min_background(data, split.train):.4g}")
    base = load_config(shipped_config(CONFIG), common)
    floor = min_background(data, split.test) if evaluation_floor else 0.0
    results: dict = {r: [] for r in rows}
    import jax

    done = 0
    for seed in range(seeds):
        for label in rows:
            loss, selection = ROWS[label]
            sets = [*common, f"seed={seed}", *row_overrides(base, loss, selection), *overrides]
            cfg = load_config(shipped_config(CONFIG), sets)
            slug = f"{loss}-{selection.replace('+', '_')}-seed{seed}"
            results[label].append(_one(cfg, runs_dir / slug, floor))
            done += 1
            if memory_maps() is not None:
                release_compiled()  # before the process runs out of memory maps
            elif done % CLEAR_EVERY == 0:
                jax.clear_caches()
    settings = {"seeds": seeds, "epochs": epochs, "events": events, "lumi": lumi,
                "data_seed": data_seed, "overrides": list(overrides),
                "training": list(TRAINING), "signal": base.analysis.signal,
                "min_background": base.histogram.min_background,
                "min_background_mc_events": MIN_BACKGROUND_MC_EVENTS,
                "evaluation_floor": floor,
                "wall_seconds": time.perf_counter() - t0}  # fmt: skip
    kinds = {r: list(ROWS[r]) for r in rows}
    result = {"settings": settings, "kinds": kinds, "rows": results}
    return write_report(out, name, result, BASELINE if BASELINE in rows else rows[0])
