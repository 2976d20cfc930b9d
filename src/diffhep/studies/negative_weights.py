"""``diffhep study negative-weights``: training with negative event weights, strategy by
strategy.

On the 2-D toy :func:`diffhep.problems.weight_toys.negweight_2d` (the background has 20% negative
weights, all around one point on the signal's flank where positive- and negative-weight
events nearly cancel; its net density and the true posterior are known), the talk's network
(5 x 100 ReLU, sigmoid output) is trained as a classifier (BCE) and on the expected CLs,
with each training weight strategy of the background (:mod:`diffhep.weights.weighting`: signed, abs,
drop-negative, ignore, learned, and learned-joint: the weight networks trained with the
analysis, :mod:`diffhep.weights.joint`), 5,000 events per class (60/20/20). Two-stage
(learned) and joint (learned-joint) weights are also trained on a reduced budget: a quarter
of the epochs, or 1,000 events per class. A *stress test* trains the classifier on 500
events per class for 600 epochs (signed, abs, learned, learned-joint), where the network can
resolve single events.

The learned weights of every learned and learned-joint run are verified on the training
split against the signed ones (:func:`diffhep.weights.verify.verify`, before normalisation):
sum ratio, the difference of the sums over sqrt(sum w^2), per-feature chi2/ndf, p-values and
the largest |pull|; for joint runs at the selected epoch and at the last (the weight networks
keep training), for two-stage runs the weights fitted again with the run's seed (checked
against the sum ratio in its ``summary.json``).

Every model, the one selected on the validation CLs and the last epoch's, is evaluated with
the *signed* weights on an independent sample of 100,000 events per class (so that the
comparison is not limited by the test split's statistics):

- sensitivity: expected Z0 and CLs of a 5-bin fit of its output (hard histograms, exact
  fits), next to the true posterior in the same bins;
- calibration: the expected calibration error (class-balanced signed weights,
  :func:`diffhep.weights.calibration.reliability`) of the raw output and after isotonic regression
  fitted on the run's validation split (:func:`diffhep.weights.calibration.fit_isotonic`; the CLs
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
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from ..analysis import losses as L
from ..analysis.histograms import hard_histogram
from ..nn.training import TrainState, load_checkpoint
from ..problems.weight_toys import NEG2D_REGION, negweight_2d, negweight_2d_densities
from ..runs import joint
from ..runs.config import load_config
from ..runs.prepare import prepare
from ..runs.results import read_history
from ..runs.train import run_optimizer, train_run
from ..types import Events
from ..weights.calibration import fit_isotonic, reliability
from ..weights.reweight import NegativeMeanWeightWarning, learn_positive_weights
from ..weights.verify import verify
from ..writers import write_atomic
from .common import DEFAULT_OUT, shipped_config
from .negative_weights_report import EVAL_EVENTS, NBINS, markdown

__all__ = ["STRATEGY_LABELS", "negative_weights_study"]

STRATEGY_LABELS = ("signed", "abs", "drop-negative", "ignore", "learned", "learned-joint")
#: the config of a strategy label that is not a strategy name
_WEIGHTS = {"learned-joint": "{strategy: learned, joint: true}"}
LOSSES = {"BCE classifier": "bce", "CLs-trained": "cls"}
STRESS = {  # the stress test: few events, many epochs
    "strategies": ("signed", "abs", "learned", "learned-joint"),
    "overrides": ("data.n_per_blob=500", "training.epochs=600", "training.batch_size=300"),
}
#: Joint against two-stage learned weights on a reduced budget: a quarter of the epochs
#: (5,000 events per class), or 1,000 events per class (all epochs).
REDUCED = {"strategies": ("learned", "learned-joint"), "epoch_divisor": 4, "events": 1000}
CLEAR_EVERY = 6  # runs between clearing JAX's compilation caches
REGION_RADIUS = 0.5  # the disk around NEG2D_REGION of the exploitation diagnostic


def _samples_override(strategy: str) -> str:
    return (
        "analysis.samples=[{name: signal, role: signal, yield: 50}, {name: background, "
        f"role: background, yield: 1000, weights: {_WEIGHTS.get(strategy, strategy)}}}]"
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


def _bce_terms(logits, y):
    """Per-event BCE from logits (exact where the sigmoid rounds to 0 or 1)."""
    return np.where(y == 1, np.logaddexp(0.0, -logits), np.logaddexp(0.0, logits))


def _truth_logit(x):
    d = negweight_2d_densities(x)
    return np.log(d["signal"]) - np.log(d["net_background"])


@eqx.filter_jit
def _apply(observable, x):
    return observable(x)


@eqx.filter_jit
def _logits(observable, x):
    return observable.logits(x)


def _scores(obs, events, name):
    x = np.asarray(events[name].x)
    return np.asarray(_apply(obs, x), np.float64), x, np.asarray(events[name].w, np.float64)


@eqx.filter_jit
def _model_metrics(model):
    """Expected Z0 and CLs of a model (one compilation: every model has the same structure)."""
    return L.discovery_significance(model), L.expected_cls(model)


def _binned_metrics(pipe, scores: dict, events) -> dict:
    """Z0 and expected CLs of ``{event set: score}`` in 5 equal bins on [0, 1] (hard
    histograms with the signed weights; ``expected_cls`` equals the hypotest's median)."""
    edges = np.linspace(0.0, 1.0, NBINS + 1)
    hists = {}
    for name in pipe.analysis.event_sets:
        w = np.asarray(events[name].w, np.float64)
        hists[("SR", name)] = tuple(np.asarray(h) for h in hard_histogram(scores[name], edges, w))
    z0, cls = _model_metrics(pipe.model(hists))
    return {"z0": float(z0), "expected_cls": float(cls)}


def _truth_metrics(pipe, events) -> dict:
    """Z0 and expected CLs of the true posterior in the same 5 equal bins."""
    scores = {
        n: negweight_2d_densities(np.asarray(events[n].x, np.float64))["posterior"]
        for n in pipe.analysis.event_sets
    }
    return _binned_metrics(pipe, scores, events)


def _last_state(cfg, run_dir, params, train=None, joint_sets=None):
    """The last epoch's trained state from the run's checkpoint: the analysis's parameters,
    or :class:`~diffhep.runs.joint.WithWeights` when the checkpoint also holds jointly
    trained weight networks for ``joint_sets`` of ``train``."""
    opt = run_optimizer(cfg, params)
    if joint_sets:
        params = joint.create(cfg, params, train, joint_sets)
        opt = joint.joint_optimizer(opt, joint.options(cfg).learning_rate)
    like = TrainState(params, opt.init(eqx.filter(params, eqx.is_inexact_array)), params)
    return load_checkpoint(Path(run_dir), like).params


def _weight_check(verification: dict, sum_ratio: float) -> dict:
    """The unbiasedness of learned weights from :func:`diffhep.weights.verify.verify` (training
    split, before normalisation): sum ratio, the difference of the sums over the signed sum's
    uncertainty sqrt(sum w^2) and verify's pull of it, per feature chi2/ndf, p-value and max
    |pull|."""
    g, feats = verification["global"], verification["features"]
    return {
        "sum_ratio": sum_ratio,
        "sum_sigma": (g["sum_w_new"] - g["sum_w_orig"]) / g["uncertainty_orig"],
        "sum_pull": g["pull"],
        "chi2_ndf": {k: v["chi2_ndf"] for k, v in feats.items()},
        "p_value": {k: v["p_value"] for k, v in feats.items()},
        "max_pull": max(v["max_abs_pull"] for v in feats.values()),
    }


def _two_stage_check(cfg, pipe, raw_train, summary, cache) -> dict:
    """The two-stage learned weights of the run, fitted again as
    :func:`~diffhep.weights.weighting.apply_strategies` did (background: the first sample
    by name, seed offset 0; deterministic), verified like the joint ones. Checked to be the
    run's weights through their sum ratio recorded in ``summary.json``."""
    key = ("two-stage", cfg.seed, cfg.data.n_per_blob)
    if key not in cache:
        x = np.asarray(raw_train["background"].x)
        w = np.asarray(raw_train["background"].w, np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NegativeMeanWeightWarning)  # the run warned
            learned = learn_positive_weights(x, w, seed=cfg.seed).weights
        v = verify(x, w, learned, names=list(pipe.features), inputs=range(x.shape[1]))
        cache[key] = _weight_check(v, float(learned.sum() / w.sum()))
    out = cache[key]
    recorded = summary["training_weights"]["event_sets"]["background"]["learned_sum_ratio"]
    if abs(out["sum_ratio"] - recorded) > 1e-9:
        raise RuntimeError(
            f"the refitted two-stage weights are not the run's (sum ratio {out['sum_ratio']} "
            f"vs {recorded} in summary.json)"
        )
    return out


def _evaluate(pipe, params, validation, raw_train, evaluation) -> dict:
    """Sensitivity, calibration and the exploitation diagnostic of one model."""
    obs = params.observable
    scores = {n: _scores(obs, evaluation, n)[0] for n in pipe.analysis.event_sets}
    out = _binned_metrics(pipe, scores, evaluation)
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
    # the talk's mechanism: the background loss -log(1 - f) = softplus(logit) of negative-
    # minus positive-weight events near the cancellation point, training split minus the
    # independent sample
    diffs = {}
    for label, events in (("train", raw_train), ("eval", evaluation)):
        x_b, w_b = np.asarray(events["background"].x), np.asarray(events["background"].w)
        loss_b = np.logaddexp(0.0, np.asarray(_logits(obs, x_b), np.float64))
        near = np.linalg.norm(x_b - np.asarray(NEG2D_REGION), axis=1) < REGION_RADIUS
        diffs[label] = float(loss_b[near & (w_b < 0)].mean() - loss_b[near & (w_b > 0)].mean())
    out["exploitation"] = diffs["train"] - diffs["eval"]
    # signed, class-balanced BCE of the network and of the true posterior on the training
    # events with their original signed weights (from logits: the sigmoid saturates)
    xs, xb = np.asarray(raw_train["signal"].x), np.asarray(raw_train["background"].x)
    wl, yl = _balanced(np.asarray(raw_train["signal"].w), np.asarray(raw_train["background"].w))
    x_all = np.concatenate([xs, xb])
    logits = np.asarray(_logits(obs, x_all), np.float64)
    out["train_bce"] = float(np.sum(wl * _bce_terms(logits, yl)))
    out["train_bce_truth"] = float(np.sum(wl * _bce_terms(_truth_logit(x_all), yl)))
    return out


def _prepared(cfg, cache):
    """Pipeline, signed splits and the parameter structure of a (seed, size): the same for
    every strategy and loss (prepared once, with signed weights: no learned weights fitted)."""
    key = (cfg.seed, cfg.data.n_per_blob)
    if key not in cache:
        signed = cfg.model_copy(deep=True)
        for s in signed.analysis.samples:
            s.weights = "signed"
        cache[key] = prepare(signed)
    return cache[key]


def _one_run(cfg, run_dir, cache) -> dict:
    """Train (or reuse) one run and evaluate its selected and last models."""
    trained = not (Path(run_dir) / "summary.json").is_file()
    cpu = time.process_time()
    summary = train_run(
        cfg, run_dir, progress=False, track_test=True, plots=False, option="--runs-dir"
    )
    cpu = time.process_time() - cpu
    pipe, parts, like = _prepared(cfg, cache)
    params = eqx.tree_deserialise_leaves(Path(run_dir) / "model.eqx", like)
    if ("eval", cfg.seed) not in cache:
        cache[("eval", cfg.seed)] = _eval_sample(cfg, cfg.seed)
        cache[("truth", cfg.seed)] = _truth_metrics(pipe, cache[("eval", cfg.seed)])
    raw_train, evaluation = parts["train"], cache[("eval", cfg.seed)]
    history = read_history(run_dir)
    weights = summary.get("training_weights", {})
    bkg = weights.get("event_sets", {}).get("background", {})
    rec = {
        "best_epoch": summary["best_epoch"],
        "train_loss_last": history[-1]["loss"],
        "train_loss_min": min(h["loss"] for h in history),
        "learned_negative_fraction": bkg.get("learned_negative_fraction"),
        "learned_sum_ratio": bkg.get("learned_sum_ratio"),
        # CPU seconds of the training run in this process (None: reused from disk)
        "train_cpu_seconds": cpu if trained else None,
    }
    joint_sets = weights.get("joint")
    state = _last_state(cfg, run_dir, like, raw_train, joint_sets)
    if joint_sets:  # the jointly learned weights at the selected and the last epoch
        sel = weights["joint_report"]["background"]
        rec["learned_negative_fraction"] = sel["zero_fraction"]
        rec["weights_selected"] = _weight_check(sel["verification"], sel["sum_ratio"])
        last = joint.report(state, raw_train, pipe.features)["background"]
        rec["weights_last"] = _weight_check(last["verification"], last["sum_ratio"])
    elif bkg.get("strategy") == "learned":  # fixed weights: the same at every epoch
        rec["weights_selected"] = _two_stage_check(cfg, pipe, raw_train, summary, cache)
        rec["weights_last"] = rec["weights_selected"]
    rec["selected"] = _evaluate(pipe, params, parts["validation"], raw_train, evaluation)
    rec["last"] = _evaluate(
        pipe, joint.analysis_params(state), parts["validation"], raw_train, evaluation
    )
    return rec, history


def negative_weights_study(
    out: str | Path = DEFAULT_OUT,
    *,
    seeds: int = 3,
    epochs: int = 60,
    overrides=(),
    runs_dir: str | Path | None = None,
    stress: bool = True,
    reduced: bool = True,
    joint_only: bool = False,
) -> Path:
    """Run the study and write ``negative-weights.md``, ``.json`` and ``.png`` into ``out``.

    Runs go to ``runs_dir`` (default ``runs/negative-weights``); finished runs are reused.
    ``reduced`` adds the joint-vs-two-stage rows on a reduced budget (:data:`REDUCED`),
    ``stress`` the stress test (:data:`STRESS`). ``joint_only``: learned and learned-joint
    only, on the full and the reduced budgets, no stress test, into
    ``negative-weights-joint.md``, ``.json`` and ``.png`` (the comparison of issue 25 at a
    third of the full study's cost).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir) if runs_dir else Path("runs") / "negative-weights"
    labels = REDUCED["strategies"] if joint_only else STRATEGY_LABELS
    stress = stress and not joint_only
    stem = "negative-weights-joint" if joint_only else "negative-weights"
    grids = {label: (loss, labels, [f"training.epochs={epochs}"]) for label, loss in LOSSES.items()}
    if reduced:
        short = max(1, epochs // REDUCED["epoch_divisor"])
        n = REDUCED["events"]
        for label, loss in LOSSES.items():
            grids[f"{label}, {short} epochs"] = (
                loss,
                REDUCED["strategies"],
                [f"training.epochs={short}"],
            )
        for label, loss in LOSSES.items():
            grids[f"{label}, {n:,} events per class"] = (
                loss,
                REDUCED["strategies"],
                [f"training.epochs={epochs}", f"data.n_per_blob={n}"],
            )
    if stress:
        grids["stress test (BCE, 500 events per class, 600 epochs)"] = (
            "bce",
            STRESS["strategies"],
            list(STRESS["overrides"]),
        )
    results: dict = {}
    histories: dict = {}
    cache: dict = {}
    done = 0
    path = out / f"{stem}.md"
    # grid by grid, every seed, the outputs written after each grid: an interrupted study
    # leaves the finished grids' tables (and says which grids are missing)
    for label, (loss, strategies, extra) in grids.items():
        tag = _tag(label)
        for seed in range(seeds):
            for strategy in strategies:
                more = [f"training.loss={loss}", _samples_override(strategy)]
                cfg = load_config(
                    shipped_config("negative_weights"), [f"seed={seed}", *extra, *overrides, *more]
                )
                run = runs_dir / f"{tag}{loss}-{strategy}-seed{seed}"
                rec, history = _one_run(cfg, run, cache)
                done += 1
                if done % CLEAR_EVERY == 0:
                    # every training run compiles its own functions: free them now and
                    # then, or a long study exhausts the process's memory maps
                    # (vm.max_map_count) and LLVM aborts
                    jax.clear_caches()
                results.setdefault(label, {}).setdefault(strategy, []).append(rec)
                histories.setdefault(label, {}).setdefault(strategy, []).append(history)
        truth = [cache[("truth", s)] for s in range(seeds)]
        missing = [g for g in grids if g not in results]
        _plot(histories, out / f"{stem}.png")
        write_atomic(
            out / f"{stem}.json",
            json.dumps({"results": results, "truth": truth, "missing": missing}, indent=1),
        )
        text = markdown(
            results, truth, seeds, epochs, overrides, missing, stem=stem, runs_dir=runs_dir, out=out
        )
        write_atomic(path, text)
    return path


def _tag(label: str) -> str:
    """The run-name prefix of a grid (none for the full-budget grids)."""
    if "stress" in label:
        return "stress-"
    if label.endswith(" epochs"):
        return f"ep{label.rsplit(', ', 1)[1].split()[0]}-"
    if label.endswith(" events per class"):
        return f"n{label.rsplit(', ', 1)[1].split()[0].replace(',', '')}-"
    return ""


def _plot(histories, path):
    from ..plotting.runs import new_figure, save_figure

    ncols = min(4, len(histories))
    nrows = -(-len(histories) // ncols)
    fig = new_figure((4.2 * ncols, 3.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(histories) :]:
        ax.set_visible(False)
    for ax, (label, by_strategy) in zip(axes, histories.items(), strict=False):
        for strategy, runs in by_strategy.items():
            n = min(len(h) for h in runs)
            loss = np.array([[h[e]["loss"] for e in range(n)] for h in runs])
            ax.plot(np.arange(1, n + 1), np.median(loss, 0), label=strategy)
        ax.set_title(label, fontsize="small")
        if "cls" in label.lower():
            ax.set_yscale("log")  # the expected CLs of the training batches
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)
