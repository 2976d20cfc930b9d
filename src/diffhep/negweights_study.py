"""``diffhep study negative-weights``: training with negative event weights, strategy by
strategy.

On the 2-D toy :func:`diffhep.weight_toys.negweight_2d` (the background has 20% negative
weights, all around one point on the signal's flank where positive- and negative-weight
events nearly cancel; its net density and the true posterior are known), the talk's network
(5 x 100 ReLU, sigmoid output) is trained as a classifier (BCE) and on the expected CLs,
with each training weight strategy of the background (:mod:`diffhep.weighting`: signed, abs,
drop-negative, ignore, learned), 5,000 events per class (60/20/20). A *stress test* trains
the classifier on 500 events per class for 600 epochs (signed, abs, learned), where the
network can resolve single events.

Every model, the one selected on the validation CLs and the last epoch's, is evaluated with
the *signed* weights on an independent sample of 100,000 events per class (so that the
comparison is not limited by the test split's statistics):

- sensitivity: expected Z0 and CLs of a 5-bin fit of its output (hard histograms, exact
  fits), next to the true posterior in the same bins;
- calibration: the expected calibration error (class-balanced signed weights,
  :func:`diffhep.calibration.reliability`) of the raw output and after isotonic regression
  fitted on the run's validation split (:func:`diffhep.calibration.fit_isotonic`; the CLs
  observable may order signal low, the direction is fitted), and the mean distance to the
  true posterior ``p_s / (p_s + p_net)``;
- the talk's mechanism: the signed training loss can be lowered without bound by raising
  the loss of negative-weight events the network singles out. The last epoch's training
  loss next to the loss of the true posterior on the same events (the minimum in
  expectation), and, within 0.5 of the cancellation point, the mean output on
  negative-weight minus positive-weight background events of the training split minus the
  same on the independent sample ("exploitation").
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import losses as L
from .calibration import fit_isotonic, reliability
from .config import load_config
from .datasets import split
from .histograms import hard_histogram
from .pipeline import Events
from .runs import _analysis, _optimizer, load_events, load_run, train_run
from .training import TrainState, load_checkpoint
from .weight_toys import NEG2D_REGION, negweight_2d, negweight_2d_densities

__all__ = ["STRATEGY_LABELS", "negative_weights_study"]

STRATEGY_LABELS = ("signed", "abs", "drop-negative", "ignore", "learned")
LOSSES = {"BCE classifier": "bce", "CLs-trained": "cls"}
STRESS = {  # the stress test: few events, many epochs
    "strategies": ("signed", "abs", "learned"),
    "overrides": ("data.n_per_blob=500", "training.epochs=600", "training.batch_size=300"),
}
EVAL_EVENTS = 100_000  # per class, independent of the training data
REGION_RADIUS = 0.5  # the disk around NEG2D_REGION of the exploitation diagnostic
NBINS = 5


def _base_config() -> Path:
    return Path(str(resources.files("diffhep") / "data" / "negative_weights.yaml"))


def _samples_override(strategy: str) -> str:
    return (
        "analysis.samples=[{name: signal, role: signal, yield: 50}, {name: background, "
        f"role: background, yield: 1000, weights: {strategy}}}]"
    )


def _eval_sample(cfg, seed: int) -> dict:
    """The independent evaluation sample, normalised to the config's yields."""
    raw = negweight_2d(EVAL_EVENTS, seed=10_000 + seed)
    out = {}
    for s in cfg.analysis.samples:
        x, w = raw[s.name]
        out[s.name] = Events(x, w * (s.yield_ / np.sum(w)))
    return out


def _balanced(ws, wb):
    """Class-balanced weights (each class sums to 1) and labels, signal first."""
    w = np.concatenate([ws / ws.sum(), wb / wb.sum()])
    y = np.concatenate([np.ones(len(ws)), np.zeros(len(wb))])
    return w, y


def _bce(f, y, w):
    f = np.clip(f, 1e-12, 1 - 1e-12)
    return float(-np.sum(w * (y * np.log(f) + (1 - y) * np.log(1 - f))))


@eqx.filter_jit
def _apply(observable, x):
    return observable(x)


def _scores(obs, events, name):
    x = np.asarray(events[name].x)
    return np.asarray(_apply(obs, x), np.float64), x, np.asarray(events[name].w, np.float64)


def _truth_metrics(pipe, events) -> dict:
    """Z0 and expected CLs of the true posterior in the same 5 equal bins (signed weights)."""
    edges = np.linspace(0.0, 1.0, NBINS + 1)
    hists = {}
    for name in pipe.analysis.event_sets:
        x, w = np.asarray(events[name].x, np.float64), np.asarray(events[name].w, np.float64)
        f = negweight_2d_densities(x)["posterior"]
        hists[("SR", name)] = tuple(np.asarray(h) for h in hard_histogram(f, edges, w))
    model = pipe.model(hists)
    return {
        "z0": float(L.discovery_significance(model)),
        "expected_cls": float(L.expected_cls(model)),
    }


def _last_params(cfg, run_dir, params):
    """The last epoch's parameters from the run's checkpoint."""
    opt = _optimizer(cfg, params)
    like = TrainState(params, opt.init(eqx.filter(params, eqx.is_inexact_array)), params)
    return load_checkpoint(Path(run_dir), like).params


def _evaluate(pipe, params, validation, raw_train, evaluation) -> dict:
    """Sensitivity, calibration and the exploitation diagnostic of one model."""
    obs = params.observable
    m = pipe.metrics(
        params, {k: Events(jnp.asarray(v.x), jnp.asarray(v.w)) for k, v in evaluation.items()}
    )
    out = {"z0": float(m["z0"]), "expected_cls": float(m["expected_cls"])}
    (fs, _, ws), (fb, _, wb) = (
        _scores(obs, validation, "signal"),
        _scores(obs, validation, "background"),
    )
    wv, yv = _balanced(ws, wb)
    cal = fit_isotonic(np.concatenate([fs, fb]), yv, wv, increasing=None)
    (fs, xs, ws), (fb, xb, wb) = (
        _scores(obs, evaluation, "signal"),
        _scores(obs, evaluation, "background"),
    )
    w, y = _balanced(ws, wb)
    f = np.concatenate([fs, fb])
    fc = cal(f)
    truth = negweight_2d_densities(np.concatenate([xs, xb]))["posterior"]
    out["ece_raw"] = reliability(f, y, w)["ece"]
    out["ece_isotonic"] = reliability(fc, y, w)["ece"]
    out["dist_raw"] = float(np.sum(w * np.abs(f - truth)) / np.sum(w))
    out["dist_isotonic"] = float(np.sum(w * np.abs(fc - truth)) / np.sum(w))
    diffs = {}
    for label, events in (("train", raw_train), ("eval", evaluation)):
        f_b, x_b, w_b = _scores(obs, events, "background")
        near = np.linalg.norm(x_b - np.asarray(NEG2D_REGION), axis=1) < REGION_RADIUS
        diffs[label] = float(f_b[near & (w_b < 0)].mean() - f_b[near & (w_b > 0)].mean())
    out["exploitation"] = diffs["train"] - diffs["eval"]
    # signed BCE of the network and of the true posterior on the (signed) training events
    (f_s, x_s, w_s), (f_b, x_b, w_b) = (
        _scores(obs, raw_train, n) for n in ("signal", "background")
    )
    wl, yl = _balanced(w_s, w_b)
    t_all = negweight_2d_densities(np.concatenate([x_s, x_b]))["posterior"]
    out["train_bce"] = _bce(np.concatenate([f_s, f_b]), yl, wl)
    out["train_bce_truth"] = _bce(t_all, yl, wl)
    return out


def _one_run(cfg, run_dir, seed_cache) -> dict:
    """Train (or reuse) one run and evaluate its selected and last models."""
    summary = train_run(cfg, run_dir, progress=False, track_test=True, plots=False)
    _, pipe, parts, params = load_run(run_dir)
    key = (cfg.seed, cfg.data.n_per_blob)
    if key not in seed_cache:  # the signed training split (before any strategy)
        events = load_events(cfg, _analysis(cfg))[1]
        seed_cache[key] = split(events, cfg.data.split.model_dump(), cfg.seed)["train"]
    if ("eval", cfg.seed) not in seed_cache:
        seed_cache[("eval", cfg.seed)] = _eval_sample(cfg, cfg.seed)
        seed_cache[("truth", cfg.seed)] = _truth_metrics(pipe, seed_cache[("eval", cfg.seed)])
    raw_train, evaluation = seed_cache[key], seed_cache[("eval", cfg.seed)]
    history = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    rec = {
        "best_epoch": summary["best_epoch"],
        "train_loss_last": history[-1]["loss"],
        "train_loss_min": min(h["loss"] for h in history),
    }
    rec["selected"] = _evaluate(pipe, params, parts["validation"], raw_train, evaluation)
    last = _last_params(cfg, run_dir, params)
    rec["last"] = _evaluate(pipe, last, parts["validation"], raw_train, evaluation)
    return rec, history


def negative_weights_study(
    out: str | Path = "docs/studies",
    *,
    seeds: int = 3,
    epochs: int = 60,
    overrides=(),
    runs_dir: str | Path | None = None,
    stress: bool = True,
) -> Path:
    """Run the study and write ``negative-weights.md``, ``.json`` and ``.png`` into ``out``.

    Runs go to ``runs_dir`` (default ``runs/negative-weights``); finished runs are reused.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir) if runs_dir else Path("runs") / "negative-weights"
    grids = {
        label: (loss, STRATEGY_LABELS, [f"training.epochs={epochs}"])
        for label, loss in LOSSES.items()
    }
    if stress:
        grids["stress test (BCE, 500 events per class, 600 epochs)"] = (
            "bce",
            STRESS["strategies"],
            list(STRESS["overrides"]),
        )
    results: dict = {}
    histories: dict = {}
    cache: dict = {}
    for seed in range(seeds):
        for label, (loss, strategies, extra) in grids.items():
            tag = "stress-" if "stress" in label else ""
            for strategy in strategies:
                more = [f"training.loss={loss}", _samples_override(strategy)]
                cfg = load_config(_base_config(), [f"seed={seed}", *extra, *overrides, *more])
                run = runs_dir / f"{tag}{loss}-{strategy}-seed{seed}"
                rec, history = _one_run(cfg, run, cache)
                results.setdefault(label, {}).setdefault(strategy, []).append(rec)
                histories.setdefault(label, {}).setdefault(strategy, []).append(history)
    truth = [cache[("truth", s)] for s in range(seeds)]
    _plot(histories, out / "negative-weights.png")
    (out / "negative-weights.json").write_text(
        json.dumps({"results": results, "truth": truth}, indent=1)
    )
    path = out / "negative-weights.md"
    path.write_text(_markdown(results, truth, seeds, epochs, overrides))
    return path


def _plot(histories, path):
    from .plotting import _new_figure, _save

    fig = _new_figure((4.2 * len(histories), 3.8))
    axes = fig.subplots(1, len(histories), squeeze=False)[0]
    for ax, (label, by_strategy) in zip(axes, histories.items(), strict=True):
        for strategy, runs in by_strategy.items():
            n = min(len(h) for h in runs)
            loss = np.array([[h[e]["loss"] for e in range(n)] for h in runs])
            ax.plot(np.arange(1, n + 1), np.median(loss, 0), label=strategy)
        ax.set_title(label, fontsize="small")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path)


def _med(rows, *keys):
    vals = []
    for r in rows:
        for k in keys:
            r = r[k]
        vals.append(r)
    return float(np.median(vals))


def _markdown(results, truth, seeds, epochs, overrides) -> str:
    z_truth = float(np.median([t["z0"] for t in truth]))
    cls_truth = float(np.median([t["expected_cls"] for t in truth]))
    lines = [
        "# Study: training with negative event weights",
        "",
        "Reproduce with `diffhep study negative-weights` (config "
        f"`src/diffhep/data/negative_weights.yaml`; {seeds} seeds x {epochs} epochs"
        + (f"; overrides `{' '.join(overrides)}`" if overrides else "")
        + "; finished runs under `runs/negative-weights` are reused).",
        "",
        "Setup: the toy `negweight_2d` (`diffhep.weight_toys`): signal N((1.5, 2.0), "
        "[[0.5, 0.2], [0.2, 0.5]]) with w = 1; background N(0, 9 I) (48% of its events, w = 1) "
        f"plus, around {NEG2D_REGION}, events with w = +0.5 from N(., 0.36 I) (32%) and "
        "w = -0.5 from N(., 0.2247 I) (20%): they nearly cancel, E[w|x] = 0.024 at the centre "
        "and > 0 everywhere (a physical net density). 5,000 events per class, split 60/20/20; "
        "50 signal and 1000 background events expected, 5% background normalisation "
        "uncertainty. The talk's network: MLP 5 x 100 (ReLU), sigmoid output; Adam 1e-3, "
        "batch 500; the selected model has the best validation expected CLs (signed "
        "weights). The training weight strategy applies to the background's training split "
        "only (`analysis.samples[].weights`). Stress test: 500 events per class, 600 epochs, "
        "batch 300.",
        "",
        f"Evaluation on an independent sample of {EVAL_EVENTS:,} events per class with the "
        f"signed weights (medians over seeds). Z0 and CLs: a {NBINS}-bin fit of the output "
        f"(exact fits); the true posterior in the same bins gives Z0 = **{z_truth:.3f}**, "
        f"CLs = {cls_truth:.3g}. ECE: expected calibration error (10 bins, class-balanced "
        "signed weights), raw and after isotonic regression fitted on the run's validation "
        "split; dist: mean |f - true posterior|. Signed training BCE: the class-balanced BCE "
        "of the last epoch's model on its training events with their original signed "
        "weights (what the `signed` strategy minimises); Bayes: the same for the true "
        "posterior, the minimum in expectation. "
        "Exploitation: mean output on negative- minus positive-weight background events "
        "within 0.5 of the cancellation point, training split minus independent sample.",
        "",
    ]
    for label, by_strategy in results.items():
        bce = "cls" not in label.lower()
        lines += [
            f"## {label}",
            "",
            "| strategy | Z0 selected | Z0 range | Z0 last epoch | CLs selected | ECE raw | "
            "ECE isotonic | dist raw | dist isotonic | signed training BCE (last) | Bayes | "
            "exploitation |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for strategy, rows in by_strategy.items():
            z = [r["selected"]["z0"] for r in rows]
            raw = (
                (
                    f"{_med(rows, 'selected', 'ece_raw'):.3f}",
                    f"{_med(rows, 'selected', 'dist_raw'):.3f}",
                )
                if bce
                else ("-", "-")
            )
            loss = (
                (
                    f"{_med(rows, 'last', 'train_bce'):+.3f}",
                    f"{_med(rows, 'last', 'train_bce_truth'):.3f}",
                )
                if bce
                else ("-", "-")
            )
            lines.append(
                f"| {strategy} | {np.median(z):.3f} | {min(z):.3f} - {max(z):.3f} | "
                f"{_med(rows, 'last', 'z0'):.3f} | {_med(rows, 'selected', 'expected_cls'):.3g} | "
                f"{raw[0]} | {_med(rows, 'selected', 'ece_isotonic'):.3f} | {raw[1]} | "
                f"{_med(rows, 'selected', 'dist_isotonic'):.3f} | {loss[0]} | {loss[1]} | "
                f"{_med(rows, 'last', 'exploitation'):+.3f} |"
            )
        lines.append("")
    lines += _findings(results, z_truth)
    lines += [
        "",
        "![training loss per epoch](negative-weights.png)",
        "",
        "Per-run numbers: `negative-weights.json`.",
        "",
    ]
    return "\n".join(lines)


def _findings(results, z_truth) -> list:
    """Statements computed from the tables."""
    lines = ["## Findings (computed from the tables)", ""]
    for label, by_strategy in results.items():
        ranking = sorted(by_strategy, key=lambda s: -_med(by_strategy[s], "selected", "z0"))
        lines.append(
            f"- {label}: ranking by median Z0 of the selected model: "
            + " > ".join(f"{s} ({_med(by_strategy[s], 'selected', 'z0'):.3f})" for s in ranking)
            + f"; true posterior {z_truth:.3f}."
        )
        if "signed" in by_strategy and "learned" in by_strategy and "cls" not in label.lower():
            rows = by_strategy["signed"]
            last, bayes = _med(rows, "last", "train_bce"), _med(rows, "last", "train_bce_truth")
            verdict = (
                "below it, the network fits the sample's negative weights (the talk's "
                "pathology: the loss is unbounded below)"
                if last < bayes - 0.01
                else "not below it: no sign of the pathology"
            )
            learned = _med(by_strategy["learned"], "last", "train_bce")
            lines.append(
                f"  Naive signed BCE: signed training BCE of the last model {last:+.3f} vs the "
                f"true posterior's {bayes:.3f} on the same events (learned weights: "
                f"{learned:+.3f}): {verdict}; exploitation of the last model "
                f"{_med(rows, 'last', 'exploitation'):+.3f} (learned "
                f"{_med(by_strategy['learned'], 'last', 'exploitation'):+.3f})."
            )
    return lines
