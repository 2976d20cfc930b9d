"""The plots of a run directory (``plots/``), in the experiment style of ``report.style``:
training curves, cut values and selected fraction vs epoch, stacked histograms (with the
systematic variations, an uncertainty band and a ratio panel), the cut flow, the ROC curve,
the observable against each input feature and, for 2-D inputs, the observable over the
input plane. A plot that fails is logged and named; the others are still drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..plotting import runs as plotting

log = logging.getLogger(__name__)

__all__ = ["PlotEvents", "plot_events", "write_plots"]


def _band(pipe, hists, channel, total):
    """Per-bin (low, high) of the total: shape systematics (up/down templates), normalisation
    systematics (lo/hi factors of their samples) and MC statistics, in quadrature."""
    a = pipe.analysis
    shifts = [
        tuple(total + d for d in delta) for delta in _shape_deltas(a, hists, channel).values()
    ]
    for s in a.norm_systematics:
        part = sum(np.asarray(hists[(channel, n)][0]) for n in s.samples)
        shifts.append((total + (s.hi - 1) * part, total + (s.lo - 1) * part))
    stat = np.sqrt(sum(np.asarray(hists[(channel, n)][1]) for n in a.samples))
    return plotting.uncertainty_band(total, shifts, stat)


def _shape_deltas(a, hists, channel) -> dict:
    """``{systematic: (up - nominal, down - nominal)}`` summed over the samples it varies
    (one parameter: the samples move together)."""
    out = {}
    for s in a.shape_systematics:
        nominal = np.asarray(hists[(channel, s.sample)][0])
        d = tuple(np.asarray(hists[(channel, n)][0]) - nominal for n in (s.up, s.down))
        old = out.get(s.name)
        out[s.name] = d if old is None else (old[0] + d[0], old[1] + d[1])
    return out


def write_plots(
    plot_dir: Path,
    pipe,
    params,
    test_events,
    hists,
    state=None,
    style=None,
    masks=None,
    stacked: dict | None = None,
) -> dict:
    """Write the standard plots (in ``style``: plain, ATLAS, CMS or LHCb).

    ``stacked`` holds keyword arguments of the histograms' :func:`~diffhep.plotting.runs.
    plot_stacked` (``logy``, ``signal_overlay``: ``report.log_y``, ``report.signal_overlay``).

    A plot that fails does not stop the others: it is logged and named in the result.
    ``test_events`` are the test split's ``{event set: Events}`` or, for a run that never
    holds them in memory, their :class:`PlotEvents`.
    ``masks`` (``{object feature: mask feature}``, :func:`diffhep.runs.ntuples.object_masks`)
    keeps zero-padded objects and the masks out of the observable-vs-features panels.

    Returns:
        ``{"auc": ..., "failed": {"plots/<file>": "<error>"}}``.
    """
    plot_dir = Path(plot_dir)
    failed = {}

    def draw(name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs, style=style)
        except Exception as exc:  # one broken plot must not lose the run
            failed[f"plots/{name}"] = f"{type(exc).__name__}: {exc}"
            log.error("plot %s failed: %s: %s", name, type(exc).__name__, exc)
            return None

    auc = _draw_plots(draw, plot_dir, pipe, params, test_events, hists, state, masks,
                      stacked or {})  # fmt: skip
    return {"auc": None if auc is None else float(auc), "failed": failed}


def _draw_plots(draw, plot_dir, pipe, params, test_events, hists, state, masks, stacked):
    a = pipe.analysis
    if state is not None and state.history:
        draw("training.png", plotting.plot_training, state.history, plot_dir / "training.png")
        cuts = sorted({k for row in state.history for k in row if k.startswith("cut")})
        if cuts:
            metrics = [*cuts, "val_selected_fraction"]
            draw("cuts.png", plotting.plot_training, state.history, plot_dir / "cuts.png",
                 metrics=metrics)  # fmt: skip
    for ch, binning in zip(a.channels, params.binnings, strict=True):
        edges = np.asarray(binning.edges())
        samples = {n: np.asarray(hists[(ch.name, n)][0]) for n in (*a.backgrounds, a.signal)}
        total = sum(samples.values())
        variations = {}
        for sys_name, (up, down) in _shape_deltas(a, hists, ch.name).items():
            variations[f"{sys_name} up"] = total + up
            variations[f"{sys_name} down"] = total + down
        name = f"histograms_{ch.name}.png"
        draw(
            name,
            plotting.plot_stacked,
            edges,
            samples,
            a.signal,
            plot_dir / name,
            variations=variations or None,
            title=ch.name,
            band=_band(pipe, hists, ch.name, total),
            xlabel="observable" if ch.observable == "nn" else ch.observable,
            **stacked,
        )
    ev = test_events
    if not isinstance(ev, PlotEvents):
        ev = plot_events(pipe, params, test_events)
    if ev.cutflow is not None:
        draw("cutflow.png", plotting.plot_cutflow, ev.cutflow, plot_dir / "cutflow.png")
    obs = params.observable
    if obs is None:  # cuts alone: no score to draw
        return None
    auc = None
    if ev.roc is not None:
        auc = draw("roc.png", plotting.plot_roc, *ev.roc, plot_dir / "roc.png")
    else:
        log.warning("the selection keeps no signal or no background test events: no ROC curve")
    nominal = {n: ev.events[n] for n in a.samples if len(ev.events[n][0])}
    if nominal:
        draw(
            "observable_vs_features.png",
            plotting.plot_observable_vs_features,
            {n: ev.scores[n] for n in nominal},
            {n: x for n, (x, _) in nominal.items()},
            pipe.features,
            plot_dir / "observable_vs_features.png",
            weights={n: w for n, (_, w) in nominal.items()},
            masks=masks,
        )
    if len(pipe.features) == 2:
        draw(
            "observable_2d.png",
            plotting.plot_observable_2d,
            lambda x: np.asarray(obs(x)),
            plot_dir / "observable_2d.png",
            samples={n: x for n, (x, _) in ev.events.items() if len(x)},
            feature_names=pipe.features,
        )
    return auc


@dataclass
class PlotEvents:
    """What the plots of the test events draw: from the events in memory
    (:func:`plot_events`) or accumulated chunk by chunk (:mod:`diffhep.runs.streaming_finish`).

    Attributes:
        cutflow: The selection's cut flow (:meth:`~diffhep.analysis.cuts.Selection.cutflow`)
            of the nominal samples; None without a selection.
        events: ``{event set: (x, w)}`` of the events the hard selection keeps (all of them,
            or a subsample).
        scores: ``{nominal sample: observable (n,)}`` of those events (empty without one).
        roc: :func:`~diffhep.plotting.runs.plot_roc`'s ``(signal scores, weights,
            background scores, weights)``; None when the selected signal or background
            weights sum to zero.
    """

    cutflow: list | None
    events: dict
    scores: dict = field(default_factory=dict)
    roc: tuple | None = None


def plot_events(pipe, params, test_events) -> PlotEvents:
    """The :class:`PlotEvents` of the test events in memory (``{event set: Events}``)."""
    a = pipe.analysis
    events = {n: (np.asarray(test_events[n].x), np.asarray(test_events[n].w)) for n in a.event_sets}
    cutflow = None
    if params.selection is not None:
        cutflow = params.selection.cutflow({n: events[n] for n in a.samples}, pipe.features)
        # the score plots show the events the selection keeps (hard cuts), as analysed
        keep = {
            n: np.asarray(params.selection.passes(x), dtype=bool) for n, (x, _) in events.items()
        }
        events = {n: (x[keep[n]], w[keep[n]]) for n, (x, w) in events.items()}
    obs = params.observable
    if obs is None:
        return PlotEvents(cutflow, events)
    scores = {n: np.asarray(obs(x)) if len(x) else np.zeros(0)
              for n, (x, _) in events.items() if n in a.samples}  # fmt: skip
    sig_w = events[a.signal][1]
    bkg_w = np.concatenate([events[n][1] for n in a.backgrounds])
    roc = None
    if np.sum(sig_w) != 0 and np.sum(bkg_w) != 0:
        bkg = np.concatenate([scores[n] for n in a.backgrounds])
        roc = (scores[a.signal], sig_w, bkg, bkg_w)
    return PlotEvents(cutflow, events, scores, roc)
