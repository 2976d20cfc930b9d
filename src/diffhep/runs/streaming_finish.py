"""The metrics and artefacts of a streamed run (``training.chunk_events``) from its test split,
read chunk by chunk as it trained (:mod:`diffhep.runs.streaming`): the same files as an
in-memory run (:func:`diffhep.runs.evaluate.finish`), never holding the test events.

One pass over the test split's chunks (:meth:`~diffhep.runs.streaming.StreamData.histograms`)
accumulates the hard histograms and, in :class:`TestPass`, what the plots need of the
events:

- the selection's cut flow, exact: every chunk's rows (events, weighted yield per cut and
  nominal sample) are added up;
- the ROC curve: the weights of the selected signal and background events in
  :data:`ROC_BINS` bins of the network's logit (width 0.01 over [-20, 20], the ends open);
  the curve runs over the bins' thresholds, the AUC differs from the per-event one by at
  most half the weight product of events sharing a bin;
- the observable against the features (and, for two features, over the input plane): a
  uniform random subsample of at most :data:`SUBSAMPLE` selected events per event set
  (the events with the smallest of a seeded uniform key), as the report says.

The stacked histograms, systematic variations, training curves and fit diagnostics come
from the accumulated histograms, the training record and ``workspace.json``, as in
memory. Memory: one chunk plus the bins and the subsample, whatever the number of events.
"""

from __future__ import annotations

import json
import resource

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..analysis import losses as L
from ..stats.hypotest import hypotest
from .artefacts import observed_summary, summary_head, trust, write_report, write_selection
from .config import Config
from .plots import PlotEvents
from .streaming import StreamData, _pad

__all__ = ["ROC_BINS", "SUBSAMPLE", "TestPass", "finish", "metrics"]

#: Edges of the network logit's bins of the streamed ROC curve.
ROC_BINS = np.linspace(-20.0, 20.0, 4001)

#: Selected test events per event set kept for the observable-vs-features panels.
SUBSAMPLE = 20_000


@eqx.filter_jit
def _metrics_from(pipe, hists):
    """The exact metrics of :meth:`~diffhep.analysis.pipeline.Pipeline.metrics` from hard
    histograms accumulated over chunks."""
    model = pipe.model(hists)
    data = model.expected_data(L.nominal_pars(model, 0.0))
    res = hypotest(1.0, model, data)
    cov = L.fisher_covariance(model)
    unc = jnp.sqrt(jnp.clip(jnp.diag(cov), 0.0))
    return {
        "expected_cls": res.cls_exp[2],
        "cls_converged": res.converged,
        "z0": L.discovery_significance(model),
        "uncertainties": unc,
    }


def metrics(pipe, hists, fraction) -> dict:
    """The metrics of a run (as ``runs.evaluate``'s) from accumulated hard histograms."""
    hists = {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in hists.items()}
    m = jax.device_get(_metrics_from(pipe, hists))
    cfg = pipe.template.config
    out = {
        "expected_cls": float(m["expected_cls"]),
        "z0": float(m["z0"]),
        "sigma_mu": float(m["uncertainties"][cfg.poi_index]),
        "fits_converged": bool(m["cls_converged"]),
    }
    for i, n in enumerate(cfg.par_names):
        if i != cfg.poi_index:
            out[f"sigma_{n}"] = float(m["uncertainties"][i])
    out["selected_fraction"] = float(fraction)
    out |= trust({c: tuple(np.asarray(v) for v in y) for c, y in pipe.bin_yields(hists).items()})
    out["yields"] = {
        n: float(sum(np.sum(hists[(c.name, n)][0]) for c in pipe.analysis.channels))
        for n in pipe.analysis.event_sets
    }
    return out


@eqx.filter_jit
def _chunk(params, x):
    """Each cut's hard result ``(n_cuts, n)`` and the network logit ``(n,)`` of a chunk."""
    sel, obs = params.selection, params.observable
    n = x.shape[0]
    cuts = jnp.stack([c.passes(x) for c in sel.cuts]) if sel is not None else jnp.ones((0, n), bool)
    return cuts, obs.logits(x) if obs is not None else jnp.zeros(n)


class TestPass:
    """What the plots need of the test events, accumulated chunk by chunk (see the module
    docstring): called with each chunk's ``(x, {event set: w})``."""

    __test__ = False  # not a pytest class

    def __init__(self, pipe, params, step: int, seed: int, subsample: int | None = None):
        self.pipe, self.params, self.step = pipe, params, step
        self.k = SUBSAMPLE if subsample is None else subsample
        a = pipe.analysis
        self.samples, self.signal = list(a.samples), a.signal
        # the input-plane panel (2 features) shows every event set; otherwise nominal only
        two = len(pipe.features) == 2
        self.kept_sets = [n for n in a.event_sets if two or n in a.samples]  # in order
        self.rng = np.random.default_rng([seed, 23])
        self.rows = None
        self.roc = {s: np.zeros(len(ROC_BINS) - 1) for s in ("signal", "background")}
        self.kept, self.selected = {}, dict.fromkeys(self.kept_sets, 0)

    def __call__(self, x: np.ndarray, ws: dict) -> None:
        if not any(s in self.kept_sets for s in ws):
            return  # a feature-level variation: no panel shows it
        n = len(x)
        cuts, logit = jax.device_get(_chunk(self.params, jnp.asarray(_pad(x, self.step))))
        cuts, logit = np.asarray(cuts)[:, :n], np.asarray(logit)[:n]
        sel = self.params.selection
        nominal = {s: (x, w) for s, w in ws.items() if s in self.samples}
        if sel is not None and nominal:
            rows = sel.cutflow(nominal, self.pipe.features, passes=dict.fromkeys(nominal, cuts))
            self.rows = rows if self.rows is None else _add_rows(self.rows, rows)
        if self.params.observable is None:
            return
        keep = cuts.all(axis=0)
        x, logit = x[keep], logit[keep]
        b = np.clip(np.searchsorted(ROC_BINS, logit, side="right") - 1, 0, len(ROC_BINS) - 2)
        key = self.rng.random(len(x))
        for s, w in ws.items():
            w = w[keep]
            if s in self.samples:
                kind = "signal" if s == self.signal else "background"
                self.roc[kind] += np.bincount(b, weights=w, minlength=len(ROC_BINS) - 1)
            if s in self.kept_sets:
                self.selected[s] += len(w)
                self._keep(s, key, x, w, logit)

    def _keep(self, s, key, x, w, logit) -> None:
        """The ``k`` events of smallest key among those kept and these."""
        new = (key, x, w, logit)
        if s in self.kept:
            new = tuple(np.concatenate([a, b]) for a, b in zip(self.kept[s], new, strict=True))
        if len(new[0]) > self.k:
            idx = np.sort(np.argpartition(new[0], self.k)[: self.k])
            new = tuple(a[idx] for a in new)
        self.kept[s] = new

    def cutflow(self) -> list | None:
        """The cut flow of every test event, the samples in the analysis' order."""
        if self.rows is None:
            return None
        zero = {"events": 0, "yield": 0.0}
        return [{"cut": r["cut"], **{s: r.get(s, zero) for s in self.samples}} for r in self.rows]

    def plot_events(self) -> PlotEvents:
        """The :class:`~diffhep.runs.plots.PlotEvents` of the test split."""
        f = len(self.pipe.features)
        empty = (np.zeros(0), np.zeros((0, f), np.float32), np.zeros(0), np.zeros(0))
        kept = {s: self.kept.get(s, empty) for s in self.kept_sets}
        events = {s: (x, w) for s, (_, x, w, _) in kept.items()}
        scores = {s: 0.5 + 0.5 * np.tanh(0.5 * kept[s][3]) for s in self.samples}  # sigmoid
        hs, hb = self.roc["signal"], self.roc["background"]
        roc = None
        if np.sum(hs) != 0 and np.sum(hb) != 0:
            used = (hs != 0) | (hb != 0)
            centres = 0.5 * (ROC_BINS[1:] + ROC_BINS[:-1])[used]
            roc = (centres, hs[used], centres, hb[used])
        return PlotEvents(self.cutflow(), events, scores, roc)

    def notes(self) -> dict:
        """``{plot: how it was drawn}`` for the plots not drawn from every test event."""
        if self.params.observable is None:
            return {}
        shown = ", ".join(f"{s} {min(self.k, n)} of {n}" for s, n in self.selected.items())
        sub = (f"a uniform random subsample of the selected test events (at most {self.k} "
               f"per event set: {shown})")  # fmt: skip
        out = {
            "roc.png": f"every selected test event, its network output in {len(ROC_BINS) - 1} "
            f"bins of the logit over [{ROC_BINS[0]:g}, {ROC_BINS[-1]:g}]",
            "observable_vs_features.png": sub,
        }
        if len(self.pipe.features) == 2:
            out["observable_2d.png"] = sub
        return out


def _add_rows(a: list, b: list) -> list:
    """Two cut flows of the same cuts added, sample by sample."""
    out = []
    for ra, rb in zip(a, b, strict=True):
        row = dict(ra)
        for s, v in rb.items():
            if s == "cut":
                continue
            old = row.get(s, {"events": 0, "yield": 0.0})
            row[s] = {"events": old["events"] + v["events"], "yield": old["yield"] + v["yield"]}
        out.append(row)
    return out


def finish(out, pipe, data: StreamData, params, state, cfg: Config, plots: bool = True) -> dict:
    """The artefacts of a streamed run from its test split, accumulated chunk by chunk in one
    pass: ``workspace.json``, ``histograms.json``, ``selection.json`` (with the cut flow),
    ``model.onnx``, ``plots/``, ``diagnostics.json``, ``report.html`` (if ``plots``) and
    ``summary.json`` (last). A plot or the report that fails makes the status
    ``incomplete``, as :func:`diffhep.runs.evaluate.finish`'s."""
    from ..io.onnx.export import ExportError, export_onnx
    from ..weights.weighting import check_net_yields, warn_bins_without_background
    from ..writers import write_atomic
    from .results import histograms_document, write_histograms

    (out / "summary.json").unlink(missing_ok=True)
    (out / "diagnostics.json").unlink(missing_ok=True)  # only the report writes it anew
    need = plots or params.selection is not None
    test = TestPass(pipe, params, data.step, cfg.seed) if need else None
    hists, fraction = data.histograms(params, 2, visit=test)
    m = metrics(pipe, hists, fraction)
    check_net_yields(hists, what=f"test-set histograms ({out / 'workspace.json'})",
                     samples=pipe.analysis.samples)  # fmt: skip
    warn_bins_without_background(
        m.get("bins_without_background", []),
        f"test-set histograms ({out / 'workspace.json'})",
        "summary.json: trusted false",
    )
    observed = data.observed(params)
    ws = pipe.workspace(hists, observed)
    write_atomic(out / "workspace.json", json.dumps(ws, indent=1))
    rate = data.events_per_second  # None when re-evaluated: the last epoch's record then
    if rate is None and state is not None and state.history:
        rate = state.history[-1].get("events_per_second")
    sets = pipe.analysis.event_sets
    summary = summary_head(m, state, {n: int(data.scan.counts[n][2]) for n in sets})
    summary["streamed"] = {
        "chunk_events": data.step,
        "training_events": {n: int(data.scan.counts[n][0]) for n in sets},
        "events_per_step": data.events_per_step,
        "events_per_second_last_epoch": rate,
    }
    if plots:
        summary["streamed"]["plots"] = test.notes()
    if observed is not None:
        summary |= observed_summary(ws)
    if params.selection is not None:
        summary["selection"] = write_selection(out, params.selection, test.cutflow())
    try:
        export_onnx(out, pipe, params, np.float32)
        summary["onnx"] = "model.onnx"
    except ExportError as exc:
        summary["onnx"] = f"not exported: {exc.message}"
    write_histograms(out, histograms_document(pipe, params, hists))
    if plots:
        write_report(out, pipe, params, test.plot_events(), hists, state, cfg, summary,
                      observed=observed is not None)  # fmt: skip
    summary["streamed"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary
