"""The report of ``diffhep study black-box``: plots and ``black-box.md`` rendered from the
run's ``black-box.json`` (:func:`render`), every number and finding computed from its tables.

Re-render an existing run (e.g. after a change of a plot) without running it again:
``python -c "from diffhep.studies.black_box_report import render; render('docs/studies')"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..plotting.search import best_so_far
from ..problems import black_box as bb
from ..writers import write_atomic
from .common import median, out_option

__all__ = ["render"]

#: Problem 2's stated tolerance: every |psi_j - psi_j*| below it (tests/test_lgso.py).
TOLERANCE = 0.1
DETECTOR_NAMES = {"lgso": "L-GSO", "lgso_scaled": "L-GSO, N = max(16, 8d), 16 hidden",
                  "tpe": "TPE", "random": "random", "grid": "grid"}  # fmt: skip


def render(out) -> Path:
    """Write the plots and ``black-box.md`` into ``out`` from ``out/black-box.json``; the
    study's seeds, epochs and search budget are read off its tables."""
    from .black_box_blobs_report import plot_blobs

    out = Path(out)
    doc = json.loads((out / "black-box.json").read_text())
    cuts = doc["cuts"]
    seeds = len(cuts["searches"]["random"])
    epochs = len(cuts["gradient"]["values"])
    budget = len(cuts["searches"]["random"][0]["values"])
    _plot_cuts(cuts, out)
    _plot_detector(doc["detector"], out / "black-box-detector.png")
    plot_blobs(doc["blobs"], out / "black-box-blobs.png")
    if "blobs_z0" in doc:
        plot_blobs(doc["blobs_z0"], out / "black-box-blobs-z0.png", metric="z0")
    path = out / "black-box.md"
    write_atomic(path, _markdown(doc, seeds, epochs, budget, out))
    return path


def _cut_curves(cuts) -> dict:
    """Per method, the median over seeds of the exact validation Z0 reached (a search's best
    so far; gradient training's and L-GSO's current iterate) against evaluations (L-GSO:
    black-box events / the events of one exact evaluation) and against seconds."""
    curves = {}
    for m, rows in cuts["searches"].items():
        vals = np.nanmedian([best_so_far(r["values"], True) for r in rows], axis=0)
        secs = np.median([np.cumsum([t or 0.0 for t in r["trial_seconds"]]) for r in rows], 0)
        curves[m] = (np.arange(1, len(vals) + 1), secs, vals)
    g = cuts["gradient"]
    n = len(g["values"])
    curves["gradient (relaxed cuts; epochs)"] = (
        np.arange(1, n + 1),
        g["seconds"] * np.arange(1, n + 1) / n,
        np.asarray(g["values"]),
    )
    rows = cuts["lgso"]
    k = min(len(r["values"]) for r in rows)
    evals = np.median([np.asarray(r["calls"][:k]) / r["events_per_evaluation"] for r in rows], 0)
    curves["L-GSO (Bernoulli surrogate)"] = (
        evals, np.median([r["stamps"][:k] for r in rows], 0),
        np.median([r["values"][:k] for r in rows], 0))  # fmt: skip
    return curves


def _plot_cuts(cuts, out: Path) -> None:
    from ..plotting.style import new_figure

    curves = _cut_curves(cuts)
    for name, axis, label in (("black-box-cuts.png", 0, "exact objective evaluations "
                               "(L-GSO: black-box events / events of one)"),
                              ("black-box-cuts-time.png", 1, "wall time (s)")):  # fmt: skip
        fig = new_figure((6.0, 4.2))
        ax = fig.subplots()
        for i, (m, c) in enumerate(curves.items()):
            ax.plot(c[axis], c[2], color=f"C{i}", label=m, drawstyle="steps-post", marker=".")
        ax.axhline(cuts["optimum"]["value"], color="k", ls="--", lw=1,
                   label="optimum (dense grid)")  # fmt: skip
        if axis == 1:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("exact validation Z0 (median over seeds)")
        ax.set_ylim(bottom=max(0.0, cuts["optimum"]["value"] - 1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        write_atomic(out / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
        fig.clear()


def _plot_detector(detector, path: Path) -> None:
    from ..plotting.style import new_figure

    fig = new_figure((12.5, 4.4))
    axes = fig.subplots(1, 2)
    for i, (m, table) in enumerate(detector.items()):
        for d, ls in zip(table, ("-", "--", "-.", ":"), strict=False):
            rows = table[d]
            k = min(len(r["curve"]["excess"]) for r in rows)
            exc = np.median([r["curve"]["excess"][:k] for r in rows], 0)
            for ax, key in zip(axes, ("calls", "seconds"), strict=True):
                x = np.median([r["curve"][key][:k] for r in rows], 0)
                ax.plot(x, exc, color=f"C{i}", ls=ls, label=f"{DETECTOR_NAMES[m]}, d = {d}")
    for ax, label in zip(axes, ("black-box events", "wall time (s)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("objective excess f(psi) / f(psi*) - 1 (median)")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper",
               fontsize="x-small")  # fmt: skip
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    fig.clear()


def _markdown(doc, seeds, epochs, budget, out=None) -> str:
    cuts, det = doc["cuts"], doc["detector"]
    opt = cuts["optimum"]["value"]
    lines = [
        "# Study: gradients, L-GSO and black-box searches (issue 24)",
        "",
        f"Reproduce with `diffhep study black-box --seeds {seeds} --epochs {epochs}"
        f"{out_option(out)}` "
        f"(search budget {budget}; runs under `runs/black-box`; problem 2: "
        f"{len(det['lgso']['1'])} seeds). Every number below comes from that one run "
        "(`black-box.json`); medians over the seeds.",
        "",
        "## Problem 1: two cut thresholds, exact validation Z0",
        "",
        "Config `src/diffhep/data/black_box_cuts.yaml` (2-D cut toy, 5000 events per sample, "
        "one counting bin, no systematics); thresholds in [-1, 3]^2. Dense-grid optimum "
        f"({cuts['optimum']['grid']}): Z0 = {opt:.4f} at "
        f"({', '.join(f'{v:.3g}' for v in cuts['optimum']['params'])}). Grid, random and TPE "
        "search the exact objective (hard cuts, exact fit); gradient training steps relaxed "
        "cuts (sigmoid, slope annealed 2 -> 50) on the z0 loss of soft yields; L-GSO treats "
        "the hard selection of the training events as a black box with a Bernoulli surrogate "
        "p(pass | x1, x2, psi) (`diffhep.studies.black_box_cuts`: a selection's output is "
        "0/1 and the significance needs only the expected pass counts) and is judged by the "
        "exact validation Z0 at its answer.",
        "",
        "| method | evaluations | best validation Z0 | of the optimum "
        "| test Z0 of the best | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for m, rows in cuts["searches"].items():
        best = float(np.median([r["best"]["value"] for r in rows]))
        test = float(np.median([r["best"]["test"] for r in rows]))
        lines.append(f"| {m} | {len(rows[0]['values'])} | {best:.4f} | {best / opt:.1%} | "
                     f"{test:.4f} | {median(rows, 'seconds'):.1f} |")  # fmt: skip
    g = cuts["gradient"]
    gbest = max(g["values"])
    gsel = g["values"][g["best_epoch"] - 1] if g.get("best_epoch") else gbest
    lg = cuts["lgso"]
    lval = median(lg, "value")
    levals = float(np.median([r["calls"][-1] / r["events_per_evaluation"] for r in lg]))
    lines += [
        f"| gradient (relaxed cuts, 1 run) | {len(g['values'])} epochs | {gsel:.4f} | "
        f"{gsel / opt:.1%} | {g['test']:.4f} | {g['seconds']:.1f} |",
        f"| L-GSO (cuts as a black box) | {median(lg, 'iterations'):.0f} iterations, "
        f"{levals:.0f} evaluation-equivalents of events | {lval:.4f} | {lval / opt:.1%} | - | "
        f"{median(lg, 'seconds'):.1f} |",
        "",
        "Gradient: the validation Z0 of the epoch chosen by the run (`select_on: z0`); L-GSO: "
        "the exact validation Z0 at its answer (the mean of its last 5 iterates; it never "
        "sees the validation split).",
        "",
        "![objective vs evaluations](black-box-cuts.png)",
        "![objective vs wall time](black-box-cuts-time.png)",
        "",
        "Curves: a search's best so far; gradient training's and L-GSO's current iterate "
        "(the gradient run's time spread evenly over its epochs). Wall times are from a "
        "machine shared with other jobs (see the load below): compare them within this run.",
        "",
        "| method (median curve) | evaluations to 99% of the optimum | seconds to 99% |",
        "|---|---|---|",
        *[f"| {m} | {a} | {b} |" for m, a, b in _to_fraction(cuts, 0.99)],
        "",
        *_blobs_section(doc),
        "## Problem 2: detector resolution against cost (known optimum)",
        "",
        "`diffhep.problems.black_box`: y = w round((x + psi e) / w), risk (y - x)^2, cost "
        "sum c_j / psi_j, optimum psi_j* = (c_j / 2)^(1/3); psi in [0.05, 3]. L-GSO with its "
        "default settings from 1.5 (N = 16 psi values of M = 64 events per iteration, 8 hidden "
        "units, whatever the number of parameters), and with N = max(16, 8 d) and 16 hidden "
        "units; "
        "TPE, random and grid search on the Monte-Carlo objective with 2000 events per trial, "
        "40 trials (grid: cell centres, 40 for 1 parameter, 6^2 for 2, 2^4 for 4, 1 for 6), "
        "the best trial by its Monte-Carlo value. Costs c_j = "
        f"{', '.join(f'{c:g}' for c in bb.COSTS)}. {len(det['lgso']['1'])} seeds per row "
        f"(medians); 'within {TOLERANCE:g}': the seeds whose answer has every "
        f"abs(psi_j - psi_j*) < {TOLERANCE:g} (the stated tolerance).",
        "",
        "| method | parameters | max abs(psi - psi*) | within "
        f"{TOLERANCE:g} | objective excess | black-box events | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, table in det.items():
        for d, rows in table.items():
            lines.append(f"| {DETECTOR_NAMES[key]} | {d} | {median(rows, 'distance'):.3f} | "
                         f"{_within(rows)}/{len(rows)} | {median(rows, 'excess'):.2%} | "
                         f"{median(rows, 'calls'):.0f} | "
                         f"{median(rows, 'seconds'):.1f} |")  # fmt: skip
    lines += ["", "![problem 2: excess vs events and wall time](black-box-detector.png)", "",
              "Curves (closed-form excess): L-GSO's current iterate; a search's best trial so "
              "far (best by its Monte-Carlo value).", ""]  # fmt: skip
    lines += _findings(doc)
    m = doc["machine"]
    lines += ["", f"The run: {m['wall_seconds']:.0f} s wall, {m['cpu_seconds']:.0f} CPU-s of "
              f"the study's process, on {m['cpu_count']} cores with load average "
              f"{m['load_start']:.1f} at the start and {m['load_end']:.1f} at the end (other "
              "jobs running: the wall times above are inflated by them, uniformly to first order)"
              + (f"; the parts {', '.join(m['reused'])} were read back from an earlier, "
                 "interrupted run of the same command (`runs/black-box/parts`), their seconds "
                 "included." if m.get("reused") else "."),
              "", "Numbers per seed: `black-box.json`.", ""]  # fmt: skip
    return "\n".join(lines)


def _blobs_section(doc) -> list[str]:
    from .black_box_blobs_report import blobs_markdown

    out = []
    for key, metric in (("blobs", "cls"), ("blobs_z0", "z0")):
        if key in doc:
            table = doc[key]
            n = len(table[next(iter(table))]["methods"]["gradient"][0]["values"])
            out += blobs_markdown(table, n, metric)
    return out


def _to_fraction(cuts, fraction):
    """Per method, the evaluations and seconds at which its median curve first reaches
    ``fraction`` of the optimum ("not reached" otherwise)."""
    out = []
    target = fraction * cuts["optimum"]["value"]
    for m, (evals, secs, vals) in _cut_curves(cuts).items():
        hit = np.flatnonzero(np.asarray(vals) >= target)
        if hit.size:
            out.append((m, f"{float(evals[hit[0]]):.0f}", f"{float(secs[hit[0]]):.1f}"))
        else:
            out.append((m, "not reached", "-"))
    return out


def _within(rows) -> int:
    """The seeds whose answer is within :data:`TOLERANCE` of psi* in every parameter."""
    return sum(r["distance"] < TOLERANCE for r in rows)


def _findings(doc) -> list[str]:
    cuts, det = doc["cuts"], doc["detector"]
    opt = cuts["optimum"]["value"]
    best = {m: float(np.median([r["best"]["value"] for r in rows]))
            for m, rows in cuts["searches"].items()}  # fmt: skip
    g = cuts["gradient"]
    gsel = g["values"][g["best_epoch"] - 1] if g.get("best_epoch") else max(g["values"])
    lg = cuts["lgso"]
    lval = median(lg, "value")
    top = max(best, key=best.get)
    ranked = sorted([*best.items(), ("gradient", gsel), ("L-GSO", lval)], key=lambda kv: -kv[1])
    n_top = len(cuts["searches"][top][0]["values"])
    d1 = {k: det[k]["1"] for k in det}
    d2 = {k: det[k]["2"] for k in det}
    dims = list(det["lgso"])
    reach = _to_fraction(cuts, 0.99)
    timed = [(m, float(t)) for m, _, t in reach if t != "-"]
    fastest = min(timed, key=lambda mt: mt[1]) if timed else None

    def ratio(rows):  # the surrogate's held-out risk error in Monte-Carlo standard errors
        return float(np.median([r["val_risk_error"] / r["val_risk_se"] for r in rows]))

    def fmt(rows):
        return f"{median(rows, 'excess'):.2%} with {median(rows, 'calls'):.0f} events"

    return [
        "## Findings (computed from the tables above)",
        "",
        "- Cuts, 2 parameters, ~10 ms per exact evaluation: ranking by the validation Z0 "
        "reached: " + ", ".join(f"{m} {v / opt:.1%}" for m, v in ranked) + " of the optimum. "
        f"The best search is {top} ({best[top] / opt:.1%} in {n_top} evaluations, "
        f"{median(cuts['searches'][top], 'seconds'):.1f} s); gradient training "
        f"takes {g['seconds']:.1f} s for {len(g['values'])} epochs and L-GSO "
        f"{median(lg, 'seconds'):.1f} s. To 99% of the optimum (median curves): "
        + ", ".join(
            f"{m} {a} evaluations / {t} s" if t != "-" else f"{m} not reached" for m, a, t in reach
        )
        + (f"; the first there is {fastest[0]}." if fastest else "; none gets there."),
        f"- L-GSO on the cuts ends at {lval / opt:.1%} of the optimum (its iterates' median "
        f"best {float(np.median([max(r['values']) for r in lg])) / opt:.1%}), with "
        f"{float(np.median([r['calls'][-1] for r in lg])):.0f} black-box events "
        f"({float(np.median([r['calls'][-1] / r['events_per_evaluation'] for r in lg])):.0f}"
        " exact evaluations' worth); its surrogate's held-out Z0 error in the last iteration "
        f"{median(lg, 'val_risk_error'):.3f}.",
        "- Detector, 1 parameter (objective excess over the optimum, events): "
        + "; ".join(f"{DETECTOR_NAMES[k]} {fmt(v)}" for k, v in d1.items())
        + ".",
        "- Detector, 2 parameters: "
        + "; ".join(f"{DETECTOR_NAMES[k]} {fmt(v)}" for k, v in d2.items())
        + ".",
        f"- Detector, seeds whose answer is within {TOLERANCE:g} of psi* in every parameter "
        "(d = "
        + ", ".join(dims)
        + "): "
        + "; ".join(
            f"{DETECTOR_NAMES[k]} "
            + ", ".join(f"{_within(det[k][d])}/{len(det[k][d])}" for d in dims)
            for k in det
        )
        + ".",
        "- Scaling with the number of parameters d = " + ", ".join(dims) + " (objective "
        "excess; events): "
        + "; ".join(
            f"{DETECTOR_NAMES[k]} "
            + ", ".join(f"{median(det[k][d], 'excess'):.2%}" for d in dims)
            + " ("
            + ", ".join(f"{median(det[k][d], 'calls'):.0f}" for d in dims)
            + ")"
            for k in det
        )
        + ".",
        "- L-GSO's own validation in its last iteration (held-out risk error in Monte-Carlo "
        "standard errors, d = "
        + ", ".join(dims)
        + "): "
        + "; ".join(
            f"{DETECTOR_NAMES[k]} " + ", ".join(f"{ratio(det[k][d]):.1f}" for d in dims)
            for k in det
            if k.startswith("lgso")
        )
        + " (about 1 where the surrogate is right where it is used).",
        *_winners(doc, ranked),
    ]


def _winners(doc, cuts_ranked) -> list[str]:
    """Per problem and number of parameters: the method with the best median answer, and
    L-GSO's rank among the methods (from the tables above)."""
    from .black_box_blobs import METRICS
    from .black_box_blobs_report import LABELS, NAMES

    first, rank = [f"cuts (d = 2) {cuts_ranked[0][0]}"], []
    names = [m for m, _ in cuts_ranked]
    rank.append(f"cuts {names.index('L-GSO') + 1}/{len(names)}")
    for key, metric in (("blobs", "cls"), ("blobs_z0", "z0")):
        if key not in doc:
            continue
        larger, tops, ranks = METRICS[metric][1], [], []
        for d, t in doc[key].items():
            v = {
                m: float(np.nanmedian([r["value"] for r in rows]))
                for m, rows in t["methods"].items()
            }
            order = sorted(v, key=lambda m: -v[m] if larger else v[m])
            tops.append(f"{NAMES[order[0]]} ({d})")
            if "lgso" in order:
                ranks.append(f"{order.index('lgso') + 1}/{len(order)} ({d})")
        first.append(f"blobs {LABELS[metric]}: " + ", ".join(tops))
        if ranks:
            rank.append(f"blobs {LABELS[metric]} " + ", ".join(ranks))
    det = doc["detector"]
    tops, ranks = [], []
    for d in det["lgso"]:
        v = {k: median(det[k][d], "excess") for k in det}
        order = sorted(v, key=v.get)
        tops.append(f"{DETECTOR_NAMES[order[0]]} ({d})")
        ranks.append(f"{order.index('lgso') + 1}/{len(order)} ({d})")
    first.append("detector: " + ", ".join(tops))
    rank.append("detector (default settings) " + ", ".join(ranks))
    return [
        "- The best method by problem (median answer; in brackets the number of parameters): "
        + "; ".join(first)
        + ".",
        "- L-GSO's rank among the methods by its median answer: " + "; ".join(rank) + ".",
    ]
