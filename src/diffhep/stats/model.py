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

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import interpolation
from .build import build
from .channels import symmetric_parameters
from .channels import with_channels as _with_channels
from .poisson import _HALF_LOG_2PI, POISSON_FLOOR, _poisson_const, _poisson_rel, _special
from .structure import ModelConfig, Tables, _onehot, _per_aux, _scatter

__all__ = ["POISSON_FLOOR", "Model", "ModelConfig"]

_TINY = 1e-300


def _module(*values):
    """The array module of a computation on ``values``: ``jax.numpy`` under a JAX
    transformation (a traced value among them), numpy for an eager call on concrete values,
    which evaluates at once where ``jax.numpy`` compiles one program per operation and shape
    (the first eager ``logpdf`` of sbottom RegionA in a process: ~160 such compilations, ~5 s
    of CPU). The results are equal up to rounding of the elementary functions."""
    for leaf in jax.tree.leaves(values):
        if isinstance(leaf, jax.core.Tracer):
            return jnp
    return np


class Model(eqx.Module):
    """A HistFactory model whose templates are JAX arrays.

    Build it from a workspace (:meth:`diffhep.Workspace.model`) or a model spec
    (:meth:`Model.from_spec`); replace its templates with :meth:`with_yields`.

    The likelihood's methods (``logpdf``, ``expected_data``, ...) return JAX arrays under a
    JAX transformation (``jit``, ``grad``, ``vmap``); called eagerly on concrete values they
    evaluate with numpy and return numpy arrays and scalars (no XLA compilation per
    operation), equal up to rounding.
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
    # ``config.symmetric`` as a per-parameter mask (1.0 where symmetrised), always derived
    # from it (below): an array input of the compiled fits (their mirrored restart,
    # :mod:`diffhep.stats.restarts`), not a constant, so that workspaces that differ only in
    # which variations are symmetrised (5 of the 7 structures of sbottom RegionA's 217 signal
    # points) share one program. Floats, not bools: every leaf of a model stays inexact, so
    # ``jax.grad`` with respect to a model and tree maps over its leaves keep working. Set at
    # every construction from ``config`` (a value passed is replaced, so a model rebuilt with
    # another configuration, e.g. ``dataclasses.replace(model, config=...)``, stays in step);
    # a defaulted argument, not ``init=False``: equinox warns on derived float fields.
    symmetric_pars: np.ndarray | None = None

    def __post_init__(self):
        cfg = self.config
        mask = np.zeros(cfg.npars)
        if cfg.symmetric:
            names = set(cfg.symmetric)
            for name, (a, b) in zip(cfg.par_order, cfg.par_slices, strict=True):
                mask[a:b] = float(name in names)
        self.symmetric_pars = mask

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
            symmetric=symmetric_parameters(spec),
        )
        f = jnp.asarray
        return cls(
            nominal=f(b.nominal),
            histosys_lo=f(b.histosys_lo),
            histosys_hi=f(b.histosys_hi),
            normsys_lo=f(b.normsys_lo),
            normsys_hi=f(b.normsys_hi),
            staterror_uncrt=f(b.staterror_uncrt),
            shapesys_uncrt=jax.device_put(_scatter(b.ss_uncrt, b.ss_pos, len(b.aux_par), 0.0)),
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
        return _with_channels(self, channels)

    # ------------------------------------------------------------------ main model
    @np.errstate(all="ignore")  # numpy (an eager call): the branches not taken
    def expected_actualdata_by_sample(self, pars) -> jax.Array:
        """Expected yields per sample and bin, shape ``(samples, bins)``."""
        xp = _module(self, pars)
        t = self.tables
        dtype = self.nominal.dtype
        pars = xp.asarray(pars, dtype=dtype)
        S, B = self.nominal.shape
        nominal = xp.asarray(self.nominal)
        if t.histosys_par.shape[0]:
            code = self.config.interpcode("histosys")
            weights = (
                interpolation.code4p_weights if code == "code4p" else interpolation.code0_weights
            )
            w_lo, w_nom, w_hi = (w[:, None] for w in weights(pars[t.histosys_par], xp=xp))
            nom_e = nominal[t.histosys_sample]
            lo, hi = xp.asarray(self.histosys_lo), xp.asarray(self.histosys_hi)
            delta = w_lo * lo + w_nom * nom_e + w_hi * hi
            delta = xp.where(t.histosys_mask, delta, 0.0)
            # sum entries into their samples with a (samples x entries) matrix: a matmul
            # differentiates and batches far better than a scatter on every backend
            nominal = nominal + xp.asarray(_onehot(t.histosys_sample, S), dtype) @ delta
        factor = xp.ones(S * B, dtype=dtype)
        if t.direct_table.shape[0]:
            pars_ext = xp.concatenate([pars, xp.ones(1, dtype=dtype)])
            for layer in t.direct_table:  # few layers: explicit products
                factor = factor * pars_ext[layer]
        if t.normsys_table.shape[0]:
            # normsys factors are positive: multiply them as a sum of logarithms (the
            # derivative of a long product is far more expensive than that of a sum)
            code = self.config.interpcode("normsys")
            alpha = pars[t.normsys_par]
            lo, hi = xp.asarray(self.normsys_lo), xp.asarray(self.normsys_hi)
            if code == "code4":
                f = interpolation.code4(alpha, lo, hi, xp=xp)
                logf = xp.log(xp.where(f > 0, f, _TINY))
            else:
                logf = interpolation.log_code1(alpha, lo, hi, xp=xp)
            onehot = t.normsys_onehot(logf.shape[0])
            if onehot is not None:
                # a (cells x entries) matmul: a gather here is an order of magnitude slower
                # on CPU under vmap (XLA fuses the interpolation into the gather)
                total = xp.asarray(onehot, dtype) @ logf
            else:
                logf_ext = xp.concatenate([logf, xp.zeros(1, dtype=dtype)])
                total = xp.sum(logf_ext[t.normsys_table], axis=0)
            factor = factor * xp.exp(total)
        return nominal * factor.reshape(S, B)

    def expected_actualdata(self, pars) -> jax.Array:
        """Expected yields per bin (channels concatenated in ``config.channels`` order)."""
        by_sample = self.expected_actualdata_by_sample(pars)
        return _module(by_sample).sum(by_sample, axis=0)

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
        n = _module(self, maindata, pars).asarray(maindata, dtype=self.nominal.dtype)
        return self._main_relative(n, pars) + self._main_constant(n)

    def _main_relative(self, n, pars) -> jax.Array:
        """:meth:`mainlogpdf` without its parameter-independent part (:meth:`_main_constant`):
        ``n log(lam / n) - (lam - n)`` per bin with events, ``n log(lam) - lam`` elsewhere."""
        return self._main_relative_at(n, self.expected_actualdata(pars))

    @staticmethod
    def _main_relative_at(n, lam) -> jax.Array:
        """:meth:`_main_relative` at the expected yields ``lam`` (elementwise per bin)."""
        xp = _module(n, lam)
        n = xp.asarray(n, dtype=lam.dtype)
        pos = n > 0
        ns = xp.where(pos, n, 1.0)
        above = lam > POISSON_FLOOR
        floored = xp.where(above, lam, POISSON_FLOOR)
        tangent = ns * (xp.log(POISSON_FLOOR / ns) + (lam - POISSON_FLOOR) / POISSON_FLOOR)
        with np.errstate(all="ignore"):  # numpy (eager): the branches not taken
            rel = xp.where(above, _poisson_rel(ns, floored, xp=xp), tangent - (lam - ns))
            xlogy, _ = _special(xp)
            return xp.sum(xp.where(pos, rel, xlogy(n, floored) - lam))

    @staticmethod
    def _main_constant(n) -> jax.Array:
        """The part of :meth:`mainlogpdf` that depends on the counts only:
        ``n log n - n - log(n!)`` per bin with events, ``-log(n!)`` elsewhere."""
        xp = _module(n)
        pos = n > 0
        const = _poisson_const(xp.where(pos, n, 1.0), xp=xp)
        _, gammaln = _special(xp)
        return xp.sum(xp.where(pos, const, -gammaln(xp.where(pos, 1.0, n + 1.0))))

    def n_clipped(self, pars) -> jax.Array:
        """Number of bins whose expected yield is below :data:`POISSON_FLOOR` at ``pars``."""
        lam = self.expected_actualdata(pars)
        return _module(lam).sum(lam <= POISSON_FLOOR)

    # ------------------------------------------------------------------ constraints
    def _constraint_terms(self):
        """Widths (normal), rate factors and auxiliary data (poisson), in auxdata order.

        Staterror widths and shapesys factors are recomputed from the templates (so they
        follow a neural network's histograms); positions ``se_pos``/``ss_pos`` of the
        auxiliary vector take them, all others keep the static values.
        """
        xp = _module(self)
        t = self.tables
        sigma = xp.asarray(self.aux_sigma_static)
        factor = xp.asarray(self.aux_factor_static)
        data = xp.asarray(self.aux_data_static)
        dtype = self.nominal.dtype
        nominal = xp.asarray(self.nominal)
        if t.staterror_entry_mod.shape[0]:
            nomsall = xp.asarray(t.staterror_member, dtype) @ nominal  # (K, B)
            K = nomsall.shape[0]
            onehot = xp.asarray(_onehot(t.staterror_entry_mod, K), dtype)
            safe = xp.where(nomsall > 0, nomsall, 1.0)
            ratio2 = (xp.asarray(self.staterror_uncrt) / safe[t.staterror_entry_mod]) ** 2
            rel2 = xp.where(nomsall > 0, onehot @ ratio2, 0.0)  # (K, B)
            r2 = rel2[t.se_mod, t.se_bin]  # one per auxiliary datum (unused where ~se_pos)
            dyn = xp.sqrt(xp.where(r2 > 0, r2, 1.0))
            sigma = xp.where(t.se_pos, xp.where(r2 > 0, dyn, 1.0), sigma)
        if self.ss_present:
            nom = nominal[t.ss_sample, t.ss_bin]
            unc = xp.asarray(self.shapesys_uncrt)
            ok = t.ss_pos & (nom > 0) & (unc > 0)
            fac = xp.where(ok, nom**2 / xp.where(ok, unc, 1.0) ** 2, 1.0)
            factor = xp.where(t.ss_pos, fac, factor)
            data = xp.where(t.ss_pos, fac, data)
        return sigma, factor, data

    @property
    def auxdata(self) -> jax.Array:
        """Auxiliary data of the constraint terms (depends on the templates for shapesys)."""
        return self._constraint_terms()[2]

    def expected_auxdata(self, pars) -> jax.Array:
        xp = _module(self, pars)
        pars = xp.asarray(pars, dtype=self.nominal.dtype)
        _, factor, _ = self._constraint_terms()
        theta = pars[self.tables.aux_par]
        return xp.where(self.tables.aux_poisson, theta * factor, theta)

    def constraint_logpdf(self, auxdata, pars) -> jax.Array:
        """Gaussian and Poisson constraint terms (pyhf's continuous Poisson)."""
        xp = _module(self, auxdata, pars)
        if not self.tables.aux_par.shape[0]:
            return xp.zeros((), dtype=self.nominal.dtype)
        aux = xp.asarray(auxdata, dtype=self.nominal.dtype)
        return self._constraint_relative(aux, pars) + self._constraint_constant(aux)

    def _constraint_relative(self, aux, pars) -> jax.Array:
        """:meth:`constraint_logpdf` without its parameter-independent part
        (:meth:`_constraint_constant`): ``-z^2 / 2`` for Gaussian terms, the cancellation-free
        ``aux log(rate / aux) - (rate - aux)`` for Poisson terms with ``aux > 0`` (aux ~ 1e11
        for a shapesys of relative width 3e-6: the naive ``aux log(rate) - rate - log(aux!)``,
        three terms of ~3e12, moves in steps of ~1e-3)."""
        xp = _module(self, aux, pars)
        if not self.tables.aux_par.shape[0]:
            return xp.zeros((), dtype=self.nominal.dtype)
        pars = xp.asarray(pars, dtype=self.nominal.dtype)
        return xp.sum(self._constraint_relative_terms(aux, pars[self.tables.aux_par]))

    def _constraint_relative_terms(self, aux, theta) -> jax.Array:
        """The terms of :meth:`_constraint_relative`, one per auxiliary datum, at the values
        ``theta`` of their parameters (``pars[tables.aux_par]``): each term depends on its
        own entry of ``theta`` only."""
        xp = _module(self, aux, theta)
        theta = xp.asarray(theta, dtype=self.nominal.dtype)
        aux = xp.asarray(aux, dtype=theta.dtype)
        sigma, factor, _ = self._constraint_terms()
        normal = -0.5 * ((aux - theta) / sigma) ** 2
        rate = theta * factor
        safe_rate = xp.where(rate > 0, rate, POISSON_FLOOR)
        pos = aux > 0
        with np.errstate(all="ignore"):  # numpy (eager): the branches not taken
            stable = _poisson_rel(xp.where(pos, aux, 1.0), safe_rate, xp=xp)
            xlogy, _ = _special(xp)
            poisson = xp.where(pos, stable, xlogy(aux, safe_rate) - safe_rate)
        return xp.where(self.tables.aux_poisson, poisson, normal)

    def _constraint_constant(self, aux) -> jax.Array:
        """The parameter-independent part of :meth:`constraint_logpdf`: ``-log(sigma) -
        log(2 pi) / 2`` per Gaussian term, ``aux log aux - aux - log(aux!)`` per Poisson term
        (``-log(aux!)`` for ``aux <= 0``)."""
        xp = _module(self, aux)
        if not self.tables.aux_par.shape[0]:
            return xp.zeros((), dtype=self.nominal.dtype)
        aux = xp.asarray(aux, dtype=self.nominal.dtype)
        sigma, _, _ = self._constraint_terms()
        with np.errstate(all="ignore"):  # numpy (eager): the branches not taken
            normal = -xp.log(sigma) - _HALF_LOG_2PI
            pos = aux > 0
            const = _poisson_const(xp.where(pos, aux, 1.0), xp=xp)
            _, gammaln = _special(xp)
            poisson = xp.where(pos, const, -gammaln(xp.where(pos, 1.0, aux + 1.0)))
        return xp.sum(xp.where(self.tables.aux_poisson, poisson, normal))

    # ------------------------------------------------------------------ full model
    def expected_data(self, pars, include_auxdata: bool = True) -> jax.Array:
        main = self.expected_actualdata(pars)
        if not include_auxdata:
            return main
        aux = self.expected_auxdata(pars)
        return _module(main, aux).concatenate([main, aux])

    def logpdf(self, pars, data) -> jax.Array:
        """Log-likelihood of ``data`` (main data followed by auxiliary data), a scalar.

        pyhf returns a length-1 array; diffhep returns a scalar so it can be differentiated
        directly.
        """
        return self.logpdf_relative(pars, data) + self.logpdf_constant(data)

    def _split(self, data):
        data = _module(self, data).asarray(data, dtype=self.nominal.dtype)
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
