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
The structure and the parameter sets come from :mod:`diffhep.stats.paramsets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain as _chain

import numpy as np

from ..errors import DiffhepError
from .paramsets import (
    MODIFIER_TYPES,
    Paramset,
    Structure,
    poi_index,
    reduce_paramsets,
    required_paramsets,
    structure,
)

__all__ = ["DEFAULT_MODIFIER_SETTINGS", "MODIFIER_TYPES", "Built", "Paramset", "build"]

DEFAULT_MODIFIER_SETTINGS = {
    "normsys": {"interpcode": "code4"},
    "histosys": {"interpcode": "code4p"},
}
_ALLOWED_CODES = {"normsys": ("code1", "code4"), "histosys": ("code0", "code4p")}


@dataclass
class Built:
    """Everything :class:`~diffhep.stats.model.Model` needs, as numpy arrays and Python data;
    the templates (``nominal``, ``histosys_lo``/``hi``, ``normsys_lo``/``hi``,
    ``staterror_uncrt``, ``aux_data``/``sigma``/``factor``) already on JAX's device
    (:func:`_on_device`)."""

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
    used: list[int] = []  # per layer, its occupied cells as the bits of an int
    for cells, values in entries:
        bits = sum(1 << int(c) for c in set(np.asarray(cells).tolist()))
        for k, layer in enumerate(layers):
            if not used[k] & bits:
                layer[cells] = values
                used[k] |= bits
                break
        else:
            layer = np.full(ncells, fill, dtype=np.int32)
            layer[cells] = values
            layers.append(layer)
            used.append(bits)
    if not layers:
        return np.full((0, ncells), fill, dtype=np.int32)
    return np.stack(layers)


def _settings(modifier_settings) -> dict:
    """The interpolation codes. As pyhf: without ``modifier_settings`` the model defaults
    apply (code4, code4p); with them, a type left out gets its modifier's own default
    (normsys code1, histosys code0)."""
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
    return settings


@dataclass
class _Tables:
    """The modifier entries while they are collected (see :class:`Built`)."""

    B: int
    direct: list = field(default_factory=list)  # (cells, parameter index per cell)
    norm: list = field(default_factory=list)  # (cells, normsys entry per cell)
    n_par: list = field(default_factory=list)
    n_lo: list = field(default_factory=list)
    n_hi: list = field(default_factory=list)
    n_keys: list = field(default_factory=list)
    h_par: list = field(default_factory=list)
    h_sample: list = field(default_factory=list)
    h_fill: list = field(default_factory=list)  # (row, first bin, lo_data, hi_data)
    h_keys: list = field(default_factory=list)
    perbin: dict = field(default_factory=dict)  # parameter index -> global bins

    def per_bin(self, cells, bins, pars) -> None:
        """Cells multiplied by one parameter per bin (shapefactor, shapesys, staterror)."""
        self.direct.append((cells, pars))
        for p, b in zip(pars, bins, strict=True):
            self.perbin.setdefault(int(p), set()).add(int(b))

    def normsys(self, cells, p0, m, key) -> None:
        self.norm.append((cells, np.full(len(cells), len(self.n_par))))
        self.n_par.append(p0)
        self.n_keys.append(key)
        self.n_lo.append(float(m["data"]["lo"]))
        self.n_hi.append(float(m["data"]["hi"]))

    def histosys(self, rows: dict, s, first, p0, m, key) -> None:
        """The bins of one channel (from global bin ``first``) for the histosys row of
        ``(modifier, sample)`` (filled by :meth:`histosys_arrays`)."""
        row = rows.setdefault(s, len(self.h_par))
        if row == len(self.h_par):
            self.h_par.append(p0)
            self.h_sample.append(s)
            self.h_keys.append(key)
        self.h_fill.append((row, first, m["data"]["lo_data"], m["data"]["hi_data"]))

    def histosys_arrays(self, nominal) -> tuple:
        """``(lo, hi, mask)``, each ``(rows, B)``: the nominal of the row's sample outside
        the bins its channels fill, in one assignment per array (per use, numpy calls cost
        ~4 ms of each sbottom RegionA model build, ~900 uses)."""
        B = self.B
        lo = nominal[np.asarray(self.h_sample, dtype=int)].reshape(len(self.h_par), B)
        hi, mask = lo.copy(), np.zeros(lo.shape, dtype=bool)
        if self.h_fill:
            n = np.array([len(f[2]) for f in self.h_fill])
            start = np.array([f[0] * B + f[1] for f in self.h_fill])
            within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
            index = np.repeat(start, n) + within
            lo.flat[index] = np.fromiter(
                _chain.from_iterable(f[2] for f in self.h_fill), float, n.sum()
            )
            hi.flat[index] = np.fromiter(
                _chain.from_iterable(f[3] for f in self.h_fill), float, n.sum()
            )
            mask.flat[index] = True
        return lo, hi, mask


def _check_modifier(t, name, m, nb, n, path, file) -> None:
    """The data of a histosys or shapesys use fit its channel's ``nb`` bins; a per-bin
    parameter set of ``n`` components is not shared by channels of other sizes."""
    if t == "histosys":
        for key in ("lo_data", "hi_data"):
            if len(m["data"][key]) != nb:
                raise DiffhepError(
                    f"histosys {key} has {len(m['data'][key])} bins, expected {nb}",
                    file=file,
                    where=f"{path}.data.{key}",
                )
    elif t == "shapefactor" and nb > n:
        raise DiffhepError(
            f"shapefactor {name!r} is shared by channels with different numbers of bins",
            file=file,
            where=path,
            fix="use one shapefactor per channel",
        )
    elif t == "shapesys":
        if len(m["data"]) != nb:
            raise DiffhepError(
                f"shapesys data has {len(m['data'])} bins, expected {nb}",
                file=file,
                where=f"{path}.data",
            )
        if n != nb:
            raise DiffhepError(
                f"shapesys {name!r} is used in several channels",
                file=file,
                where=path,
                fix="shapesys modifiers cannot be shared; rename them",
            )


def _modifier_tables(st: Structure, apps: dict, slices: dict, se_masks: dict, file) -> _Tables:
    """Every use of every modifier as entries of the tables of its kind."""
    tb = _Tables(st.B)
    for (t, name), uses in apps.items():
        p0, p1 = slices[name]
        hist_rows = {}
        for c, s, m, path in uses:
            nb = st.channel_nbins[c]
            _check_modifier(t, name, m, nb, p1 - p0, path, file)
            if t == "histosys":  # the most frequent: no arrays per use
                tb.histosys(hist_rows, st.sidx[s], st.offset[c], p0, m, (name, s))
                continue
            bins = np.arange(st.offset[c], st.offset[c] + nb)
            cells = st.sidx[s] * st.B + bins
            if t in ("normfactor", "lumi"):
                tb.direct.append((cells, np.full(nb, p0)))
            elif t == "normsys":
                tb.normsys(cells, p0, m, (name, c, s))
            elif t in ("shapefactor", "shapesys"):
                tb.per_bin(cells, bins, p0 + np.arange(nb))
            elif t == "staterror":
                rank = np.cumsum(se_masks[name]) - 1
                tb.per_bin(cells, bins, p0 + rank[bins])
    return tb


def _constraints(st: Structure, paramsets, slices, se_masks, apps) -> dict:
    """The auxiliary data, in pyhf's order (constrained parameters in parameter order), and
    the positions whose width (staterror) or rate factor (shapesys) the templates set."""
    out = {k: [] for k in ("par", "pois", "data", "sigma", "factor", "se_pos", "se_mod",
                           "se_bin", "ss_pos", "ss_sample", "ss_bin", "ss_uncrt")}  # fmt: skip
    se_index = {n: k for k, n in enumerate(se_masks)}
    for ps in paramsets:
        if ps.kind == "unconstrained":
            continue
        p0 = slices[ps.name][0]
        for j in range(ps.n):
            pos = len(out["par"])
            out["par"].append(p0 + j)
            out["pois"].append(ps.kind == "poisson")
            out["data"].append(float(ps.auxdata[j]))
            out["sigma"].append(float(ps.sigmas[j]) if ps.kind == "normal" and ps.sigmas else 1.0)
            out["factor"].append(float(ps.factors[j]) if ps.kind == "poisson" else 1.0)
            if ps.modtype == "staterror" and "sigmas" not in ps.user_keys:
                out["se_pos"].append(pos)
                out["se_mod"].append(se_index[ps.name])
                out["se_bin"].append(int(np.nonzero(se_masks[ps.name])[0][j]))
            if ps.modtype == "shapesys" and not ({"auxdata", "factors"} & ps.user_keys):
                ((c, s, m, _),) = apps[("shapesys", ps.name)]
                out["ss_pos"].append(pos)
                out["ss_sample"].append(st.sidx[s])
                out["ss_bin"].append(st.offset[c] + j)
                out["ss_uncrt"].append(float(m["data"][j]))
    return out


def _staterror_member(st: Structure, se_masks: dict, apps: dict) -> np.ndarray:
    """``(K, S)``: 1 where staterror modifier ``k`` is carried by sample ``s``."""
    member = np.zeros((len(se_masks), len(st.samples)))
    for k, name in enumerate(se_masks):
        for _c, s, _, _ in apps.get(("staterror", name), []):
            member[k, st.sidx[s]] = 1.0
    return member


def _on_device(a):
    """``a`` on JAX's default device, as ``jnp.asarray`` would give it (the same dtype).

    ``jnp.asarray`` of a numpy array stages it through a jit, one compilation or
    persistent-cache read per shape (40-75 ms each for the 8 shapes of sbottom RegionA, on a
    loaded machine: ~0.3-0.6 s of a command); ``jax.device_put`` takes ~1 ms, and
    :meth:`Model.from_spec <diffhep.stats.model.Model.from_spec>`'s ``jnp.asarray`` of the
    result is free."""
    import jax

    return jax.device_put(np.asarray(a))


def build(spec: dict, poi_name, modifier_settings=None, file=None) -> Built:
    """Build the arrays of a model from a ``model.json``-like dict (channels + parameters)."""
    settings = _settings(modifier_settings)
    st = structure(spec, file)
    required, apps, (se_masks, se_entries, se_keys) = required_paramsets(st, file)
    paramsets = reduce_paramsets(required, spec.get("parameters", []), file)
    slices, start = {}, 0
    for ps in paramsets:
        slices[ps.name] = (start, start + ps.n)
        start += ps.n
    poi = poi_index(paramsets, slices, poi_name, file)
    tb = _modifier_tables(st, apps, slices, se_masks, file)
    aux = _constraints(st, paramsets, slices, se_masks, apps)
    B = st.B
    h_lo, h_hi, h_mask = tb.histosys_arrays(np.asarray(st.nominal, dtype=float))

    def arr(x, dtype=float, shape=None):
        a = np.asarray(x, dtype=dtype)
        return a.reshape(shape) if shape is not None else a

    return Built(
        channels=st.channels,
        channel_nbins={c: st.channel_nbins[c] for c in st.channels},
        samples=st.samples,
        modifiers=st.modifiers,
        paramsets=paramsets,
        poi_index=poi,
        poi_name=poi_name if poi is not None else None,
        settings=settings,
        nominal=_on_device(st.nominal),
        direct_table=_pack(tb.direct, len(st.samples) * B, start),
        normsys_par=arr(tb.n_par, np.int32),
        normsys_lo=_on_device(arr(tb.n_lo)),
        normsys_hi=_on_device(arr(tb.n_hi)),
        normsys_table=_pack(tb.norm, len(st.samples) * B, len(tb.n_par)),
        histosys_par=arr(tb.h_par, np.int32),
        histosys_sample=arr(tb.h_sample, np.int32),
        histosys_lo=_on_device(h_lo),
        histosys_hi=_on_device(h_hi),
        histosys_mask=h_mask,
        staterror_member=_staterror_member(st, se_masks, apps),
        staterror_entry_mod=np.array([k for k, _ in se_entries], dtype=np.int32),
        staterror_uncrt=_on_device(
            np.array([u for _, u in se_entries]).reshape(len(se_entries), B)
        ),
        aux_par=arr(aux["par"], np.int32),
        aux_poisson=arr(aux["pois"], bool),
        aux_data=_on_device(arr(aux["data"])),
        aux_sigma=_on_device(arr(aux["sigma"])),
        aux_factor=_on_device(arr(aux["factor"])),
        se_pos=arr(aux["se_pos"], np.int32),
        se_mod=arr(aux["se_mod"], np.int32),
        se_bin=arr(aux["se_bin"], np.int32),
        ss_pos=arr(aux["ss_pos"], np.int32),
        ss_sample=arr(aux["ss_sample"], np.int32),
        ss_bin=arr(aux["ss_bin"], np.int32),
        ss_uncrt=arr(aux["ss_uncrt"]),
        perbin_bins={k: sorted(v) for k, v in tb.perbin.items()},
        normsys_keys=tb.n_keys,
        histosys_keys=tb.h_keys,
        staterror_keys=se_keys,
    )
