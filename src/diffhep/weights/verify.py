"""Verification of new event weights against the original signed ones.

New weights ``w'`` (learned, resampled, or from any other tool) must leave every distribution
unchanged within the statistical precision of the sample. :func:`verify` reports

- the fraction of negative weights and the effective sample size ``(sum w)^2 / sum w^2``,
  before and after;
- ``sum w`` globally and per region (selection expressions ``"x > 0 && z < 1"``, by default
  the quartiles of the first input), with the pull of the difference;
- for **every feature**, inputs of the weight network or not, the per-bin ratio ``w'/w`` with
  the original's relative uncertainty ``sqrt(sum w^2) / sum w`` (the band of the plots), and
  the pulls and chi2/ndf of the difference. The original and new histograms are filled by the
  *same* events, so the variance of their difference is ``sum_bin (w' - w)^2`` (the per-event
  differences are independent with mean 0 when ``w' = E[w | x]``); with it the pulls are
  N(0, 1) for correct weights. Where the events that carry this variance are rare (e.g. no
  negative weight fell into a tail bin), the estimate is ~0 although the true variance is
  not, and a difference of 1e-4 per event would give a pull of -10: every variance gets one
  event's worth, the sample's largest ``(w' - w)^2``, added (negligible elsewhere: below 1%
  of the bins' variances on the built-in toys). The chi2 with the original's uncertainty
  alone (``chi2_orig``) is smaller, as ``sum (w' - w)^2 < sum w^2``, and is reported too.

:func:`write_report` writes ``reweight_report.json``, ``reweight_report.md`` and one plot per
feature (distributions with a ratio panel); :mod:`diffhep.weights.files` is the
``diffhep reweight`` workflow that uses them.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(4000, 1)); w = np.where(rng.uniform(size=4000) < 0.2, -1.0, 1.0)
    >>> r = verify(x, w, np.full(4000, 0.6), names=["x"], inputs=[0], bins=10)
    >>> r["negative_fraction"]["after"], r["features"]["x"]["ndf"]
    (0.0, 10)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import chi2 as chi2_dist

from ..analysis.histograms import hard_histogram
from ..errors import DataError
from ..io.expressions import Expression, ExpressionError
from ..writers import write_atomic
from .weighting import effective_sample_size, negative_fraction

__all__ = ["feature_comparison", "plot_feature", "verify", "write_report"]

REPORT_JSON = "reweight_report.json"
REPORT_MD = "reweight_report.md"


def _hist(values, edges, weights):
    """:func:`~diffhep.analysis.histograms.hard_histogram` (overflow in the outer bins) as numpy."""
    sumw, sumw2 = hard_histogram(values, edges, np.asarray(weights, dtype=np.float64))
    return np.asarray(sumw, np.float64), np.asarray(sumw2, np.float64)


def feature_comparison(values, w_orig, w_new, *, bins: int = 20) -> dict | None:
    """Histograms of one feature with the original and the new weights, ratio and pulls.

    Bin edges are quantiles of the feature (0.5% .. 99.5%; the outer bins take the overflow).
    Returns ``None`` for a feature with fewer than two distinct values in that range.
    """
    v = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(v, np.linspace(0.005, 0.995, int(bins) + 1)))
    if len(edges) < 2:
        return None
    ho, h2o = _hist(v, edges, w_orig)
    hn, h2n = _hist(v, edges, w_new)
    diff = np.asarray(w_new, np.float64) - np.asarray(w_orig, np.float64)
    _, d2 = _hist(v, edges, diff)
    d2 = d2 + _one_event(diff)
    ok = d2 > 0
    pull = np.where(ok, (hn - ho) / np.sqrt(np.where(ok, d2, 1.0)), 0.0)
    chi2 = float(np.sum(pull**2))
    ndf = int(ok.sum())
    ok_o = h2o > 0
    chi2_orig = float(np.sum(np.where(ok_o, (hn - ho) ** 2 / np.where(ok_o, h2o, 1.0), 0.0)))
    safe = np.where(ho != 0, ho, np.nan)
    return {
        "edges": edges.tolist(),
        "sumw_orig": ho.tolist(),
        "sumw2_orig": h2o.tolist(),
        "sumw_new": hn.tolist(),
        "sumw2_new": h2n.tolist(),
        "ratio": (hn / safe).tolist(),
        "ratio_uncertainty": (np.sqrt(h2o) / np.abs(safe)).tolist(),
        "pulls": pull.tolist(),
        "chi2": chi2,
        "ndf": ndf,
        "chi2_ndf": chi2 / ndf if ndf else None,
        "p_value": float(chi2_dist.sf(chi2, ndf)) if ndf else None,
        "chi2_orig": chi2_orig,
        "max_abs_pull": float(np.max(np.abs(pull))) if ndf else None,
    }


def _region_mask(x, names, expression):
    """The events of ``x`` in the region ``expression`` (a selection over ``names``)."""
    try:
        e = Expression(expression)
    except ExpressionError as exc:
        raise DataError(f"region {expression!r}: {exc.message}", where="regions",
                        fix=exc.fix) from None  # fmt: skip
    for feature in sorted(e.names):
        if feature not in names:
            raise DataError(
                f"region {expression!r}: unknown feature {feature!r}",
                where="regions",
                fix=f"use the feature names {', '.join(names)}",
            )
    mask = e.evaluate({n: x[:, i] for i, n in enumerate(names)}, len(x))
    if mask.dtype != bool:
        raise DataError(f"region {expression!r}: not a selection", where="regions",
                        fix="compare features with numbers, e.g. 'x0 > 1 && x0 < 2'")  # fmt: skip
    return mask


def default_regions(x, names, inputs) -> dict:
    """The quartiles of the first input feature as regions ``{name: expression}``."""
    f = names[inputs[0]]
    q = np.quantile(np.asarray(x[:, inputs[0]], np.float64), [0.25, 0.5, 0.75])
    return {
        f"{f} Q1": f"{f} < {q[0]:.6g}",
        f"{f} Q2": f"{f} > {q[0]:.6g} && {f} < {q[1]:.6g}",
        f"{f} Q3": f"{f} > {q[1]:.6g} && {f} < {q[2]:.6g}",
        f"{f} Q4": f"{f} > {q[2]:.6g}",
    }


def _one_event(diff) -> float:
    """The variance floor: the largest squared per-event difference of the sample."""
    return float(np.max(diff * diff)) if len(diff) else 0.0


def _sums(w_orig, w_new, floor=0.0):
    so, sn = float(np.sum(w_orig)), float(np.sum(w_new))
    d = np.sqrt(float(np.sum((np.asarray(w_new) - np.asarray(w_orig)) ** 2)) + floor)
    return {
        "sum_w_orig": so,
        "sum_w_new": sn,
        "uncertainty_orig": float(np.sqrt(np.sum(np.square(w_orig)))),
        "pull": (sn - so) / d if d > 0 else 0.0,
    }


def verify(x, w_orig, w_new, *, names=None, inputs=(0,), regions=None, bins: int = 20) -> dict:
    """Compare new weights with the original ones (see the module docstring).

    Args:
        x: Features ``(n, f)``.
        w_orig: Original (signed) weights ``(n,)``.
        w_new: New weights ``(n,)`` (0 for events dropped by resampling).
        names: Feature names (default ``x0, x1, ...``).
        inputs: Columns that were inputs of the weight network (flagged in the report).
        regions: ``{name: selection expression}`` (default: quartiles of the first input).
        bins: Bins per feature.

    Returns:
        A JSON-serialisable dict.
    """
    x = np.asarray(x)
    x = x[:, None] if x.ndim == 1 else x
    w_orig, w_new = np.asarray(w_orig, np.float64), np.asarray(w_new, np.float64)
    names = list(names or [f"x{i}" for i in range(x.shape[1])])
    inputs = [int(i) for i in inputs]
    regions = default_regions(x, names, inputs) if regions is None else dict(regions)
    out = {
        "events": len(w_orig),
        "inputs": [names[i] for i in inputs],
        "negative_fraction": {
            "before": negative_fraction(w_orig),
            "after": negative_fraction(w_new),
        },
        "ess": {"before": effective_sample_size(w_orig), "after": effective_sample_size(w_new)},
        "global": _sums(w_orig, w_new),
        "regions": {},
        "features": {},
    }
    floor = _one_event(w_new - w_orig)
    for label, expr in regions.items():
        m = _region_mask(x, names, expr)
        out["regions"][label] = {
            "expression": expr,
            "events": int(m.sum()),
            **_sums(w_orig[m], w_new[m], floor),
        }
    for i, name in enumerate(names):
        res = feature_comparison(x[:, i], w_orig, w_new, bins=bins)
        if res is not None:
            out["features"][name] = {"input": i in inputs, **res}
    return out


def plot_feature(name: str, result: dict, path) -> None:
    """Distributions with the original and new weights, and the ratio panel."""
    from ..plotting.runs import new_figure, save_figure

    edges = np.asarray(result["edges"])
    centres = 0.5 * (edges[1:] + edges[:-1])
    ho, h2o = np.asarray(result["sumw_orig"]), np.asarray(result["sumw2_orig"])
    hn = np.asarray(result["sumw_new"])
    fig = new_figure((5.6, 5.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.errorbar(centres, ho, yerr=np.sqrt(h2o), fmt="ko", ms=3, label="original (signed)")
    top.stairs(hn, edges, color="C1", lw=1.5, label="new weights")
    tag = "input" if result["input"] else "not an input"
    top.set_title(f"{name} ({tag}): chi2/ndf = {result['chi2']:.1f}/{result['ndf']}")
    top.set_ylabel("sum of weights")
    top.legend(fontsize="small")
    ratio = np.asarray(result["ratio"], dtype=float)
    unc = np.asarray(result["ratio_uncertainty"], dtype=float)
    bottom.stairs(
        1 + unc,
        edges,
        baseline=1 - unc,
        fill=True,
        color="grey",
        alpha=0.35,
        label="original's uncertainty",
    )
    bottom.plot(centres, ratio, "o", color="C1", ms=3)
    bottom.axhline(1.0, color="k", lw=0.8)
    bottom.set_ylabel("new / original")
    bottom.set_xlabel(name)
    finite = ratio[np.isfinite(ratio)]
    if finite.size:
        span = max(0.1, float(np.max(np.abs(finite - 1))) * 1.2)
        bottom.set_ylim(1 - span, 1 + span)
    save_figure(fig, path)


def _markdown(report: dict, plots: dict) -> str:
    g = report["global"]
    nf, ess = report["negative_fraction"], report["ess"]
    lines = [
        "# Reweighting report",
        "",
        f"{report['events']} events; inputs of the weight network: {', '.join(report['inputs'])}.",
        "",
        "| | original | new |",
        "|---|---|---|",
        f"| negative weights | {100 * nf['before']:.2f}% | {100 * nf['after']:.2f}% |",
        f"| effective sample size | {ess['before']:.1f} | {ess['after']:.1f} |",
        f"| sum w | {g['sum_w_orig']:.6g} +- {g['uncertainty_orig']:.3g} | "
        f"{g['sum_w_new']:.6g} (pull {g['pull']:+.2f}) |",
        "",
    ]
    if "learning" in report:
        lines += [
            "Weight network: " + ", ".join(f"{k} = {v}" for k, v in report["learning"].items()),
            "",
        ]
    if report["regions"]:
        lines += [
            "## Regions",
            "",
            "| region | events | sum w original | sum w new | pull |",
            "|---|---|---|---|---|",
        ]
        for label, r in report["regions"].items():
            lines.append(
                f"| {label} (`{r['expression']}`) | {r['events']} | {r['sum_w_orig']:.6g} +- "
                f"{r['uncertainty_orig']:.3g} | {r['sum_w_new']:.6g} | {r['pull']:+.2f} |"
            )
        lines.append("")
    lines += [
        "## Features",
        "",
        "Pulls use the variance of the difference, sum (w' - w)^2 per bin (the same events "
        "fill both histograms); they are N(0, 1) for correct weights. chi2_orig uses the "
        "original's uncertainty alone (smaller).",
        "",
        "| feature | input | chi2 / ndf | p-value | max abs pull | chi2_orig |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in report["features"].items():
        p = f"{f['p_value']:.3g}" if f["p_value"] is not None else "-"
        lines.append(
            f"| {name} | {'yes' if f['input'] else 'no'} | {f['chi2']:.1f} / {f['ndf']} | {p} | "
            f"{f['max_abs_pull'] or 0:.2f} | {f['chi2_orig']:.1f} |"
        )
    lines.append("")
    for name, path in plots.items():
        lines.append(f"![{name}]({path})")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir, *, plots: bool = True) -> Path:
    """Write ``reweight_report.json``, ``reweight_report.md`` and ``plots/<feature>.png``
    into ``out_dir``; returns the markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    if plots:
        for name, res in report["features"].items():
            rel = f"plots/{name}.png"
            plot_feature(name, res, out_dir / rel)
            paths[name] = rel
    write_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=1))
    md = out_dir / REPORT_MD
    write_atomic(md, _markdown(report, paths))
    return md
