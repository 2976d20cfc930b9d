"""Turn a HistFactory model specification into flat, vectorised arrays.

This follows pyhf's conventions exactly (``pyhf.pdf``, ``pyhf.modifiers``): channels,
samples and modifiers are sorted; parameters are ordered by modifier type
(histosys, lumi, normfactor, normsys, shapefactor, shapesys, staterror), each type in order
of first appearance; auxiliary data follow the order of the constrained parameters.

Modifiers are vectorised by *kind*, never looped per sample at evaluation time:

- every modifier whose effect is "multiply bin (s, b) by a parameter value" (normfactor,
  lumi, shapefactor, shapesys, staterror) goes into one integer table of shape
  ``(layers, samples * bins)`` indexing the parameter vector;
- normsys entries (one per modifier, sample and channel) go into a table indexing the vector
  of interpolated factors;
- histosys entries (one per modifier and sample) are rows of ``(entries, bins)`` templates
  summed into their sample.

Layers are packed greedily so that two entries share a layer when they touch different
cells; the number of layers is the largest number of modifiers of a kind on one cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DiffhepError

MODIFIER_TYPES = (
    "histosys",
    "lumi",
    "normfactor",
    "normsys",
    "shapefactor",
    "shapesys",
    "staterror",
)
DEFAULT_MODIFIER_SETTINGS = {
    "normsys": {"interpcode": "code4"},
    "histosys": {"interpcode": "code4p"},
}
_ALLOWED_CODES = {"normsys": ("code1", "code4"), "histosys": ("code0", "code4p")}
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
class Built:
    """Everything :class:`~diffhep.stats.model.Model` needs, as numpy arrays and Python data."""

    channels: list
    channel_nbins: dict
    samples: list
    modifiers: list
    paramsets: list  # ordered Paramset
    poi_index: int | None
    poi_name: str | None
    settings: dict
    nominal: np.ndarray  # (S, B)
    direct_table: np.ndarray  # (Ld, S*B) index into pars + [1]
    normsys_par: np.ndarray  # (En,)
    normsys_lo: np.ndarray
    normsys_hi: np.ndarray
    normsys_table: np.ndarray  # (Ln, S*B) index into factors + [1]
    histosys_par: np.ndarray  # (Eh,)
    histosys_sample: np.ndarray
    histosys_lo: np.ndarray  # (Eh, B)
    histosys_hi: np.ndarray
    histosys_mask: np.ndarray
    staterror_member: np.ndarray  # (K, S) 0/1
    staterror_entry_mod: np.ndarray  # (Es,)
    staterror_uncrt: np.ndarray  # (Es, B)
    aux_par: np.ndarray  # (A,) parameter index of each auxiliary datum
    aux_poisson: np.ndarray  # (A,) bool
    aux_data: np.ndarray  # (A,) static auxiliary data
    aux_sigma: np.ndarray  # (A,) static widths (normal)
    aux_factor: np.ndarray  # (A,) static rate factors (poisson)
    se_pos: np.ndarray  # positions in aux whose sigma comes from the staterror templates
    se_mod: np.ndarray
    se_bin: np.ndarray
    ss_pos: np.ndarray  # positions in aux whose factor comes from the shapesys templates
    ss_sample: np.ndarray
    ss_bin: np.ndarray
    ss_uncrt: np.ndarray
    perbin_bins: dict  # parameter index -> global bins it touches (non-scalar paramsets)
    normsys_keys: list  # (modifier, channel, sample) of each normsys entry
    histosys_keys: list  # (modifier, sample) of each histosys row
    staterror_keys: list  # (modifier, sample) of each staterror row


def _pack(entries, ncells, fill):
    """Greedy layer packing. ``entries`` is a list of (cells, values) pairs."""
    layers: list[np.ndarray] = []
    for cells, values in entries:
        for layer in layers:
            if np.all(layer[cells] == fill):
                layer[cells] = values
                break
        else:
            layer = np.full(ncells, fill, dtype=np.int32)
            layer[cells] = values
            layers.append(layer)
    if not layers:
        return np.full((0, ncells), fill, dtype=np.int32)
    return np.stack(layers)


def build(spec: dict, poi_name, modifier_settings=None, file=None) -> Built:
    """Build the arrays of a model from a ``model.json``-like dict (channels + parameters)."""
    # As pyhf: without modifier_settings the model defaults apply (code4, code4p); with them,
    # a type left out gets its modifier's own default (normsys code1, histosys code0).
    if modifier_settings is None:
        settings = {k: dict(v) for k, v in DEFAULT_MODIFIER_SETTINGS.items()}
    else:
        settings = {"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}}
    for mtype, opts in (modifier_settings or {}).items():
        if mtype not in _ALLOWED_CODES:
            raise DiffhepError(
                f"modifier_settings for unknown modifier type {mtype!r}",
                fix="only normsys and histosys have interpolation codes",
            )
        code = opts.get("interpcode")
        if code not in _ALLOWED_CODES[mtype]:
            raise DiffhepError(
                f"interpolation code {code!r} is not supported for {mtype}",
                where=f"modifier_settings.{mtype}.interpcode",
                fix=f"use one of {', '.join(_ALLOWED_CODES[mtype])}",
            )
        settings[mtype] = {"interpcode": code}

    # --- structure, as pyhf's _ChannelSummaryMixin
    channel_nbins, samples, modifiers = {}, set(), set()
    lookup = {}  # (channel, sample) -> (sample dict, {key: modifier}, json path)
    for ci, ch in enumerate(spec["channels"]):
        channel_nbins[ch["name"]] = len(ch["samples"][0]["data"])
        for si, s in enumerate(ch["samples"]):
            samples.add(s["name"])
            mods = {}
            for mi, m in enumerate(s["modifiers"]):
                if m["type"] not in MODIFIER_TYPES:
                    raise DiffhepError(
                        f"unknown modifier type {m['type']!r}",
                        file=file,
                        where=f"channels[{ci}].samples[{si}].modifiers[{mi}].type",
                        fix=f"use one of {', '.join(MODIFIER_TYPES)}",
                    )
                modifiers.add((m["name"], m["type"]))
                key = (m["type"], m["name"])
                if key in mods:
                    raise DiffhepError(
                        f"modifier {m['name']!r} of type {m['type']} appears twice on sample "
                        f"{s['name']!r}",
                        file=file,
                        where=f"channels[{ci}].samples[{si}].modifiers[{mi}]",
                        fix="give each modifier of a sample a unique name",
                    )
                mods[key] = (m, f"channels[{ci}].samples[{si}].modifiers[{mi}]")
            lookup[(ch["name"], s["name"])] = (s, mods, f"channels[{ci}].samples[{si}]")
    channels = sorted(channel_nbins)
    samples = sorted(samples)
    modifiers = sorted(modifiers)
    S, B = len(samples), sum(channel_nbins.values())
    offset = {}
    start = 0
    for c in channels:
        offset[c] = start
        start += channel_nbins[c]
    sidx = {s: i for i, s in enumerate(samples)}

    nominal = np.zeros((S, B))
    for (c, s), (sd, _, path) in lookup.items():
        if len(sd["data"]) != channel_nbins[c]:
            raise DiffhepError(
                f"sample has {len(sd['data'])} bins, channel {c!r} has {channel_nbins[c]}",
                file=file,
                where=f"{path}.data",
            )
        nominal[sidx[s], offset[c] : offset[c] + channel_nbins[c]] = sd["data"]

    # --- required paramsets, in pyhf's order (by type, then first appearance)
    required: dict[str, list[Paramset]] = {}
    # applications: per modifier key, list of (channel, sample, modifier dict, path)
    apps: dict[tuple[str, str], list] = {}
    for mtype in MODIFIER_TYPES:
        if mtype == "staterror":
            continue
        for c in channels:
            for s in samples:
                entry = lookup.get((c, s))
                if entry is None:
                    continue
                sd, mods, _ = entry
                for name, t in modifiers:
                    if t != mtype or (t, name) not in mods:
                        continue
                    m, path = mods[(t, name)]
                    apps.setdefault((t, name), []).append((c, s, m, path))
                    if name not in [p.name for p in required.get(("__" + mtype), [])]:
                        ps = _default_paramset(
                            name,
                            t,
                            channel_nbins[c],
                            sd["data"],
                            m["data"] if t == "shapesys" else None,
                        )
                        ps.modtype = t
                        required.setdefault("__" + mtype, []).append(ps)
                        required.setdefault(name, []).append(ps)
    # staterror: sigmas from all samples carrying it (pyhf's staterror_builder.finalize)
    staterror_names = [name for name, t in modifiers if t == "staterror"]
    se_masks, se_entries, se_keys = {}, [], []
    for name in staterror_names:
        mask = np.zeros((S, B), dtype=bool)
        uncrt = np.zeros((S, B))
        for c in channels:
            for s in samples:
                entry = lookup.get((c, s))
                if entry is None or ("staterror", name) not in entry[1]:
                    continue
                m, path = entry[1][("staterror", name)]
                sl = slice(offset[c], offset[c] + channel_nbins[c])
                if len(m["data"]) != channel_nbins[c]:
                    raise DiffhepError(
                        "staterror data length differs from the sample's bins",
                        file=file,
                        where=f"{path}.data",
                    )
                mask[sidx[s], sl] = True
                uncrt[sidx[s], sl] = m["data"]
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
        nomsall = nominal[carriers].sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel2 = np.where(nomsall > 0, (uncrt / np.where(nomsall > 0, nomsall, 1.0)) ** 2, 0.0)
        sigmas = np.sqrt(rel2.sum(axis=0))[binmask]
        fixed = [bool(x == 0) for x in sigmas]
        sigmas = np.where(sigmas == 0, 1.0, sigmas)
        n = int(binmask.sum())
        ps = Paramset(
            name,
            "normal",
            n,
            False,
            [1.0] * n,
            [(1e-10, 10.0)] * n,
            fixed,
            [1.0] * n,
            list(map(float, sigmas)),
            None,
            "staterror",
        )
        required.setdefault(name, []).append(ps)
        se_masks[name] = binmask
        for s in np.nonzero(carriers)[0]:
            se_entries.append((len(se_masks) - 1, uncrt[s]))
            se_keys.append((name, samples[s]))

    # --- reduce with user configurations (pyhf.parameters.reduce_paramsets_requirements)
    user = {}
    for k, p in enumerate(spec.get("parameters", []) or []):
        if p["name"] in user:
            raise DiffhepError(
                f"parameter {p['name']!r} is configured twice",
                file=file,
                where=f"measurements[].config.parameters[{k}]",
            )
        user[p["name"]] = p
    order = [n for n in required if not n.startswith("__")]
    paramsets = []
    for name in order:
        reqs = required[name]
        first = reqs[0]
        for other in reqs[1:]:
            same = (
                other.kind,
                other.n,
                other.inits,
                other.bounds,
                other.auxdata,
                other.sigmas,
                other.factors,
                other.fixed,
            ) == (
                first.kind,
                first.n,
                first.inits,
                first.bounds,
                first.auxdata,
                first.sigmas,
                first.factors,
                first.fixed,
            )
            if not same:
                raise DiffhepError(
                    f"parameter {name!r} is used by modifiers of incompatible types "
                    f"({first.modtype} and {other.modtype})",
                    file=file,
                    fix="use unique modifier names for different kinds of modifiers",
                )
        ps = Paramset(**{**first.__dict__})
        cfg = user.get(name, {})
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
            if (key == "factors" and ps.kind != "poisson") or (
                key == "sigmas" and ps.kind != "normal"
            ):
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
        if ps.modtype == "lumi":
            missing = [
                k for k in ("inits", "bounds", "auxdata", "sigmas") if getattr(ps, k) is None
            ]
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
        paramsets.append(ps)
    if not paramsets:
        raise DiffhepError(
            "the model has no parameters", file=file, fix="add at least a normfactor (the POI)"
        )
    start = 0
    slices = {}
    for ps in paramsets:
        slices[ps.name] = (start, start + ps.n)
        start += ps.n
    npars = start
    byname = {ps.name: ps for ps in paramsets}

    poi_index = None
    if poi_name:
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
        poi_index = slices[poi_name][0]

    # --- modifier tables
    ncells = S * B
    direct, norm_entries = [], []
    npar_lo, npar_hi, npar_idx = [], [], []
    h_par, h_sample, h_lo, h_hi, h_mask = [], [], [], [], []
    n_keys, h_keys = [], []
    perbin_bins: dict[int, set] = {}
    for (t, name), uses in apps.items():
        p0 = slices[name][0]
        hist_rows = {}
        for c, s, m, path in uses:
            nb = channel_nbins[c]
            bins = np.arange(offset[c], offset[c] + nb)
            cells = sidx[s] * B + bins
            if t in ("normfactor", "lumi"):
                direct.append((cells, np.full(nb, p0)))
            elif t == "normsys":
                norm_entries.append((cells, np.full(nb, len(npar_idx))))
                npar_idx.append(p0)
                n_keys.append((name, c, s))
                npar_lo.append(float(m["data"]["lo"]))
                npar_hi.append(float(m["data"]["hi"]))
            elif t == "histosys":
                for key in ("lo_data", "hi_data"):
                    if len(m["data"][key]) != nb:
                        raise DiffhepError(
                            f"histosys {key} has {len(m['data'][key])} bins, expected {nb}",
                            file=file,
                            where=f"{path}.data.{key}",
                        )
                row = hist_rows.setdefault(s, len(h_par))
                if row == len(h_par):
                    h_par.append(p0)
                    h_sample.append(sidx[s])
                    h_lo.append(nominal[sidx[s]].copy())
                    h_hi.append(nominal[sidx[s]].copy())
                    h_mask.append(np.zeros(B, dtype=bool))
                    h_keys.append((name, s))
                h_lo[row][bins] = m["data"]["lo_data"]
                h_hi[row][bins] = m["data"]["hi_data"]
                h_mask[row][bins] = True
            elif t == "shapefactor":
                n = slices[name][1] - p0
                if nb > n:
                    raise DiffhepError(
                        f"shapefactor {name!r} is shared by channels with different numbers of "
                        "bins",
                        file=file,
                        where=path,
                        fix="use one shapefactor per channel",
                    )
                direct.append((cells, p0 + np.arange(nb)))
                for j, b in enumerate(bins):
                    perbin_bins.setdefault(p0 + j, set()).add(int(b))
            elif t == "shapesys":
                if len(m["data"]) != nb:
                    raise DiffhepError(
                        f"shapesys data has {len(m['data'])} bins, expected {nb}",
                        file=file,
                        where=f"{path}.data",
                    )
                n = slices[name][1] - p0
                if n != nb:
                    raise DiffhepError(
                        f"shapesys {name!r} is used in several channels",
                        file=file,
                        where=path,
                        fix="shapesys modifiers cannot be shared; rename them",
                    )
                direct.append((cells, p0 + np.arange(nb)))
                for j, b in enumerate(bins):
                    perbin_bins.setdefault(p0 + j, set()).add(int(b))
            elif t == "staterror":
                binmask = se_masks[name]
                rank = np.cumsum(binmask) - 1
                direct.append((cells, p0 + rank[bins]))
                for b in bins:
                    perbin_bins.setdefault(int(p0 + rank[b]), set()).add(int(b))
    direct_table = _pack(direct, ncells, npars)
    normsys_table = _pack(norm_entries, ncells, len(npar_idx))

    # --- constraints, in auxdata order (constrained parameters in parameter order)
    aux_par, aux_pois, aux_data, aux_sigma, aux_factor = [], [], [], [], []
    se_pos, se_mod, se_bin = [], [], []
    ss_pos, ss_sample, ss_bin, ss_uncrt = [], [], [], []
    se_index = {n: k for k, n in enumerate(se_masks)}
    for ps in paramsets:
        if ps.kind == "unconstrained":
            continue
        p0 = slices[ps.name][0]
        user_keys = ps.user_keys
        for j in range(ps.n):
            pos = len(aux_par)
            aux_par.append(p0 + j)
            aux_pois.append(ps.kind == "poisson")
            aux_data.append(float(ps.auxdata[j]))
            aux_sigma.append(float(ps.sigmas[j]) if ps.kind == "normal" and ps.sigmas else 1.0)
            aux_factor.append(float(ps.factors[j]) if ps.kind == "poisson" else 1.0)
            if ps.modtype == "staterror" and "sigmas" not in user_keys:
                binmask = se_masks[ps.name]
                se_pos.append(pos)
                se_mod.append(se_index[ps.name])
                se_bin.append(int(np.nonzero(binmask)[0][j]))
            if ps.modtype == "shapesys" and not ({"auxdata", "factors"} & user_keys):
                ((c, s, m, _),) = apps[("shapesys", ps.name)]
                ss_pos.append(pos)
                ss_sample.append(sidx[s])
                ss_bin.append(offset[c] + j)
                ss_uncrt.append(float(m["data"][j]))

    K = len(se_masks)
    member = np.zeros((K, S))
    for name, k in se_index.items():
        for _c, s, _, _ in apps.get(("staterror", name), []):
            member[k, sidx[s]] = 1.0
    se_entry_mod = np.array([k for k, _ in se_entries], dtype=np.int32)
    se_uncrt = np.array([u for _, u in se_entries]).reshape(len(se_entries), B)

    def arr(x, dtype=float, shape=None):
        a = np.asarray(x, dtype=dtype)
        return a.reshape(shape) if shape is not None else a

    return Built(
        channels=channels,
        channel_nbins={c: channel_nbins[c] for c in channels},
        samples=samples,
        modifiers=modifiers,
        paramsets=paramsets,
        poi_index=poi_index,
        poi_name=poi_name if poi_index is not None else None,
        settings=settings,
        nominal=nominal,
        direct_table=direct_table,
        normsys_par=arr(npar_idx, np.int32),
        normsys_lo=arr(npar_lo),
        normsys_hi=arr(npar_hi),
        normsys_table=normsys_table,
        histosys_par=arr(h_par, np.int32),
        histosys_sample=arr(h_sample, np.int32),
        histosys_lo=arr(h_lo, shape=(len(h_par), B)),
        histosys_hi=arr(h_hi, shape=(len(h_par), B)),
        histosys_mask=arr(h_mask, bool, shape=(len(h_par), B)),
        staterror_member=member,
        staterror_entry_mod=se_entry_mod,
        staterror_uncrt=se_uncrt,
        aux_par=arr(aux_par, np.int32),
        aux_poisson=arr(aux_pois, bool),
        aux_data=arr(aux_data),
        aux_sigma=arr(aux_sigma),
        aux_factor=arr(aux_factor),
        se_pos=arr(se_pos, np.int32),
        se_mod=arr(se_mod, np.int32),
        se_bin=arr(se_bin, np.int32),
        ss_pos=arr(ss_pos, np.int32),
        ss_sample=arr(ss_sample, np.int32),
        ss_bin=arr(ss_bin, np.int32),
        ss_uncrt=arr(ss_uncrt),
        perbin_bins={k: sorted(v) for k, v in perbin_bins.items()},
        normsys_keys=n_keys,
        histosys_keys=h_keys,
        staterror_keys=se_keys,
    )
