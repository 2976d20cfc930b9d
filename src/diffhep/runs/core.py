"""Training runs: config -> data -> pipeline -> training -> run directory with artefacts.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch),
the checkpoint (``checkpoint.eqx`` + ``checkpoint.json``, for resuming), ``model.eqx`` with
its header ``model.json`` (the selected best model), ``workspace.json`` (the trained analysis
as a pyhf workspace from hard histograms of the test set), ``histograms.json`` (those
histograms with their sums of squared weights), ``summary.json`` (test metrics),
``model.onnx`` + ``preprocess.json`` (the event score for C++ inference), ``plots/`` and
``report.html``. :func:`evaluate_run` recomputes the test metrics from a saved run. While a
run trains or is evaluated, ``run.lock`` (holding its pid) keeps a second process out of the
directory (:func:`diffhep.writers.run_lock`).
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..problems import (blobs, toys)
from ..analysis import (chunked)
from ..nn import (sharding)
from ..analysis.spec import (Analysis, Channel, NormSystematic, ShapeSystematic)
from .config import (Config, ConfigError, load_config)
from ..io.datasets import batches, check_events, load_npz, split
from ..errors import DataError
from ..analysis.pipeline import Pipeline
from ..analysis.spec import NN_TERMS
from ..types import Events
from .results import (histograms_document, write_histograms)
from ..nn.training import (TrainState, make_optimizer, read_checkpoint_meta, train)
from ..weights.weighting import (apply_strategies, check_net_yields, region_yields)
from ..writers import (check_writable_dir, run_lock, write_atomic)

__all__ = ["evaluate_run", "prepare", "restore_run", "train_run"]

MODEL_FORMAT = "diffhep-model/1"
#: The configuration of ``diffhep demo``.
DEMO_CONFIG = Path(str(resources.files("diffhep") / "data" / "demo.yaml"))


def _analysis(cfg: Config) -> Analysis:
    a = cfg.analysis
    return Analysis(
        samples=tuple(s.name for s in a.samples),
        signal=next(s.name for s in a.samples if s.role == "signal"),
        channels=tuple(
            Channel(
                c.name,
                c.bins,
                c.observable,
                tuple(c.edges) if c.edges else None,
                tuple((f, lo, hi) for f, (lo, hi) in sorted(c.region.items())),
                c.learnable_edges,
            )
            for c in a.channels
        ),
        shape_systematics=tuple(
            ShapeSystematic(s.name, s.sample, *s.event_sets()) for s in a.shape_systematics
        ),
        norm_systematics=tuple(
            NormSystematic(s.name, tuple(s.samples), s.lo, s.hi) for s in a.norm_systematics
        ),
        mc_stat=a.mc_stat,
        poi=a.poi,
    )


def load_events(cfg: Config, analysis: Analysis, file: str | None = None):
    """Feature names and ``{event set: Events}`` with weights scaled to the yields."""
    default_features = None
    if cfg.data.generator is None and not cfg.data.files:  # ntuple samples
        from .ntuples import (load_ntuple_events)

        default_features, events = load_ntuple_events(cfg, analysis, file)
    elif cfg.data.files:
        missing = [n for n in analysis.event_sets if n not in cfg.data.files]
        if missing:
            raise DataError(
                f"no data for event set(s) {', '.join(missing)}",
                file=file,
                where="data.files",
                fix=f"add a file for each of: {', '.join(analysis.event_sets)}",
            )
        events = {n: load_npz(cfg.data.files[n], n) for n in analysis.event_sets}
    else:
        if cfg.data.generator == "blobs":
            raw = blobs.generate(cfg.data.n_per_blob, cfg.seed)
        else:
            generate, default_features = toys.GENERATORS[cfg.data.generator]
            raw = generate(cfg.data.n_per_blob, cfg.seed)
        missing = [n for n in analysis.event_sets if n not in raw]
        if missing:
            raise DataError(
                f"event set(s) {', '.join(missing)} are not produced by the "
                f"'{cfg.data.generator}' generator (it has: {', '.join(raw)})",
                file=file,
                where="analysis.samples",
            )
        events = {n: check_events(Events(*raw[n]), n) for n in analysis.event_sets}
    nfeat = {ev.x.shape[1] for ev in events.values()}
    if len(nfeat) != 1:
        raise DataError(f"event sets have different numbers of features: {sorted(nfeat)}")
    (f,) = nfeat
    features = tuple(cfg.data.features or default_features or [f"x{i}" for i in range(f)])
    if cfg.data.generator is None and not cfg.data.files:
        features = tuple(default_features)
    if len(features) != f:
        raise DataError(
            f"data.features names {len(features)} features, the data have {f}",
            file=file,
            where="data.features",
        )
    # sample normalisation: yield and scale, applied to the sample and its variations
    for i, s in enumerate(cfg.analysis.samples):
        names = [s.name] + [
            n
            for sys in cfg.analysis.shape_systematics
            if sys.sample == s.name
            for n in sys.event_sets()
        ]
        _check_positive(events, s.name, dict.fromkeys(names), i, file)
        total = float(np.sum(events[s.name].w))
        factor = s.scale * (s.yield_ / total if s.yield_ is not None else 1.0)
        for n in dict.fromkeys(names):
            events[n] = Events(events[n].x, events[n].w * factor)
    return features, events


def _check_positive(events, sample: str, event_sets, index: int, file=None) -> None:
    """Refuse a sample (or a variation of it) whose event weights sum to <= 0: its expected
    yield would be <= 0, and a network trained on it learns nothing (the expected CLs is 1)."""
    for n in event_sets:
        total = float(np.sum(events[n].w))
        if total <= 0:
            what = f"sample {sample!r}" + (f" (its variation {n!r})" if n != sample else "")
            neg = int(np.sum(np.asarray(events[n].w) < 0))
            raise DataError(
                f"{what}: the event weights sum to {total:.6g} <= 0 ({neg} of "
                f"{len(events[n].w)} events have negative weights); its expected yield must "
                "be positive",
                file=file,
                where=f"analysis.samples[{index}]",
                fix="check the sample's files and its weight expression (a sign, a missing "
                "cross-section factor), or remove the sample",
            )


def prepare(cfg: Config, file: str | None = None):
    """The pipeline, the data splits and the initial parameters of a config.

    The splits are ``parts["train"|"validation"|"test"]``; the training split carries the
    weights of each sample's strategy (``analysis.samples[].weights``), reported in
    ``parts["training_weights"]``. Bins of the training data with a net yield <= 0 warn.
    """
    analysis = _analysis(cfg)
    features, events = load_events(cfg, analysis, file)
    try:
        pipe = Pipeline(
            analysis,
            features,
            z_asimov_rel_uncertainty=cfg.training.z_asimov_rel_uncertainty,
            skim_target=cfg.selection.skim_target,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), file=file, where="analysis") from None
    for i, c in enumerate(cfg.selection.cuts):
        if c.feature not in features:
            raise ConfigError(
                f"cut on unknown feature {c.feature!r}",
                file=file,
                where=f"selection.cuts[{i}].feature",
                fix=f"use one of the features: {', '.join(features)}",
            )
    nn_terms = sorted({t for p in cfg.training.phases() for t in p.terms} & set(NN_TERMS))
    if nn_terms and not pipe.uses_nn:
        raise ConfigError(
            f"loss term(s) {', '.join(nn_terms)} need a neural observable",
            file=file,
            where="training.loss",
            fix="give a channel 'observable: nn', or use cls, z0, s_sqrt_sb, b_over_s2, ...",
        )
    parts = split(events, cfg.data.split.model_dump(), cfg.seed, same_as=_same_events(cfg))
    parts["train"], parts["training_weights"] = _training_weights(cfg, analysis, parts, file)
    hists, whole = region_yields(analysis, features, parts["train"])
    check_net_yields(hists, what="training data", samples=analysis.samples, whole_regions=whole)
    dtype = jnp.float32 if cfg.observable.dtype == "float32" else jnp.float64
    params = pipe.init_params(
        parts["train"],
        key=jax.random.key(cfg.seed),
        hidden=tuple(cfg.observable.hidden),
        activation=cfg.observable.activation,
        dtype=dtype,
        cuts=cfg.selection.specs(),
    )
    if cfg.observable.kind == "deepsets" and params.observable is not None:
        from ..nn.deepsets import (DeepSetsObservable)
        from .ntuples import (layout)

        o = cfg.observable
        xs = np.concatenate([np.asarray(parts["train"][n].x) for n in analysis.samples])
        deepsets = DeepSetsObservable.create(xs, layout(cfg.data), o.hidden, o.object_hidden,
                                             o.latent, key=jax.random.key(cfg.seed),
                                             pooling=o.pooling, activation=o.activation,
                                             dtype=dtype)  # fmt: skip
        params = eqx.tree_at(lambda p: p.observable, params, deepsets)
    if cfg.training.init_from:
        params = _init_from(params, cfg.training.init_from, file)
    return pipe, parts, params


def _same_events(cfg: Config) -> dict:
    """Variation event sets holding the same events as their nominal sample (weight-only)."""
    if cfg.data.generator is None and not cfg.data.files:
        from .ntuples import (same_events)

        return same_events(cfg)
    return {}


def _training_weights(cfg: Config, analysis: Analysis, parts: dict, file=None):
    """The training split with each sample's weight strategy (applied to the sample and its
    variations), and the report recorded in ``summary.json``."""
    strategies = {s.name: s.weights for s in cfg.analysis.samples}
    groups = {
        s: (s, *(n for v in analysis.shape_systematics if v.sample == s for n in (v.up, v.down)))
        for s in strategies
    }
    try:
        train, report = apply_strategies(parts["train"], strategies, groups, seed=cfg.seed)
    except ValueError as exc:
        raise DataError(str(exc), file=file, where="analysis.samples[].weights") from None
    return train, {"strategies": strategies, "event_sets": report}


def _init_from(params, run_dir, file=None):
    """``params`` with the observable and binnings of a saved run (e.g. to tune cuts on a
    trained network)."""
    try:
        _, _, _, saved = restore_run(run_dir)
    except ConfigError as exc:
        raise ConfigError(
            f"training.init_from: {exc}", file=file, where="training.init_from"
        ) from None
    if jax.tree.structure(saved.observable) != jax.tree.structure(params.observable):
        raise ConfigError(
            f"the observable of {run_dir} differs from this config's",
            file=file,
            where="training.init_from",
            fix="use the same observable and channels as the run you start from",
        )
    return eqx.tree_at(
        lambda p: (p.observable, p.binnings), params, (saved.observable, saved.binnings)
    )


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


def _as_jax(events):
    return {n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in events.items()}


def _metrics_fn(pipe: Pipeline):
    @eqx.filter_jit
    def metrics(params, events):
        return pipe.metrics(params, events)

    def run(params, events) -> dict:
        m = jax.device_get(metrics(params, events))
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
        out["yields"] = {k: float(v) for k, v in m["yields"].items()}
        return out

    return run


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
) -> dict:
    """Train according to ``cfg`` into the run directory ``out``; returns the summary.

    ``track_test`` also records the test metrics after every epoch (``test_*`` in
    ``metrics.jsonl``, for studies of the training curves); they never select the model.
    """
    out = Path(out)
    created = not out.exists()
    check_writable_dir(out, where="--out")
    try:
        with run_lock(out, where="--out"):
            return _train_run(out, cfg, file, resume, progress, track_test, plots)
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


def _train_run(out: Path, cfg: Config, file, resume, progress, track_test, plots) -> dict:
    resolved = cfg.to_yaml()
    cfg_path = out / "config.yaml"
    if (out / "checkpoint.json").is_file() and resume and cfg_path.is_file():
        if not _same_config(cfg_path, cfg):
            raise ConfigError(
                "the run directory holds a checkpoint of a different configuration",
                file=str(cfg_path),
                fix="use a new --out directory, or --no-resume to start over",
            )
    pipe, parts, params = prepare(cfg, file)  # bad data fails here, before anything is written
    cfg_path.write_text(resolved)
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

    def phase(epoch):
        return loss_fns[phase_index(phases, epoch)]

    h, sel = cfg.histogram, cfg.selection

    def hyper(epoch):
        """Bandwidth annealed linearly, cut slope geometrically, over the epochs."""
        f = (epoch - 1) / (t.epochs - 1) if t.epochs > 1 else 0.0
        bw = h.bandwidth if h.bandwidth_final is None else h.bandwidth_final
        slope = sel.slope if sel.slope_final is None else sel.slope_final
        return {
            "bandwidth": h.bandwidth + f * (bw - h.bandwidth),
            "slope": sel.slope * (slope / sel.slope) ** f,
        }

    if params.selection is not None:
        x_all = np.concatenate([np.asarray(train_ev[n].x) for n in pipe.analysis.samples])
        params.selection.warn_dead(x_all, sel.slope)

    def epoch_batches(epoch):
        for b in batches(train_ev, batch_size, cfg.seed, epoch, same_as=_same_events(cfg)):
            yield place(b)

    test = _as_jax(parts["test"]) if track_test else None

    def validate(p):
        rec = {f"val_{k}": v for k, v in metrics(p, valid).items() if k != "yields"}
        rec |= cut_values(p)
        if test is not None:
            rec |= {f"test_{k}": v for k, v in metrics(p, test).items() if k != "yields"}
        return rec

    def describe(r):
        return f"loss {r['loss']:.4g}  val CLs {r.get('val_expected_cls', float('nan')):.3g}"

    state = train(
        params,
        loss_fns[0],
        run_optimizer(cfg, params),
        epochs=t.epochs,
        batches=epoch_batches,
        hyper=hyper,
        phase=phase,
        validate=validate,
        select_on=f"val_{t.select_on}" if t.select_on != "loss" else None,
        maximize=t.select_on == "z0",
        patience=t.patience,
        run_dir=out,
        resume=resume,
        progress=progress,
        describe=describe,
        make_step=make_step,
    )
    save_model(out, state, cfg)
    return _finish(out, pipe, parts, state.best_params, state, metrics, cfg, plots=plots)


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
    (out / "model.json").write_text(json.dumps(header, indent=1))


def restore_run(run_dir: str | Path):
    """Config, pipeline, data splits and the selected model of a saved run (to evaluate or
    continue it; :func:`diffhep.load_run` gives its results as ``hist.Hist`` instead)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file() or not (run_dir / "model.eqx").is_file():
        raise ConfigError(
            "not a finished diffhep run (config.yaml or model.eqx missing)",
            file=str(run_dir),
            fix="train first: diffhep train CONFIG --out DIR",
        )
    cfg = load_config(cfg_path)
    pipe, parts, like = prepare(cfg, str(cfg_path))
    params = eqx.tree_deserialise_leaves(run_dir / "model.eqx", like)
    return cfg, pipe, parts, params


def evaluate_run(run_dir: str | Path, *, plots=True) -> dict:
    """Recompute the test metrics (and artefacts) of a saved run."""
    run_dir = Path(run_dir)
    cfg, pipe, parts, params = restore_run(run_dir)
    with run_lock(run_dir):
        state = None
        like = TrainState(params, None, params)
        if (run_dir / "checkpoint.json").is_file():
            meta = read_checkpoint_meta(
                run_dir,
                fix="restore the file from a copy, or retrain: diffhep train CONFIG --out DIR",
            )
            like.history, like.step_seconds = meta["history"], meta["step_seconds"]
            like.best_epoch, like.epoch = meta["best_epoch"], meta["epoch"]
            like.status = meta["status"]
            state = like
        return _finish(run_dir, pipe, parts, params, state, _metrics_fn(pipe), cfg, plots=plots)


def _plot_masks(cfg: Config) -> dict:
    """``{object feature: mask feature}`` of the ntuple collections (none otherwise)."""
    from .ntuples import (object_masks)

    return object_masks(cfg.data)


def _finish(out, pipe, parts, params, state, metrics, cfg, plots=True) -> dict:
    """Write the artefacts of a trained model; ``summary.json`` last.

    A stale ``summary.json`` is removed first, so a crash leaves no summary. A plot or the
    report that fails does not lose the other artefacts: the summary then says ``"status":
    "incomplete"`` and names what failed (``"failed"``), and the command exits 1.
    """
    (out / "summary.json").unlink(missing_ok=True)
    test = _as_jax(parts["test"])
    m = metrics(params, test)
    hists = jax.device_get(pipe.histograms(params, test))
    check_net_yields(
        hists, what=f"test-set histograms ({out / 'workspace.json'})", samples=pipe.analysis.samples
    )
    ws = pipe.workspace(hists)
    write_atomic(out / "workspace.json", json.dumps(ws, indent=1))
    steps = state.step_seconds if state is not None else []
    selection = None
    if params.selection is not None:
        nominal = {n: (np.asarray(parts["test"][n].x), np.asarray(parts["test"][n].w))
                   for n in pipe.analysis.samples}  # fmt: skip
        selection = {
            "expression": params.selection.expression(),
            "cuts": params.selection.to_json(),
            "cutflow": params.selection.cutflow(nominal, pipe.features),
        }
        write_atomic(out / "selection.json", json.dumps(selection, indent=1))
    summary = {
        **{k: v for k, v in m.items() if k != "yields"},
        "yields": m["yields"],
        "median_step_seconds": float(np.median(steps)) if steps else None,
        "best_epoch": state.best_epoch if state else None,
        "epochs_run": state.epoch if state else None,
        "status": state.status if state else None,
        "test_events": {n: len(e.w) for n, e in parts["test"].items()},
    }
    if selection is not None:
        summary["selection"] = selection
    if parts.get("training_weights"):
        summary["training_weights"] = parts["training_weights"]
    summary["onnx"] = _export(out, pipe, params, parts["test"])
    write_histograms(out, histograms_document(pipe, params, hists))
    if plots:
        _write_report(out, pipe, params, parts, hists, state, cfg, summary)
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _write_report(out, pipe, params, parts, hists, state, cfg, summary) -> None:
    """``plots/`` (stale PNGs removed first) and ``report.html``; what fails is named in
    ``summary["failed"]`` and makes the status ``incomplete``."""
    from .report import (write_html, write_plots)

    plot_dir = out / "plots"
    for old in plot_dir.glob("*.png"):
        old.unlink()
    (out / "report.html").unlink(missing_ok=True)
    failed = {}
    try:
        masks = _plot_masks(cfg)
        failed |= write_plots(plot_dir, pipe, params, parts["test"], hists, state,
                              style=cfg.report.style, masks=masks,
                              stacked={"logy": cfg.report.log_y,
                                       "signal_overlay": cfg.report.signal_overlay},
                              )["failed"]  # fmt: skip
    except Exception as exc:
        failed["plots"] = f"{type(exc).__name__}: {exc}"

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


def _export(out, pipe, params, events) -> str:
    """Write ``model.onnx`` + ``preprocess.json``; returns the file name, or why not."""
    from ..io.onnx.export import (ExportError, export_onnx)

    dtype = next(iter(events.values())).x.dtype
    try:
        export_onnx(out, pipe, params, dtype)
    except ExportError as exc:
        logging.getLogger("diffhep").warning("no ONNX export: %s", exc)
        return f"not exported: {exc.message}"
    return "model.onnx"
