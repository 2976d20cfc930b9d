"""The report of ``diffhep study realistic`` (``docs/studies/realistic-analysis.md``): the
tables (sensitivity, nuisance parameters, cost), two mplhep figures and the findings, every
number computed from the per-run records of :mod:`diffhep.studies.realistic`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..writers import write_atomic
from .common import out_option

__all__ = ["LEADING", "findings", "leading_parameters", "markdown", "write_report"]

CLS_FLOOR = 1e-4  # the figure's lowest expected CLs (empty-background bins give ~1e-45)
LEADING = 6  # nuisance parameters in the tables: the largest |impact| in the baseline row
AWARE = ("bce_aug", "sigma_mu", "cls", "z0")  # losses that see the systematics


def _values(runs, key):
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in runs])


def _med(runs, key) -> float:
    v = _values(runs, key)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")


def _cell(runs, key, fmt="{:.3g}") -> str:
    v = _values(runs, key)
    if not np.isfinite(v).any():
        return "n/a"
    med = fmt.format(np.nanmedian(v))
    if len(v) == 1:
        return med
    missing = int(np.sum(~np.isfinite(v)))  # e.g. a limit scan that did not converge
    gap = f"; n/a in {missing} of {len(v)} seeds" if missing else ""
    return f"{med} ({fmt.format(np.nanmin(v))}-{fmt.format(np.nanmax(v))}{gap})"


def leading_parameters(rows: dict, baseline: str, n: int = LEADING) -> list[str]:
    """The ``n`` nuisance parameters with the largest median |impact| on mu in ``baseline``.

    Example:
        >>> r = {"b": [{"impacts": {"a": 0.1, "c": -0.3, "d": 0.2}}]}
        >>> leading_parameters(r, "b", 2)
        ['c', 'd']
    """
    runs = rows[baseline]
    names = list(runs[0]["impacts"])
    size = {k: float(np.median([abs(r["impacts"][k]) for r in runs])) for k in names}
    return sorted(names, key=lambda k: -size[k])[:n]


def _np_med(runs, what, name) -> float:
    return float(np.median([abs(r[what][name]) for r in runs]))


def _spread(runs, key):
    v = _values(runs, key)
    return float(np.nanmin(v)), float(np.nanmax(v))


def findings(result: dict, baseline: str) -> list[str]:
    """The findings, each sentence computed from the records (no number written ahead);
    ``result["kinds"]`` gives each row's ``[loss, selection]``."""
    ROWS = result["kinds"]
    rows = result["rows"]
    base = rows[baseline]
    out = []
    b_cls, b_lim = _med(base, "expected_cls"), _med(base, "upper_limit")
    b_lo, b_hi = _spread(base, "upper_limit")
    for label, runs in rows.items():
        if label == baseline or not runs:
            continue
        cls, lim = _med(runs, "expected_cls"), _med(runs, "upper_limit")
        if not (np.isfinite(lim) and np.isfinite(b_lim)):
            out.append(f"{label}: no expected limit to compare (a scan did not converge; JSON).")
            continue
        lo, hi = _spread(runs, "upper_limit")
        verdict = "wins" if lim < b_lim else "loses"
        if min(len(runs), len(base)) < 2:
            sep = "one seed"
        elif hi < b_lo or lo > b_hi:
            sep = "the seeds' ranges do not overlap"
        else:
            sep = "within the seeds' spread"
        pairs = [(a, b) for a, b in zip(_values(runs, "upper_limit"),
                                        _values(base, "upper_limit"), strict=False)
                 if np.isfinite(a) and np.isfinite(b)]  # fmt: skip
        if len(pairs) > 1:  # same seed: same events, same split, same batches
            sep += f"; lower in {sum(a < b for a, b in pairs)} of {len(pairs)} seeds"
        limits = [np.isfinite(_values(r, "upper_limit")) for r in (runs, base)]
        if not all(f.all() for f in limits):
            sep += (
                "; limits of "
                + " and ".join(f"{int(f.sum())} of {len(f)} seeds" for f in limits)
                + ", a scan did not converge (JSON)"
            )
        out.append(
            f"{label} vs {baseline}: expected limit on mu {lim:.3g} vs {b_lim:.3g} "
            f"({verdict}, {100 * (lim / b_lim - 1):+.0f}%; {sep}); expected CLs {cls:.3g} vs "
            f"{b_cls:.3g} ({100 * (cls / b_cls - 1):+.0f}%)."
        )
    empty = {r: _med(v, "empty_background_bins") for r, v in rows.items() if v}
    hit = [r for r, n in empty.items() if n > 0]
    floor = result.get("settings", {}).get("evaluation_floor")
    if hit and floor:
        out.append(
            "Bins with signal and no background MC in the test histograms (median), despite "
            "the training's floor: "
            + ", ".join(
                f"{r} {empty[r]:.0f} (Z0 {_med(rows[r], 'z0_unfloored'):.3g} without the "
                f"evaluation's floor, {_med(rows[r], 'z0'):.3g} with it; expected CLs "
                f"{_med(rows[r], 'expected_cls_unfloored'):.3g} vs "
                f"{_med(rows[r], 'expected_cls'):.3g})"
                for r in hit
            )
            + ". Unfloored, such a bin's background-only Asimov data have 0 events where "
            "mu = 1 predicts some (CLs -> 0, Z0 unbounded): the table's numbers are the "
            "floored ones."
        )
    elif hit:
        out.append(
            "Bins with signal and no background in the test histograms (median): "
            + ", ".join(f"{r} {empty[r]:.0f}" for r in hit)
            + ". There the asymptotic expected CLs and limit are not a sensitivity (the "
            "background-only Asimov data have 0 events where mu = 1 predicts some: CLs -> 0, "
            "and the limit scans' fits may fail); compare those rows on sigma_mu and Z0."
        )
    ranked = sorted((r for r in rows if rows[r] and np.isfinite(_med(rows[r], "upper_limit"))),
                    key=lambda r: _med(rows[r], "upper_limit"))  # fmt: skip
    out.append(
        f"Best expected limit: {ranked[0]} ({_med(rows[ranked[0]], 'upper_limit'):.3g}); "
        f"worst: {ranked[-1]} ({_med(rows[ranked[-1]], 'upper_limit'):.3g})."
    )
    lead = leading_parameters(rows, baseline)
    for label, runs in rows.items():
        loss, selection = ROWS.get(label, (None, None))
        if loss not in AWARE or selection != "nn" or not runs:
            continue
        change = {k: _np_med(runs, "impacts", k) / max(_np_med(base, "impacts", k), 1e-300)
                  for k in lead}  # fmt: skip
        down = min(change, key=change.get)
        up = max(change, key=change.get)
        shrink = (
            f"shrinks most for {down} (x{change[down]:.2f} of BCE's: "
            f"{_np_med(base, 'impacts', down):.3g} -> {_np_med(runs, 'impacts', down):.3g})"
            if change[down] < 1
            else f"shrinks for none (least growth: {down}, x{change[down]:.2f})"
        )
        grow = (
            f"grows most for {up} (x{change[up]:.2f})"
            if change[up] > 1
            else f"grows for none (least shrinkage: {up}, x{change[up]:.2f})"
        )
        out.append(
            f"{label}: of the leading nuisance parameters, the impact on mu {shrink} and "
            f"{grow}; sigma_mu {_med(runs, 'sigma_mu'):.3g} vs BCE's "
            f"{_med(base, 'sigma_mu'):.3g}."
        )
    b_eps = _med(base, "events_per_second")
    nn_rows = [r for r in rows if rows[r] and r != baseline and ROWS.get(r, ("", ""))[1] == "nn"]
    speed = ", ".join(
        f"{r.split(' /')[0]} x{_med(rows[r], 'events_per_second') / b_eps:.2g}" for r in nn_rows
    )
    out.append(f"Training speed (events/s relative to BCE on the same events): {speed}.")
    peaks = [r["peak_rss_mb"] for runs in rows.values() for r in runs if r.get("peak_rss_mb")]
    if peaks:
        out.append(f"Peak resident memory per run: {min(peaks):.0f}-{max(peaks):.0f} MB.")
    return out


def markdown(result: dict, baseline: str, name: str, out=None) -> str:
    """The study's markdown from its result (``<name>.json``)."""
    s, rows = result["settings"], result["rows"]
    runs_n = sum(len(v) for v in rows.values())
    total = sum(r["run_seconds"] for v in rows.values() for r in v)
    lines = [
        "# Study: a realistic analysis -- does systematic-aware training still win?",
        "",
        f"Reproduce with `diffhep study realistic --seeds {s['seeds']} --epochs {s['epochs']} "
        f"--events {s['events']} --lumi {s['lumi']:g}{out_option(out)}`"
        + (f" `{' '.join('--set ' + o for o in s['overrides'])}`" if s["overrides"] else "")
        + f" (generator seed {s['data_seed']}; finished runs under `runs/realistic` are "
        f"reused). {runs_n} runs, {total / 60:.1f} min of training and evaluation in all "
        f"(wall time of the call that wrote this file: {s['wall_seconds'] / 60:.1f} min)"
        + (f" ({s['note']})" if s.get("note") else "")
        + ".",
        "",
        "Analysis: `src/diffhep/data/ttbar_resonance.yaml` on files of `diffhep generate "
        f"ttbar-resonance --events {s['events']} --lumi {s['lumi']:g} --seed {s['data_seed']}`"
        f", signal {s['signal']}; SR (>= 2 b-tags, the trained observable, 8 bins) and "
        "CR_ttbar (1 b-tag, HT in 4 fixed bins) fitted together with a free ttbar "
        "normalisation, 20 named nuisance parameters (JES x3 and JER as feature-level jet-pT "
        "variations: events migrate; b-tag, scale, PDF, ISR/FSR weights; one-sided top-pT; "
        "symmetrised ttbar and W+jets modelling; 5 normalisations) and MC statistics. "
        f"Study settings for every run: `{' '.join(s['training'])}`"
        + (
            f"; the likelihood losses see every bin's total nominal background floored at "
            f"{s['min_background']:.3g} expected events (`histogram.min_background`: "
            f"{s['min_background_mc_events']:g} background MC events of the training split, "
            "the 95% CL upper limit on a Poisson mean where none is seen; without it the "
            "losses put signal in a bin beyond the last background MC event, whose soft "
            "background is ~0: a statistical artefact with an unbounded sensitivity). The "
            "column 'bins with s > 0, b = 0' counts the bins with signal and no background "
            "MC in a trained analysis's unfloored test histograms."
            if s.get("min_background")
            else "."
        ),
        "",
        "Evaluation: each run's test split (20% of the events, never used for training nor "
        "for choosing the epoch), hard histograms, exact fits on the background-only Asimov "
        "data at the nominal parameters. Expected CLs at mu = 1 (qtilde), Z0 and sigma_mu "
        "(inverse Fisher information at mu = 1)"
        + ("" if s.get("evaluation_floor") else " from the run's summary")
        + "; the expected 95% CL "
        "upper limit on mu; post-fit width and impact on mu (`cov(mu, theta) / sigma_theta`) "
        "of every nuisance parameter from the covariance of the Asimov fit at mu = 1"
        + (
            f"; all of them on the test histograms with every bin's total background floored "
            f"at {s['evaluation_floor']:.3g} expected events ({s['min_background_mc_events']:g}"
            " test-split MC events' weight, the same rule as the training's floor: a bin "
            "without background MC events is given the 95% CL upper limit of its background; "
            "the unfloored expected CLs, Z0 and sigma_mu are in the JSON)"
            if s.get("evaluation_floor")
            else ""
        )
        + ". Cells: median (min-max) over seeds.",
        "",
        "Rows: every loss with the NN observable, and the expected-CLs loss with the other "
        "selections (cuts only: SR counting with trained cuts on HT and MET; NN + cuts; "
        "learnable SR bin edges) -- 8 of the 5 x 4 combinations: BCE gives no gradient to "
        "cuts or bin edges, and the cost of the others did not fit this run.",
        "",
        "## Sensitivity (test split, exact fits)",
        "",
        "| row | expected CLs | expected limit on mu | Z0 | sigma_mu | selected fraction "
        "| bins with s > 0, b = 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in rows.items():
        if runs:
            lines.append(
                f"| {label} | {_cell(runs, 'expected_cls')} | {_cell(runs, 'upper_limit')} | "
                f"{_cell(runs, 'z0')} | {_cell(runs, 'sigma_mu')} | "
                f"{_cell(runs, 'selected_fraction', '{:.2f}')} | "
                f"{_cell(runs, 'empty_background_bins', '{:.0f}')} |"
            )
    lead = leading_parameters(rows, baseline)
    for what, title in (("impacts", "|impact| on mu"), ("widths", "post-fit width")):
        lines += [
            "",
            f"## Leading nuisance parameters: {title} (median over seeds)",
            "",
            "| row | " + " | ".join(lead) + " |",
            "|---" * (len(lead) + 1) + "|",
        ]
        for label, runs in rows.items():
            if runs:
                cells = [f"{_np_med(runs, what, k):.3g}" for k in lead]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Cost (same events and batches for every row of a seed)",
        "",
        "Events/s: nominal events of the training split per step (what BCE sees) over the "
        "median step time; the likelihood losses and BCE with augmentation also pass every "
        "variation's events (event sets per step in the JSON). Peak RSS: the process's "
        "high-water mark during the run, reset before it (compilation included); the runs "
        "share one process, so it also holds what earlier runs left there (compiled "
        "programs, the events): an upper bound of a run's own footprint, in run order.",
        "",
        "| row | step (ms) | epoch (s) | nominal events/s | vs BCE | peak RSS (MB) | run incl. "
        "compilation and evaluation (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    b_eps = _med(rows[baseline], "events_per_second")
    for label, runs in rows.items():
        if runs:
            eps = _med(runs, "events_per_second")
            lines.append(
                f"| {label} | {1e3 * _med(runs, 'step_seconds'):.1f} | "
                f"{_cell(runs, 'epoch_seconds', '{:.2f}')} | {eps:,.0f} | "
                f"x{eps / b_eps:.2f} | {_med(runs, 'peak_rss_mb'):.0f} | "
                f"{_med(runs, 'run_seconds'):.0f} |"
            )
    lines += ["", "## Findings (computed from the tables above)", ""]
    lines += [f"- {f}" for f in findings(result, baseline)]
    lines += [
        "",
        "## Not covered by this run",
        "",
        f"- {20 - len(rows)} of the 20 loss x selection combinations (see Rows above).",
        f"- Scale: {s['events']:,} simulated events, read into memory (the issue's 10^7 "
        "events with chunked input and a memory benchmark are not part of this study).",
        "- Pulls and the refit ranking of each trained analysis (`report.diagnostics`, off "
        "for cost); the impacts above are covariance impacts at the Asimov point.",
        "- Observed (pseudo-)data: every number is expected (Asimov); the runs' "
        "`summary.json` has the observed CLs of the pseudo-data.",
    ]
    lines += [
        "",
        f"![sensitivity]({name}.png)",
        "",
        f"![impacts]({name}-impacts.png)",
        "",
        f"Numbers per run: `{name}.json`.",
        "",
    ]
    return "\n".join(lines)


def _plots(result, baseline, path, path_impacts) -> None:
    from ..plotting.style import experiment_label, experiment_style, new_figure, save_figure

    rows = {k: v for k, v in result["rows"].items() if v}
    labels = list(rows)
    y = np.arange(len(labels))
    with experiment_style("CMS"):
        fig = new_figure((14, 0.6 * len(labels) + 3))
        axes = fig.subplots(1, 2, sharey=True)
        panels = (("expected_cls", "expected CLs (mu = 1)"),
                  ("upper_limit", "expected 95% CL limit on mu"))  # fmt: skip
        for ax, (key, xlabel) in zip(axes, panels, strict=True):
            for i, runs in enumerate(rows.values()):
                v = _values(runs, key)
                if not np.isfinite(v).any():
                    continue  # no limit (the table says n/a)
                if key == "expected_cls":  # below CLS_FLOOR: drawn at the floor, as "<"
                    low = v < CLS_FLOOR
                    ax.plot(np.full(low.sum(), CLS_FLOOR), np.full(low.sum(), i), "<", color="C3")
                    v = v[~low]
                ax.plot(v, np.full(len(v), i), "o", alpha=0.5, color="C0")
                if len(v):
                    ax.plot([np.nanmedian(v)], [i], "s", color="C1")
            ax.set_xlabel(xlabel, fontsize="small")
            if key == "expected_cls":
                ax.set_xscale("log")
                ax.set_xlim(CLS_FLOOR / 2, 1.5)
            ax.grid(alpha=0.3)
        axes[0].set_yticks(y, labels, fontsize="small")
        axes[0].invert_yaxis()
        experiment_label(axes[0])
        save_figure(fig, path)
        lead = leading_parameters(result["rows"], baseline)
        grid = np.array([[_np_med(runs, "impacts", k) for k in lead] for runs in rows.values()])
        fig = new_figure((11, 0.55 * len(labels) + 3))
        ax = fig.subplots()
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(np.arange(len(lead)), lead, rotation=30, fontsize="small")
        ax.set_yticks(y, labels, fontsize="small")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", color="w", fontsize="x-small")
        fig.colorbar(im, ax=ax, label="|impact| on mu (median over seeds)")
        save_figure(fig, path_impacts)


def write_report(out: Path, name: str, result: dict, baseline: str) -> Path:
    """Write ``<name>.json``, ``<name>.png``, ``<name>-impacts.png`` and ``<name>.md``."""
    write_atomic(out / f"{name}.json", json.dumps(result, indent=1))
    _plots(result, baseline, out / f"{name}.png", out / f"{name}-impacts.png")
    path = out / f"{name}.md"
    write_atomic(path, markdown(result, baseline, name, out))
    return path
