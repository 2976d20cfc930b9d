"""The structure and the parameter sets of a HistFactory spec, as pyhf builds them.

:func:`structure` sorts channels, samples and modifiers (``pyhf.pdf._ChannelSummaryMixin``)
and lays out the nominal yields; :func:`required_paramsets` collects the parameter sets the
modifiers require, by modifier type then first appearance (``staterror`` sigmas from all
samples carrying it, as ``pyhf``'s ``staterror_builder.finalize``); :func:`reduce_paramsets`
merges the requirements of a shared parameter and applies the measurement's parameter
configuration (``pyhf.parameters.reduce_paramsets_requirements``). Bad specs raise
:class:`~diffhep.errors.DiffhepError` naming the JSON path and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DiffhepError

__all__ = [
    "MODIFIER_TYPES",
    "Paramset",
    "Structure",
    "poi_index",
    "reduce_paramsets",
    "required_paramsets",
    "structure",
]

MODIFIER_TYPES = (
    "histosys",
    "lumi",
    "normfactor",
    "normsys",
    "shapefactor",
    "shapesys",
    "staterror",
)
_PARSET_KEYS = ("inits", "bounds", "auxdata", "factors", "sigmas", "fixed")


@dataclass
class Paramset:
    name: str
    kind: str  # "unconstrained" | "normal" | "poisson"
    n: int
    is_scalar: bool
    inits: list
    bounds: list
    fixed: list
    auxdata: list | None = None
    sigmas: list | None = None
    factors: list | None = None
    modtype: str = ""
    user_keys: frozenset = frozenset()


def _default_paramset(name, modtype, nbins, sample_data, mod_data) -> Paramset:
    if modtype in ("histosys", "normsys"):
        return Paramset(name, "normal", 1, True, [0.0], [(-5.0, 5.0)], [False], [0.0], [1.0])
    if modtype == "lumi":
        return Paramset(name, "normal", 1, True, None, None, [False], None, None)
    if modtype == "normfactor":
        return Paramset(name, "unconstrained", 1, True, [1.0], [(0.0, 10.0)], [False])
    if modtype == "shapefactor":
        return Paramset(
            name,
            "unconstrained",
            nbins,
            False,
            [1.0] * nbins,
            [(0.0, 10.0)] * nbins,
            [False] * nbins,
        )
    if modtype == "shapesys":
        valid = [(u > 0 and s > 0) for u, s in zip(mod_data, sample_data, strict=True)]
        factors = [
            (s**2 / u**2) if v else 1.0
            for v, s, u in zip(valid, sample_data, mod_data, strict=True)
        ]
        return Paramset(
            name,
            "poisson",
            nbins,
            False,
            [1.0] * nbins,
            [(1e-10, 10.0)] * nbins,
            [not v for v in valid],
            list(factors),
            None,
            list(factors),
        )
    raise AssertionError(modtype)


@dataclass
class Structure:
    """Channels, samples and modifiers of a spec (sorted as pyhf sorts them) and the nominal
    yields ``(samples, bins)``, the channels' bins laid end to end."""

    channel_nbins: dict  # channel -> number of bins
    channels: list
    samples: list
    modifiers: list  # (name, type)
    lookup: dict  # (channel, sample) -> (sample dict, {(type, name): (modifier, path)}, path)
    offset: dict  # channel -> its first global bin
    sidx: dict  # sample -> row
    nominal: np.ndarray

    @property
    def B(self) -> int:
        """The number of bins (all channels)."""
        return self.nominal.shape[1]


def _sample_modifiers(s, ci, si, file):
    """``({(type, name): (modifier, json path)}, {(name, type)})`` of one sample."""
    mods, seen = {}, set()
    for mi, m in enumerate(s["modifiers"]):
        path = f"channels[{ci}].samples[{si}].modifiers[{mi}]"
        if m["type"] not in MODIFIER_TYPES:
            raise DiffhepError(
                f"unknown modifier type {m['type']!r}",
                file=file,
                where=f"{path}.type",
                fix=f"use one of {', '.join(MODIFIER_TYPES)}",
            )
        seen.add((m["name"], m["type"]))
        key = (m["type"], m["name"])
        if key in mods:
            raise DiffhepError(
                f"modifier {m['name']!r} of type {m['type']} appears twice on sample {s['name']!r}",
                file=file,
                where=path,
                fix="give each modifier of a sample a unique name",
            )
        mods[key] = (m, path)
    return mods, seen


def structure(spec: dict, file=None) -> Structure:
    """The :class:`Structure` of a ``model.json``-like spec; a sample whose bins differ from
    its channel's is an error."""
    channel_nbins, samples, modifiers = {}, set(), set()
    lookup = {}
    for ci, ch in enumerate(spec["channels"]):
        channel_nbins[ch["name"]] = len(ch["samples"][0]["data"])
        for si, s in enumerate(ch["samples"]):
            samples.add(s["name"])
            mods, seen = _sample_modifiers(s, ci, si, file)
            modifiers |= seen
            lookup[(ch["name"], s["name"])] = (s, mods, f"channels[{ci}].samples[{si}]")
    channels, samples = sorted(channel_nbins), sorted(samples)
    offset, start = {}, 0
    for c in channels:
        offset[c] = start
        start += channel_nbins[c]
    sidx = {s: i for i, s in enumerate(samples)}
    nominal = np.zeros((len(samples), start))
    for (c, s), (sd, _, path) in lookup.items():
        if len(sd["data"]) != channel_nbins[c]:
            raise DiffhepError(
                f"sample has {len(sd['data'])} bins, channel {c!r} has {channel_nbins[c]}",
                file=file,
                where=f"{path}.data",
            )
        nominal[sidx[s], offset[c] : offset[c] + channel_nbins[c]] = sd["data"]
    return Structure(
        channel_nbins, channels, samples, sorted(modifiers), lookup, offset, sidx, nominal
    )


def required_paramsets(st: Structure, file=None):
    """The parameter sets the modifiers require and where each modifier applies.

    Returns:
        ``(required, apps, staterror)``: ``required`` maps a parameter name (and
        ``"__<type>"``) to the :class:`Paramset` each of its modifiers requires, in pyhf's
        order (by type, then first appearance); ``apps`` maps ``(type, name)`` to its
        ``(channel, sample, modifier dict, json path)`` uses; ``staterror`` is
        ``(masks, entries, keys)``: per staterror modifier its bin mask, and per carrying
        sample ``(modifier index, uncertainties (B,))`` and ``(modifier, sample)``.
    """
    required: dict[str, list[Paramset]] = {}
    apps: dict[tuple[str, str], list] = {}
    # pyhf's order: by type, then channel, sample and modifier name; each (channel, sample)
    # visits only the modifiers it carries (grouped by type once), not all of the model's
    by_type: dict[tuple[str, str], dict[str, list[str]]] = {}
    for key, (_, mods, _) in st.lookup.items():
        group = by_type[key] = {}
        for t, name in mods:
            group.setdefault(t, []).append(name)
        for names in group.values():
            names.sort()
    for mtype in MODIFIER_TYPES:
        if mtype == "staterror":
            continue
        seen: set[str] = set()
        for c in st.channels:
            for s in st.samples:
                entry = st.lookup.get((c, s))
                if entry is None:
                    continue
                sd, mods, _ = entry
                for name in by_type[(c, s)].get(mtype, ()):
                    m, path = mods[(mtype, name)]
                    apps.setdefault((mtype, name), []).append((c, s, m, path))
                    if name not in seen:
                        seen.add(name)
                        data = m["data"] if mtype == "shapesys" else None
                        ps = _default_paramset(name, mtype, st.channel_nbins[c], sd["data"], data)
                        ps.modtype = mtype
                        required.setdefault("__" + mtype, []).append(ps)
                        required.setdefault(name, []).append(ps)
    return required, apps, _staterror_paramsets(st, required, apps, file)


def _staterror_paramsets(st: Structure, required: dict, apps: dict, file=None):
    """Add the staterror parameter sets to ``required`` (and their uses to ``apps``): one
    parameter per bin, sigma from all samples carrying the modifier."""
    S, B = len(st.samples), st.B
    masks, entries, keys = {}, [], []
    for name in [name for name, t in st.modifiers if t == "staterror"]:
        mask = np.zeros((S, B), dtype=bool)
        uncrt = np.zeros((S, B))
        for c in st.channels:
            for s in st.samples:
                entry = st.lookup.get((c, s))
                if entry is None or ("staterror", name) not in entry[1]:
                    continue
                m, path = entry[1][("staterror", name)]
                sl = slice(st.offset[c], st.offset[c] + st.channel_nbins[c])
                if len(m["data"]) != st.channel_nbins[c]:
                    raise DiffhepError(
                        "staterror data length differs from the sample's bins",
                        file=file,
                        where=f"{path}.data",
                    )
                mask[st.sidx[s], sl] = True
                uncrt[st.sidx[s], sl] = m["data"]
                apps.setdefault(("staterror", name), []).append((c, s, m, path))
        carriers = mask.any(axis=1)
        rows = mask[carriers]
        if not np.all(rows == rows[0]):
            raise DiffhepError(
                f"staterror {name!r} is applied to different bins on different samples",
                file=file,
                fix="apply it in the same channels",
            )
        binmask = rows[0]
        nomsall = st.nominal[carriers].sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel2 = np.where(nomsall > 0, (uncrt / np.where(nomsall > 0, nomsall, 1.0)) ** 2, 0.0)
        sigmas = np.sqrt(rel2.sum(axis=0))[binmask]
        fixed = [bool(x == 0) for x in sigmas]
        sigmas = np.where(sigmas == 0, 1.0, sigmas)
        n = int(binmask.sum())
        ps = Paramset(name, "normal", n, False, [1.0] * n, [(1e-10, 10.0)] * n, fixed,
                      [1.0] * n, list(map(float, sigmas)), None, "staterror")  # fmt: skip
        required.setdefault(name, []).append(ps)
        masks[name] = binmask
        for s in np.nonzero(carriers)[0]:
            entries.append((len(masks) - 1, uncrt[s]))
            keys.append((name, st.samples[s]))
    return masks, entries, keys


def _signature(p: Paramset) -> tuple:
    """What two requirements of one parameter must share."""
    return (p.kind, p.n, p.inits, p.bounds, p.auxdata, p.sigmas, p.factors, p.fixed)


def _configure(ps: Paramset, cfg: dict, file=None) -> None:
    """Apply a measurement's configuration of the parameter ``ps`` (inits, bounds, ...)."""
    name = ps.name
    for key in _PARSET_KEYS:
        if key not in cfg:
            continue
        val = cfg[key]
        if key == "fixed":
            ps.fixed = [bool(val)] * ps.n
            continue
        if key in ("auxdata", "sigmas", "factors") and ps.kind == "unconstrained":
            raise DiffhepError(
                f"parameter {name!r} is unconstrained and has no {key}",
                file=file,
                where=f"parameters[{name}].{key}",
                fix=f"remove '{key}' from its configuration",
            )
        if (key == "factors" and ps.kind != "poisson") or (key == "sigmas" and ps.kind != "normal"):
            raise DiffhepError(
                f"parameter {name!r} does not use {key!r}",
                file=file,
                where=f"parameters[{name}].{key}",
            )
        if len(val) != ps.n:
            raise DiffhepError(
                f"{key} of parameter {name!r} has {len(val)} values, expected {ps.n}",
                file=file,
                where=f"parameters[{name}].{key}",
            )
        setattr(ps, key, [tuple(v) for v in val] if key == "bounds" else list(map(float, val)))
        ps.user_keys = ps.user_keys | {key}


def _check_configured(ps: Paramset, file=None) -> None:
    """A lumi parameter has its constraint configured; the inits are within the bounds."""
    name = ps.name
    if ps.modtype == "lumi":
        missing = [k for k in ("inits", "bounds", "auxdata", "sigmas") if getattr(ps, k) is None]
        if missing:
            raise DiffhepError(
                f"lumi parameter {name!r} needs {', '.join(missing)} in the measurement's "
                "parameter configuration",
                file=file,
                where="measurements[].config.parameters",
                fix=f'add {{"name": "{name}", "auxdata": [1.0], "sigmas": [0.02], '
                '"inits": [1.0], "bounds": [[0.5, 1.5]]}',
            )
    for i, (lo, hi) in enumerate(ps.bounds):
        if not lo <= ps.inits[i] <= hi:
            raise DiffhepError(
                f"initial value {ps.inits[i]} of parameter {name!r} is outside its bounds "
                f"[{lo}, {hi}]",
                file=file,
                where=f"parameters[{name}]",
                fix="change 'inits' or 'bounds' in the measurement's parameter configuration",
            )


def reduce_paramsets(required: dict, parameters, file=None) -> list[Paramset]:
    """One :class:`Paramset` per parameter, in order: the requirements of a shared parameter
    must agree, then the measurement's ``parameters`` configuration applies."""
    user = {}
    for k, p in enumerate(parameters or []):
        if p["name"] in user:
            raise DiffhepError(
                f"parameter {p['name']!r} is configured twice",
                file=file,
                where=f"measurements[].config.parameters[{k}]",
            )
        user[p["name"]] = p
    paramsets = []
    for name in [n for n in required if not n.startswith("__")]:
        first, *others = required[name]
        for other in others:
            if _signature(other) != _signature(first):
                raise DiffhepError(
                    f"parameter {name!r} is used by modifiers of incompatible types "
                    f"({first.modtype} and {other.modtype})",
                    file=file,
                    fix="use unique modifier names for different kinds of modifiers",
                )
        ps = Paramset(**{**first.__dict__})
        _configure(ps, user.get(name, {}), file)
        _check_configured(ps, file)
        paramsets.append(ps)
    if not paramsets:
        raise DiffhepError(
            "the model has no parameters", file=file, fix="add at least a normfactor (the POI)"
        )
    return paramsets


def poi_index(paramsets: list[Paramset], slices: dict, poi_name, file=None) -> int | None:
    """The index of the parameter of interest (``None`` without one); it must be a scalar
    parameter of the model."""
    if not poi_name:
        return None
    byname = {ps.name: ps for ps in paramsets}
    if poi_name not in byname:
        raise DiffhepError(
            f"the parameter of interest {poi_name!r} is not a parameter of the model",
            file=file,
            where="measurements[].config.poi",
            fix=f"use the name of a normfactor, e.g. one of: "
            f"{', '.join(p.name for p in paramsets if p.modtype == 'normfactor')}",
        )
    if byname[poi_name].n != 1:
        raise DiffhepError(
            f"the parameter of interest {poi_name!r} has several components",
            file=file,
            where="measurements[].config.poi",
        )
    return slices[poi_name][0]
