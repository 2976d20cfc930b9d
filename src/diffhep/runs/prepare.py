"""Preparing a run: config -> analysis, events, data splits, training weights, parameters.

:func:`prepare` is the data side of a training run; :func:`restore_run` does the same for a
saved run directory and loads its selected model (:func:`prepare_streamed` and
:func:`restore_streamed` for runs on streamed input, ``training.chunk_events``).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..analysis.pipeline import Pipeline
from ..analysis.spec import (
    NN_TERMS,
    Analysis,
    Channel,
    NormFactor,
    NormSystematic,
    ShapeSystematic,
)
from ..errors import DataError
from ..io.datasets import check_events, load_npz, split
from ..problems import blobs, toys
from ..types import Events
from ..weights.weighting import apply_strategies, check_net_yields, region_yields
from .config import Config, ConfigError, load_config

__all__ = [
    "DEMO_CONFIG",
    "is_streamed_run",
    "load_events",
    "prepare",
    "prepare_streamed",
    "restore_run",
    "restore_streamed",
]

#: The configuration of ``diffhep demo``.
DEMO_CONFIG = Path(str(resources.files("diffhep") / "data" / "demo.yaml"))


def _analysis(cfg: Config) -> Analysis:
    """The static analysis of the run: the chosen signal and the backgrounds, the
    systematics and normfactors of these samples (channel filters: :func:`with_filters`)."""
    a = cfg.analysis
    used = [s.name for s in a.used_samples]

    def on(names):
        return tuple(n for n in names if n in used)

    return Analysis(
        samples=tuple(used),
        signal=a.chosen_signal,
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
            ShapeSystematic(s.name, n, *s.event_sets(n), s.symmetrize)
            for s in a.shape_systematics
            for n in on(s.targets)
        ),
        norm_systematics=tuple(
            NormSystematic(s.name, on(s.samples), s.lo, s.hi)
            for s in a.norm_systematics
            if on(s.samples)
        ),
        normfactors=tuple(
            NormFactor(f.name, on(f.samples), f.nominal, tuple(f.bounds), f.fixed)
            for f in a.normfactors
            if on(f.samples)
        ),
        mc_stat=a.mc_stat,
        poi=a.poi,
    )


def with_filters(cfg: Config, analysis: Analysis, features, file=None) -> Analysis:
    """``analysis`` with each channel's ``filter`` (comparisons of features with numbers)
    added to its region windows (intersected per feature)."""
    from ..io.expressions import ExpressionError, windows

    channels = []
    for i, (c, ch) in enumerate(zip(cfg.analysis.channels, analysis.channels, strict=True)):
        if not c.filter:
            channels.append(ch)
            continue
        try:
            extra = windows(c.filter, features)
        except ExpressionError as exc:
            raise ConfigError(exc.message, file=file, where=f"analysis.channels[{i}].filter",
                              fix=exc.fix) from None  # fmt: skip
        box = {}
        for f, lo, hi in (*ch.region, *extra):
            a, b = box.get(f, (lo, hi))
            box[f] = (max(a, lo), min(b, hi))
        channels.append(dataclasses.replace(ch, region=tuple((f, *box[f]) for f in sorted(box))))
    return dataclasses.replace(analysis, channels=tuple(channels))


def load_events(cfg: Config, analysis: Analysis, file: str | None = None):
    """Feature names and ``{event set: Events}`` with weights scaled to the yields."""
    default_features = None
    if cfg.data.generator is None and not cfg.data.files:  # ntuple samples
        from .ntuples import load_ntuple_events

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
        if s.name not in analysis.samples:
            continue  # the data, or a signal not chosen
        names = [s.name] + [
            e for v in analysis.shape_systematics if v.sample == s.name for e in (v.up, v.down)
        ]
        names = [n for n in names if n in events]  # not the derived (symmetrised) ones
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
    analysis = with_filters(cfg, analysis, features, file)
    observed = _observed(cfg, features, file)
    pipe = _pipeline(cfg, analysis, features, file)
    parts = split(events, cfg.data.split.model_dump(), cfg.seed, same_as=_same_events(cfg))
    parts["train"], parts["training_weights"] = _training_weights(cfg, analysis, parts, file)
    if observed is not None:
        parts["observed"] = observed
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
        from ..nn.deepsets import DeepSetsObservable
        from .ntuples import layout

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


def prepare_streamed(cfg: Config, file: str | None = None):
    """The pipeline, the streamed data (:class:`~diffhep.runs.streaming.StreamData`, after
    its first pass over the files) and the initial parameters of a ``training.chunk_events``
    run: the network is standardised and the cut thresholds placed on the first
    ``chunk_events`` training events of each nominal sample."""
    from .ntuples import feature_names
    from .streaming import StreamData, check_streamable

    check_streamable(cfg, file)
    analysis = _analysis(cfg)
    features = feature_names(cfg.data)
    analysis = with_filters(cfg, analysis, features, file)
    pipe = _pipeline(cfg, analysis, features, file)
    data = StreamData(cfg, pipe, file)
    dtype = jnp.float32 if cfg.observable.dtype == "float32" else jnp.float64
    params = pipe.init_params(
        data.scan.init_events,
        key=jax.random.key(cfg.seed),
        hidden=tuple(cfg.observable.hidden),
        activation=cfg.observable.activation,
        dtype=dtype,
        cuts=cfg.selection.specs(),
    )
    if cfg.training.init_from:
        params = _init_from(params, cfg.training.init_from, file)
    return pipe, data, params


def _pipeline(cfg: Config, analysis: Analysis, features, file=None) -> Pipeline:
    """The pipeline of a run, its cuts, loss terms and nuisance terms checked."""
    try:
        pipe = Pipeline(
            analysis,
            features,
            z_asimov_rel_uncertainty=cfg.training.z_asimov_rel_uncertainty,
            skim_target=cfg.selection.skim_target,
            min_background=cfg.histogram.min_background,
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
    _check_nuisance_terms(cfg, pipe, file)
    return pipe


def _observed(cfg: Config, features, file=None) -> Events | None:
    """The events of the ``data`` sample (all of them: observations are not split), read with
    the features of the simulated samples; ``None`` without a data sample."""
    d = cfg.analysis.data_sample
    if d is None:
        return None
    from .ntuples import load_data_events

    return load_data_events(cfg, d, features, file)


def _same_events(cfg: Config) -> dict:
    """Variation event sets holding the same events as their nominal sample (weight-only)."""
    if cfg.data.generator is None and not cfg.data.files:
        from .ntuples import same_events

        return same_events(cfg)
    return {}


def _training_weights(cfg: Config, analysis: Analysis, parts: dict, file=None):
    """The training split with each sample's weight strategy (applied to the sample and its
    variations), and the report recorded in ``summary.json``."""
    strategies = {s.name: s.strategy for s in cfg.analysis.used_samples}
    groups = {
        s: tuple(dict.fromkeys(
            (s, *(n for v in analysis.shape_systematics if v.sample == s
                  for n in (v.up, v.down) if n in parts["train"]))
        ))
        for s in strategies
    }  # fmt: skip
    # joint: the weights are learned during training (runs.train); the split keeps the
    # signed weights, the regression targets
    joint = {s.name for s in cfg.analysis.used_samples if s.joint}
    applied = {k: v for k, v in strategies.items() if k not in joint}
    try:
        train, report = apply_strategies(parts["train"], applied, groups, seed=cfg.seed)
    except ValueError as exc:
        raise DataError(str(exc), file=file, where="analysis.samples[].weights") from None
    out = {"strategies": strategies, "event_sets": report}
    if joint:
        out["joint"] = sorted(n for s in joint for n in groups[s])
    return train, out


def _init_from(params, run_dir, file=None):
    """``params`` with the observable and binnings of a saved run (e.g. to tune cuts on a
    trained network)."""
    try:
        if is_streamed_run(run_dir):
            _, _, _, saved = restore_streamed(run_dir)
        else:
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


def _saved_config(run_dir: Path) -> Config:
    """The config of a finished run directory."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file() or not (run_dir / "model.eqx").is_file():
        raise ConfigError(
            "not a finished diffhep run (config.yaml or model.eqx missing)",
            file=str(run_dir),
            fix="train first: diffhep train CONFIG --out DIR",
        )
    return load_config(cfg_path)


def is_streamed_run(run_dir: str | Path) -> bool:
    """Whether the finished run in ``run_dir`` was trained on streamed input."""
    return _saved_config(Path(run_dir)).training.chunk_events is not None


def restore_streamed(run_dir: str | Path):
    """Config, pipeline, streamed data (after its first pass over the files) and the
    selected model of a saved ``training.chunk_events`` run."""
    run_dir = Path(run_dir)
    cfg = _saved_config(run_dir)
    pipe, data, like = prepare_streamed(cfg, str(run_dir / "config.yaml"))
    return cfg, pipe, data, eqx.tree_deserialise_leaves(run_dir / "model.eqx", like)


def restore_run(run_dir: str | Path):
    """Config, pipeline, data splits and the selected model of a saved run (to evaluate or
    continue it; :func:`diffhep.load_run` gives its results as ``hist.Hist`` instead). A
    streamed run (``training.chunk_events``) has no in-memory splits: :func:`restore_streamed`.

    Raises:
        ConfigError: Not a finished run, or a streamed one.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    cfg = _saved_config(run_dir)
    if cfg.training.chunk_events is not None:
        raise ConfigError(
            "the run was trained on streamed input (training.chunk_events): its data splits "
            "are not held in memory, and the in-memory splits differ from the run's",
            file=str(cfg_path),
            where="training.chunk_events",
            fix=f"evaluate it with `diffhep evaluate {run_dir}` (streamed); read its results "
            "with diffhep.load_run",
        )
    pipe, parts, like = prepare(cfg, str(cfg_path))
    if cfg.black_box is not None:  # the splits through the black box at the run's psi
        from .black_box import restore_parts

        parts = restore_parts(cfg, pipe.features, parts, run_dir, str(cfg_path))
    params = eqx.tree_deserialise_leaves(run_dir / "model.eqx", like)
    return cfg, pipe, parts, params


def _check_nuisance_terms(cfg: Config, pipe: Pipeline, file) -> None:
    """Every nuisance loss term names a parameter of the model other than the POI."""
    names = list(pipe.template.config.par_names)
    poi = cfg.analysis.poi
    for where, kind, name in cfg.training.nuisance_terms():
        if name not in names or name == poi:
            nps = [n for n in names if n != poi]
            raise ConfigError(
                f"loss term {kind!r}: {name!r} is not a nuisance parameter of the analysis"
                + (" (it is the POI)" if name == poi else ""),
                file=file,
                where=where,
                fix=f"use one of: {', '.join(nps)}" if nps else "add a systematic to the analysis",
            )
