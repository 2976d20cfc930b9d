"""The plots of a run directory (``plots/``): training curves, cut values and selected
fraction vs epoch, stacked histograms with the systematic variations, ROC curve and, for 2-D
inputs, the observable over the input plane."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plotting

__all__ = ["write_plots"]


def write_plots(plot_dir: Path, pipe, params, test_events, hists, state=None) -> dict:
    """Write the standard plots; returns ``{"auc": ...}``."""
    plot_dir = Path(plot_dir)
    a = pipe.analysis
    if state is not None and state.history:
        plotting.plot_training(state.history, plot_dir / "training.png")
        cuts = sorted({k for row in state.history for k in row if k.startswith("cut")})
        if cuts:
            metrics = [*cuts, "val_selected_fraction"]
            plotting.plot_training(state.history, plot_dir / "cuts.png", metrics=metrics)
    for ch, binning in zip(a.channels, params.binnings, strict=True):
        edges = np.asarray(binning.edges())
        samples = {n: np.asarray(hists[(ch.name, n)][0]) for n in (*a.backgrounds, a.signal)}
        variations = {}
        for s in a.shape_systematics:
            for label, name in (("up", s.up), ("down", s.down)):
                total = sum(np.asarray(hists[(ch.name, n)][0]) for n in a.samples if n != s.sample)
                variations[f"{s.name} {label}"] = total + np.asarray(hists[(ch.name, name)][0])
        plotting.plot_stacked(
            edges,
            samples,
            a.signal,
            plot_dir / f"histograms_{ch.name}.png",
            variations=variations or None,
            title=ch.name,
        )
    obs = params.observable
    if obs is None:  # cuts alone: no score to draw
        return {"auc": None}
    sig = test_events[a.signal]
    bkg_x = np.concatenate([np.asarray(test_events[n].x) for n in a.backgrounds])
    bkg_w = np.concatenate([np.asarray(test_events[n].w) for n in a.backgrounds])
    auc = plotting.plot_roc(
        np.asarray(obs(sig.x)),
        np.asarray(sig.w),
        np.asarray(obs(bkg_x)),
        bkg_w,
        plot_dir / "roc.png",
    )
    if len(pipe.features) == 2:
        plotting.plot_observable_2d(
            lambda x: np.asarray(obs(x)),
            plot_dir / "observable_2d.png",
            samples={n: np.asarray(test_events[n].x) for n in a.event_sets},
            feature_names=pipe.features,
        )
    return {"auc": float(auc)}
