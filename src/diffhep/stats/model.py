"""The HistFactory likelihood (arXiv:1007.1727 / CERN-OPEN-2012-016) in pure JAX.

A :class:`Model` is an Equinox module: its *templates* (sample yields, histosys templates,
normsys factors, MC-statistical uncertainties) are array leaves, while its structure
(parameter order, index tables, interpolation codes) is static. Swapping the templates with
:meth:`Model.with_yields` therefore gives a model that runs through the *same* compiled
function — this is how a neural network's soft histograms enter the likelihood at every
training step without recompilation.

All numbers follow pyhf (same parameter order, names, suggested inits and bounds, auxiliary
data and constants), so ``model.logpdf(pars, data)`` equals ``pyhf.Model.logpdf``.

The one deliberate difference is robustness: an expected bin yield that interpolation drives
to zero or below does not produce NaN (pyhf's fits silently fail there): below
:data:`POISSON_FLOOR` the Poisson term continues along its tangent at the floor, so
``-log L`` stays finite, smooth and convex in the yields. :meth:`Model.n_clipped` reports how many
bins are clipped at a given point.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> import diffhep
    >>> model = diffhep.Workspace(diffhep.stats.workspace.example_spec()).model()
    >>> pars = model.config.suggested_init()
    >>> [round(float(x), 6) for x in model.expected_actualdata(pars)]
    [62.0, 63.0]
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy

from . import interpolation
from .build import build

__all__ = ["POISSON_FLOOR", "Model", "ModelConfig"]

log = logging.getLogger(__name__)

#: Expected yields below this value are clipped inside the Poisson log-likelihood.
#: Small enough not to change any physical model (1e-10 events), large enough that
#: log(lambda) stays finite and well-conditioned.
POISSON_FLOOR = 1e-10
_TINY = 1e-300
#: Models with at most this many (cell, normsys entry) pairs combine normsys factors with a
#: dense one-hot matrix instead of a gather (faster, but memory grows as cells x entries).
_DENSE_NORMSYS_LIMIT = 2**22


@dataclass(frozen=True)
class ModelConfig:
    """Static description of a model, with pyhf's ``model.config`` vocabulary."""

    channels: tuple
    channel_nbins_items: tuple
    samples: tuple
    modifiers: tuple
    par_order: tuple
    par_slices: tuple
    par_is_scalar: tuple
    par_kinds: tuple
    par_modtypes: tuple
    init: tuple
    bounds: tuple
    fixed: tuple
    poi_name: str | None
    poi_index: int | None
    auxdata: tuple
    auxdata_order: tuple
    modifier_settings: tuple
    perbin: tuple  # (parameter index, tuple of global bins) for per-bin parameters
    normsys_keys: tuple = ()  # (modifier, channel, sample) of each normsys entry
    histosys_keys: tuple = ()  # (modifier, sample) of each histosys template row
    staterror_keys: tuple = ()  # (modifier, sample) of each staterror template row
    symmetric: tuple = ()  # names of parameters with a symmetrised (even) variation

    @property
    def channel_nbins(self) -> dict:
        return dict(self.channel_nbins_items)

    @property
    def channel_slices(self) -> dict:
        out, start = {}, 0
        for c, n in self.channel_nbins_items:
            out[c] = slice(start, start + n)
            start += n
        return out

    @property
    def npars(self) -> int:
        return len(self.init)

    @property
    def nmaindata(self) -> int:
        return sum(n for _, n in self.channel_nbins_items)

    @property
    def nauxdata(self) -> int:
        return len(self.auxdata)

    @property
    def parameters(self) -> list:
        return sorted(self.par_order)

    def par_slice(self, name: str) -> slice:
        return slice(*self.par_slices[self.par_order.index(name)])

    @property
    def par_names(self) -> list:
        """Names including the bin index of per-bin parameters, e.g. ``gamma[0]``."""
        names = []
        for name, (a, b), scalar in zip(
            self.par_order, self.par_slices, self.par_is_scalar, strict=True
        ):
            names += [name] if scalar else [f"{name}[{i}]" for i in range(b - a)]
        return names

    def suggested_init(self) -> list:
        return list(self.init)

    def suggested_bounds(self) -> list:
        return [tuple(b) for b in self.bounds]

    def suggested_fixed(self) -> list:
        return list(self.fixed)

    def interpcode(self, modtype: str) -> str:
        return dict(self.modifier_settings)[modtype]


def _scatter(values, positions, size, fill):
    out = np.full(size, fill, dtype=np.asarray(values).dtype if len(values) else type(fill))
    out[np.asarray(positions, dtype=int)] = values
    return out


def _per_aux(b) -> dict:
    """Per auxiliary datum: which staterror (modifier, bin) gives its width and which shapesys
    (sample, bin) gives its rate factor; the masks ``se_pos``/``ss_pos`` say where they apply."""
    A = len(b.aux_par)
    return dict(
        se_pos=_scatter(np.ones(len(b.se_pos), bool), b.se_pos, A, False),
        se_mod=_scatter(b.se_mod, b.se_pos, A, 0),
        se_bin=_scatter(b.se_bin, b.se_pos, A, 0),
        ss_pos=_scatter(np.ones(len(b.ss_pos), bool), b.ss_pos, A, False),
        ss_sample=_scatter(b.ss_sample, b.ss_pos, A, 0),
        ss_bin=_scatter(b.ss_bin, b.ss_pos, A, 0),
    )


def _onehot(index, n: int) -> np.ndarray:
    """``out[i, j] = (index[j] == i)``, shape ``(n, len(index))``."""
    return (np.asarray(index)[None, :] == np.arange(n)[:, None]).astype(float)


@dataclass(frozen=True, eq=False)
class Tables:
    """The integer structure of a model: index tables and masks as read-only numpy arrays.

    They are a *static* part of :class:`Model` (hashable, compared by value), so compiled
    functions see them as constants whether the model is closed over or passed as an
    argument: XLA then folds the gathers and one-hot matrices, which halves both the
    compile time and the run time of a fit.
    """

    direct_table: np.ndarray  # (layers, S*B): index into pars + [1]
    normsys_par: np.ndarray  # (normsys entries,): parameter index
    normsys_table: np.ndarray  # (layers, S*B): index into normsys entries + [none]
    histosys_par: np.ndarray  # (histosys entries,)
    histosys_sample: np.ndarray
    histosys_mask: np.ndarray  # (histosys entries, bins)
    staterror_member: np.ndarray  # (staterror modifiers, samples), 0/1
    staterror_entry_mod: np.ndarray  # (staterror entries,)
    aux_par: np.ndarray  # (auxiliary data,): parameter index
    aux_poisson: np.ndarray
    se_pos: np.ndarray
    se_mod: np.ndarray
    se_bin: np.ndarray
    ss_pos: np.ndarray
    ss_sample: np.ndarray
    ss_bin: np.ndarray

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value = np.array(getattr(self, name))
            if value.dtype.kind in "iu":
                value = value.astype(np.int32)
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        arrays = [getattr(self, n) for n in self._names]
        object.__setattr__(self, "_hash", hash(tuple((a.shape, a.tobytes()) for a in arrays)))

    @property
    def _names(self):
        return tuple(self.__dataclass_fields__)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Tables) or hash(self) != hash(other):
            return False
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in self._names)

    def normsys_onehot(self, entries: int) -> np.ndarray | None:
        """``(S*B, entries)`` count of each normsys entry per cell, or ``None`` when larger
        than :data:`_DENSE_NORMSYS_LIMIT` (then a gather is used)."""
        cells = self.normsys_table.shape[1]
        if cells * entries > _DENSE_NORMSYS_LIMIT:
            return None
        out = np.zeros((cells, entries + 1))
        for layer in self.normsys_table:
            out[np.arange(cells), layer] += 1.0
        return out[:, :entries]


class Model(eqx.Module):
    """A HistFactory model whose templates are JAX arrays.

    Build it from a workspace (:meth:`diffhep.Workspace.model`) or a model spec
    (:meth:`Model.from_spec`); replace its templates with :meth:`with_yields`.
    """

    # templates (differentiable)
    nominal: jax.Array  # (samples, bins)
    histosys_lo: jax.Array  # (entries, bins)
    histosys_hi: jax.Array
    normsys_lo: jax.Array  # (entries,)
    normsys_hi: jax.Array
    staterror_uncrt: jax.Array  # (entries, bins)
    shapesys_uncrt: jax.Array  # (auxiliary data,): shapesys uncertainty, 0 elsewhere
    # constraint constants
    aux_data_static: jax.Array
    aux_sigma_static: jax.Array
    aux_factor_static: jax.Array
    tables: Tables = eqx.field(static=True)
    config: ModelConfig = eqx.field(static=True)

    @property
    def ss_present(self) -> bool:
        return any(t == "shapesys" for t in self.config.par_modtypes)

    @classmethod
    def from_spec(
        cls,
        spec: dict,
        *,
        poi_name: str | None = "mu",
        modifier_settings: dict | None = None,
        file: str | None = None,
    ) -> Model:
        """Build a model from a pyhf model spec (``{"channels": [...], "parameters": [...]}``).

        Args:
            spec: The model specification (pyhf's ``model.json`` schema).
            poi_name: Name of the parameter of interest (``None`` for none).
            modifier_settings: Interpolation codes, e.g. ``{"normsys": {"interpcode": "code1"}}``.
            file: Source file name for error messages.
        """
        b = build(spec, poi_name, modifier_settings, file=file)
        slices, kinds, modtypes, scalars = [], [], [], []
        init, bounds, fixed, aux, aux_order = [], [], [], [], []
        for ps in b.paramsets:
            start = len(init)
            slices.append((start, start + ps.n))
            kinds.append(ps.kind)
            modtypes.append(ps.modtype)
            scalars.append(ps.is_scalar)
            init += [float(x) for x in ps.inits]
            bounds += [(float(lo), float(hi)) for lo, hi in ps.bounds]
            fixed += [bool(x) for x in ps.fixed]
            if ps.kind != "unconstrained":
                aux += [float(x) for x in ps.auxdata]
                aux_order.append(ps.name)
        config = ModelConfig(
            channels=tuple(b.channels),
            channel_nbins_items=tuple(b.channel_nbins.items()),
            samples=tuple(b.samples),
            modifiers=tuple(b.modifiers),
            par_order=tuple(ps.name for ps in b.paramsets),
            par_slices=tuple(slices),
            par_is_scalar=tuple(scalars),
            par_kinds=tuple(kinds),
            par_modtypes=tuple(modtypes),
            init=tuple(init),
            bounds=tuple(bounds),
            fixed=tuple(fixed),
            poi_name=b.poi_name,
            poi_index=b.poi_index,
            auxdata=tuple(aux),
            auxdata_order=tuple(aux_order),
            modifier_settings=tuple((k, v["interpcode"]) for k, v in sorted(b.settings.items())),
            perbin=tuple((p, tuple(bins)) for p, bins in sorted(b.perbin_bins.items())),
            normsys_keys=tuple(b.normsys_keys),
            histosys_keys=tuple(b.histosys_keys),
            staterror_keys=tuple(b.staterror_keys),
            symmetric=_symmetric_parameters(spec),
        )
        f = jnp.asarray
        return cls(
            nominal=f(b.nominal),
            histosys_lo=f(b.histosys_lo),
            histosys_hi=f(b.histosys_hi),
            normsys_lo=f(b.normsys_lo),
            normsys_hi=f(b.normsys_hi),
            staterror_uncrt=f(b.staterror_uncrt),
            shapesys_uncrt=f(_scatter(b.ss_uncrt, b.ss_pos, len(b.aux_par), 0.0)),
            aux_data_static=f(b.aux_data),
            aux_sigma_static=f(b.aux_sigma),
            aux_factor_static=f(b.aux_factor),
            tables=Tables(
                direct_table=b.direct_table,
                normsys_par=b.normsys_par,
                normsys_table=b.normsys_table,
                histosys_par=b.histosys_par,
                histosys_sample=b.histosys_sample,
                histosys_mask=np.asarray(b.histosys_mask, dtype=bool),
                staterror_member=np.asarray(b.staterror_member, dtype=float),
                staterror_entry_mod=b.staterror_entry_mod,
                aux_par=b.aux_par,
                aux_poisson=np.asarray(b.aux_poisson, dtype=bool),
                **_per_aux(b),
            ),
            config=config,
        )

    # ------------------------------------------------------------------ templates
    def with_yields(self, **templates) -> Model:
        """A model with new templates (same structure, same compiled functions).

        Keyword arguments are any of ``nominal`` (samples x bins, samples in
        ``config.samples`` order and bins in ``config.channels`` order), ``histosys_lo``,
        ``histosys_hi`` (histosys entries x bins), ``normsys_lo``, ``normsys_hi``,
        ``staterror_uncrt`` (staterror entries x bins) and ``shapesys_uncrt``.
        Shapes must match the current ones.
        """
        model = self
        for name, value in templates.items():
            old = getattr(self, name)
            value = jnp.asarray(value, dtype=old.dtype)
            if value.shape != old.shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {old.shape}")
            model = eqx.tree_at(lambda m, n=name: getattr(m, n), model, value)
        return model

    def with_channels(self, channels) -> Model:
        """A model whose templates are read from a pyhf ``channels`` list of arrays.

        ``channels`` has the structure of the model spec's ``"channels"`` (the same
        channels, samples and modifiers), but its ``data`` entries may be JAX arrays, e.g.
        a neural network's soft histograms: sample ``data``, histosys ``lo_data``/``hi_data``,
        normsys ``lo``/``hi`` and staterror ``data`` (absolute uncertainties, e.g.
        ``sqrt(sum w^2)``). Everything is assembled with static indices, so the result runs
        through the same compiled functions and is differentiable in every template.
        Shapesys uncertainties and the structure itself are kept from this model.

        Example:
            >>> import jax.numpy as jnp
            >>> from diffhep import Model
            >>> spec = {"channels": [{"name": "sr", "samples": [
            ...     {"name": "sig", "data": [1.0, 2.0],
            ...      "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
            ...     {"name": "bkg", "data": [5.0, 5.0], "modifiers": []}]}]}
            >>> model = Model.from_spec(spec)
            >>> spec["channels"][0]["samples"][0]["data"] = jnp.array([3.0, 4.0])
            >>> model.with_channels(spec["channels"]).expected_actualdata([1.0]).tolist()
            [8.0, 9.0]
        """
        cfg = self.config
        slices = cfg.channel_slices
        sidx = {s: i for i, s in enumerate(cfg.samples)}
        dtype = self.nominal.dtype
        nominal = self.nominal
        by_sample: dict = {}  # (type, modifier, sample) -> [(slice, data)]
        normsys: dict = {}
        for ci, ch in enumerate(channels):
            if ch["name"] not in slices:
                raise ValueError(f"channels[{ci}]: channel {ch['name']!r} is not in the model")
            sl = slices[ch["name"]]
            for si, sample in enumerate(ch["samples"]):
                where = f"channels[{ci}].samples[{si}]"
                if sample["name"] not in sidx:
                    raise ValueError(f"{where}: sample {sample['name']!r} is not in the model")
                data = jnp.asarray(sample["data"], dtype=dtype)
                if data.shape != (sl.stop - sl.start,):
                    raise ValueError(
                        f"{where}.data has shape {data.shape}, expected ({sl.stop - sl.start},)"
                    )
                nominal = nominal.at[sidx[sample["name"]], sl].set(data)
                for m in sample.get("modifiers", []):
                    if m["type"] == "normsys":
                        normsys[(m["name"], ch["name"], sample["name"])] = m["data"]
                    elif m["type"] in ("histosys", "staterror"):
                        key = (m["type"], m["name"], sample["name"])
                        by_sample.setdefault(key, []).append((sl, m["data"]))

        def assemble(row, pieces, field=None):
            for sl, d in pieces:
                values = jnp.asarray(d if field is None else d[field], dtype=dtype)
                if values.shape != (sl.stop - sl.start,):
                    what = "staterror data" if field is None else f"histosys {field}"
                    raise ValueError(
                        f"{what} has shape {values.shape}, expected ({sl.stop - sl.start},)"
                    )
                row = row.at[sl].set(values)
            return row

        histosys_lo, histosys_hi = self.histosys_lo, self.histosys_hi
        if cfg.histosys_keys:
            found = [by_sample.get(("histosys", n, s), []) for n, s in cfg.histosys_keys]
            starts = [nominal[sidx[s]] for _, s in cfg.histosys_keys]
            pairs = list(zip(starts, found, strict=True))
            histosys_lo = jnp.stack([assemble(a, p, "lo_data") for a, p in pairs])
            histosys_hi = jnp.stack([assemble(a, p, "hi_data") for a, p in pairs])
        normsys_lo, normsys_hi = self.normsys_lo, self.normsys_hi
        if cfg.normsys_keys:
            d = [normsys.get(k) for k in cfg.normsys_keys]
            normsys_lo = jnp.stack(
                [
                    self.normsys_lo[k] if x is None else jnp.asarray(x["lo"], dtype)
                    for k, x in enumerate(d)
                ]
            )
            normsys_hi = jnp.stack(
                [
                    self.normsys_hi[k] if x is None else jnp.asarray(x["hi"], dtype)
                    for k, x in enumerate(d)
                ]
            )
        staterror = self.staterror_uncrt
        if cfg.staterror_keys:
            zeros = jnp.zeros(nominal.shape[1], dtype=dtype)
            staterror = jnp.stack(
                [
                    assemble(zeros, by_sample.get(("staterror", n, s), []))
                    for n, s in cfg.staterror_keys
                ]
            )
        model = self.with_yields(
            nominal=nominal,
            histosys_lo=histosys_lo,
            histosys_hi=histosys_hi,
            normsys_lo=normsys_lo,
            normsys_hi=normsys_hi,
            staterror_uncrt=staterror,
        )
        try:  # concrete templates: their symmetrised variations (traced ones keep this model's)
            symmetric = _symmetric_parameters({"channels": channels})
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            return model
        return dataclasses.replace(model, config=dataclasses.replace(cfg, symmetric=symmetric))

    # ------------------------------------------------------------------ main model
    def expected_actualdata_by_sample(self, pars) -> jax.Array:
        """Expected yields per sample and bin, shape ``(samples, bins)``."""
        t = self.tables
        pars = jnp.asarray(pars, dtype=self.nominal.dtype)
        dtype = pars.dtype
        S, B = self.nominal.shape
        nominal = self.nominal
        if t.histosys_par.shape[0]:
            code = self.config.interpcode("histosys")
            weights = (
                interpolation.code4p_weights if code == "code4p" else interpolation.code0_weights
            )
            w_lo, w_nom, w_hi = (w[:, None] for w in weights(pars[t.histosys_par]))
            nom_e = nominal[t.histosys_sample]
            delta = w_lo * self.histosys_lo + w_nom * nom_e + w_hi * self.histosys_hi
            delta = jnp.where(t.histosys_mask, delta, 0.0)
            # sum entries into their samples with a (samples x entries) matrix: a matmul
            # differentiates and batches far better than a scatter on every backend
            nominal = nominal + jnp.asarray(_onehot(t.histosys_sample, S), dtype) @ delta
        factor = jnp.ones(S * B, dtype=dtype)
        if t.direct_table.shape[0]:
            pars_ext = jnp.concatenate([pars, jnp.ones(1, dtype=dtype)])
            for layer in t.direct_table:  # few layers: explicit products
                factor = factor * pars_ext[layer]
        if t.normsys_table.shape[0]:
            # normsys factors are positive: multiply them as a sum of logarithms (the
            # derivative of a long product is far more expensive than that of a sum)
            code = self.config.interpcode("normsys")
            alpha = pars[t.normsys_par]
            if code == "code4":
                f = interpolation.code4(alpha, self.normsys_lo, self.normsys_hi)
                logf = jnp.log(jnp.where(f > 0, f, _TINY))
            else:
                logf = interpolation.log_code1(alpha, self.normsys_lo, self.normsys_hi)
            onehot = t.normsys_onehot(logf.shape[0])
            if onehot is not None:
                # a (cells x entries) matmul: a gather here is an order of magnitude slower
                # on CPU under vmap (XLA fuses the interpolation into the gather)
                total = jnp.asarray(onehot, dtype) @ logf
            else:
                logf_ext = jnp.concatenate([logf, jnp.zeros(1, dtype=dtype)])
                total = jnp.sum(logf_ext[t.normsys_table], axis=0)
            factor = factor * jnp.exp(total)
        return nominal * factor.reshape(S, B)

    def expected_actualdata(self, pars) -> jax.Array:
        """Expected yields per bin (channels concatenated in ``config.channels`` order)."""
        return jnp.sum(self.expected_actualdata_by_sample(pars), axis=0)

    def mainlogpdf(self, maindata, pars) -> jax.Array:
        """Poisson log-likelihood of the main measurement, continued below a floor.

        Each bin's ``n log(lam) - lam - log(n!)`` is evaluated without cancellation, as
        ``n log(lam / n) - (lam - n)`` (:func:`_poisson_rel`, small near its maximum) plus the
        constant ``n log n - n - log(n!)`` (:func:`_poisson_const`, a Stirling series for large
        n): the value equals pyhf's, but it no longer moves in rounding steps of
        ``eps * n log n`` as the parameters change (with yields of 1e6 the naive sum of three
        terms of ~1e7 is noisy at 1e-9, which the fits took for progress).

        Below :data:`POISSON_FLOOR` the Poisson term ``n log(lam) - lam`` continues along its
        tangent at the floor, ``n (log(floor) + (lam - floor) / floor) - lam``: finite, smooth
        (C1), and ``-log L`` stays convex in every bin's yield. For an empty bin (n = 0) this
        is the Poisson term itself (``-lam``, as pyhf); with events observed it is a steep
        wall back to positive yields. A plain clip would leave a flat plateau instead, where
        a fit can stop in a spurious minimum (sbottom RegionA/500_400_60 at mu = 1: a bin at
        -17 with 3 events observed, 130 above pyhf's minimum in twice_nll). A negative "count"
        (Asimov data of a bin whose net yield is negative, from signed event weights) keeps the
        plain clip: its tangent would slope the wrong way and reward ever more negative yields.
        """
        n = jnp.asarray(maindata, dtype=self.nominal.dtype)
        return self._main_relative(n, pars) + self._main_constant(n)

    def _main_relative(self, n, pars) -> jax.Array:
        """:meth:`mainlogpdf` without its parameter-independent part (:meth:`_main_constant`):
        ``n log(lam / n) - (lam - n)`` per bin with events, ``n log(lam) - lam`` elsewhere."""
        return self._main_relative_at(n, self.expected_actualdata(pars))

    @staticmethod
    def _main_relative_at(n, lam) -> jax.Array:
        """:meth:`_main_relative` at the expected yields ``lam`` (elementwise per bin)."""
        n = jnp.asarray(n, dtype=lam.dtype)
        pos = n > 0
        ns = jnp.where(pos, n, 1.0)
        above = lam > POISSON_FLOOR
        floored = jnp.where(above, lam, POISSON_FLOOR)
        tangent = ns * (jnp.log(POISSON_FLOOR / ns) + (lam - POISSON_FLOOR) / POISSON_FLOOR)
        rel = jnp.where(above, _poisson_rel(ns, floored), tangent - (lam - ns))
        return jnp.sum(jnp.where(pos, rel, xlogy(n, floored) - lam))

    @staticmethod
    def _main_constant(n) -> jax.Array:
        """The part of :meth:`mainlogpdf` that depends on the counts only:
        ``n log n - n - log(n!)`` per bin with events, ``-log(n!)`` elsewhere."""
        pos = n > 0
        return jnp.sum(
            jnp.where(
                pos, _poisson_const(jnp.where(pos, n, 1.0)), -gammaln(jnp.where(pos, 1.0, n + 1.0))
            )
        )

    def n_clipped(self, pars) -> jax.Array:
        """Number of bins whose expected yield is below :data:`POISSON_FLOOR` at ``pars``."""
        return jnp.sum(self.expected_actualdata(pars) <= POISSON_FLOOR)

    # ------------------------------------------------------------------ constraints
    def _constraint_terms(self):
        """Widths (normal), rate factors and auxiliary data (poisson), in auxdata order.

        Staterror widths and shapesys factors are recomputed from the templates (so they
        follow a neural network's histograms); positions ``se_pos``/``ss_pos`` of the
        auxiliary vector take them, all others keep the static values.
        """
        t = self.tables
        sigma = self.aux_sigma_static
        factor = self.aux_factor_static
        data = self.aux_data_static
        dtype = self.nominal.dtype
        if t.staterror_entry_mod.shape[0]:
            nomsall = jnp.asarray(t.staterror_member, dtype) @ self.nominal  # (K, B)
            K = nomsall.shape[0]
            onehot = jnp.asarray(_onehot(t.staterror_entry_mod, K), dtype)
            safe = jnp.where(nomsall > 0, nomsall, 1.0)
            ratio2 = (self.staterror_uncrt / safe[t.staterror_entry_mod]) ** 2
            rel2 = jnp.where(nomsall > 0, onehot @ ratio2, 0.0)  # (K, B)
            r2 = rel2[t.se_mod, t.se_bin]  # one per auxiliary datum (unused where ~se_pos)
            dyn = jnp.sqrt(jnp.where(r2 > 0, r2, 1.0))
            sigma = jnp.where(t.se_pos, jnp.where(r2 > 0, dyn, 1.0), sigma)
        if self.ss_present:
            nom = self.nominal[t.ss_sample, t.ss_bin]
            unc = self.shapesys_uncrt
            ok = t.ss_pos & (nom > 0) & (unc > 0)
            fac = jnp.where(ok, nom**2 / jnp.where(ok, unc, 1.0) ** 2, 1.0)
            factor = jnp.where(t.ss_pos, fac, factor)
            data = jnp.where(t.ss_pos, fac, data)
        return sigma, factor, data

    @property
    def auxdata(self) -> jax.Array:
        """Auxiliary data of the constraint terms (depends on the templates for shapesys)."""
        return self._constraint_terms()[2]

    def expected_auxdata(self, pars) -> jax.Array:
        pars = jnp.asarray(pars, dtype=self.nominal.dtype)
        _, factor, _ = self._constraint_terms()
        theta = pars[self.tables.aux_par]
        return jnp.where(self.tables.aux_poisson, theta * factor, theta)

    def constraint_logpdf(self, auxdata, pars) -> jax.Array:
        """Gaussian and Poisson constraint terms (pyhf's continuous Poisson)."""
        if not self.tables.aux_par.shape[0]:
            return jnp.zeros((), dtype=self.nominal.dtype)
        aux = jnp.asarray(auxdata, dtype=self.nominal.dtype)
        return self._constraint_relative(aux, pars) + self._constraint_constant(aux)

    def _constraint_relative(self, aux, pars) -> jax.Array:
        """:meth:`constraint_logpdf` without its parameter-independent part
        (:meth:`_constraint_constant`): ``-z^2 / 2`` for Gaussian terms, the cancellation-free
        ``aux log(rate / aux) - (rate - aux)`` for Poisson terms with ``aux > 0`` (aux ~ 1e11
        for a shapesys of relative width 3e-6: the naive ``aux log(rate) - rate - log(aux!)``,
        three terms of ~3e12, moves in steps of ~1e-3)."""
        if not self.tables.aux_par.shape[0]:
            return jnp.zeros((), dtype=self.nominal.dtype)
        pars = jnp.asarray(pars, dtype=self.nominal.dtype)
        aux = jnp.asarray(aux, dtype=pars.dtype)
        sigma, factor, _ = self._constraint_terms()
        theta = pars[self.tables.aux_par]
        normal = -0.5 * ((aux - theta) / sigma) ** 2
        rate = theta * factor
        safe_rate = jnp.where(rate > 0, rate, POISSON_FLOOR)
        pos = aux > 0
        stable = _poisson_rel(jnp.where(pos, aux, 1.0), safe_rate)
        poisson = jnp.where(pos, stable, xlogy(aux, safe_rate) - safe_rate)
        return jnp.sum(jnp.where(self.tables.aux_poisson, poisson, normal))

    def _constraint_constant(self, aux) -> jax.Array:
        """The parameter-independent part of :meth:`constraint_logpdf`: ``-log(sigma) -
        log(2 pi) / 2`` per Gaussian term, ``aux log aux - aux - log(aux!)`` per Poisson term
        (``-log(aux!)`` for ``aux <= 0``)."""
        if not self.tables.aux_par.shape[0]:
            return jnp.zeros((), dtype=self.nominal.dtype)
        aux = jnp.asarray(aux, dtype=self.nominal.dtype)
        sigma, _, _ = self._constraint_terms()
        normal = -jnp.log(sigma) - _HALF_LOG_2PI
        pos = aux > 0
        poisson = jnp.where(
            pos, _poisson_const(jnp.where(pos, aux, 1.0)), -gammaln(jnp.where(pos, 1.0, aux + 1.0))
        )
        return jnp.sum(jnp.where(self.tables.aux_poisson, poisson, normal))

    # ------------------------------------------------------------------ full model
    def expected_data(self, pars, include_auxdata: bool = True) -> jax.Array:
        main = self.expected_actualdata(pars)
        if not include_auxdata:
            return main
        return jnp.concatenate([main, self.expected_auxdata(pars)])

    def logpdf(self, pars, data) -> jax.Array:
        """Log-likelihood of ``data`` (main data followed by auxiliary data), a scalar.

        pyhf returns a length-1 array; diffhep returns a scalar so it can be differentiated
        directly.
        """
        return self.logpdf_relative(pars, data) + self.logpdf_constant(data)

    def _split(self, data):
        data = jnp.asarray(data, dtype=self.nominal.dtype)
        nmain = self.config.nmaindata
        if data.shape[-1] != nmain + self.config.nauxdata:
            raise ValueError(
                f"data has {data.shape[-1]} entries, expected {nmain} main + "
                f"{self.config.nauxdata} auxiliary"
            )
        return data[:nmain], data[nmain:]

    def logpdf_relative(self, pars, data) -> jax.Array:
        """:meth:`logpdf` minus :meth:`logpdf_constant` (which does not depend on ``pars``):
        the objective of the fits. Its terms vanish where every expected count equals its
        observed one, so it carries no rounding noise of large constants (``log(n!)``), and
        the constants are computed once per fit instead of at every step."""
        main, aux = self._split(data)
        return self._main_relative(main, pars) + self._constraint_relative(aux, pars)

    def logpdf_constant(self, data) -> jax.Array:
        """The part of :meth:`logpdf` that does not depend on the parameters (it depends on
        the data and, through the constraint widths, on the templates)."""
        main, aux = self._split(data)
        return self._main_constant(main) + self._constraint_constant(aux)

    def twice_nll(self, pars, data) -> jax.Array:
        """-2 log L, the objective of every fit."""
        return -2.0 * self.logpdf(pars, data)


_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)
#: Above this count the constant of the Poisson term comes from Stirling's series (its first
#: omitted term, 1/(1188 n^9), is below 1e-21 there).
_STIRLING_FROM = 100.0


@jax.custom_jvp
def _poisson_rel(n, lam):
    """``n log(lam / n) - (lam - n)`` for ``n, lam > 0``: the Poisson log-likelihood minus its
    value at ``lam = n``, without cancellation (``log1p`` near ``lam = n``, where the naive
    ``n log lam - lam`` subtracts two large numbers).

    Its derivatives are given directly (``-(lam - n) / lam`` in ``lam``, ``log(lam / n)`` in
    ``n``): differentiating the two branches of the value made every Hessian-vector product
    of a fit ~25% more expensive (50-bin benchmark model)."""
    d = (lam - n) / n
    near = jnp.abs(d) < 0.5
    log_ratio = jnp.where(near, jnp.log1p(jnp.where(near, d, 0.0)), jnp.log(lam / n))
    return n * (log_ratio - d)


@_poisson_rel.defjvp
def _poisson_rel_jvp(primals, tangents):
    n, lam = primals
    dn, dlam = tangents
    return _poisson_rel(n, lam), jnp.log(lam / n) * dn - (lam - n) / lam * dlam


def _poisson_const(n):
    """``n log n - n - log Gamma(n + 1)`` for ``n > 0`` (the Poisson log-likelihood at its
    maximum): Stirling's series above :data:`_STIRLING_FROM`, where the three terms cancel to
    ``-log(2 pi n) / 2``, and the direct formula below."""
    big = n > _STIRLING_FROM
    nb = jnp.where(big, n, 2.0 * _STIRLING_FROM)
    inv = 1.0 / nb
    inv2 = inv * inv
    series = -0.5 * jnp.log(nb) - _HALF_LOG_2PI
    series = series - inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    ns = jnp.where(big, 1.0, n)
    direct = xlogy(ns, ns) - ns - gammaln(ns + 1.0)
    return jnp.where(big, series, direct)


def _symmetric_parameters(spec) -> tuple:
    """Names of the histosys/normsys parameters with at least one symmetrised variation
    (up and down shift the yields the same way: ``hi_data == lo_data``, or ``hi == lo`` for
    normsys, not nominal). Experiments symmetrise one-sided systematics (e.g. jet energy
    resolution) so; the likelihood is then (nearly) even in the parameter, with mirror-image
    minima at +-alpha, and a fit started at 0, where its gradient vanishes, may reach either
    (see :func:`diffhep.stats.fit.fit`)."""
    names = set()
    for channel in spec.get("channels", []):
        for sample in channel["samples"]:
            nominal = np.asarray(sample["data"], dtype=float)
            for m in sample.get("modifiers", []):
                if m["type"] == "histosys":
                    hi = np.asarray(m["data"]["hi_data"], dtype=float)
                    lo = np.asarray(m["data"]["lo_data"], dtype=float)
                    if np.array_equal(hi, lo) and not np.array_equal(hi, nominal):
                        names.add(m["name"])
                elif m["type"] == "normsys":
                    hi, lo = float(m["data"]["hi"]), float(m["data"]["lo"])
                    if hi == lo != 1.0:
                        names.add(m["name"])
    return tuple(sorted(names))
