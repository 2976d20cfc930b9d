"""``diffhep study neos-blobs``: the neos paper's Figure 3.

Losses {CLs, BCE, BCE + augmentation, INFERNO,
discovery Z} x seeds x epochs on the Gaussian blobs with the paper's settings (4 bins, MLP
1024-1024-1, Adam 1e-3, batch 2000 per blob); the test-set expected CLs, sigma_mu and the
nuisance-parameter uncertainty after every epoch, mean and spread over seeds; beside them the
physical references of :mod:`diffhep.problems.blobs` (the likelihood-ratio observable with optimal
bins, and a fine 2-D binning of the true densities).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..problems import blobs
from ..runs.config import ConfigError, load_config
from ..runs.results import read_history
from ..runs.train import train_run
from ..writers import write_atomic
from .common import DEFAULT_OUT, shipped_config

__all__ = ["FIXES", "NEOS_LOSSES", "OBJECTIVES", "adam_step_ratio", "neos_blobs", "rows"]

#: label -> loss of the neos Figure 3 comparison
NEOS_LOSSES = {
    "CLs (neos)": "cls",
    "BCE": "bce",
    "BCE + augmentation": "bce_aug",
    "INFERNO (sigma_mu)": "sigma_mu",
    "discovery Z0": "z0",
}
#: label -> loss: the CLs loss's fix (issue 23): the same minimum, a gradient that does not
#: shrink with CLs (see :func:`diffhep.analysis.losses.log_expected_cls`)
FIXES = {"log CLs": "log_cls"}
#: the neos paper's number of epochs (45 Adam steps): a longer study also reports its table
#: from the first PAPER_EPOCHS epochs of the same runs
PAPER_EPOCHS = 15
#: label -> (run name, training.loss): multi-term objectives with nuisance-parameter terms
#: (neos section 4). sigma_mu and (1 - sigma_gamma)^2 are both O(0.1) here; CLs (~1e-6 once
#: trained) is scaled by 1e5 to be of that order too (a fixed weight: its share falls as
#: CLs falls).
OBJECTIVES = {
    "sigma_mu + (1 - sigma_gamma)^2": (
        "sigma_mu+sigma_gamma",
        "{sigma_mu: 1.0, sigma_theta: {name: bkg_shape, weight: 1.0, target: 1.0}}",
    ),
    "1e5 CLs + sigma_mu + (1 - sigma_gamma)^2 (neos sec. 4)": (
        "neos_objective",
        "{cls: 1.0e5, sigma_mu: 1.0, sigma_theta: {name: bkg_shape, weight: 1.0, target: 1.0}}",
    ),
    "sigma_mu + abs(impact of gamma)": (
        "sigma_mu+impact",
        "{sigma_mu: 1.0, impact: {name: bkg_shape, weight: 1.0}}",
    ),
    "sigma_mu + pull_gamma^2": (
        "sigma_mu+pull",
        "{sigma_mu: 1.0, pull_theta: {name: bkg_shape, weight: 1.0}}",
    ),
}
CURVES = ("test_expected_cls", "test_sigma_mu", "test_sigma_bkg_shape")


def rows(names=None) -> dict[str, tuple[str, str]]:
    """label -> (run name, loss) of the study's rows: every plain loss and objective, or those
    whose run name is in ``names`` (in that order)."""
    plain = NEOS_LOSSES | FIXES
    out = {label: (loss, loss) for label, loss in plain.items()} | OBJECTIVES
    if names is None:
        return out
    unknown = set(names) - {slug for slug, _ in out.values()}
    if unknown:
        raise ValueError(
            f"unknown row(s) {', '.join(sorted(unknown))}; use "
            + ", ".join(slug for slug, _ in out.values())
        )
    by_slug = {v[0]: label for label, v in out.items()}
    return {by_slug[n]: out[by_slug[n]] for n in dict.fromkeys(names)}  # in the given order


def _finished(run: Path, cfg) -> dict | None:
    """The summary of a finished run of this very config (reused as it is: no evaluation
    again), else None."""
    path = run / "summary.json"
    try:
        summary = json.loads(path.read_text())
        same = load_config(run / "config.yaml") == cfg
    except (OSError, ValueError, ConfigError):
        return None
    return summary if same and summary.get("status") != "incomplete" else None


def _at_epoch(history: list[dict], epochs: int) -> dict | None:
    """What a run of ``epochs`` epochs would have selected, from the history of a run of the
    same config that ran at least that long (the batches depend on the seed and the epoch
    only, so its first ``epochs`` epochs are that run): the test metrics of the best
    validation epoch so far (``best_epoch`` of the history's record ``epochs``, the training
    loop's own choice). None if the run is shorter."""
    if len(history) < epochs:
        return None
    best = history[epochs - 1]["best_epoch"]
    rec = history[best - 1]
    return {
        "expected_cls": rec["test_expected_cls"],
        "sigma_mu": rec["test_sigma_mu"],
        "sigma_bkg_shape": rec["test_sigma_bkg_shape"],
        "best_epoch": best,
        "last_epoch_cls": history[epochs - 1]["test_expected_cls"],
    }


def _yaml(x) -> str:
    return "null" if x is None else str(x)


def _from_longer(run: Path, cfg) -> tuple[list[dict], dict] | None:
    """(history truncated to ``cfg``'s epochs, summary) of ``run`` if it is a finished run
    of ``cfg`` except for more epochs and a patience that did not stop it earlier, else
    None."""
    t = cfg.training
    try:
        long_cfg = load_config(run / "config.yaml")
        same = load_config(
            run / "config.yaml",
            [f"training.epochs={t.epochs}", f"training.patience={_yaml(t.patience)}"],
        )
        summary = json.loads((run / "summary.json").read_text())
        history = read_history(run)
    except (OSError, ValueError, ConfigError):
        return None
    if same != cfg or long_cfg.training.epochs < t.epochs or summary.get("status") == "incomplete":
        return None
    if cfg.histogram.bandwidth_final is not None or cfg.selection.slope_final is not None:
        return None  # annealed over the run's epochs: a longer run anneals more slowly
    at = _at_epoch(history, t.epochs)
    if at is None:
        return None
    return history[: t.epochs], {**at, "median_step_seconds": summary["median_step_seconds"]}


def adam_step_ratio(run: Path) -> dict | None:
    """``step_ratio``: the median over the network's weights of ``|m_hat| / (sqrt(v_hat) +
    eps)`` in Adam's state after the last step (``checkpoint.eqx``), the size of Adam's last
    step relative to the learning rate (small when ``v`` still remembers much larger early
    gradients, as the CLs loss's from CLs ~ 1e-2 in epoch 1).
    ``below_eps``: the fraction of weights with ``sqrt(v_hat)`` below Adam's ``eps`` (where
    eps, not the gradient history, limits the step). None if the run has no checkpoint or
    its optimiser is not plain Adam."""
    import equinox as eqx
    import jax
    import optax

    from ..nn.training import TrainState, load_checkpoint
    from ..runs.prepare import restore_run
    from ..runs.train import run_optimizer

    run = Path(run)
    if not (run / "checkpoint.eqx").is_file():
        return None
    cfg, _, _, params = restore_run(run)
    if cfg.training.optimizer.name != "adam" or params.selection is not None:
        return None
    opt = run_optimizer(cfg, params)
    like = TrainState(params, opt.init(eqx.filter(params, eqx.is_inexact_array)), params)
    adam = load_checkpoint(run, like).opt_state[0]
    if not isinstance(adam, optax.ScaleByAdamState):
        return None
    t = int(adam.count)

    def flat(tree):
        leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
        return np.concatenate([np.asarray(x, dtype=float).ravel() for x in leaves])

    m_hat = flat(adam.mu) / (1 - 0.9**t)  # optax.adam's default b1, b2, eps
    v_hat = flat(adam.nu) / (1 - 0.999**t)
    return {
        "step_ratio": float(np.median(np.abs(m_hat) / (np.sqrt(v_hat) + 1e-8))),
        "below_eps": float(np.mean(np.sqrt(v_hat) < 1e-8)),
    }


def _sparsest_background_bin(run: Path) -> dict | None:
    """The bin with the smallest nominal background in the selected model's test histograms
    (``histograms.json``): its expected events and the number of simulated events behind
    them (sumw^2 / sumw2). A bin with signal and (almost) no background simulation makes the
    test-set CLs tiny whatever the true densities say."""
    try:
        doc = json.loads((Path(run) / "histograms.json").read_text())
    except (OSError, ValueError):
        return None
    ch = next(iter(doc["channels"].values()))
    w, w2 = np.asarray(ch["sumw"]["background"]), np.asarray(ch["sumw2"]["background"])
    i = int(np.argmin(w))
    n = float(w[i] ** 2 / w2[i]) if w2[i] > 0 else 0.0
    return {"events": float(w[i]), "mc_events": n}


def _curves(histories: list[list[dict]]) -> list[dict]:
    """Mean and spread over seeds of every curve, per epoch."""
    n = min(len(h) for h in histories)
    out = []
    for e in range(n):
        rec = {"epoch": e + 1}
        for key in CURVES:
            vals = np.array([h[e][key] for h in histories])
            rec[key] = float(np.mean(vals))
            rec[f"{key}_std"] = float(np.std(vals))
            rec[f"{key}_median"] = float(np.median(vals))
        out.append(rec)
    return out


def neos_blobs(
    out: str | Path = DEFAULT_OUT,
    *,
    seeds: int = 7,
    epochs: int = 15,
    overrides=(),
    runs_dir: str | Path | None = None,
    losses: dict | None = None,
    prefix_runs: str | Path | None = None,
) -> Path:
    """Run the neos Figure 3 study and write ``neos-blobs.md`` and its plots into ``out``.

    Every training run goes into its own directory under ``runs_dir`` (default
    ``runs/neos-blobs``); finished runs are reused, so an interrupted study resumes.
    ``losses``: label -> (run name, ``training.loss``), default :func:`rows` (all of them).
    ``prefix_runs``: a directory of longer runs of the same rows (e.g. a convergence study):
    a row's run found there (same config but more epochs, not stopped before ``epochs``)
    gives this study's run as its first ``epochs`` epochs instead of training it again.
    With ``epochs`` > :data:`PAPER_EPOCHS` the study also reports the table at
    :data:`PAPER_EPOCHS` epochs from the first epochs of its runs.
    """
    from ..plotting.runs import plot_training

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir) if runs_dir else Path("runs") / "neos-blobs"
    losses_given, losses = losses, losses or rows()
    results: dict[str, dict] = {}
    for label, (slug, loss) in losses.items():
        histories, finals, steps, adam, sparse, prefixed = [], [], [], [], [], 0
        for seed in range(seeds):
            cfg = load_config(
                shipped_config("neos_blobs"),
                [f"seed={seed}", f"training.epochs={epochs}", f"training.loss={loss}", *overrides],
            )
            run = runs_dir / f"{slug}-seed{seed}"
            summary = _finished(run, cfg)
            longer = None
            if summary is None and prefix_runs is not None:
                longer = _from_longer(Path(prefix_runs) / f"{slug}-seed{seed}", cfg)
            if longer is not None:
                history, summary = longer
                prefixed += 1
            else:
                summary = summary or train_run(
                    cfg, run, progress=False, track_test=True, option="--runs-dir"
                )
                history = read_history(run)
                adam.append(adam_step_ratio(run))
                sparse.append(_sparsest_background_bin(run))
            histories.append(history)
            finals.append(summary)
            steps.append(summary["median_step_seconds"])
        at_paper = [_at_epoch(h, PAPER_EPOCHS) for h in histories] if epochs > PAPER_EPOCHS else []
        results[label] = {
            "from_prefix_runs": prefixed,
            "epochs_run": [len(h) for h in histories],
            "first_last_loss": [(h[0]["loss"], h[-1]["loss"]) for h in histories],
            "last_val_cls": [h[-1]["val_expected_cls"] for h in histories],
            "adam_step_ratio": adam,
            "sparsest_background_bin": sparse,
            "at_paper_epochs": (
                {
                    k: [a[k] if a else None for a in at_paper]
                    for k in ("expected_cls", "sigma_mu", "sigma_bkg_shape", "best_epoch")
                }
                | {"last_epoch_cls": [a["last_epoch_cls"] if a else None for a in at_paper]}
                if at_paper
                else None
            ),
            "loss": loss,
            "run": slug,
            "curves": _curves(histories),
            "selected": {
                k: [f[k] for f in finals] for k in ("expected_cls", "sigma_mu", "sigma_bkg_shape")
            },
            "last_epoch_cls": [h[-1]["test_expected_cls"] for h in histories],
            "best_epochs": [f["best_epoch"] for f in finals],
            "median_step_seconds": float(np.median([s for s in steps if s is not None] or [0])),
        }
    ref_lr, ref_edges = blobs.reference_cls_lr(4)
    ref_2d, ref_2d_bins = blobs.reference_cls_2d()
    plot = out / "neos-blobs.png"
    for key, name in zip(CURVES, ("cls", "sigma_mu", "sigma_gamma"), strict=True):
        plot_training(
            {k: v["curves"] for k, v in results.items()},
            out / f"neos-blobs-{name}.png",
            metrics=(key,),
        )
    plot_training({k: v["curves"] for k, v in results.items()}, plot, metrics=CURVES)
    write_atomic(
        out / "neos-blobs.json",
        json.dumps(
            {"references": {"lr_4bins": ref_lr, "fine_2d": ref_2d}, "results": results}, indent=1
        ),
    )
    names = None if losses_given is None else [slug for slug, _ in losses.values()]
    command = _command(seeds, epochs, overrides, runs_dir, out, names, prefix_runs)
    refs = (ref_lr, ref_edges, ref_2d, ref_2d_bins)
    md = _markdown(results, refs, seeds, epochs, overrides, runs_dir, command)
    path = out / "neos-blobs.md"
    write_atomic(path, md)
    return path


def _fmt(x):
    return f"{x:.3g}"


def _command(seeds, epochs, overrides, runs_dir, out, names, prefix_runs) -> str:
    """The command that reproduces this very study (every option that differs from the
    default)."""
    parts = ["diffhep study neos-blobs"]
    if seeds != 7:
        parts.append(f"--seeds {seeds}")
    if epochs != PAPER_EPOCHS:
        parts.append(f"--epochs {epochs}")
    if names is not None:
        parts.append("--rows " + ",".join(names))
    parts += [f"--runs-dir {runs_dir}", f"--out {out}"]
    if prefix_runs is not None:
        parts.append(f"--prefix-runs {prefix_runs}")
    parts += [f"--set {o}" for o in overrides]
    return " ".join(parts)


def _table(results: dict, at_paper: bool) -> list[str]:
    """The results table: at the run's end, or (``at_paper``) at :data:`PAPER_EPOCHS`
    epochs from the first epochs of the same runs."""
    longer = not at_paper and any(max(r["epochs_run"]) > PAPER_EPOCHS for r in results.values())
    adam = any(any(a is not None for a in r["adam_step_ratio"]) for r in results.values())
    head = (
        "| loss | expected CLs, selected (median) | range | expected CLs, last epoch (median) "
        "| sigma_mu (median) | sigma of bkg_shape (median) | selected epoch (median) "
    )
    extra = ["epochs run (median)"] if longer else []
    extra += ["Adam step / learning rate at the end (median)"] if adam and not at_paper else []
    sparse = not at_paper and any(
        any(a is not None for a in r["sparsest_background_bin"]) for r in results.values()
    )
    extra += ["smallest background in a bin: events (simulated events), median"] if sparse else []
    lines = [
        head + "".join(f"| {e} " for e in extra) + "| median step |",
        "|---" * (8 + len(extra)) + "|",
    ]
    for label, r in results.items():
        sel = r["at_paper_epochs"] if at_paper else r["selected"]
        if sel is None:
            continue
        c = np.array(sel["expected_cls"], dtype=float)
        best = sel["best_epoch"] if at_paper else r["best_epochs"]
        last = sel["last_epoch_cls"] if at_paper else r["last_epoch_cls"]
        cells = [
            label,
            _fmt(np.median(c)),
            f"{_fmt(c.min())} - {_fmt(c.max())}",
            _fmt(np.median(last)),
            _fmt(np.median(sel["sigma_mu"])),
            _fmt(np.median(sel["sigma_bkg_shape"])),
            f"{np.median(best):.0f}",
        ]
        if longer:
            cells.append(f"{np.median(r['epochs_run']):.0f}")
        if adam and not at_paper:
            a = [x["step_ratio"] for x in r["adam_step_ratio"] if x is not None]
            cells.append(_fmt(np.median(a)) if a else "-")
        if sparse:
            b = [x for x in r["sparsest_background_bin"] if x is not None]
            cells.append(
                f"{_fmt(np.median([x['events'] for x in b]))} "
                f"({np.median([x['mc_events'] for x in b]):.0f})"
                if b
                else "-"
            )
        cells.append(f"{1e3 * r['median_step_seconds']:.0f} ms")
        lines.append("| " + " | ".join(cells) + " |")
    key = (
        (lambda k: np.median(results[k]["at_paper_epochs"]["expected_cls"]))
        if at_paper
        else (lambda k: np.median(results[k]["selected"]["expected_cls"]))
    )
    shown = [k for k in results if not at_paper or results[k]["at_paper_epochs"] is not None]
    return [*lines, "", "Ranking by median selected expected CLs: " + " < ".join(
        sorted(shown, key=key)) + "."]  # fmt: skip


def _markdown(results, refs, seeds, epochs, overrides, runs_dir, command):
    ref_lr, ref_edges, ref_2d, ref_2d_bins = refs
    patience = next(
        (o.split("=", 1)[1] for o in overrides if o.startswith("training.patience=")), None
    )
    prefixed = sum(r["from_prefix_runs"] for r in results.values())
    lines = [
        "# Study: neos Gaussian blobs (the neos paper's Figure 3)",
        "",
        f"Reproduce with `{command}` (config `src/diffhep/data/neos_blobs.yaml`; {seeds} seeds "
        f"x {epochs} epochs per loss"
        + (f", stopped after {patience} epochs without a better validation CLs" if patience else "")
        + f"; finished runs under `{runs_dir}` are reused)."
        + (
            f" **{seeds} seeds instead of the study's 7** (the compute that was available): "
            "medians of so few seeds are not resolved where the seed ranges overlap."
            if seeds < 7
            else ""
        ),
        "",
        "Setup: signal N((-1, 1), I), background N((1, -1), I) with a histosys from the "
        "variations N((2.5, 2), I) (up) and N((-2.5, -1.5), I) (down); 20 signal and 100 "
        "background events expected; 10,000 events per blob split 60/20/20 into "
        "train/validation/test; MLP 1024-1024-1 (ReLU, float32), sigmoid output, 4 bins in "
        "[0, 1], bKDE bandwidth 0.3 x bin width for the likelihood losses; Adam 1e-3, batch "
        "2000 per blob (3 steps per epoch, the same 6000 training events every epoch). "
        "Metrics on the test set (2000 events per blob) with hard histograms and exact fits: "
        "median expected CLs at mu = 1 (qtilde, background-only Asimov), sigma_mu and the "
        "uncertainty of the histosys parameter from the inverse Fisher information.",
        "",
        "## Physical references (true densities, no training)",
        "",
        f"- Likelihood ratio s/(s+b) with 4 optimally placed bins: expected CLs = "
        f"**{ref_lr:.3g}** (edges {', '.join(f'{e:.3f}' for e in ref_edges)}).",
        f"- Fine 2-D binning of the plane ({ref_2d_bins} bins): expected CLs = **{ref_2d:.3g}** "
        "(no 1-D summary can do better with the true densities; a test set of 2000 events "
        "per blob estimates the templates with sampling noise, so a test value can fall "
        "below it).",
        "",
        f"## Results (test set, {epochs} epochs)",
        "",
        "Selected model = best validation expected CLs over the epochs (the test set never "
        "selects). Median over seeds, with the min-max range. The step times were taken "
        "while the study ran (the machine was shared); `docs/benchmarks.md` has quiet, "
        "side-by-side step timings.",
        "",
    ]
    if prefixed:
        lines += [
            f"{prefixed} of the runs are the first {epochs} epochs of the longer runs under "
            "`--prefix-runs` (the same config but for the number of epochs: the batches "
            "depend on the seed and the epoch only, so those epochs are this study's run; "
            "the selection is the training loop's own best epoch so far, its `best_epoch` "
            f"of epoch {epochs}).",
            "",
        ]
    lines += _table(results, at_paper=False)
    if any(r["at_paper_epochs"] is not None for r in results.values()):
        lines += [
            "",
            f"## The same runs at {PAPER_EPOCHS} epochs (the neos paper's setting, 45 Adam steps)",
            "",
            f"From the first {PAPER_EPOCHS} epochs of the runs above (the model the training "
            f"loop had selected by epoch {PAPER_EPOCHS}).",
            "",
            *_table(results, at_paper=True),
        ]
    lines += _below_bound(results, ref_2d)
    lines += _convergence_findings(results, epochs, ref_2d)
    cls_label = next((k for k, v in results.items() if v["loss"] == "cls"), None)
    if cls_label and epochs == PAPER_EPOCHS:
        med = float(np.median(results[cls_label]["selected"]["expected_cls"]))
        ok = "met" if med <= 2e-6 else "NOT met"
        lines += [
            "",
            f"Acceptance (CLs-trained median expected CLs <= 2e-6): **{ok}** ({med:.3g}; "
            f"reference neos reported 1.5e-6, BCE 3.8e-5).",
        ]
    lines += _objective_findings(results)
    lines += [
        "",
        "## Curves",
        "",
        "Mean over seeds (band: one standard deviation) of the test metrics after each epoch "
        "(up to the shortest run).",
        "",
        "![curves](neos-blobs.png)",
        "",
        "Per-epoch numbers: `neos-blobs.json`.",
        "",
    ]
    return "\n".join(lines)


def _below_bound(results: dict, bound: float) -> list[str]:
    """Selected test CLs below the 2-D physical bound, per row (at the end and at
    :data:`PAPER_EPOCHS`): impossible for the true densities, so test-set noise."""
    out = []
    for label, r in results.items():
        n = sum(c < bound for c in r["selected"]["expected_cls"])
        p = r["at_paper_epochs"]
        m = sum(c < bound for c in p["expected_cls"]) if p else 0
        if n or m:
            out.append(
                f"{label}: {n} of {len(r['selected']['expected_cls'])}"
                + (f" ({m} at {PAPER_EPOCHS} epochs)" if p else "")
            )
    if not out:
        return []
    return [
        "",
        f"Selected models with a test CLs below the 2-D bound {_fmt(bound)} (impossible for "
        "the true densities: the test set's sampling noise, typically a bin with signal and "
        "almost no simulated background, see the smallest-background column; the "
        "validation set that selects has the same noise, so the selection can favour such "
        "bins): " + "; ".join(out) + ".",
    ]


def _convergence_findings(results: dict, epochs: int, bound: float) -> list[str]:
    """Does training longer make the CLs loss the best on expected CLs, and does the log-CLs
    fix (:data:`FIXES`) reach a median of 5e-7? Computed from the table; only for a study
    longer than the paper's with a CLs row."""
    by_loss = {v["loss"]: k for k, v in results.items()}
    if epochs <= PAPER_EPOCHS or "cls" not in by_loss:
        return []

    def med(label, key="expected_cls"):
        return float(np.median(results[label]["selected"][key]))

    best = min(results, key=med)
    physical = [k for k in results if med(k) >= bound]
    cls = by_loss["cls"]
    lines = [
        "",
        "## Findings: the CLs loss at convergence",
        "",
        f"- Best median expected CLs after up to {epochs} epochs: **{best}** ({_fmt(med(best))})"
        + (
            f", below the 2-D bound (test-set noise, see above); the best median at or above "
            f"the bound: **{min(physical, key=med)}** ({_fmt(med(min(physical, key=med)))})"
            if med(best) < bound and physical
            else ""
        )
        + "; "
        f"the CLs loss: {_fmt(med(cls))}, selected at epoch "
        f"{np.median(results[cls]['best_epochs']):.0f} (median) of {epochs}"
        + (
            " (still improving at the end: not converged)"
            if np.median(results[cls]["best_epochs"]) >= epochs - 2
            else ""
        )
        + ".",
    ]
    paper = {k: r["at_paper_epochs"] for k, r in results.items() if r["at_paper_epochs"]}
    if cls in paper:
        p = float(np.median(paper[cls]["expected_cls"]))
        lines.append(
            f"- The CLs loss from {PAPER_EPOCHS} to {epochs} epochs: {_fmt(p)} -> "
            f"{_fmt(med(cls))} ({med(cls) / p:.2g}x)."
        )
    fix = next((by_loss[v] for v in FIXES.values() if v in by_loss), None)
    if fix is not None:
        a, b = results[fix]["selected"]["expected_cls"], results[cls]["selected"]["expected_cls"]
        n = min(len(a), len(b))
        wins = sum(a[i] <= b[i] for i in range(n))
        ok = "met" if med(fix) <= 5e-7 else "NOT met"
        lines.append(
            f"- {fix}: median {_fmt(med(fix))} = {med(fix) / med(cls):.2g}x the CLs loss's, "
            f"better on {wins} of {n} seeds (same seed = same data and initial network), "
            f"selected at epoch {np.median(results[fix]['best_epochs']):.0f} (median)"
            + (
                f"; at {PAPER_EPOCHS} epochs already {_fmt(np.median(paper[fix]['expected_cls']))}"
                if fix in paper
                else ""
            )
            + f". Target median <= 5e-7: **{ok}**."
        )
        da = [x for x in results[cls]["adam_step_ratio"] if x is not None]
        db = [x for x in results[fix]["adam_step_ratio"] if x is not None]
        if da and db:
            ra, rb = [x["step_ratio"] for x in da], [x["step_ratio"] for x in db]
            eps = np.median([x["below_eps"] for x in da])
            fl = np.array(results[cls]["first_last_loss"])
            first, last = np.median(fl[:, 0]), np.median(fl[:, 1])
            slow = np.median(ra) < 0.1 * np.median(rb)
            lines.append(
                "- Adam's state after the last step (`adam_step_ratio`): the median over the "
                "weights of |m_hat| / (sqrt(v_hat) + eps), Adam's step in units of the "
                f"learning rate, is {_fmt(np.median(ra))} for the CLs loss and "
                f"{_fmt(np.median(rb))} for {fix} (median over seeds). "
                + (
                    "This is why the CLs loss is slow: Adam's second moment (decay 0.999, a "
                    "memory of ~1000 steps, longer than the run) still holds the gradients "
                    "of the first epoch, when the training loss (soft CLs) was "
                    f"{_fmt(first)} (median over seeds; {_fmt(last)} in the last epoch); the "
                    "current gradient is divided by that memory, so the CLs loss takes ever "
                    "smaller steps as it improves (while it is still improving: see its "
                    "selected epoch). The log's gradient is the CLs gradient divided by CLs: "
                    "it does not shrink by the factor CLs fell by, so Adam's memory does not "
                    "damp its steps by that factor."
                    if slow
                    else "Not a factor 10 apart: Adam's memory of early gradients does not "
                    "explain the difference here."
                )
                + f" sqrt(v_hat) is below Adam's eps = 1e-8 for {100 * eps:.0f}% of the "
                "weights (median over seeds, CLs loss)."
            )
        soft = [
            (fl[1], v)
            for fl, v in zip(
                results[cls]["first_last_loss"], results[cls]["last_val_cls"], strict=True
            )
        ]
        soft_fix = [
            (np.exp(fl[1]), v)
            for fl, v in zip(
                results[fix]["first_last_loss"], results[fix]["last_val_cls"], strict=True
            )
        ]
        lines.append(
            "- Soft vs hard histograms, last epoch (median over seeds): the CLs loss's training "
            f"loss (soft histograms, bandwidth 0.3 x bin width, training batches) is "
            f"{_fmt(np.median([a for a, _ in soft]))} against a hard-histogram validation CLs "
            f"of {_fmt(np.median([b for _, b in soft]))}; for {fix}, exp(loss) = "
            f"{_fmt(np.median([a for a, _ in soft_fix]))} against "
            f"{_fmt(np.median([b for _, b in soft_fix]))}. The bandwidth was not varied "
            "(compute)."
        )
    return lines


def _objective_findings(results: dict) -> list[str]:
    """The answer for the :data:`OBJECTIVES` rows, computed from the table: at least as good
    on CLs as the CLs loss (median, and seed by seed: the same seed is the same data and
    initial network), and sigma_gamma at least the CLs loss's (no more constraint on gamma)?"""
    base = next((k for k, v in results.items() if v["loss"] == "cls"), None)
    objectives = [k for k, v in results.items() if v["run"] in {s for s, _ in OBJECTIVES.values()}]
    if base is None or not objectives:
        return []
    b = results[base]["selected"]
    b_cls, b_gamma = np.median(b["expected_cls"]), np.median(b["sigma_bkg_shape"])
    lines = [
        "",
        "## Objectives with nuisance-parameter terms (neos section 4)",
        "",
        f"Against the CLs loss (median selected CLs {_fmt(b_cls)}, sigma_gamma "
        f"{_fmt(b_gamma)}): 'as good on CLs' = median selected CLs <= the CLs loss's; "
        "'gamma kept' = median sigma_gamma >= the CLs loss's (gamma constrained no more than "
        "by the CLs-trained observable; 1 = not constrained by the data at all).",
        "",
        "| objective | median CLs / CLs loss's | seeds with CLs <= CLs loss's | median sigma_gamma "
        "| median abs(1 - sigma_gamma) | as good on CLs | gamma kept |",
        "|---|---|---|---|---|---|---|",
    ]
    found = []
    for label in objectives:
        r = results[label]["selected"]
        cls, gamma = np.median(r["expected_cls"]), np.median(r["sigma_bkg_shape"])
        n = min(len(r["expected_cls"]), len(b["expected_cls"]))
        wins = sum(r["expected_cls"][i] <= b["expected_cls"][i] for i in range(n))
        good, kept = cls <= b_cls, gamma >= b_gamma
        if good and kept:
            found.append(label)
        lines.append(
            f"| {label} | {cls / b_cls:.3g} | {wins} of {n} | {_fmt(gamma)} | "
            f"{_fmt(abs(1 - gamma))} | {'yes' if good else 'no'} | {'yes' if kept else 'no'} |"
        )
    lines += [
        "",
        (
            "**An objective at least as good on CLs that keeps sigma_gamma at least as close "
            f"to 1: {', '.join(found)}.**"
            if found
            else "**No objective here is both at least as good on CLs and keeps sigma_gamma "
            "as close to 1 as the CLs loss: no gain over training on CLs alone.**"
        ),
    ]
    return lines
