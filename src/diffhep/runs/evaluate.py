"""The test metrics and the artefacts of a trained model, and re-evaluating a saved run.

:func:`finish` writes, from the selected model and the test split, ``workspace.json``,
``histograms.json``, ``selection.json``, ``model.onnx`` + ``preprocess.json``, ``plots/``,
``diagnostics.json`` (fit diagnostics), ``report.html`` and (last) ``summary.json``;
:func:`save_model` writes ``model.eqx`` and its header ``model.json``. :func:`evaluate_run`
recomputes them all from a saved run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..analysis.pipeline import Pipeline
from ..nn.sharding import pad_events
from ..nn.training import TrainState, read_checkpoint_meta
from ..types import Events
from ..weights.weighting import check_net_yields, warn_bins_without_background
from ..writers import run_lock, write_atomic
from .artefacts import observed_summary, summary_head, trust, write_report, write_selection
from .config import Config
from .prepare import is_streamed_run, restore_run, restore_streamed
from .results import histograms_document, write_histograms

__all__ = [
    "MODEL_FORMAT",
    "evaluate_run",
    "finish",
    "observed_summary",
    "run_workspace",
    "save_model",
    "summary_head",
    "write_selection",
]

MODEL_FORMAT = "diffhep-model/1"


def _as_jax(events):
    return {n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in events.items()}


def _bucket(n: int) -> int:
    """``n`` rounded up to a multiple of 2**(bits of n - 4): at most 1/8 more events, and
    event sets of about the same size (a run's validation and test splits) round to the same."""
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def _padded(events) -> dict:
    """Every event set padded to :func:`_bucket` of its size with zero-weight events (which
    change no histogram, yield or fraction), on the devices of its arrays: the metrics of the
    validation and of the test split then run one compiled program, not one per shape."""
    out = {}
    for name, ev in events.items():
        n = len(ev.w)
        if n == 0 or _bucket(n) == n:
            out[name] = ev
            continue
        padded = pad_events(Events(np.asarray(ev.x), np.asarray(ev.w)), _bucket(n))
        if getattr(ev.w, "committed", False):  # placed by the caller (e.g. sharded): there too
            out[name] = Events(*(jax.device_put(a, ev.w.sharding) for a in padded))
        else:  # uncommitted as the caller's (a committed copy would compile another program)
            out[name] = Events(*(jnp.asarray(a) for a in padded))
    return out


def _metrics_fn(pipe: Pipeline):
    @eqx.filter_jit
    def metrics(params, events):
        return pipe.metrics(params, events)

    def run(params, events) -> dict:
        m = jax.device_get(metrics(params, _padded(events)))
        names = pipe.template.config.par_names
        out = {
            "expected_cls": float(m["expected_cls"]),
            "z0": float(m["z0"]),
            "sigma_mu": float(m["sigma_mu"]),
            "fits_converged": bool(m["cls_converged"]),
        }
        for i, n in enumerate(names):
            if i != pipe.template.config.poi_index:
                out[f"sigma_{n}"] = float(m["uncertainties"][i])
        out["selected_fraction"] = float(m["selected_fraction"])
        out |= trust(m["bin_yields"])
        out["yields"] = {k: float(v) for k, v in m["yields"].items()}
        return out

    return run


def save_model(out: Path, state: TrainState, cfg: Config) -> None:
    eqx.tree_serialise_leaves(out / "model.eqx", state.best_params)
    header = {
        "format": MODEL_FORMAT,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "status": state.status,
        "observable": cfg.observable.model_dump(),
        "edges": {
            c.name: np.asarray(b.edges()).tolist()
            for c, b in zip(cfg.analysis.channels, state.best_params.binnings, strict=True)
        },
    }
    obs, sel = state.best_params.observable, state.best_params.selection
    if obs is not None:
        header["standardisation"] = {
            "mean": np.asarray(obs.mean).tolist(),
            "scale": np.asarray(obs.scale).tolist(),
        }
    if sel is not None:
        header["selection"] = {"expression": sel.expression(), "cuts": sel.to_json()}
    write_atomic(out / "model.json", json.dumps(header, indent=1))


def evaluate_run(run_dir: str | Path, *, plots=True) -> dict:
    """Recompute the test metrics (and artefacts) of a saved run; a run on streamed input
    (``training.chunk_events``) is evaluated streamed, as its training did
    (:func:`diffhep.runs.streaming_finish.finish`)."""
    run_dir = Path(run_dir)
    if is_streamed_run(run_dir):
        from .streaming_finish import finish as finish_streamed

        cfg, pipe, data, params = restore_streamed(run_dir)
        with run_lock(run_dir):
            state = _saved_state(run_dir, params)
            return finish_streamed(run_dir, pipe, data, params, state, cfg, plots=plots)
    cfg, pipe, parts, params = restore_run(run_dir)
    with run_lock(run_dir):
        state = _saved_state(run_dir, params)
        return finish(run_dir, pipe, parts, params, state, _metrics_fn(pipe), cfg, plots=plots)


def _saved_state(run_dir: Path, params) -> TrainState | None:
    """The training record of a run (epochs, step times, status) from its checkpoint, or
    None without one."""
    if not (run_dir / "checkpoint.json").is_file():
        return None
    meta = read_checkpoint_meta(
        run_dir, fix="restore the file from a copy, or retrain: diffhep train CONFIG --out DIR"
    )
    state = TrainState(params, None, params)
    state.history, state.step_seconds = meta["history"], meta["step_seconds"]
    state.best_epoch, state.epoch = meta["best_epoch"], meta["epoch"]
    state.status = meta["status"]
    return state


def finish(out, pipe, parts, params, state, metrics, cfg, plots=True) -> dict:
    """Write the artefacts of a trained model; ``summary.json`` last.

    A stale ``summary.json`` is removed first, so a crash leaves no summary. A plot or the
    report that fails does not lose the other artefacts: the summary then says ``"status":
    "incomplete"`` and names what failed (``"failed"``), and the command exits 1.
    """
    (out / "summary.json").unlink(missing_ok=True)
    (out / "diagnostics.json").unlink(missing_ok=True)  # only the report writes it anew
    test = _as_jax(parts["test"])
    m = metrics(params, test)
    hists = jax.device_get(pipe.histograms(params, test))
    check_net_yields(
        hists, what=f"test-set histograms ({out / 'workspace.json'})", samples=pipe.analysis.samples
    )
    warn_bins_without_background(
        m.get("bins_without_background", []),
        f"test-set histograms ({out / 'workspace.json'})",
        "summary.json: trusted false",
    )
    ws = run_workspace(pipe, params, parts, hists)
    observed = parts.get("observed")
    write_atomic(out / "workspace.json", json.dumps(ws, indent=1))
    selection = None
    if params.selection is not None:
        nominal = {n: (np.asarray(parts["test"][n].x), np.asarray(parts["test"][n].w))
                   for n in pipe.analysis.samples}  # fmt: skip
        selection = write_selection(out, params.selection,
                                    params.selection.cutflow(nominal, pipe.features))  # fmt: skip
    summary = summary_head(m, state, {n: len(e.w) for n, e in parts["test"].items()})
    if observed is not None:
        summary |= observed_summary(ws, observed)
    if selection is not None:
        summary["selection"] = selection
    if parts.get("training_weights"):
        summary["training_weights"] = parts["training_weights"]
    if parts.get("black_box"):  # the stage's psi and L-GSO state (runs.black_box)
        summary["black_box"] = parts["black_box"]
    summary["onnx"] = _export(out, pipe, params, parts["test"])
    write_histograms(out, histograms_document(pipe, params, hists))
    if plots:
        write_report(out, pipe, params, parts["test"], hists, state, cfg, summary,
                      observed=observed is not None)  # fmt: skip
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def run_workspace(pipe, params, parts, hists=None) -> dict:
    """The workspace of a run: hard histograms of the test split (``hists`` if computed
    already) and, as observations, the hard histograms of every event of the data sample
    (``parts["observed"]``) or, without one, the background-only Asimov data."""
    if hists is None:
        hists = jax.device_get(pipe.histograms(params, _as_jax(parts["test"])))
    observed = None
    if parts.get("observed") is not None:
        ev = _as_jax({"data": parts["observed"]})["data"]
        observed = jax.device_get(
            {c: h[0] for c, h in pipe.event_set_histograms(params, ev).items()}
        )
    return pipe.workspace(hists, observed)


def _export(out, pipe, params, events) -> str:
    """Write ``model.onnx`` + ``preprocess.json``; returns the file name, or why not."""
    from ..io.onnx.export import ExportError, export_onnx

    dtype = next(iter(events.values())).x.dtype
    try:
        export_onnx(out, pipe, params, dtype)
    except ExportError as exc:
        logging.getLogger("diffhep").warning("no ONNX export: %s", exc)
        return f"not exported: {exc.message}"
    return "model.onnx"
