"""The report of problems 1b and 1c of ``diffhep study black-box`` (the blobs' bin edges):
curves of the distance to the optimum, the plot, and the markdown section with its table and
findings, all computed from the table :func:`diffhep.studies.black_box_blobs.blobs_problem`
returns (or ``black-box.json``'s ``blobs`` / ``blobs_z0``)."""

from __future__ import annotations

import numpy as np

from .black_box_blobs import BOX, METRICS, gap

__all__ = ["blobs_markdown", "plot_blobs"]

NAMES = {"gradient": "gradient (soft histogram)", "lgso": "L-GSO (histogram as a black box)",
         "lgso_long": "L-GSO, no early stop",
         "tpe": "TPE", "random": "random", "grid": "grid"}  # fmt: skip
LABELS = {"cls": "CLs", "z0": "Z0"}
#: Methods whose curve is the current iterate (the searches': the best so far).
ITERATES = ("gradient", "lgso", "lgso_long")


def _curve(rows, opt: float, method: str, metric: str = "cls"):
    """Median over seeds, per evaluation, of the distance to the optimum (:func:`gap`; a
    search's best so far, the gradient's and L-GSO's current iterate): the evaluations
    (L-GSO: black-box histograms), the median seconds and the median gap."""
    k = min(len(r["values"]) for r in rows)
    vals = []
    for r in rows:
        v = gap(r["values"][:k], opt, metric)
        vals.append(v if method in ITERATES else np.minimum.accumulate(v))
    evals = rows[0].get("evaluations", list(range(1, k + 1)))[:k]
    return np.asarray(evals), np.median([r["stamps"][:k] for r in rows], 0), np.median(vals, 0)


def _reach(rows, opt, name, within, metric: str = "cls"):
    evals, secs, vals = _curve(rows, opt, name, metric)
    hit = np.flatnonzero(vals <= within)
    return (int(evals[hit[0]]), float(secs[hit[0]])) if hit.size else (None, None)


def plot_blobs(table: dict, path, metric: str = "cls") -> None:
    """Distance to the optimum against evaluations (top) and wall time (bottom), one column
    per number of edges, one line per method."""
    from ..plotting.style import new_figure
    from ..writers import write_atomic

    fig = new_figure((12.5, 7.0))
    axes = fig.subplots(2, len(table), squeeze=False)
    for j, (d, t) in enumerate(table.items()):
        opt = t["optimum"]["value"]
        for i, (m, rows) in enumerate(t["methods"].items()):
            evals, secs, vals = _curve(rows, opt, m, metric)
            marker = "o" if len(vals) == 1 else None  # a grid of one point: no line to draw
            for ax, x in zip(axes[:, j], (evals, secs), strict=True):
                ax.plot(x, vals, color=f"C{i}", label=NAMES[m], drawstyle="steps-post",
                        marker=marker)  # fmt: skip
        axes[0, j].set_title(f"{d} edges ({int(d) + 1} bins)")
        axes[0, j].set_xlabel(f"exact {LABELS[metric]} evaluations (L-GSO: black-box histograms)")
        axes[0, j].set_xscale("log")
        axes[1, j].set_xlabel("wall time (s)")
        axes[1, j].set_xscale("log")
        for ax in axes[:, j]:
            ax.set_yscale("log")
            ax.set_ylim(1e-5, 1e3 if metric == "cls" else 1.5)
            ax.grid(alpha=0.3)
    what = "CLs / optimum - 1" if metric == "cls" else "1 - Z0 / optimum"
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{what} (median)")
    axes[0, 0].legend(fontsize="small")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    fig.clear()


def _lgso_setup(table) -> str:
    rows = [r for t in table.values() for r in t["methods"].get("lgso", [])]
    if not rows:
        return "L-GSO is not in this run. "
    return (
        "L-GSO treats the hard histogram as the black box: psi = the edges, F(x; psi) = the "
        "cumulative indicators [u > e_(j)] of an event (its bin), the rest of the chain (yields "
        "-> the hypothesis test) stays differentiable; risk the loss of the batch's yields; "
        "`Settings()`'s defaults (N = 16 edge vectors of M = 64 events per iteration, K = 4096 "
        "surrogate events per gradient, trust region +-0.3, Adam 0.05, 8 hidden units, at "
        "most 60 iterations) except the surrogate's family: Bernoulli p(u > e_(j) | u, psi) "
        "(the outputs are 0/1, as for the cuts) seeing u only; from evenly spaced edges; its "
        "answer is the mean of its last 5 iterates, and it is counted in black-box histograms "
        "(N per iteration, each of M events: not exact evaluations, cheaper, noisier). "
        + ("'L-GSO, no early stop': the same with tolerance 0 (its stopping rule, a net move "
           "under half the trust region over 5 iterations, never fires: all 60 iterations). "
           if any("lgso_long" in t["methods"] for t in table.values()) else "")
    )  # fmt: skip


def blobs_markdown(table: dict, budget: int, metric: str = "cls") -> list[str]:
    """The section of problem 1b (``metric="cls"``) or 1c (Z0): setup, optimum, table, plot
    and findings from ``table``."""
    label = LABELS[metric]
    larger = METRICS[metric][1]
    png = "black-box-blobs.png" if metric == "cls" else "black-box-blobs-z0.png"
    if metric == "cls":
        lines = [
            "## Problem 1b: bin edges of the neos blobs, exact expected CLs (2, 4, 6 parameters)",
            "",
            "`diffhep.studies.black_box_blobs`: the four Gaussian blobs of "
            "`src/diffhep/data/neos_blobs.yaml` (`diffhep.problems.blobs`: 20 signal, 100 "
            "background events, the background shape systematic from the up/down blobs). Fixed "
            "observable: the projection u = (x2 - x1)/sqrt(2), a monotone function of the "
            "likelihood ratio s/(s+b); the parameters are its d interior bin edges (d + 1 bins, "
            f"open outer bins), each in [{BOX[0]:g}, {BOX[1]:g}], sorted. Exact objective: the "
            "median expected CLs (mu = 1, qtilde, Asimov background-only data; exact fits) of "
            "the true expected yields in the bins (differences of normal CDFs: a hard histogram "
            "of infinitely many events), about 1 ms per evaluation. Methods, "
            f"{budget} exact evaluations each: gradient = Adam (learning rate 0.05) on the edges "
            "from evenly spaced ones through a soft histogram (bandwidth 0.3 of the mean bin "
            "width) of 2000 simulated events per blob (a new sample per seed), loss log CLs of "
            "the soft yields, one exact evaluation of the current edges per step (compilation "
            "not timed; the searches' hypothesis test is compiled before them too); TPE "
            "(Optuna, multivariate) on log CLs, uniform random search, and a grid of cell "
            "centres (floor(budget^(1/d)) per edge, sorted: many grid points coincide after "
            "sorting). " + _lgso_setup(table) + "Optimum: Nelder-Mead on the exact log CLs "
            "from evenly spaced edges, 5 random starts and the best point any method found "
            "(so no method can beat it).",
            "",
        ]
    else:
        lines = [
            "## Problem 1c: the same bin edges, exact median expected Z0 (2, 4, 6 parameters)",
            "",
            "The blobs and methods of problem 1b with the second metric: the median expected "
            "discovery significance Z0 = sqrt(q0) on the signal-plus-background (mu = 1) Asimov "
            "data, the background shape parameter profiled (`diffhep.analysis.losses."
            "profile_fit` with mu fixed at 0; exact fit) of the true yields; maximised. The "
            "gradient and L-GSO minimise -Z0 of their soft / surrogate yields, TPE -Z0, the "
            "optimum is Nelder-Mead on -log Z0 from the same starts (dense grid for 2 edges). "
            f"{budget} exact evaluations per search and gradient run.",
            "",
        ]
    for d, t in table.items():
        o = t["optimum"]
        extra = ""
        if "dense_grid" in o:
            g = o["dense_grid"]
            extra = (f"; dense grid {g['points']}: {g['value']:.5g} at "
                     f"({', '.join(f'{v:.3g}' for v in g['edges'])})")  # fmt: skip
        lines.append(f"- {d} edges: optimum {label} = {o['value']:.5g} at "
                     f"({', '.join(f'{v:.3f}' for v in o['edges'])}){extra}.")  # fmt: skip
    within = "1%"
    lines += [
        "",
        f"| method | edges | evaluations | {label} reached | {label} / optimum | evaluations "
        f"to {within} | seconds to {within} | wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, t in table.items():
        opt = t["optimum"]["value"]
        for m, rows in t["methods"].items():
            v = float(np.nanmedian([r["value"] for r in rows]))
            n, s = _reach(rows, opt, m, 0.01, metric)
            secs = float(np.median([r["seconds"] for r in rows]))
            evals = float(
                np.median(
                    [r["evaluations"][-1] if "evaluations" in r else len(r["values"]) for r in rows]
                )
            )
            lines.append(f"| {NAMES[m]} | {d} | {evals:.0f} | {v:.4g} | "
                         f"{v / opt:.4f} | {n if n else 'not reached'} | "
                         f"{f'{s:.2f}' if s is not None else '-'} | {secs:.2f} |")  # fmt: skip
    lines += [
        "",
        f"{label} reached: a search's best trial, the gradient's last iterate, L-GSO's answer "
        "(median over seeds); evaluations: exact ones (L-GSO: black-box histograms, median); "
        f"'to {within}': the first evaluation where the median curve is within {within} of the "
        f"optimum's {label} (L-GSO's curve: its iterates, one point per iteration).",
        "",
        f"![blobs: {label} against the optimum vs evaluations and wall time]({png})",
        "",
        f"Findings on the blobs, {label} (computed from the table):",
        "",
    ]
    dims = list(table)
    for d in dims:
        t = table[d]
        opt = t["optimum"]["value"]
        ratio = {m: float(np.nanmedian([r["value"] for r in rows])) / opt
                 for m, rows in t["methods"].items()}  # fmt: skip
        ranked = sorted(ratio, key=lambda m: -ratio[m] if larger else ratio[m])
        reach = {m: _reach(rows, opt, m, 0.01, metric) for m, rows in t["methods"].items()}
        first = [m for m in ranked if reach[m][0]]
        fastest = min(first, key=lambda m: reach[m][0]) if first else None
        lines.append(
            f"- {d} edges: ranking by the {label} reached: "
            + ", ".join(f"{NAMES[m]} {ratio[m]:.4f}" for m in ranked)
            + " x the optimum. "
            + (f"Fewest evaluations to within 1%: {NAMES[fastest]} ({reach[fastest][0]})."
               if fastest else "No method's median curve gets within 1%.")
        )  # fmt: skip
    for m in next(iter(table.values()))["methods"]:
        vals = [float(np.nanmedian([r["value"] for r in table[d]["methods"][m]]))
                / table[d]["optimum"]["value"] for d in dims]  # fmt: skip
        lines.append(f"- {NAMES[m]} against the number of edges d = {', '.join(dims)}: "
                     f"{label} / optimum {', '.join(f'{v:.4f}' for v in vals)}.")  # fmt: skip
    pick = np.nanmax if larger else np.nanmin
    best_it = [float(np.median([pick(r["values"]) for r in table[d]["methods"]["gradient"]]))
               / table[d]["optimum"]["value"] for d in dims]  # fmt: skip
    lines.append(f"- The gradient's best iterate along the way (median over seeds, {label} / "
                 f"optimum, d = {', '.join(dims)}): {', '.join(f'{v:.4f}' for v in best_it)}; "
                 "where this is better than its last iterate, the soft-histogram loss's "
                 "optimum is not the exact one (kernel bias) or the steps oscillate.")  # fmt: skip
    for key in ("lgso", "lgso_long"):
        if key in next(iter(table.values()))["methods"]:
            lines.append(_lgso_finding(table, dims, label, pick, key))
    skipped = sum(r.get("skipped_steps", 0) for t in table.values()
                  for r in t["methods"]["gradient"])  # fmt: skip
    lines.append(f"- Gradient steps skipped for a non-finite gradient: {skipped}.")
    return [*lines, ""]


def _lgso_finding(table, dims, label, pick, key: str = "lgso") -> str:
    """L-GSO's scaling with the number of edges: answer and best iterate against the
    optimum, iterations, convergence, black-box histograms and events."""
    parts = []
    for d in dims:
        rows = table[d]["methods"][key]
        opt = table[d]["optimum"]["value"]
        v = float(np.nanmedian([r["value"] for r in rows])) / opt
        b = float(np.median([pick(r["values"]) for r in rows])) / opt
        conv = sum(r["converged"] for r in rows)
        parts.append(
            f"d = {d}: {v:.4f} (best iterate {b:.4f}), "
            f"{np.median([r['iterations'] for r in rows]):.0f} iterations, converged "
            f"{conv}/{len(rows)}, {np.median([r['evaluations'][-1] for r in rows]):.0f} "
            f"histograms of {np.median([r['events'] for r in rows]):.0f} events in all"
        )
    return (
        f"- L-GSO with its defaults, {label} / optimum by the number of edges: "
        + "; ".join(parts)
        + "."
    )
