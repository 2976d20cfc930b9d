"""The HTML report of a run directory (its plots: :mod:`diffhep.runs.plots`, whose
``write_plots`` is importable from here).

``report.html``: one self-contained page (no external resources, every plot embedded as a
base64 PNG) with the metrics, the cut flow, the fit diagnostics of the trained analysis
(pulls, ranking, pre-/post-fit yields: ``diagnostics.json``, :mod:`diffhep.runs.diagnostics`),
the plots and the configuration.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "config.yaml").write_text("seed: 0\\n")
    >>> page = write_html(d).read_text()
    >>> "<pre>seed: 0" in page and "http" not in page
    True
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..writers import write_atomic
from .diagnostics import PLOTS as DIAGNOSTIC_PLOTS
from .plots import _band as _band
from .plots import write_plots

__all__ = ["write_html", "write_plots"]


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:0.5em;vertical-align:top}img{max-width:520px}
pre{background:#f4f4f4;padding:1em;overflow:auto}"""


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, bool | int | str) or v is None:
        return html.escape(str(v))
    return html.escape(json.dumps(v))


def _table(rows, header) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_value(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _weights_table(weights) -> str:
    """Each sample's training weight strategy (``analysis.samples[].weights``) and, for the
    event sets it changed, the negative fraction and effective sample size before/after."""
    sets = weights.get("event_sets", {})
    rows = []
    for sample, strategy in weights.get("strategies", {}).items():
        info = sets.get(sample, {})
        rows.append([sample, strategy, *(info.get(k, "") for k in _WEIGHT_KEYS)])
    header = ["sample", "strategy", "negative fraction before", "after", "ESS before", "after"]
    return _table(rows, header)


_WEIGHT_KEYS = ("negative_fraction_before", "negative_fraction_after", "ess_before", "ess_after")


def _cutflow_table(rows) -> str:
    samples = [k for k in rows[0] if k != "cut"]
    header = ["cut", *[f"{s} ({q})" for s in samples for q in ("events", "yield")]]
    cells = [[r["cut"], *[r[s][q] for s in samples for q in ("events", "yield")]] for r in rows]
    return _table(cells, header)


#: What each metric of ``summary.json`` is (the report's "meaning" column).
METRIC_MEANINGS = {
    "expected_cls": "median expected CLs of mu = 1 (qtilde, asymptotic), on the "
    "background-only Asimov data of the test-split histograms",
    "z0": "median expected discovery significance sqrt(q0) on the mu = 1 Asimov data of the "
    "test-split histograms",
    "sigma_mu": "expected uncertainty of mu: sqrt of the inverse Fisher information at mu = 1 "
    "(nuisances profiled) of the test-split histograms; `diffhep fit workspace.json` gives "
    "another number, as it fits the workspace's background-only Asimov observations "
    "(mu-hat = 0, at the POI's lower bound) and takes the Hessian there",
    "fits_converged": "whether every fit behind these numbers converged",
    "trusted": "false if a bin of the test-split histograms has signal and a total background "
    "<= 0 (bins_without_background): expected_cls, z0 and sigma_mu are then artefacts",
    "best_epoch_trusted": "false if the best epoch's validation histograms have such a bin "
    "(chosen only when no epoch had trusted validation metrics)",
    "selected_fraction": "fraction of the test-split events (weighted) the selection keeps",
    "median_step_seconds": "median wall time of one training step",
    "best_epoch": "the epoch whose model is kept (best training.select_on on the validation split)",
    "epochs_run": "epochs trained",
    "status": "finished, early-stopped, nan (stopped on a non-finite loss) or incomplete (an "
    "artefact failed)",
    "onnx": "the event score for C++ inference",
}


def _meaning(key: str) -> str:
    if key in METRIC_MEANINGS:
        return METRIC_MEANINGS[key]
    if key.startswith("sigma_"):
        return (f"expected uncertainty of the nuisance parameter {key[6:]} (inverse Fisher "
                "information at mu = 1, as sigma_mu)")  # fmt: skip
    return ""


def _analysis_of(run_dir: Path):
    """(nominal samples, signal, shape systematics' event sets) from ``config.yaml``, or
    None if the file is missing or unreadable."""
    import yaml

    try:
        a = yaml.safe_load((run_dir / "config.yaml").read_text())["analysis"]
        samples = [x["name"] for x in a["samples"]]
        signal = next(x["name"] for x in a["samples"] if x["role"] == "signal")
        variations = {}
        for sys in a.get("shape_systematics") or []:
            for d in ("up", "down"):
                v = sys[d]
                variations[v if isinstance(v, str) else f"{sys['sample']}_{sys['name']}_{d}"] = (
                    sys["name"], d, sys["sample"])  # fmt: skip
        return samples, signal, variations
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration):
        return None


def _yields_tables(yields: dict, analysis) -> list[str]:
    """The nominal samples' yields (with the total background and S/B), and apart from
    them the totals of the systematic variation templates."""
    if analysis is None:
        return ["<h3>Yields (test split)</h3>",
                _table(list(yields.items()), ["event set", "yield"])]  # fmt: skip
    samples, signal, variations = analysis
    bkg = sum(float(yields[n]) for n in samples if n != signal and n in yields)
    rows = [[n, yields[n]] for n in samples if n in yields]
    rows += [["total background", bkg]]
    if signal in yields and bkg > 0:
        rows += [["S/B", float(yields[signal]) / bkg]]
    out = ["<h3>Yields (test split, expected events)</h3>", _table(rows, ["sample", "yield"])]
    var = [
        [name, f"{sys} {d}", sample, yields[name],
         float(yields[name]) / float(yields[sample]) - 1 if yields.get(sample) else ""]
        for name, (sys, d, sample) in variations.items() if name in yields
    ]  # fmt: skip
    if var:
        header = ["template", "systematic", "of sample", "yield", "relative to nominal"]
        out += ["<h3>Systematic variation templates</h3>", _table(var, header)]
    return out


def _bin_tables(run_dir: Path, analysis) -> list[str]:
    """Per channel, a row per bin: edges, each nominal sample's yield, the total background
    with its MC statistical uncertainty, and S/B (from ``histograms.json``)."""
    path = run_dir / "histograms.json"
    if analysis is None or not path.is_file():
        return []
    samples, signal, _ = analysis
    try:
        channels = json.loads(path.read_text())["channels"]
    except (OSError, ValueError, KeyError):
        return []
    out = ["<h2>Bins (test split)</h2>"]
    for name, ch in channels.items():
        edges = np.asarray(ch["edges"], float)
        sumw = {n: np.asarray(ch["sumw"][n], float) for n in samples if n in ch["sumw"]}
        sumw2 = {n: np.asarray(ch["sumw2"][n], float) for n in samples if n in ch["sumw2"]}
        backgrounds = [n for n in sumw if n != signal]
        b = sum((sumw[n] for n in backgrounds), np.zeros(len(edges) - 1))
        b_err = np.sqrt(sum((sumw2[n] for n in backgrounds), np.zeros(len(edges) - 1)))
        s = sumw.get(signal, np.zeros(len(edges) - 1))
        header = ["bin", "low edge", "high edge", *sumw, "total background",
                  "background MC stat.", "S/B"]  # fmt: skip
        rows = [
            [k, float(edges[k]), float(edges[k + 1]), *(float(sumw[n][k]) for n in sumw),
             float(b[k]), float(b_err[k]), float(s[k] / b[k]) if b[k] > 0 else "n/a"]
            for k in range(len(edges) - 1)
        ]  # fmt: skip
        observable = "neural observable" if ch["observable"] == "nn" else ch["observable"]
        out += [f"<h3>{html.escape(name)} ({html.escape(observable)})</h3>", _table(rows, header)]
    return out


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{name}</figcaption></figure>")  # fmt: skip


def _pm(value: float, sd: float) -> str:
    return f"{value:.6g} ± {sd:.6g}"


def _diagnostics_section(run_dir: Path) -> list[str]:
    """Pulls, ranking and pre-/post-fit yields of ``diagnostics.json`` (none without it) and
    their figures."""
    path = run_dir / "diagnostics.json"
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    rank = doc["ranking"]
    poi = html.escape(rank["poi"])
    at = f" ({poi} = {doc['poi_value']:g})" if doc.get("poi_value") is not None else ""
    out = [
        "<h2>Fit diagnostics</h2>",
        f"<p>Fits of the trained analysis (<code>workspace.json</code>) to the "
        f"{html.escape(doc['data_description'])}{at}; the same numbers as "
        "<code>diffhep pulls</code>, <code>ranking</code> and <code>yields</code> on these "
        f"data (<code>diagnostics.json</code>). Post-fit {poi} = "
        f"{_pm(rank['poi_bestfit'], rank['poi_uncertainty'])}.</p>",
        "<h3>Pulls</h3>",
        _table([[p["name"], p["modifier"], p["pull"], p["constraint"]]
                for p in doc["pulls"]["parameters"]],
               ["parameter", "modifier", "pull", "constraint"]),
    ]  # fmt: skip
    if doc["pulls"]["normfactors"]:
        out += ["<h3>Unconstrained parameters</h3>",
                _table([[p["name"], p["modifier"], _pm(p["bestfit"], p["uncertainty"])]
                        for p in doc["pulls"]["normfactors"]],
                       ["parameter", "modifier", "best fit"])]  # fmt: skip
    keys = ("prefit_up", "prefit_down", "postfit_up", "postfit_down")
    out += [f"<h3>Ranking (impact on {poi})</h3>",
            _table([[r["parameter"], *(r[k] for k in keys)] for r in rank["ranking"]],
                   ["parameter", "pre-fit up", "pre-fit down", "post-fit up",
                    "post-fit down"])]  # fmt: skip
    pre, post = doc["yields"]["prefit"], doc["yields"]["postfit"]
    for c in post:
        nb = len(post[c]["data"])
        rows = []
        for label, res in (("pre-fit", pre[c]), ("post-fit", post[c])):
            for name, e in [*res["samples"].items(), ("total", res["total"])]:
                cells = [_pm(y, sd) for y, sd in zip(e["yields"], e["stdev"], strict=True)]
                rows.append([f"{name} ({label})", *cells, _pm(e["sum"], e["sum_stdev"])])
        rows.append(["data", *post[c]["data"], post[c]["data_sum"]])
        out += [f"<h3>Yields in {html.escape(c)} (pre- and post-fit)</h3>",
                _table(rows, ["sample", *[f"bin {b}" for b in range(nb)], "total"])]  # fmt: skip
    out += [
        _figure(run_dir / "plots" / n)
        for n in DIAGNOSTIC_PLOTS
        if (run_dir / "plots" / n).is_file()
    ]
    return out


_DEFINITIONS = (
    "<p>Every number here is computed on the test split (<code>data.split.test</code>), "
    "never used in training or model selection, with hard (not smoothed) histograms and the "
    "asymptotic formulae on Asimov data: expected, not observed, results. "
    "<code>workspace.json</code> holds the same histograms with background-only Asimov "
    "observations.</p>"
)


def write_html(run_dir, summary: dict | None = None) -> Path:
    """Write ``report.html`` of a run directory from its files (``summary.json`` unless
    ``summary`` is given, ``config.yaml``, ``plots/*.png``); atomically. Returns its path."""
    run_dir = Path(run_dir)
    if summary is None:
        summary = {}
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
    parts = [f"<h1>diffhep run {html.escape(run_dir.resolve().name)}</h1>"]
    if summary.get("failed"):
        parts += ["<h2>Incomplete run: these artefacts failed</h2>",
                  _table(list(summary["failed"].items()), ["artefact", "error"])]  # fmt: skip
    if summary.get("untrusted"):
        parts += ["<h2>Untrusted numbers</h2>", "<ul>" + "".join(
            f"<li>{html.escape(n)}</li>" for n in summary["untrusted"]) + "</ul>"]  # fmt: skip
    analysis = _analysis_of(run_dir)
    flat = [(k, v, _meaning(k)) for k, v in summary.items() if not isinstance(v, dict | list)]
    if flat:
        parts += ["<h2>Test-set metrics</h2>", _DEFINITIONS,
                  _table(flat, ["metric", "value", "meaning"])]  # fmt: skip
    if summary.get("yields"):
        parts += _yields_tables(summary["yields"], analysis)
    parts += _bin_tables(run_dir, analysis)
    weights = summary.get("training_weights")
    if weights:
        parts += ["<h2>Training weights</h2>", _weights_table(weights)]
    selection = summary.get("selection")
    if selection:
        parts += [
            "<h2>Selection</h2>",
            f"<p><code>{html.escape(selection['expression'])}</code></p>",
            "<h3>Cut flow (test set)</h3>",
            _cutflow_table(selection["cutflow"]),
        ]
    diagnostics = _diagnostics_section(run_dir)
    parts += diagnostics
    shown = DIAGNOSTIC_PLOTS if diagnostics else ()
    plots = sorted(p for p in (run_dir / "plots").glob("*.png") if p.name not in shown)
    if plots:
        parts.append("<h2>Plots</h2>")
        notes = (summary.get("streamed") or {}).get("plots") or {}
        if notes:  # a streamed run: some plots are not drawn from every test event
            parts.append("<p>Streamed input: " + "; ".join(
                f"<code>{html.escape(k)}</code> shows {html.escape(v)}" for k, v in notes.items()
            ) + ".</p>")  # fmt: skip
    parts += [_figure(p) for p in plots]
    if (run_dir / "config.yaml").is_file():
        config = html.escape((run_dir / "config.yaml").read_text())
        parts += ["<h2>Configuration</h2>", f"<pre>{config}</pre>"]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>diffhep run {html.escape(run_dir.resolve().name)}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    return write_atomic(run_dir / "report.html", page)
