"""Which parameters can give a HistFactory likelihood several minima (static masks and
template-based measures of a model), for the restarts of :mod:`diffhep.stats.restarts`.

A fit can end in a local minimum where an interpolation has a kink at alpha = 0 (normsys
code1, histosys code0), where a variation is symmetrised, or where a parameter's up and down
variations move a yield the same way (an even response): :func:`kinked`, :func:`mirrored`,
:func:`even_response`, with the size of the even part (:func:`even_size`), and where factors
multiply a rate (:func:`products`, :func:`unconstrained_products`). The masks of the
configuration are cached numpy arrays; those of the templates are JAX arrays computed under
``jit`` (they follow templates that change in training).
"""

from __future__ import annotations

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

from . import interpolation
from .model import Model

__all__ = [
    "even_response",
    "even_size",
    "even_vertex",
    "global_shift",
    "interpolated",
    "kinked",
    "mirrored",
    "plateau",
    "plateau_candidates",
    "products",
    "unconstrained_products",
]

#: A code4 normsys entry is on a plateau of its polynomial where the slope of its log-factor
#: at the parameter's value is below this fraction of its mean slope over [-1, 1]
#: (:func:`plateau`)
PLATEAU = 0.4
#: ... if its mean slope moves the nominal counts of its bins by at least this many Poisson
#: standard deviations per unit of the parameter (summed in quadrature over the bins)
PLATEAU_SIZE = 1.0


@cache
def kinked(config) -> np.ndarray:
    """Parameters of interpolations with a kink at alpha = 0 (normsys code1, histosys code0),
    from every modifier of each parameter: a parameter of a histosys and a normsys modifier
    (45 of sbottom RegionC's 66 parameters) has the kink of either (its ``par_modtypes``
    entry names one of the two)."""
    out = np.zeros(config.npars, dtype=bool)
    codes = dict(config.modifier_settings)
    kinked = {t for t, code in (("normsys", "code1"), ("histosys", "code0")) if codes[t] == code}
    names = {name for name, modtype in config.modifiers if modtype in kinked}
    for (a, b), name in zip(config.par_slices, config.par_order, strict=True):
        out[a:b] = name in names
    return out


def mirrored(model: Model) -> jax.Array:
    """Parameters whose likelihood can have a local minimum on either side of alpha = 0:
    interpolations with a kink there (:func:`kinked`) and symmetrised variations
    (``config.symmetric``: an even response, mirror-image minima). The symmetrised ones are
    an array of the model (``Model.symmetric_pars``), not a constant of the compiled fit;
    they are histosys/normsys parameters, so the static candidates of :func:`restarts._restarts`
    (``kinked | interpolated``) include them."""
    return jnp.asarray(kinked(model.config)) | (jnp.asarray(model.symmetric_pars) > 0.5)


@cache
def global_shift(config) -> np.ndarray:
    """Parameters reflected through the start by the third fit of :func:`restarts.search`:
    histosys/normsys parameters and normfactors (not the per-bin gammas, whose reflection
    through 1 would often land at their bound 0, nor lumi)."""
    out = np.zeros(config.npars, dtype=bool)
    for (a, b), modtype in zip(config.par_slices, config.par_modtypes, strict=True):
        out[a:b] = modtype in ("histosys", "normsys", "normfactor")
    return out


def products(model: Model) -> bool:
    """Whether some sample's rate in some bin is multiplied by two or more parameters
    (normfactor, lumi, staterror, shapesys, shapefactor: ``Tables.direct_table``, whose
    entries equal to ``npars`` multiply by 1): a product of parameters, which makes
    ``-log L`` non-convex (:func:`restarts.may_restart`). Static, from the tables."""
    table = model.tables.direct_table
    return bool(np.any(np.sum(table < model.config.npars, axis=0) > 1))


def unconstrained_products(model: Model, fixed=None):
    """Whether some sample's rate in some bin is multiplied by two or more unconstrained
    factors (normfactor, shapefactor: no constraint term pulls them back), of those not
    ``fixed`` (a mask, may be traced; None: static, a bool from the tables alone). Their
    product's level sets are hyperbolas, which a sum of samples shared by the channels can
    cross twice: two minima a barrier apart, with no interpolated parameter far out nor a
    strained fit to tell (:func:`starts.inverse_start`)."""
    cfg = model.config
    free = np.zeros(cfg.npars + 1, dtype=bool)  # the last entry: the tables' "times 1"
    for (a, b), modtype in zip(cfg.par_slices, cfg.par_modtypes, strict=True):
        free[a:b] = modtype in ("normfactor", "shapefactor")
    table = model.tables.direct_table
    if fixed is None:
        return bool(np.any(np.sum(free[table], axis=0) > 1))
    free = jnp.asarray(free) & ~jnp.concatenate([jnp.asarray(fixed), jnp.ones(1, bool)])
    return jnp.any(jnp.sum(free[table], axis=0) > 1)


@cache
def interpolated(config) -> np.ndarray:
    """Parameters of histosys and normsys modifiers (candidates for :func:`even_response`)."""
    out = np.zeros(config.npars, dtype=bool)
    for (a, b), modtype in zip(config.par_slices, config.par_modtypes, strict=True):
        out[a:b] = modtype in ("histosys", "normsys")
    return out


def even_response(model: Model) -> jax.Array:
    """Per parameter, whether its up and down variations move some yield the same way (both
    above or both below the nominal in a bin of a sample, or normsys ``hi`` and ``lo`` on the
    same side of 1): the response then has an even part, and the profile can have two minima
    in the parameter whatever the interpolation code (pyhf's ``multichan_coupledhistosys``
    at mu = 1, code4p: minima at -0.45 and +0.59). Computed from the templates, so it follows
    templates that change (training) and runs under ``jit``."""
    t = model.tables
    out = jnp.zeros(model.config.npars, bool)
    if t.histosys_par.shape[0]:
        nom = model.nominal[t.histosys_sample]
        same = (model.histosys_hi - nom) * (model.histosys_lo - nom) > 0
        out = out.at[t.histosys_par].max(jnp.any(same & t.histosys_mask, axis=1))
    if t.normsys_par.shape[0]:
        same = (model.normsys_hi - 1.0) * (model.normsys_lo - 1.0) > 0
        out = out.at[t.normsys_par].max(same)
    return out


def even_size(model: Model) -> jax.Array:
    """Per parameter, the size of the part of its response that is not monotone: the +-1
    sigma variations of a histosys/normsys parameter change the nominal counts ``nom`` of each
    bin (all samples) by ``up - nom`` and ``down - nom``; in the bins where both move the
    counts the same way, their even part ``(up + down) / 2 - nom``, in units of
    ``sqrt(max(nom, 1))``, summed in quadrature over the bins (0 for other parameters and for
    monotone responses, however asymmetric). From the templates (the other parameters at
    their nominal values, normfactors at 1): a few operations per (parameter, cell), no pass
    through the model.

    A flip restart runs in every fit for an eligible parameter whose even size is at least
    :data:`starts.EVEN_FLIP` (:func:`restarts._restarts`): such a parameter can hold a
    minimum on each side of its start at any distance from it (two values of it give the same
    counts), their barrier raised by the even part; below one standard deviation of the
    counts, the even part raises no barrier that the fit does not cross on its own. Measured:
    adversarial seed 1015 draw 1 at mu = 1 (ns0: 16.6; the fit ended at ns0 = -0.67, -2lnL
    2313.653, the flip reaches +0.84 at 2312.366) and seed 1059 draw 1, free fit (hs1: 143;
    +0.245 at 2223.781, the flip -0.342 at 2222.521); sbottom RegionA: at most 0.48 in the
    background (JET_JvtEfficiency), 1.38 with a signal's variations: 14 more flip attempts
    over 5 of its 217 signal points, its ``exclusion`` unchanged (14.8-16.8 CPU-s against
    14.7-17.2, the same output; docs/benchmarks.md). A monotone asymmetric variation of a
    large sample (+5%/-3% of 10^6 events: 10^4 / 10^3 = 10 standard deviations of even part)
    counts 0: one value of the parameter gives each count. The flip starts at the other side
    (at least 1 from the start) and at the mirror image through :func:`even_vertex`.
    """
    up, down, counts = _responses(model)
    # a bin whose counts both variations move the same way (a response that is not monotone)
    even = jnp.where(up * down > 0, 0.5 * (up + down), 0.0)
    return jnp.sqrt(jnp.sum(even**2 / jnp.maximum(counts, 1.0), axis=1))


def even_vertex(model: Model) -> jax.Array:
    """Per parameter, where its response turns: the parabola ``a alpha + b alpha^2`` through a
    histosys/normsys parameter's changes of each bin's counts at alpha = -1, 0, +1 (``a``,
    ``b``: the odd and even parts of its +-1 sigma changes, :func:`even_size`) has the same
    value at ``alpha`` and at its mirror image ``2 v - alpha`` through its vertex
    ``v = -a / (2 b)``; over the bins, ``v`` is the least-squares one (weights
    ``1 / max(counts, 1)``, Poisson). 0 where the response has no even part. The
    interpolation's own response is that parabola only approximately (code4p's quadratic
    term at 0 is 15/8 of the parabola's), so the mirror image is a start in the other basin,
    not its minimum.

    Two values of a parameter with a large even response give about the same counts, so a
    second minimum can lie near the mirror image of the first, the other parameters where
    they are (the constraint term differs): :func:`restarts._restarts` starts a flip there.
    Measured: adversarial seed 1078 draw 4 at mu = 0, hs1 (even size 449, vertex -0.035):
    the fit ends at +0.327 (-2lnL 5001.91); from -1 (the flip to the other side) it returns
    there, from the mirror image -0.397 it reaches -0.438 (4993.99, the 20-start reference's
    minimum) in 16 Newton steps.

    Example:
        >>> import diffhep
        >>> diffhep.enable_x64()
        >>> spec = {"channels": [{"name": "c", "samples": [{"name": "b", "data": [100.0],
        ...     "modifiers": [{"name": "mu", "type": "normfactor", "data": None},
        ...                   {"name": "h", "type": "histosys",
        ...                    "data": {"hi_data": [130.0], "lo_data": [110.0]}}]}]}],
        ...     "observations": [{"name": "c", "data": [100.0]}],
        ...     "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        ...     "version": "1.0.0"}
        >>> model = diffhep.Workspace(spec).model()
        >>> float(even_vertex(model)[model.config.par_slice("h")][0])  # -10 / (2 * 20)
        -0.25
    """
    up, down, counts = _responses(model)
    a, b = 0.5 * (up - down), 0.5 * (up + down)
    w = 1.0 / jnp.maximum(counts, 1.0)
    bb = jnp.sum(b * b * w, axis=1)
    return jnp.where(bb > 0, -jnp.sum(a * b * w, axis=1) / (2.0 * jnp.where(bb > 0, bb, 1.0)), 0.0)


def _responses(model: Model):
    """The change of each bin's counts (all samples) when one histosys/normsys parameter alone
    is at +1 and at -1 sigma (``(npars, nbins)`` each; 0 for other parameters), and the
    nominal counts: from the templates (the other parameters at their nominal values,
    normfactors at 1), a few operations per (parameter, cell), no pass through the model."""
    t = model.tables
    S, B = model.nominal.shape
    nom = model.nominal.reshape(S * B)
    rates = []
    for hs, ns in ((model.histosys_hi, model.normsys_hi), (model.histosys_lo, model.normsys_lo)):
        # parameter j alone at +1 (hi) or -1 (lo): each sample's counts plus j's histosys
        # changes, times j's normsys factors, per (parameter, cell)
        add = jnp.zeros((model.config.npars, S * B), nom.dtype)
        if t.histosys_par.shape[0]:
            cells = t.histosys_sample[:, None] * B + np.arange(B)
            change = jnp.where(t.histosys_mask, hs - model.nominal[t.histosys_sample], 0.0)
            add = add.at[t.histosys_par[:, None], cells].add(change)
        log_f = jnp.zeros((model.config.npars, S * B), nom.dtype)
        if t.normsys_par.shape[0]:
            layer, cell = np.nonzero(t.normsys_table < t.normsys_par.shape[0])
            entry = t.normsys_table[layer, cell]
            log_f = log_f.at[t.normsys_par[entry], cell].add(jnp.log(ns[entry]))
        rates.append((nom + add) * jnp.exp(log_f))
    counts = jnp.sum(model.nominal, axis=0)
    up, down = (r.reshape(-1, S, B).sum(axis=1) - counts for r in rates)
    return up, down, counts


@cache
def plateau_candidates(config) -> np.ndarray:
    """Parameters of code4 normsys modifiers (the candidates of :func:`plateau`; none where
    normsys is interpolated otherwise)."""
    out = np.zeros(config.npars, dtype=bool)
    if config.interpcode("normsys") != "code4":
        return out
    names = {name for name, modtype in config.modifiers if modtype == "normsys"}
    for (a, b), name in zip(config.par_slices, config.par_order, strict=True):
        out[a:b] = name in names
    return out


def plateau(model: Model):
    """``on(x)``: per parameter, whether its value in ``x`` lies on a plateau of the
    polynomial of one of its code4 normsys entries: inside (-1, 1), where the slope of the
    entry's log-factor is below :data:`PLATEAU` times its mean slope ``(log hi - log lo) / 2``
    (entries with ``hi`` and ``lo`` on either side of 1 only: the others have an even
    response, :func:`even_response`), for entries whose mean slope moves the nominal counts
    by at least :data:`PLATEAU_SIZE` standard deviations (``|mean| nom_c / sqrt(counts_b)``
    of each cell ``c`` of the entry in bin ``b``, summed in quadrature, as
    :func:`even_size`; the others' turns lie far beyond the constraint's pull). ``None``
    where no parameter is a candidate (:func:`plateau_candidates`, static). The polynomials'
    coefficients and the sizes are computed here, once per fit, from the templates (traced
    under ``jit``); ``on`` is a few operations per entry.

    code4's polynomial (continuous up to its second derivative at +-1) flattens near -0.58 or
    +0.57 when ``hi`` and ``lo`` are asymmetric, on the side of the smaller variation: hi
    1.249, lo 0.967 has slope 0 at -0.58 (its log-factor's slope 0.06 of its mean at -0.43);
    hi 1.061, lo 0.811 a slope 0.26 of its mean at +0.57. There the profile of ``-log L`` can
    turn and hold a second minimum behind the plateau (:func:`starts.turn_start`): the h5-fuzz
    cases of tests/test_fuzz_regressions.py end at -0.433 (ratio 0.062, size 3.3) and +0.659
    (0.277, size 3.4). The 50-bin benchmark model's fits have no entry below 0.99; sbottom
    RegionA's fits at mu = 1 have some at 0.05-0.39 on 11 of 25 signal points (SigRad,
    FT_EFF_extrapolation_from_charm, JET_GroupedNP_3, JET_JvtEfficiency: +0.2% to +3.7%
    variations), whose profile fits found no turn and cost 6 Newton steps per fit without
    the size gate (1114 -> 1250 steps over the 25 points' hypotests, the same CLs); no entry
    of sbottom RegionA has a size above 0.28: its fits pay this test, not the turns.
    """
    t = model.tables
    if not t.normsys_par.shape[0] or not plateau_candidates(model.config).any():
        return None
    lo, hi = model.normsys_lo, model.normsys_hi
    c = interpolation.code4_coefficients(lo, hi)
    dc = c * jnp.arange(1.0, 7.0, dtype=c.dtype)[:, None]
    mean = 0.5 * (jnp.log(jnp.where(hi > 0, hi, 1.0)) - jnp.log(jnp.where(lo > 0, lo, 1.0)))
    S, B = model.nominal.shape
    nom = model.nominal.reshape(S * B)
    counts = jnp.tile(jnp.sum(model.nominal, axis=0), S)  # each cell's bin (sample-major)
    layer, cell = np.nonzero(t.normsys_table < t.normsys_par.shape[0])
    entry = t.normsys_table[layer, cell]
    per_cell = nom[cell] ** 2 / jnp.maximum(counts[cell], 1.0)
    big = mean * mean * jnp.zeros(lo.shape, nom.dtype).at[entry].add(per_cell) >= PLATEAU_SIZE**2
    candidate = big & ((hi - 1.0) * (lo - 1.0) < 0)  # monotone (not an even response)
    par = t.normsys_par
    npars = model.config.npars

    def on(x):
        a = x[par]
        f, df = 1.0 + a * _horner(c, a), _horner(dc, a)
        slope = df / jnp.where(f > 0, f, 1.0)
        # the slope over the mean below PLATEAU, for either sign of the mean
        flat = candidate & (jnp.abs(a) < 1.0) & (f > 0) & (slope * mean < PLATEAU * mean * mean)
        return jnp.zeros(npars, bool).at[par].max(flat)

    return on


def _horner(c, a):
    """``c[0] + a (c[1] + ... + a c[5])``."""
    out = c[5]
    for i in range(4, -1, -1):
        out = c[i] + a * out
    return out
