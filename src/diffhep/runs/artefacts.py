"""What a finished run writes besides its model, shared by the in-memory
(:mod:`diffhep.runs.evaluate`) and the streamed (:mod:`diffhep.runs.streaming_finish`)
paths: the head of ``summary.json``, ``selection.json``, the observed CLs of the written
workspace, and ``plots/`` with the fit diagnostics and ``report.html``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..writers import write_atomic
from .config import Config

__all__ = ["observed_summary", "summary_head", "trust", "write_report", "write_selection"]


def _plot_masks(cfg: Config) -> dict:
    """``{object feature: mask feature}`` of the ntuple collections (none otherwise)."""
    from .ntuples import object_masks

    return object_masks(cfg.data)


def trust(bin_yields: dict) -> dict:
    """``bins_without_background`` (the bins with signal and a total background <= 0,
    :func:`~diffhep.weights.weighting.bins_without_background`) and ``trusted`` (none):
    entries of every validation and test metrics record."""
    from ..weights.weighting import bins_without_background

    bad = bins_without_background(bin_yields)
    return {"bins_without_background": bad, "trusted": not bad}


def summary_head(m: dict, state, test_events: dict) -> dict:
    """The first entries of a run's ``summary.json``: the test metrics ``m``, the training
    record of ``state`` (None: not known) and ``test_events`` (``{event set: count}``)."""
    steps = state.step_seconds if state is not None else []
    history = state.history if state is not None else []
    best = next((r for r in history if r.get("epoch") == state.best_epoch), {})
    best_trusted = best.get("val_trusted")
    out = {
        **{k: v for k, v in m.items() if k != "yields"},
        "yields": m["yields"],
        "median_step_seconds": float(np.median(steps)) if steps else None,
        "best_epoch": state.best_epoch if state else None,
        "best_epoch_trusted": best_trusted,
        "epochs_run": state.epoch if state else None,
        "status": state.status if state else None,
        "test_events": test_events,
    }
    notes = []
    if best_trusted is False:
        bins = _bins(best.get("val_bins_without_background") or [])
        notes.append(f"the best epoch ({state.best_epoch}) has validation metrics resting "
                     f"on bins with signal and a total background <= 0 ({bins}): not "
                     "trusted")  # fmt: skip
    if m.get("trusted") is False:
        bins = _bins(m["bins_without_background"])
        notes.append(f"the test metrics rest on bins with signal and a total background <= 0 "
                     f"({bins}): expected_cls, z0 and sigma_mu are not trusted")  # fmt: skip
    if notes:
        out["untrusted"] = notes
    return out


def _bins(bad: list) -> str:
    return ", ".join(
        f"{b['channel']} bin {b['bin']}: s = {b['signal']:.3g}, b = {b['background']:.3g}"
        for b in bad
    )


def write_selection(out: Path, selection, cutflow: list) -> dict:
    """Write ``selection.json``: the trained cuts (expression, thresholds) and their cut flow
    on the test split; returns its content (also the summary's ``selection``)."""
    doc = {"expression": selection.expression(), "cuts": selection.to_json(), "cutflow": cutflow}
    write_atomic(out / "selection.json", json.dumps(doc, indent=1))
    return doc


def observed_summary(ws: dict, events=None) -> dict:
    """Observed CLs (mu = 1, qtilde) of the written workspace, as pyhf computes it from
    ``workspace.json``: the data sample's histograms are its observations (``events``, if
    given, are counted: ``observed_events``)."""
    from ..stats.hypotest import hypotest
    from ..stats.workspace import Workspace

    w = Workspace(ws)
    model = w.model()
    res = hypotest(1.0, model, w.data(model))
    out = {"observed_cls": float(res.cls_obs), "observed_cls_converged": bool(res.converged)}
    if events is not None:
        out["observed_events"] = len(events.w)
    return out


def write_report(out, pipe, params, test_events, hists, state, cfg, summary, observed) -> None:
    """``plots/`` (stale PNGs removed first), the fit diagnostics (``diagnostics.json``,
    :mod:`diffhep.runs.diagnostics`; of the observed data if ``observed``, a data sample's
    histograms) and ``report.html``; what fails is named in ``summary["failed"]`` and makes
    the status ``incomplete``. ``test_events``: as :func:`~diffhep.runs.plots.write_plots`'."""
    from .diagnostics import enabled, write_diagnostics
    from .plots import write_plots
    from .report import write_html

    plot_dir = out / "plots"
    for old in plot_dir.glob("*.png"):
        old.unlink()
    (out / "report.html").unlink(missing_ok=True)
    failed = {}
    try:
        masks = _plot_masks(cfg)
        failed |= write_plots(plot_dir, pipe, params, test_events, hists, state,
                              style=cfg.report.style, masks=masks,
                              stacked={"logy": cfg.report.log_y,
                                       "signal_overlay": cfg.report.signal_overlay},
                              )["failed"]  # fmt: skip
    except Exception as exc:
        failed["plots"] = f"{type(exc).__name__}: {exc}"
    if enabled(cfg.report.diagnostics):
        failed |= write_diagnostics(out, plot_dir, style=cfg.report.style, observed=observed)

    def mark():
        if failed:
            summary["status"], summary["failed"] = "incomplete", dict(failed)

    mark()  # the report shows the status
    try:
        write_html(out, summary)
    except Exception as exc:
        failed["report.html"] = f"{type(exc).__name__}: {exc}"
    mark()
    if failed:
        what = "; ".join(f"{k}: {v}" for k, v in failed.items())
        logging.getLogger("diffhep").error("the run is incomplete: %s", what)
