"""Ntuple samples of a config -> event sets: nominal samples and systematic variations.

A config describes ntuple samples in cabinetry's words (``analysis.samples``): ``files``
(globs), ``tree``, ``weight`` (an expression, e.g. ``xsec * lumi * genWeight / sumw``) and a
``filter``. The features (``data.features``) are branch names or expressions, followed by the
leading objects of every jagged collection (``data.collections``) as
``Jet_pt[0], Jet_eta[0], num(Jet_pt) > 0, Jet_pt[1], ...`` (zero-padded, with a mask; the
layout of :class:`~diffhep.nn.deepsets.Layout`). A shape systematic's ``up``/``down`` is
either an event-set name or a variation of the sample: another ``weight`` (a scale-factor
variation: the *same events* with other weights, read in the same pass and split the same
way, see :func:`same_events`), other ``files``/``tree`` or another ``filter``. Normalisation
systematics stay numbers (``norm_systematics``). The result is mapped onto the HistFactory
model of the training pipeline by :class:`~diffhep.analysis.spec.Analysis` (histosys, normsys).

Example:
    >>> from diffhep.runs.config import load_config
    >>> cfg = load_config(text='''
    ... data: {features: [met], collections: [{name: jets, branches: [Jet_pt, Jet_eta], n: 2}]}
    ... analysis:
    ...   samples: [{name: s, role: signal, files: [s.root]},
    ...             {name: b, role: background, files: [b.root], weight: "w * sf"}]
    ...   shape_systematics: [{name: sf, sample: b, up: {weight: w * sf_up}, down: {weight: w}}]
    ...   channels: [{name: SR, bins: 2}]
    ... ''')
    >>> feature_names(cfg.data)[:4]
    ('met', 'Jet_pt[0]', 'Jet_eta[0]', 'num(Jet_pt) > 0')
    >>> layout(cfg.data)
    Layout(event=(0,), collections=((1, 2, 2),))
    >>> same_events(cfg)
    {'b_sf_up': 'b', 'b_sf_down': 'b'}
"""

from __future__ import annotations

from ..errors import DataError
from ..io.datasets import check_events
from ..io.sources import load_sample
from ..nn.deepsets import Layout
from ..types import Events
from .config import Config, DataConfig, VariationConfig

__all__ = [
    "feature_names",
    "layout",
    "load_data_events",
    "load_ntuple_events",
    "object_masks",
    "same_events",
]


def feature_names(data: DataConfig) -> tuple:
    """The feature expressions: ``data.features``, then every collection's object blocks."""
    out = list(data.features or ())
    for c in data.collections:
        for j in range(c.n):
            out += [f"{b}[{j}]" for b in c.branches] + [f"num({c.branches[0]}) > {j}"]
    return tuple(out)


def object_masks(data: DataConfig) -> dict:
    """``{object feature: its mask feature}`` of the collections (``Jet_eta[1]`` ->
    ``num(Jet_pt) > 1``): where the zero padding of :func:`feature_names` is."""
    out = {}
    for c in data.collections:
        for j in range(c.n):
            out |= {f"{b}[{j}]": f"num({c.branches[0]}) > {j}" for b in c.branches}
    return out


def layout(data: DataConfig) -> Layout:
    """The :class:`~diffhep.nn.deepsets.Layout` of :func:`feature_names`."""
    start = len(data.features or ())
    blocks = []
    for c in data.collections:
        blocks.append((start, c.n, len(c.branches)))
        start += c.n * (len(c.branches) + 1)
    return Layout(tuple(range(len(data.features or ()))), tuple(blocks))


def _weight_only(v) -> bool:
    return (
        isinstance(v, VariationConfig)
        and v.files is None
        and v.tree is None
        and not v.filter
        and not v.columns
        and not v.symmetrize
    )


def same_events(cfg: Config) -> dict:
    """``{variation event set: nominal sample}`` for variations that only change the weight:
    they hold the same events as their nominal sample and are split and batched alike."""
    out = {}
    used = {s.name for s in cfg.analysis.used_samples}
    for s in cfg.analysis.shape_systematics:
        for sample in s.targets:
            if sample not in used:
                continue
            for v, name in s.variations(sample):
                if _weight_only(v):
                    out[name] = sample
    return out


def _renamed(text, columns):
    """``text`` reading the renamed columns (a feature-level variation), or ``text``."""
    if not columns or text is None:
        return text
    from ..io.expressions import Expression

    return Expression(text).renamed(columns).text


def _feature_fields(data: DataConfig) -> dict:
    """``{feature expression: its config field}`` of :func:`feature_names`."""
    out = {f: f"data.features[{i}]" for i, f in enumerate(data.features or ())}
    for k, c in enumerate(data.collections):
        for j in range(c.n):
            for b in c.branches:
                out.setdefault(f"{b}[{j}]", f"data.collections[{k}].branches")
            out.setdefault(f"num({c.branches[0]}) > {j}", f"data.collections[{k}].branches")
    return out


def _field(exc: DataError, fields: dict) -> str | None:
    """The config field a loader error is about: the tree (``"<tree>"``), the files
    (``None``), or the first expression that is or reads its ``where`` (a branch)."""
    if exc.message.startswith(("tree ", "the file has")):  # no such tree, or several
        return fields.get("<tree>")
    if exc.where is None:
        return fields.get(None)
    if exc.where in fields:
        return fields[exc.where]
    from ..io.expressions import Expression, ExpressionError

    for text, path in fields.items():
        try:
            names = Expression(text).names if text and text != "<tree>" else ()
        except ExpressionError:
            continue
        if exc.where in names:
            return path
    return None


def _read(cfg: Config, name, files, tree, weights, filt, features, file, columns=None, at=None):
    """The events of one event set; ``at``: the config fields of its expressions, files
    (``None``) and tree (``"<tree>"``), named in the errors."""
    d = cfg.data
    columns = columns or {}
    try:
        x, ws = load_sample(
            files,
            features=[_renamed(f, columns) for f in features],
            weights={k: _renamed(w, columns) for k, w in weights.items()},
            filter=_renamed(filt, columns),
            tree=tree or d.tree,
            step_size=d.step_size,
            constants=d.constants,
            base_dir=d.base_dir,
            name=name,
        )
    except DataError as exc:
        raise _named(exc, cfg, name, at, columns, file) from None
    return {k: check_events(Events(x, w), k, ", ".join(files)) for k, w in ws.items()}


def _named(exc: DataError, cfg: Config, name, at, columns=None, file=None) -> DataError:
    """``exc`` of reading event set ``name`` naming the config field it is about (the
    in-memory and the streamed reads); ``at``: the config fields of the event set's
    expressions, files (``None``) and tree (``"<tree>"``)."""
    prefix = "" if exc.message.startswith(("sample", "event set")) else f"event set {name!r}: "
    fields = {**_feature_fields(cfg.data), **(at or {})}
    keep = (None, "<tree>")
    renamed = {k if k in keep else _renamed(k, columns): v for k, v in fields.items()}
    where = _field(exc, renamed)
    suffix = f" (config: {where}{f' of {file}' if file else ''})" if where else ""
    return DataError(prefix + exc.message + suffix, file=exc.file or file, where=exc.where,
                     fix=exc.fix)  # fmt: skip


def _sample_fields(cfg: Config, sample) -> dict:
    """``{weight, filter, None (the files): config field}`` of a sample."""
    i = next(i for i, s in enumerate(cfg.analysis.samples) if s is sample)
    at = f"analysis.samples[{i}]"
    out = {e: f"{at}.{key}" for key, e in (("filter", sample.filter), ("weight", sample.weight))}
    tree = f"{at}.tree" if sample.tree else "data.tree"
    return {**{e: p for e, p in out.items() if e}, None: f"{at}.files", "<tree>": tree}


def _nominal_fields(cfg: Config, sample) -> dict:
    """:func:`_sample_fields` with the weights of the sample's weight-only variations (read
    with it)."""
    at = _sample_fields(cfg, sample)
    for k, sys in enumerate(cfg.analysis.shape_systematics):
        for v, _ in sys.variations(sample.name) if sample.name in sys.targets else ():
            if _weight_only(v) and v.weight:
                side = "up" if v is sys.up else "down"
                at.setdefault(v.weight, f"analysis.shape_systematics[{k}].{side}.weight")
    return at


def _variation_fields(cfg: Config, k: int, v, nominal) -> dict:
    """The config fields of a variation ``v`` of ``analysis.shape_systematics[k]`` that reads
    events of its own (other files, tree, filter or columns) of the sample ``nominal``."""
    sys = cfg.analysis.shape_systematics[k]
    at = _sample_fields(cfg, nominal)
    side = f"analysis.shape_systematics[{k}].{'up' if v is sys.up else 'down'}"
    if v.files:
        at[None] = f"{side}.files"
    if v.tree:
        at["<tree>"] = f"{side}.tree"
    return at | {e: f"{side}.{key}" for key, e in (("weight", v.weight), ("filter", v.filter))
                 if e}  # fmt: skip


def load_ntuple_events(cfg: Config, analysis, file: str | None = None):
    """Feature names and ``{event set: Events}`` of the ntuple samples of ``cfg`` (weights as
    computed by the weight expressions; the sample normalisation is applied by the caller).

    Only the samples of the run are read (the chosen signal and the backgrounds). A variation
    with ``columns`` reads the sample's files again with the branches renamed in every
    expression (features, filter, weight): the selection and the features of the varied
    events.

    Raises:
        DataError: Bad files or data (naming the file, the branch or expression and counts).
    """
    features = feature_names(cfg.data)
    used = cfg.analysis.used_samples
    samples = {s.name: s for s in used}
    events = {}
    for s in used:
        weights = {s.name: s.weight}
        for sys in cfg.analysis.shape_systematics:
            if s.name in sys.targets:
                for v, name in sys.variations(s.name):
                    if _weight_only(v):
                        weights[name] = v.weight or s.weight
        at = _nominal_fields(cfg, s)
        events |= _read(cfg, s.name, s.files, s.tree, weights, s.filter, features, file, at=at)
    for k, sys in enumerate(cfg.analysis.shape_systematics):
        for sample in sys.targets:
            if sample not in samples:
                continue
            nominal = samples[sample]
            for v, name in sys.variations(sample):
                if isinstance(v, str) or _weight_only(v) or name in events:
                    continue
                at = _variation_fields(cfg, k, v, nominal)
                events |= _read(
                    cfg,
                    name,
                    v.files or nominal.files,
                    v.tree or nominal.tree,
                    {name: v.weight or nominal.weight},
                    v.filter or nominal.filter,
                    features,
                    file,
                    v.columns,
                    at=at,
                )
    missing = [n for n in analysis.event_sets if n not in events]
    if missing:
        raise DataError(
            f"event set(s) {', '.join(missing)} are neither a sample nor a variation",
            file=file,
            where="analysis.shape_systematics",
            fix="give up/down as a variation ({weight: ...} or {files: [...]}) of the sample",
        )
    return features, events


def load_data_events(cfg: Config, sample, features, file: str | None = None) -> Events:
    """All events of the ``data`` sample (its filter and weight, default 1), with the
    features of the simulated samples: the observations of the workspace."""
    if cfg.data.generator is not None or cfg.data.files:
        raise DataError(
            f"the data sample {sample.name!r} needs ntuple samples (files)",
            file=file,
            where="analysis.samples",
        )
    out = _read(cfg, sample.name, sample.files, sample.tree, {sample.name: sample.weight},
                sample.filter, list(features), file, at=_sample_fields(cfg, sample))  # fmt: skip
    return out[sample.name]
