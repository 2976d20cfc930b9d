"""Toy-based hypothesis tests: CLs and discovery p-values from pseudo-experiments, as pyhf's
``hypotest(..., calctype="toybased")`` (``pyhf.infer.calculators.ToyCalculator``) defines them.

For a tested POI value ``mu`` and test statistic ``qtilde``/``q`` (``q0``: discovery):

- the toys of each hypothesis are drawn from the model's pdf at the parameters of a fit to
  the observed data with the POI fixed: at ``mu`` ("signal + background"; ``q0``: mu = 0) and
  at 0 ("background only"; ``q0``: mu = 1). A toy is the main data (Poisson at the expected
  yields) and the auxiliary data of every constraint term (Gaussian around the parameter
  with its width, Poisson with rate parameter x factor for shapesys), pyhf's ``make_pdf``;
- every toy's test statistic at ``mu`` comes from two fits (POI fixed, POI free), as for the
  observed data (:mod:`diffhep.stats.hypotest`); the fixed fit is skipped where the free
  fit's muhat already makes the statistic 0 (``qtilde``/``q``: muhat > mu; ``q0``:
  muhat < 0), and a free fit that ends above the fixed one runs again from the fixed fit's
  best fit (a toy whose free fit still ends above it is not converged; the fixed fit being
  skipped where muhat > mu, a free fit that missed there is not seen). The fits start from
  the parameters the toys were generated with (pyhf starts
  from the suggested init; the minimum is the same, it is found in fewer steps); their
  search for several minima also starts from, reflects through and judges its flips from
  the toy's own auxiliary data (:func:`aux_centre`);
- p-values count toys: ``CLsb = P(q_sb >= q_obs)``, ``CLb = P(q_b >= q_obs)``, ``CLs =
  CLsb / CLb``; the expected band takes the same three p-values at every background-only
  toy's test statistic and their percentiles at the normal quantiles of -2..2 sigma
  (2.275, 15.87, 50, 84.13, 97.72 %, linear interpolation: pyhf's ``expected_pvalues``).
  For ``q0`` the p-value is ``CLsb`` (p0), its band ``CLsb`` of the mu = 1 toys;
- toy ``i`` of a hypothesis uses the key ``fold_in(fold_in(PRNGKey(seed), hypothesis), i)``:
  results do not depend on how the toys are cut into chunks, and runs of one seed over
  disjoint toy ranges (``first``) merge into exactly the run over their union;
- toys run in chunks of ``chunk`` (one compiled shape, memory flat in the number of toys),
  ``batch`` of them at a time under ``vmap``.

Non-converged toy fits are kept (their test statistic is the one at the fit's last point,
clipped at 0) and counted (``ToyResult.nonconverged``): dropping them would bias the
distributions towards the easy toys. pyhf raises ``FailedMinimization`` on the first one.
A toy counts the fits its statistic uses: where the fixed-POI fit is skipped (the statistic
is 0 whatever it gives) only the free fit's convergence counts, as in files written since
that change (earlier ``--save-toys`` files, with the same digest, counted both fits). Files
written before the free fit's repair (2026-12-07) have the same digest too: where a toy's free
fit had missed, their statistic differs (``merge`` does not tell them apart).

The samples, their p-values and the ``--save-toys`` files are :mod:`diffhep.stats.toy_results`
(:class:`ToyResult`, :func:`pvalue`, :func:`load`, :func:`merge` are importable from here).

Example (``toys(1.0, model, data, ntoys=10_000, seed=1)`` runs a test; its p-values count
toys as here):
    >>> from diffhep.stats import toys
    >>> float(toys.pvalue([0.0, 0.5, 1.0, 2.0], 1.0))
    0.5
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DiffhepError, FitError
from .fit import DEFAULT_MAX_STEPS, DEFAULT_TOL, fit_bounded, fit_defaults, poi_index
from .hypotest import (
    _empty_fit,
    _keep,
    _missed,
    _profile,
    _repair_start,
    _skipped,
    _stat_from_fits,
)
from .model import Model
from .numerics import branch

# the samples and their p-values (stats.toy_results), importable from here as before
from .toy_results import (
    FORMAT,
    MERGE_KEYS,
    NORMAL_PERCENTILES,
    TIE_RTOL,
    ToyResult,
    load,
    merge,
    pvalue,
)

__all__ = [
    "CHUNK",
    "FORMAT",
    "MAX_BATCH",
    "MERGE_KEYS",
    "NORMAL_PERCENTILES",
    "TIE_RTOL",
    "ToyResult",
    "aux_centre",
    "default_batch",
    "load",
    "merge",
    "model_digest",
    "pvalue",
    "sample",
    "toys",
]

#: Toys per compiled call (a smaller run uses the next power of two).
CHUNK = 256
#: Largest number of toys fitted at a time under ``vmap`` (see :func:`default_batch`).
MAX_BATCH = 64
#: Floats of Hessian work per vmapped batch (:func:`default_batch`).
_BATCH_WORK = 32768
TEST_STATS = ("qtilde", "q", "q0")
_HYPOTHESES = ("sb", "b")


# --------------------------------------------------------------------------- sampling
def sample(model: Model, pars, key) -> jax.Array:
    """One toy: main data ~ Poisson(expected yields), auxiliary data ~ the constraint terms
    (Gaussian(parameter, width); Poisson(parameter x factor) for shapesys), at ``pars``."""
    pars = jnp.asarray(pars, dtype=model.nominal.dtype)
    kmain, kaux = jax.random.split(key)
    lam = jnp.clip(model.expected_actualdata(pars), 0.0)
    main = jax.random.poisson(kmain, lam, dtype=jnp.int64 if lam.dtype == jnp.float64 else None)
    if not model.config.nauxdata:
        return main.astype(lam.dtype)
    sigma, factor, _ = model._constraint_terms()
    theta = pars[model.tables.aux_par]
    kn, kp = jax.random.split(kaux)
    normal = theta + sigma * jax.random.normal(kn, theta.shape, dtype=lam.dtype)
    rate = jnp.clip(theta * factor, 0.0)
    poisson = jax.random.poisson(kp, rate, dtype=main.dtype).astype(lam.dtype)
    aux = jnp.where(model.tables.aux_poisson, poisson, normal)
    return jnp.concatenate([main.astype(lam.dtype), aux])


def aux_centre(model: Model, pars, data, lower, upper, fixed) -> jax.Array:
    """Where a toy's constraint terms pull the parameters: ``pars`` with every constrained
    parameter at its auxiliary datum (Gaussian) or datum / factor (Poisson, shapesys),
    clipped to the bounds; fixed and unconstrained parameters keep ``pars``.

    A toy's minimum lies near there, not at the generating ``pars`` (the auxiliary data
    scatter by one width around them): judged from ``pars``, the restart search of
    :mod:`diffhep.stats.restarts` found every toy's fit far out and flipped ~8 parameters
    per fit (sbottom RegionA, ~60 Newton steps per fit); judged from here it runs ~30, and
    starting from here finds lower minima the search from ``pars`` missed (36 of 2048 fits,
    docs/benchmarks.md).
    """
    nmain = model.config.nmaindata
    if not model.config.nauxdata:
        return pars
    _, factor, _ = model._constraint_terms()
    aux = data[nmain:]
    t = model.tables
    centre = jnp.where(t.aux_poisson, aux / jnp.where(factor > 0, factor, 1.0), aux)
    x = jnp.clip(pars.at[t.aux_par].set(centre), lower, upper)
    return jnp.where(fixed, pars, x)


def toy_keys(seed: int, hypothesis: int, indices) -> jax.Array:
    """The keys of toys ``indices`` of one hypothesis (0: signal + background, 1: background
    only) of a seeded run."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), hypothesis)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def default_batch(model: Model) -> int:
    """Toys fitted at a time under ``vmap``: as many as keep a Newton step's Hessian work
    (directions x (histosys + normsys entries + samples) x bins) within ~32k floats.

    Measured (2 CPUs): on a 2-bin model 64 toys at a time are 5x faster than one by one (3-4x
    again with restart fits in every fit: 256 toys 0.01 s vs 0.03-0.04 s in a plain loop,
    load 5.6); on sbottom RegionA (59 Hessian directions, 428 histosys entries) 8 at a time
    are 1.5x slower than one by one (memory-bound, and a batched Newton loop runs until its
    slowest toy converges), so it gets 1: a plain loop, where each fit runs only the restarts
    it needs.
    """
    from .uncertainties import structure_of

    st = structure_of(model.config)
    gidx, table = st.arrays()
    ndirs = len(gidx) + table.shape[1]
    entries = model.histosys_lo.shape[0] + model.normsys_lo.shape[0] + model.nominal.shape[0]
    work = max(1, ndirs * entries * model.nominal.shape[1])
    return int(min(MAX_BATCH, 1 << max(0, (_BATCH_WORK // work).bit_length() - 1)))


def _toy_statistic(model, pars, data, centre, mu, lower, upper, fixed, tol, max_steps, test_stat):
    """Test statistic of one toy (``data``, its auxiliary data ``centre``) generated at
    ``pars``, and whether the fits it uses converged."""
    poi = poi_index(model)
    # the free fit, the fit at mu, the free fit again where it ended above the fit at mu
    # (hypotest._repair_start: it missed its minimum, q would be clipped to 0)
    zero = jnp.zeros_like(mu)
    values, free = jnp.stack([zero, mu, zero]), jnp.asarray([True, False, True])
    repairs = jnp.asarray([False, False, True])

    def fit(value, is_free, x0):
        x0 = jnp.where(is_free, x0, x0.at[poi].set(value))
        c0 = jnp.where(is_free, centre, centre.at[poi].set(value))
        fx = fixed.at[poi].set(~is_free)
        return fit_bounded(model, data, x0, lower, upper, fx, tol, max_steps,
                           uncertainties=False, centre=c0)  # fmt: skip

    def step(carry, args):
        # the free fit first; the fixed fit only where the statistic needs it: qtilde
        # and q are 0 for muhat > mu, q0 for muhat < 0 whatever the fixed fit gives
        # (pyhf's definitions, _stat_from_fits). One fit body (scan); branches skip
        # the fits not needed (in the plain loop of large models and under vmap)
        free_fit, low_x, low_nll = carry
        value, is_free, rep = args
        muhat = free_fit.bestfit[poi]
        needed = ~((muhat < 0) if test_stat == "q0" else (muhat > mu))
        missed, start = _repair_start(rep, free_fit, low_x, low_nll, pars, fixed)
        run = is_free & ~rep | ~is_free & needed | missed

        def skip():  # a fixed fit not run: zeros, status 0 (converged: a toy's
            # convergence is that of the fits its statistic uses), not compared
            same = _skipped(free_fit)
            return jax.tree.map(lambda a: jnp.where(rep, a, jnp.zeros_like(a)), same)

        res = branch(run, lambda: fit(value, is_free, start), skip)
        return _keep(res, is_free, rep, missed, run, free_fit, low_x, low_nll), res

    carry = (_empty_fit(pars, model), pars, jnp.full((), jnp.inf, pars.dtype))
    (free_fit, _, low_nll), res = jax.lax.scan(step, carry, (values, free, repairs))
    fixed_fit = jax.tree.map(lambda a: a[1], res)
    q = _stat_from_fits(test_stat, mu, fixed_fit, free_fit, poi)
    ok = fixed_fit.converged & free_fit.converged & ~_missed(free_fit.twice_nll, low_nll)
    return q, ok


@eqx.filter_jit
def _chunk(model, pars, keys, mu, lower, upper, fixed, tol, max_steps, test_stat, batch):
    """Test statistic and convergence of one toy per key, generated at ``pars``."""

    def one(key):
        data = sample(model, pars, key)
        centre = aux_centre(model, pars, data, lower, upper, fixed)
        return _toy_statistic(model, pars, data, centre, mu, lower, upper, fixed, tol,
                              max_steps, test_stat)  # fmt: skip

    # batch 1: a plain loop, not a vmap of one (a batch runs a restart wherever one of its
    # fits needs it and waits for its slowest fit; when lax.cond was a select under vmap,
    # every fit ran all of its restart fits: 64 toys of sbottom RegionA 1300/850/60, 99.6 ->
    # 27.1 s, min of 4, interleaved in one process, load 8-10), test statistics equal to 4e-14
    return jax.lax.map(one, keys, batch_size=None if batch == 1 else batch)


@eqx.filter_jit
def _setup(model, data, mu, gen_b, init, lower, upper, fixed, tol, max_steps, test_stat):
    """The observed test statistic and the two generating fits in one compiled loop: the fit
    with the POI fixed at ``mu`` is both the test statistic's and the signal + background
    toys' (pyhf's ``fixed_poi_fit(poi_test, data)``)."""
    fixed_fit, free_fit, b_fit, missed = _profile(
        mu, model, data, init, lower, upper, fixed, tol, max_steps, extra=gen_b
    )
    q = _stat_from_fits(test_stat, mu, fixed_fit, free_fit, poi_index(model))
    ok = fixed_fit.converged & free_fit.converged & b_fit.converged & ~missed
    return q, ok, fixed_fit.bestfit, b_fit.bestfit


# --------------------------------------------------------------------------- running
def model_digest(model: Model, data) -> str:
    """SHA-256 of what the toys depend on: the templates, constraint constants and data, the
    parameters' names, inits, bounds and fixed flags, the POI and the interpolation codes."""
    h = hashlib.sha256()
    # the float arrays, not the mask Model.symmetric_pars (derived from the configuration;
    # digests of toy files written before it existed stay valid)
    arrays = eqx.tree_at(lambda m: m.symmetric_pars, model, np.zeros(0))
    for leaf in jax.tree.leaves(eqx.filter(arrays, eqx.is_inexact_array)):
        h.update(np.ascontiguousarray(np.asarray(leaf, dtype=float)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(data, dtype=float)).tobytes())
    cfg = model.config
    h.update(json.dumps([list(cfg.par_names), [list(map(float, b)) for b in cfg.bounds],
                         list(map(float, cfg.init)), list(map(bool, cfg.fixed)),
                         cfg.poi_name, repr(cfg.modifier_settings)]).encode())  # fmt: skip
    return h.hexdigest()


def toys(
    poi_test,
    model: Model,
    data,
    *,
    ntoys: int = 1000,
    seed: int = 0,
    first: int = 0,
    test_stat: str = "qtilde",
    init=None,
    bounds=None,
    fixed=None,
    chunk: int = CHUNK,
    fixed_chunk: bool = False,
    batch: int | None = None,
    progress: Callable[[int], object] | None = None,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> ToyResult:
    """Toy-based test of ``poi_test`` (pyhf's ``calctype="toybased"``).

    Args:
        poi_test: Tested POI value (``q0``: ignored, mu = 0 is tested).
        model, data: The model and its observed data (main + auxiliary).
        ntoys: Toys per hypothesis.
        seed, first: The run's seed and the index of its first toy (toys ``first`` ..
            ``first + ntoys - 1`` of that seed: disjoint ranges merge into one run).
        test_stat: ``qtilde`` (default), ``q`` or ``q0``.
        init, bounds, fixed: Override the suggested values.
        chunk: Toys per compiled call (memory is flat in ``ntoys``); a smaller run uses
            the next power of two above ``ntoys`` unless ``fixed_chunk``.
        fixed_chunk: Compile ``chunk`` toys per call whatever ``ntoys`` (the ranges of one
            run spread over processes share one compiled shape).
        batch: Toys fitted at a time under ``vmap`` (default: :func:`default_batch`).
        progress: Called with the number of toys done (both hypotheses) after each chunk.

    Raises:
        FitError: A fit to the observed data (the generating parameters, the observed test
            statistic) did not converge.
    """
    if test_stat not in TEST_STATS:
        raise DiffhepError(f"unknown test statistic {test_stat!r}", where="test_stat",
                           fix=f"use one of {', '.join(TEST_STATS)}")  # fmt: skip
    if ntoys < 1 or first < 0 or seed < 0:
        raise DiffhepError(f"need ntoys >= 1, first >= 0, seed >= 0 (got {ntoys}, {first}, "
                           f"{seed})", where="--toys", fix="give positive numbers")  # fmt: skip
    if first + ntoys > 2**32:
        raise DiffhepError("toy indices must stay below 2**32", where="--first-toy",
                           fix="use another --seed instead of large toy offsets")  # fmt: skip
    poi_index(model)  # a model without a POI: FitError
    dtype = model.nominal.dtype
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, dtype)
    data = jnp.asarray(data, dtype=dtype)
    is_q0 = test_stat == "q0"
    mu_value = 0.0 if is_q0 else float(poi_test)
    mu = jnp.asarray(mu_value, dtype)
    tol, max_steps = float(tol), int(max_steps)

    gen_b = jnp.asarray(1.0 if is_q0 else 0.0, dtype)
    q_obs, ok, gen_sb, gen_b = _setup(model, data, mu, gen_b, init, lower, upper, fixed, tol,
                                      max_steps, test_stat)  # fmt: skip
    gen = [gen_sb, gen_b]
    if not bool(ok):
        raise FitError("a fit to the observed data (the toys' generating parameters or the "
                       "observed test statistic) did not converge",
                       fix="check the model (e.g. with 'diffhep fit')")  # fmt: skip

    if not fixed_chunk:
        chunk = min(int(chunk), 1 << max(ntoys - 1, 0).bit_length())
    chunk = max(1, int(chunk))
    batch = max(1, min(int(batch or default_batch(model)), chunk))
    out = {h: ([], []) for h in _HYPOTHESES}
    done = 0
    for h, (name, pars) in enumerate(zip(_HYPOTHESES, gen, strict=True)):
        for s in range(0, ntoys, chunk):
            n = min(chunk, ntoys - s)
            idx = first + s + np.arange(chunk)  # padded toys are real toys, dropped
            keys = toy_keys(seed, h, idx)
            q, conv = _chunk(model, pars, keys, mu, lower, upper, fixed, tol, max_steps,
                             test_stat, batch)  # fmt: skip
            out[name][0].append(np.asarray(q)[:n])
            out[name][1].append(np.asarray(conv)[:n])
            done += n
            if progress is not None:
                progress(done)
    return ToyResult(
        test_stat=test_stat,
        poi_test=mu_value,
        teststat=float(q_obs),
        ts_sb=np.concatenate(out["sb"][0]),
        ts_b=np.concatenate(out["b"][0]),
        ok_sb=np.concatenate(out["sb"][1]),
        ok_b=np.concatenate(out["b"][1]),
        runs=[{"seed": int(seed), "first": int(first), "ntoys": int(ntoys)}],
        meta={
            "digest": model_digest(model, data),
            "poi": model.config.poi_name,
            "generating_parameters": {
                n: [float(x) for x in p] for n, p in zip(_HYPOTHESES, gen, strict=True)
            },
        },
    )
