"""Training a run: config -> prepared data -> optax loop over the loss phases -> run directory.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch),
the checkpoint (``checkpoint.eqx`` + ``checkpoint.json``, for resuming), ``model.eqx`` with
its header ``model.json`` (the selected best model), ``workspace.json`` (the trained analysis
as a pyhf workspace from hard histograms of the test set), ``histograms.json`` (those
histograms with their sums of squared weights), ``summary.json`` (test metrics),
``model.onnx`` + ``preprocess.json`` (the event score for C++ inference), ``plots/`` and
``report.html`` (:mod:`diffhep.runs.evaluate` writes the artefacts). While a run trains or
is evaluated, ``run.lock`` (holding its pid) keeps a second process out of the directory
(:func:`diffhep.writers.run_lock`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

from ..analysis import chunked
from ..analysis.pipeline import Pipeline
from ..io.datasets import batches
from ..nn import sharding
from ..nn.training import make_optimizer, train
from ..weights.weighting import warn_bins_without_background
from ..writers import check_writable_dir, run_lock, write_atomic
from . import black_box as stage_run
from . import joint
from .config import Config, ConfigError, load_config
from .evaluate import _as_jax, _metrics_fn, finish, save_model
from .prepare import _same_events, prepare

__all__ = ["annealing", "cut_values", "phase_index", "run_optimizer", "train_run"]


def _frozen(params, parts):
    """``params`` with no gradient through the named parts (``observable``, ...)."""

    def stop(tree):
        return jax.tree.map(lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, tree)

    for name in parts:
        if getattr(params, name) is not None:
            params = eqx.tree_at(
                lambda p, n=name: getattr(p, n), params, stop(getattr(params, name))
            )
    return params


def cut_values(params) -> dict:
    """Current cut thresholds as scalars, ``cut<i>_<feature>`` (``_lo``/``_hi`` for windows),
    for ``metrics.jsonl`` and the plot of the cuts vs epoch."""
    out = {}
    for i, c in enumerate(params.selection.cuts if params.selection is not None else ()):
        t = np.asarray(c.thresholds, dtype=float)
        if c.direction == "window":
            out[f"cut{i}_{c.feature}_lo"], out[f"cut{i}_{c.feature}_hi"] = map(float, t)
        else:
            out[f"cut{i}_{c.feature}"] = float(t[0])
    return out


def phase_index(phases, epoch: int) -> int:
    """Index of the loss phase of a (1-based) epoch: phases last ``epochs`` epochs each, the
    last one (or one without ``epochs``) until the end."""
    end = 0
    for i, p in enumerate(phases):
        if p.epochs is None:
            return i
        end += p.epochs
        if epoch <= end:
            return i
    return len(phases) - 1


def _loss_fn(pipe: Pipeline, terms: dict, freeze=()):
    names = tuple(terms)

    def loss(params, batch, hyper):
        params = _frozen(params, freeze)
        values = pipe.loss_terms(params, batch, names, hyper["bandwidth"], hyper.get("slope"))
        total = sum(w * values[t] for t, w in terms.items())
        return total, values

    return loss


def train_run(
    cfg: Config,
    out: str | Path,
    *,
    file=None,
    resume=True,
    progress=True,
    track_test=False,
    plots=True,
    option="--out",
) -> dict:
    """Train according to ``cfg`` into the run directory ``out``; returns the summary.

    ``option`` is the command's option that named ``out`` (``--runs-dir`` for a study's
    run), named in the errors; a command with it has ``--no-resume`` only if it is ``--out``.

    ``track_test`` also records the test metrics after every epoch (``test_*`` in
    ``metrics.jsonl``, for studies of the training curves); they never select the model.
    """
    out = Path(out)
    created = not out.exists()
    check_writable_dir(out, where=option)
    try:
        with run_lock(out, where=option):
            return _train_run(out, cfg, file, resume, progress, track_test, plots, option)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # bad input stopped the run before anything was written


def _same_config(path: Path, cfg: Config) -> bool:
    """Whether the run's resolved ``config.yaml`` is ``cfg`` (as values: a dump written by an
    older diffhep that spells the same config differently is the same config)."""
    try:
        return load_config(path) == cfg
    except ConfigError:
        return False


def _train_run(out: Path, cfg: Config, file, resume, progress, track_test, plots, option) -> dict:
    resolved = cfg.to_yaml()
    cfg_path = out / "config.yaml"
    if (out / "checkpoint.json").is_file() and resume and cfg_path.is_file():
        if not _same_config(cfg_path, cfg):
            raise ConfigError(
                "the run directory holds a checkpoint of a different configuration",
                file=str(cfg_path),
                fix="use a new --out directory, or --no-resume to start over"
                if option == "--out"
                else f"use a new {option}, or delete {out} to train it again",
            )
    if cfg.training.chunk_events is not None:  # the files streamed in chunks (runs.streaming)
        return _train_streamed(out, cfg, file, resume, progress, plots)
    pipe, parts, params = prepare(cfg, file)  # bad data fails here, before anything is written
    write_atomic(cfg_path, resolved)
    train_ev = parts["train"]
    valid = _as_jax(parts["validation"])
    metrics = _metrics_fn(pipe)
    t = cfg.training
    phases = t.phases()
    mesh, batch_size, make_step, place = _parallel(cfg, file)
    if mesh is not None:  # every input of a compiled function on the mesh is global
        params, valid = sharding.replicate(params, mesh), sharding.replicate(valid, mesh)
    if t.chunk_size is None:
        loss_fns = [_loss_fn(pipe, p.terms, tuple(t.freeze)) for p in phases]
    else:
        freeze = tuple(t.freeze)
        loss_fns = [
            chunked.pipeline_loss(pipe, p.terms, lambda q: _frozen(q, freeze)) for p in phases
        ]

    names = parts["training_weights"].get("joint") if parts.get("training_weights") else None
    optimizer = run_optimizer(cfg, params)
    if names:  # the weight networks train with the analysis (runs.joint)
        if mesh is not None or t.chunk_size is not None:
            raise ConfigError(
                "jointly learned weights (weights: {joint: true}) run on one device, unchunked",
                file=file,
                where="training.devices" if mesh is not None else "training.chunk_size",
                fix="remove training.devices/chunk_size, or use the two-stage learned weights",
            )
        params = joint.create(cfg, params, train_ev, names)
        loss_fns = [joint.joint_loss(f) for f in loss_fns]
        optimizer = joint.joint_optimizer(optimizer, joint.options(cfg).learning_rate)
    stage = None
    if cfg.black_box is not None:  # a non-differentiable stage, stepped by L-GSO (runs.black_box)
        if names or mesh is not None or t.chunk_size is not None:
            raise ConfigError(
                "a black-box stage runs on one device, unchunked, without joint weights",
                file=file,
                where="black_box",
                fix="remove training.devices/chunk_size or the joint weights",
            )
        stage = stage_run.StageRun(cfg, pipe.features, parts, file)
        stage.resume_from(out, resume)
        params = stage.create(params)
        loss_fns = [stage.loss(f) for f in loss_fns]
        optimizer = stage.optimizer(optimizer)

    def analysis(p):
        return joint.analysis_params(stage_run.analysis_params(p))

    def phase(epoch):
        return loss_fns[phase_index(phases, epoch)]

    sel = cfg.selection
    hyper = annealing(cfg)
    if analysis(params).selection is not None:
        x_all = np.concatenate([np.asarray(train_ev[n].x) for n in pipe.analysis.samples])
        analysis(params).selection.warn_dead(x_all, sel.slope)

    def epoch_batches(epoch):
        events = train_ev if stage is None else stage.epoch_events(train_ev, epoch)
        for b in batches(events, batch_size, cfg.seed, epoch, same_as=_same_events(cfg)):
            yield place(b) if stage is None else stage.batch(place(b))

    test = _as_jax(parts["test"]) if track_test else None
    warn_once = _warn_untrusted(t.select_on, out)

    def validate(p):
        ev, extra = valid, {}
        if stage is not None:  # the black box at the epoch's psi
            ev, extra = stage.validation(p, parts["validation"])
            ev = _as_jax(ev)
        p = analysis(p)
        rec = {f"val_{k}": v for k, v in metrics(p, ev).items() if k != "yields"}
        warn_once(rec)
        rec |= extra
        rec |= cut_values(p)
        if test is not None:
            tev = test if stage is None else _as_jax(stage.test_events(parts["test"]))
            rec |= {f"test_{k}": v for k, v in metrics(p, tev).items() if k != "yields"}
        return rec

    def describe(r):
        return f"loss {r['loss']:.4g}  val CLs {r.get('val_expected_cls', float('nan')):.3g}"

    state = train(
        params,
        loss_fns[0],
        optimizer,
        epochs=t.epochs,
        batches=epoch_batches,
        hyper=hyper,
        phase=phase,
        validate=validate,
        select_on=f"val_{t.select_on}" if t.select_on != "loss" else None,
        maximize=t.select_on == "z0",
        trusted="val_trusted" if t.select_on != "loss" else None,
        patience=t.patience,
        run_dir=out,
        resume=resume,
        progress=progress,
        describe=describe,
        make_step=make_step,
    )
    if names:
        parts["training_weights"]["joint_report"] = joint.report(
            state.best_params, train_ev, pipe.features
        )
        state = dataclasses.replace(
            state,
            params=joint.analysis_params(state.params),
            best_params=joint.analysis_params(state.best_params),
        )
    if stage is not None:
        parts = stage.finish_parts(parts, state.best_params, out)
        state = dataclasses.replace(state, params=analysis(state.params),
                                    best_params=analysis(state.best_params))  # fmt: skip
    save_model(out, state, cfg)
    return finish(out, pipe, parts, state.best_params, state, metrics, cfg, plots=plots)


def _describe(r):
    return f"loss {r['loss']:.4g}  val CLs {r.get('val_expected_cls', float('nan')):.3g}"


def _train_streamed(out: Path, cfg: Config, file, resume, progress, plots) -> dict:
    """A ``training.chunk_events`` run: batches, validation and test histograms read from
    the files chunk by chunk (:mod:`diffhep.runs.streaming`)."""
    from .prepare import prepare_streamed
    from .streaming_finish import finish as finish_streamed
    from .streaming_finish import metrics as streamed_metrics

    pipe, data, params = prepare_streamed(cfg, file)
    write_atomic(out / "config.yaml", cfg.to_yaml())
    t = cfg.training
    phases = t.phases()
    loss_fns = [_loss_fn(pipe, p.terms, tuple(t.freeze)) for p in phases]

    warn_once = _warn_untrusted(t.select_on, out)

    def validate(p):
        hists, fraction = data.histograms(p, 1)
        m = streamed_metrics(pipe, hists, fraction)
        rec = {f"val_{k}": v for k, v in m.items() if k != "yields"}
        warn_once(rec)
        rec["events_per_second"] = data.events_per_second
        return rec | cut_values(p)

    state = train(
        params,
        loss_fns[0],
        run_optimizer(cfg, params),
        epochs=t.epochs,
        batches=data.batches,
        hyper=annealing(cfg),
        phase=lambda epoch: loss_fns[phase_index(phases, epoch)],
        validate=validate,
        select_on=f"val_{t.select_on}" if t.select_on != "loss" else None,
        maximize=t.select_on == "z0",
        trusted="val_trusted" if t.select_on != "loss" else None,
        patience=t.patience,
        run_dir=out,
        resume=resume,
        progress=progress,
        describe=_describe,
        count=lambda batch: data.events_per_step,
    )
    save_model(out, state, cfg)
    return finish_streamed(out, pipe, data, state.best_params, state, cfg, plots=plots)


def _warn_untrusted(select_on: str, out: Path):
    """``record -> None``: warns (:class:`~diffhep.weights.weighting.NetYieldWarning`) the
    first time in this process that a validation record has bins with signal and a total
    background <= 0 (``val_trusted`` false), naming the epoch and the bins."""
    warned = []

    def warn(rec):
        if warned or rec.get("val_trusted", True):
            return
        warned.append(True)
        what = "the epoch's validation metrics are kept with val_trusted: false"
        if select_on != "loss":
            what += (f"; such an epoch is not selected on val_{select_on} while a trusted "
                     "one exists")  # fmt: skip
        warn_bins_without_background(
            rec["val_bins_without_background"],
            f"validation-split histograms ({out / 'metrics.jsonl'})",
            what,
        )

    return warn


def annealing(cfg: Config):
    """``hyper(epoch)`` of a run: the histogram bandwidth annealed linearly and the cut slope
    geometrically from their values at epoch 1 to their ``*_final`` values at the last."""
    t, h, sel = cfg.training, cfg.histogram, cfg.selection

    def hyper(epoch):
        f = (epoch - 1) / (t.epochs - 1) if t.epochs > 1 else 0.0
        bw = h.bandwidth if h.bandwidth_final is None else h.bandwidth_final
        slope = sel.slope if sel.slope_final is None else sel.slope_final
        return {
            "bandwidth": h.bandwidth + f * (bw - h.bandwidth),
            "slope": sel.slope * (slope / sel.slope) ** f,
        }

    return hyper


def _parallel(cfg: Config, file=None):
    """Devices, batch size, step factory and batch placement of ``training.devices``,
    ``per_device_batch`` and ``chunk_size``: batches split over a mesh of devices, and/or
    their gradient computed chunk by chunk (the batch stays on the host)."""
    t = cfg.training
    try:
        mesh = sharding.make_mesh(t.devices) if t.devices is not None else None
    except sharding.ShardingError as exc:
        raise ConfigError(exc.message, file=file, where=exc.where, fix=exc.fix) from None
    n = sharding.mesh_size(mesh)
    batch_size = t.batch_size if t.per_device_batch is None else t.per_device_batch * n
    if t.chunk_size is not None:
        step = chunked.make_step(lambda b: chunked.iter_chunks(b, t.chunk_size, mesh=mesh))
        return mesh, batch_size, step, lambda b: b
    if mesh is not None:
        return mesh, batch_size, None, lambda b: sharding.shard_events(b, mesh)
    return None, batch_size, None, _as_jax


def run_optimizer(cfg: Config, params):
    """The configured optimiser; the cut thresholds (in feature units, not network weights)
    get their own learning rate, ``selection.learning_rate``."""
    o = cfg.training.optimizer
    default = make_optimizer(o.name, o.learning_rate)
    if params.selection is None:
        return default

    def labels(p):
        out = jax.tree.map(lambda _: "default", p)
        return eqx.tree_at(
            lambda q: q.selection,
            out,
            jax.tree.map(lambda _: "selection", p.selection),
            is_leaf=lambda x: x is None,
        )

    cuts = make_optimizer(o.name, cfg.selection.learning_rate)
    return optax.multi_transform({"default": default, "selection": cuts}, labels)
