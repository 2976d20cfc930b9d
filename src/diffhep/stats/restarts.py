"""The search behind a fit: one run of the solver, and the restarts for several minima.

:func:`diffhep.stats.fit.fit_bounded` minimises ``-log L`` (without its constant part,
:func:`_objective`) with :func:`run_fit`, one run of the bounded Newton solver of
:mod:`diffhep.stats.solver` from a start; where the model can have several minima (kinked or
smoothly interpolated shape and normalisation variations, products of factors: wherever
``-log L`` is not convex, :func:`may_restart`) it runs
:func:`search` instead: the fit and its restarts (probe/mirror, reflection through the start,
flips of interpolated parameters and normfactors where the fit is strained, of interpolated
ones where they may have a mirror minimum beyond +-1 or a large even response (then also to
the mirror image through the response's vertex), of normfactors to their inverse where two
unconstrained factors multiply a rate, turns of code4 normsys parameters on a plateau of their
polynomial, and the continuation of a fit that ran out of steps while it gains) in one
``lax.while_loop``, keeping the lowest minimum,
differentiated implicitly at that minimum. Where each restart starts is
:mod:`diffhep.stats.starts`; issue 20 holds the cases behind each restart, the gates'
measurements are in the functions' docstrings.
"""

from __future__ import annotations

from functools import cache

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import hessian as hessian_mod
from . import multimodal, starts
from .numerics import branch
from .solver import MAX_STEPS, MinimizeResult, implicit_vjp, is_success, minimize
from .uncertainties import structure_of

__all__ = ["may_restart", "run_fit", "search"]


def may_restart(model) -> bool:
    """Whether a fit of ``model`` searches for several minima (static: from its structure).

    It does unless ``-log L`` is convex, so that every minimum is the global one: where no
    parameter is interpolated (histosys, normsys) and every sample's rate in every bin is
    multiplied by at most one parameter (:func:`multimodal.products`), the expected rates are
    affine in the parameters, and the Poisson terms of affine rates (convex in the rate,
    continued linearly below the floor), the Gaussian and Poisson constraints and the
    unconstrained normfactors are convex (pyhf's two-bin example: ``mu`` on the signal, a
    shapesys on the background). A product of two factors is not: a 2-channel model with a
    zero-count bin (``mu`` and a staterror gamma on the signal, a normfactor and a shapesys on
    a background) has its minimum at mu = 0 with a shapesys gamma at 0.02 (-2lnL 153.5387),
    and its fit from the suggested values ended at mu = 1.06 with the staterror gamma at its
    bound 1e-10 (153.9337, status 0) before it searched (h5-fuzz campaign,
    tests/test_fuzz_regressions.py)."""
    # (kinked parameters are interpolated ones: histosys code0, normsys code1)
    return bool(np.any(multimodal.interpolated(model.config))) or multimodal.products(model)


def search(model, data, init, lower, upper, fixed, restart, tol, max_steps, centre=None):
    """The lowest minimum of the fit from ``init`` and its restarts (:func:`_restarts`;
    ``restart``, a bool that may be traced, allows the restarts). ``centre`` (default
    ``init``) is where the constraint terms pull the parameters, if not at ``init``: a toy's
    auxiliary data (:mod:`diffhep.stats.toys`); the flips are judged from it, and a fit from
    it and the reflection through it are restarts of their own."""
    # where the restarts start is a discrete choice: no gradient flows through ``centre``
    centre = jax.lax.stop_gradient(init if centre is None else jnp.asarray(centre, init.dtype))
    return _search(
        ((model, data), init), lower, upper, fixed, jnp.asarray(restart), tol, max_steps, centre
    )


def _objective(pars, args):
    """``-log L`` without its parameter-independent part (``Model.logpdf_constant``): what the
    fits minimise. Its terms are small near the minimum, so it has no rounding noise of large
    constants, and the constants are computed once per fit, not at every step."""
    model, data = args
    return -model.logpdf_relative(pars, data)


def _objective_local(pars, args, structure):
    """Value, gradient and dense Hessian of :func:`_objective` from the rate Jacobians
    (:mod:`diffhep.stats.hessian`) where that is cheaper than the solver's Hessian-vector
    products along ``structure``; ``None`` elsewhere (static: decided from the model)."""
    model, data = args
    if not hessian_mod.supports(model, structure):
        return None
    return hessian_mod.value_grad_hessian(model, data, pars)


_objective.local = _objective_local


#: Modifiers whose parameter multiplies the rates (positive factors): the solver also tries
#: its Newton steps in their logarithms (:func:`diffhep.stats.solver.minimize`'s ``logscale``)
_FACTORS = ("normfactor", "lumi", "staterror", "shapesys", "shapefactor")


@cache
def _factors(config) -> np.ndarray:
    """Parameters of multiplicative modifiers (:data:`_FACTORS`)."""
    out = np.zeros(config.npars, dtype=bool)
    for (a, b), modtype in zip(config.par_slices, config.par_modtypes, strict=True):
        out[a:b] = modtype in _FACTORS
    return out


#: A restart is kept if it lowers -log L by more than this (relative, at least 1 absolute)
_RESTART_GAIN = 1e-9
#: A best fit that ran out of steps is continued from where it stopped (each time with
#: ``max_steps`` more steps) this many times, and up to :data:`_MAX_CONTINUATIONS` times
#: while each continuation lowers -log L by more than :data:`_CONTINUE_GAIN` (:func:`_restarts`)
_CONTINUATIONS = 2
_MAX_CONTINUATIONS = 8
_CONTINUE_GAIN = 1e-3
#: Random restarts of a fit that is still strained after the flips (:func:`starts.random_start`)
_RANDOM_STARTS = 4


def _inverse_flips(model) -> np.ndarray:
    """The normfactors flipped to their inverse (:func:`starts.inverse_start`), one attempt
    each, where unconstrained factors multiply a rate (:func:`multimodal.unconstrained_products`;
    none elsewhere: sbottom RegionA, the 50-bin benchmark model)."""
    if not multimodal.unconstrained_products(model):
        return np.zeros(0, int)
    config = model.config
    out = np.zeros(config.npars, dtype=bool)
    for (a, b), modtype in zip(config.par_slices, config.par_modtypes, strict=True):
        out[a:b] = modtype == "normfactor"
    return np.flatnonzero(out)


def _kinks(config):
    """The solver's ``kinks`` (:func:`multimodal.kinked`), or None where no parameter has one
    (the program of a fit without kinks is then what it was)."""
    kinked = multimodal.kinked(config)
    return jnp.asarray(kinked) if kinked.any() else None


def run_fit(model, data, x0, lower, upper, fixed, tol, max_steps, target=None):
    """One fit of ``model`` to ``data`` from ``x0`` (the solver with the fit's objective;
    ``target``: see :func:`diffhep.stats.solver.minimize`)."""
    factors = _factors(model.config)
    return minimize(
        _objective,
        (model, data),
        x0,
        lower,
        upper,
        fixed,
        structure_of(model.config),
        tol=tol,
        max_steps=max_steps,
        logscale=jnp.asarray(factors) if factors.any() else None,
        target=target,
        kinks=_kinks(model.config),
    )


@eqx.filter_custom_vjp
def _search(diff, lower, upper, fixed, restart, tol, max_steps, centre):
    """The lowest minimum of :func:`_restarts`; its derivative is the implicit one at that
    minimum (:func:`diffhep.stats.solver.implicit_vjp`), whichever start found it, so the
    search itself (a ``lax.while_loop`` of as many fits as it needs) is not differentiated."""
    (model, data), init = diff
    return _restarts(model, data, init, lower, upper, fixed, restart, tol, max_steps, centre)


@_search.def_fwd
def _search_fwd(perturbed, diff, lower, upper, fixed, restart, tol, max_steps, centre):
    (model, data), init = diff
    res = _restarts(model, data, init, lower, upper, fixed, restart, tol, max_steps, centre)
    return res, res


@_search.def_bwd
def _search_bwd(res, ct, perturbed, diff, lower, upper, fixed, restart, tol, max_steps, centre):
    args, _ = diff
    config = args[0].config
    return implicit_vjp(res, ct, _objective, args, lower, upper, fixed, structure_of(config),
                        _kinks(config))  # fmt: skip


def _keep_lower(k, best, new, need):
    """``new`` replaces ``best`` at attempt ``k`` > 0 if it ran, converged and is clearly
    lower (by :data:`_RESTART_GAIN`): the same minimum found twice differs by rounding, and
    switching between the two would make the best fit jump by ~1e-8 where the templates
    cross the eligibility test (measured: a finite difference of d(alpha)/d(yield) 20% off on
    histosys_code4p). A converged ``new`` also replaces a ``best`` that did not converge
    where it is no higher than it by more than that (the same minimum, reached this time:
    adversarial seed 1052 draw 4 at mu = 0, where the fit from the start stalls at 13389.6515
    after its continuations and the random restarts converge there). Returns the kept result
    (its ``n_steps`` the sum over the attempts that ran) and whether ``new`` was kept."""
    lower_by = best.fun - new.fun
    rounding = _RESTART_GAIN * jnp.maximum(1.0, jnp.abs(best.fun))
    gain = (lower_by > rounding) | (~is_success(best.status) & (lower_by > -rounding))
    better = (k == 0) | (need & is_success(new.status) & gain)
    out = jax.tree.map(lambda a, b: jnp.where(better, b, a), best, new)
    steps = jnp.where(k > 0, best.n_steps, 0) + jnp.where(need, new.n_steps, 0)
    return out._replace(n_steps=steps), better


def _restarts(model, data, init, lower, upper, fixed, restart, tol, max_steps, centre):
    """The fit from ``init`` and the restarts for several minima, keeping the lowest
    (:func:`search`). All fits are one loop body (``lax.while_loop``, compiled once;
    not differentiated: :func:`_search`), attempt ``k``:

    - 0: the fit from ``init``;
    - 1: the probe/mirror restart from the best fit (:func:`starts.probe_start`), where a
      parameter is eligible;
    - 2: the fit from the best fit reflected through the start (:func:`starts.reflection_start`),
      where it lies far from the start;
    - 3: the probe/mirror restart again if the reflection found a lower minimum;
    - 4: the fit from ``centre``, where it is not ``init`` (a toy's auxiliary data,
      :mod:`diffhep.stats.toys`: toy fits start at the generating parameters, and the far
      flips judged from there ran for every toy, ~60 steps per fit; judged from the toy's
      own auxiliary data, with these two restarts, ~30, and no fit higher: the measurement
      in docs/benchmarks.md, toys);
    - 5: the fit from the best fit reflected through ``centre``, where it is not ``init``
      and the best fit lies far from it;
    - 6, 7, ...: one flip per histosys/normsys parameter and normfactor (:func:`starts.flip_start`,
      to the other side of ``centre``), of every one while the best fit is strained
      (:func:`starts.strained`), else of the histosys/normsys parameters eligible for the
      probe/mirror restart (a kink at 0, a symmetrised variation or an even response: a
      possible minimum on the other side) that lie farther than :data:`starts.REFLECT_FROM` from
      ``centre`` or whose even response is large (:func:`multimodal.even_size`, anywhere)
      (adversarial seed 1048 draw 0 at mu = 1, not strained (deviance 907 on 298 data),
      ended at ns2 = -2.11 (even response), -2lnL 3647.13, the probe/mirror restart, which
      moves every parameter whose probe gains, at 3956; the flip of ns2 alone reaches
      3642.39 at ns2 = +2.46), and of those with a kink at 0 whose response is even where
      -log L falls across the kink (:func:`starts.falls_across_kink`), to their mirror image
      across it (:func:`starts.kink_start`); the loop goes straight to the next flip that
      runs; a fit that needs no
      flip, or a vmapped batch in which none does, runs no flip attempt (adversarial seed
      1098 draw 2 at mu = 1, strained: the fit ends with the normfactor k_bkg at its bound
      0, -2lnL 2435.31, and no restart moves it; its flip to 2 reaches k_bkg = 10, 2409.04);
    - then, for each parameter with a large even response, a flip to the mirror image of
      its value through the vertex of its response (:func:`multimodal.even_vertex`), where
      two values of it give the same counts (adversarial seed 1078 draw 4 at mu = 0: hs1 at
      +0.327, -2lnL 5001.91; its flip to -1 returns there, the mirror image -0.397 leads to
      -0.438, 4993.99);
    - then :data:`_RANDOM_STARTS` fits from random starts around the start
      (:func:`starts.random_start`) while the best fit is still strained;
    - then, where two unconstrained factors not fixed multiply a rate
      (:func:`multimodal.unconstrained_products`), one flip per normfactor to its inverse
      (:func:`starts.inverse_start`), in every fit: two minima of such a product need neither
      a strained fit nor a parameter far out (h6-fuzz: fits 0.55 and 0.29 above the other
      minimum, status 0; the cases in :func:`starts.inverse_start`).
    - then, per code4 normsys parameter on a plateau of its polynomial at the converged best
      fit (:func:`multimodal.plateau`; not one of the mirror/vertex restarts), two profile fits
      with it held at +-:data:`starts.TURN_STEP` (never kept) and the restart beyond their
      turn (:func:`starts.turn_start`; h5-fuzz: ns0 = -0.433, -2lnL 98.232 -> -1.429, 98.066).

    Before any attempt after the first, a best fit that ran out of steps (``MAX_STEPS``: the
    restarts only keep converged fits, so that is the first one) is continued from where it
    stopped, :data:`_CONTINUATIONS` times, and then while each continuation gains more than
    :data:`_CONTINUE_GAIN`, up to :data:`_MAX_CONTINUATIONS` times: a long valley can need
    more than ``max_steps`` Newton steps (adversarial seed 1040 draw 4 at mu = 1: the free
    normalisation k_bkg falls from 7.8 to 2.0 along compensating gammas with a near-flat,
    at times concave Hessian, linear progress of 0.01-0.2 per step, ~240 steps; the
    restarts from the unconverged point end higher; seed 1077 draw 3 at mu = 0: shapefactors
    of several samples in the same bins, degenerate, jump between their bounds 0 and 10,
    -2lnL 2124.11, 2072.46, 2055.36, 2049.69 after 200, 400, 600, 800 steps, converged at
    2049.13 after 940, while no restart converged). Fits that converge pay nothing.

    ``restart`` (may be traced) allows attempts 1-3 and the flips, not the continuation.
    """

    def run(x0, steps=max_steps, target=None, held=fixed):
        return run_fit(model, data, x0, lower, upper, held, tol, steps, target)

    interpolated = multimodal.interpolated(model.config)
    candidates = np.flatnonzero(multimodal.kinked(model.config) | interpolated)
    mirror = multimodal.mirrored(model) & ~fixed
    eligible = (mirror | (multimodal.even_response(model) & ~fixed)) & jnp.asarray(restart)
    probes_at = starts.probes(model, data, lower, upper, candidates, init.dtype, _objective)
    shifts = multimodal.global_shift(model.config)  # histosys, normsys, normfactor
    reflect = jnp.asarray(shifts) & ~fixed
    may_reflect = jnp.any(reflect) & jnp.asarray(restart)
    flippable = reflect  # the reflected parameters, one by one
    may_flip = jnp.any(flippable) & jnp.asarray(restart)
    flips = np.flatnonzero(shifts)  # static: one flip attempt each
    by_vertex = np.flatnonzero(interpolated)  # and one by the vertex each
    first_flip = 6
    first_vertex = first_flip + flips.size
    first_random = first_vertex + by_vertex.size
    # and one inverse flip per normfactor where unconstrained factors multiply a rate, three
    # attempts per code4 normsys parameter (two profile fits and the turn restart) (static:
    # other models' programs are what they were)
    inverses = _inverse_flips(model)
    first_inverse = first_random + _RANDOM_STARTS
    turns = np.flatnonzero(multimodal.plateau_candidates(model.config))
    first_turn = first_inverse + inverses.size
    n_attempts = first_turn + 3 * turns.size
    slots = [np.zeros(first_flip, int), flips, by_vertex, np.zeros(_RANDOM_STARTS, int), inverses,
             np.repeat(turns, 3)]  # fmt: skip
    flip_par = jnp.asarray(np.concatenate(slots))
    if inverses.size:  # where two of them not fixed multiply a rate (fixed: may be traced)
        may_invert = multimodal.unconstrained_products(model, fixed) & jnp.asarray(restart)
    off_centre = jnp.any(centre != init) & jnp.asarray(restart)

    strong = flippable & eligible & (multimodal.even_size(model) >= starts.EVEN_FLIP)
    kinked = multimodal.kinked(model.config)
    if kinked.any():  # static: the program of a model without kinks is what it was
        # a kink at 0 of a response that moves some bin the same way on both sides (a V in the
        # rate): -log L can fall on both sides of 0 (a ridge), a minimum on each side at any
        # distance from it (h6-fuzz, tests/test_fuzz_regressions_h6.py: a one-sided code0
        # histosys, the fit ended at -0.04 / -0.089, the minimum across the kink at +0.036 /
        # +0.123, 0.0089 / 0.0107 lower in -2lnL; the probes hold the other parameters, which
        # follow the side): such a parameter is flipped across the kink (starts.kink_start,
        # not to the other side of centre) where -log L falls across it
        v_kink = flippable & jnp.asarray(kinked) & multimodal.even_response(model)
        falls = starts.falls_across_kink(model, data, lower, upper, np.flatnonzero(kinked),
                                         _objective)  # fmt: skip
    vertex = multimodal.even_vertex(model)
    on = multimodal.plateau(model)  # None: no code4 normsys parameter (static)
    # not the parameters that the mirror and vertex restarts cover
    turnable = ~mirror & ~strong & ~fixed & jnp.asarray(restart)

    def on_plateau(best):  # the turns' gate: their profile fits within the bounds
        if on is None:
            return jnp.zeros(init.shape, bool)
        inside = (best.x - starts.TURN_STEP > lower) & (best.x + starts.TURN_STEP < upper)
        return turnable & inside & on(best.x) & is_success(best.status)

    def across(best):
        """The flippable parameters with a kink whose response is even and where -log L
        falls across the kink from ``best`` (none in a model without kinks)."""
        return v_kink & falls(best.x) if kinked.any() else jnp.zeros(best.x.shape, bool)

    def far_out(best, acr):
        """Flippable parameters with a possible mirror minimum (``eligible``: a kink at 0, a
        symmetrised variation or an even response) farther than :data:`starts.REFLECT_FROM` from
        ``centre``, anywhere those with a large even response (:func:`multimodal.even_size`),
        and those of :func:`across` (``acr``)."""
        far = flippable & eligible & (jnp.abs(best.x - centre) > starts.REFLECT_FROM)
        return far | strong | acr

    def attempt(k, best, found_lower, cont, acr, mem):
        probing = ((k == 1) | ((k == 3) & found_lower)) & jnp.any(eligible) & ~cont
        reflected, far = starts.reflection_start(best, init, lower, upper, reflect)
        around, far_centre = starts.reflection_start(best, centre, lower, upper, reflect)
        j = flip_par[k]
        flipped = starts.flip_start(best, centre, lower, upper, j)
        if kinked.any():
            flipped = jnp.where(acr[j], starts.kink_start(best, lower, upper, j), flipped)
        strained = starts.strained(best, data)
        flipping = (k >= first_flip) & (k < first_vertex) & flippable[j] & may_flip
        flipping = flipping & (strained | far_out(best, acr)[j])  # flips_needed's
        mirror_j = jnp.clip(2.0 * vertex[j] - best.x[j], lower[j], upper[j])
        vertex_flip = (k >= first_vertex) & (k < first_random) & strong[j] & may_flip
        vertex_flip = vertex_flip & (jnp.abs(mirror_j - best.x[j]) > starts.VERTEX_MOVE)
        flipped = jnp.where(vertex_flip, best.x.at[j].set(mirror_j), flipped)
        flipping = flipping | vertex_flip
        if inverses.size:
            inverted = starts.inverse_start(best, lower, upper, j)
            inverse_flip = (k >= first_inverse) & (k < first_turn) & may_invert & ~fixed[j]
            inverse_flip = inverse_flip & (jnp.abs(inverted[j] - best.x[j]) > starts.VERTEX_MOVE)
            flipped = jnp.where(inverse_flip, inverted, flipped)
            flipping = flipping | inverse_flip
        randomly = (k >= first_random) & (k < first_inverse) & jnp.asarray(restart) & strained
        # the turn of parameter j: its profile fits (not kept: minima with j held), then the
        # restart; ``mem``: the first profile fit, then the restart's start
        phase = (k - first_turn) % 3
        in_turn = (k >= first_turn) & ~cont
        mem_x, mem_f, mem_ok = mem
        profiling = in_turn & (((phase == 0) & on_plateau(best)[j]) | ((phase == 1) & mem_ok))
        turning = in_turn & (phase == 2) & mem_ok
        need = (k == 0) | probing | ((k == 2) & may_reflect & far) | flipping | randomly
        need = need | profiling | turning
        need = need | ((k == 4) & off_centre) | ((k == 5) & off_centre & may_reflect & far_centre)

        def run_attempt(_):
            start = starts.probe_start(probes_at, best, probing, lower, upper, candidates, eligible,
                                 mirror)  # fmt: skip
            x0 = jnp.where(k == 2, reflected, jnp.where(flipping, flipped, start))
            x0 = jnp.where(k == 4, centre, jnp.where(k == 5, around, x0))
            # the random keys as before attempts 4 and 5, the flips of normfactors and those
            # by the vertex existed (the same starts: the random restarts' minima are luck;
            # seed 1063 draw 4's free fit reaches 13646.70 from the first of these, 14018.66
            # from all four of the next keys); drawn only for a random restart (a branch)
            key = k - 2 - flips.size
            x0 = branch(
                randomly, lambda: starts.random_start(init, lower, upper, fixed, key), lambda: x0
            )
            side = jnp.where(phase == 0, starts.TURN_STEP, -starts.TURN_STEP)
            x0 = jnp.where(profiling, best.x.at[j].add(side), jnp.where(turning, mem_x, x0))
            x0 = jnp.where(k == 0, init, x0)
            x0 = jnp.where(cont, best.x, x0)
            # an attempt not needed runs no step: under vmap this runs for every member
            # where one needs it (the branch below), and a member's while_loop condition is
            # false where it does not
            budget = jnp.where(randomly, (1 + _CONTINUATIONS) * max_steps, max_steps)
            # a restart that heads back to the converged best fit stops on the way (status
            # SAME_MINIMUM, never kept: it would end within rounding of it, which
            # _keep_lower does not keep either): sbottom RegionA's hypothesis test ran three
            # such restarts of 3-4 steps each
            same = (k > 0) & ~cont & is_success(best.status) & ~profiling
            held = fixed | (profiling & (jnp.arange(init.size) == j))
            steps = jnp.where(need | cont, budget, 0).astype(jnp.int32)
            new = run(x0, steps, (best.x, same), held)
            out, better = _keep_lower(k, best, new, need & ~cont & ~profiling)
            out = out._replace(n_steps=out.n_steps + jnp.where(profiling, new.n_steps, 0))
            resumed = new._replace(n_steps=best.n_steps + new.n_steps)
            out = jax.tree.map(lambda a, b: jnp.where(cont, a, b), resumed, out)
            better = better & ~cont
            held_ok = profiling & is_success(new.status)
            turn_ok, start = starts.turn_start(best, j, (mem_x, mem_f), (new.x, new.fun),
                                               lower, upper)  # fmt: skip
            mem = (jnp.where(phase == 0, new.x, start), new.fun, held_ok & ((phase == 0) | turn_ok))
            return out, jnp.where(k == 2, better, found_lower), mem

        def skip(_):  # what run_attempt gives where nothing is needed (k > 0: k = 0 is)
            return best, jnp.where(k == 2, False, found_lower), (mem_x, mem_f, jnp.zeros((), bool))

        # most attempts of a fit are not needed (sbottom RegionA: 5 of 6 in every fit): they
        # cost the conditions only, not the set-up of a solver run nor the random draws; under
        # vmap, where no member of the batch needs them (a lax.cond ran every attempt's
        # probes and set-up for every member: 100 points of the 50-bin benchmark model
        # 537 -> 352 ms, benchmarks/hypotest.py's vmap section)
        return branch(need | cont, run_attempt, skip, None)

    def continues(k, best, conts, gained):
        """Whether the best fit ran out of steps and is continued from where it stopped
        (``gained``: what the last continuation lowered -log L by)."""
        again = (conts < _CONTINUATIONS) | (
            (conts < _MAX_CONTINUATIONS) & (gained > _CONTINUE_GAIN)
        )
        return (k > 0) & (best.status == MAX_STEPS) & again

    def flips_needed(best, acr):
        """Per flip attempt (static order, :data:`flips`), whether it runs from ``best``."""
        strained = starts.strained(best, data)
        return flippable[flips] & may_flip & (strained | far_out(best, acr)[flips])

    def more(c):
        k, best, _, conts, gained, acr, _, _ = c
        strained = starts.strained(best, data)
        flips_left = (k < first_vertex) & may_flip & (strained | jnp.any(far_out(best, acr)))
        flips_left = flips_left | ((k < first_random) & may_flip & jnp.any(strong))
        randoms_left = (k < first_inverse) & jnp.asarray(restart) & strained
        if inverses.size:  # and the inverse flips
            randoms_left = randoms_left | ((k < first_turn) & may_invert)
        left = flips_left | randoms_left | ((k < n_attempts) & jnp.any(on_plateau(best)))
        return (k < first_flip) | left | continues(k, best, conts, gained)

    def step(c):
        k, best, found_lower, conts, gained, acr, acr_fun, mem = c
        cont = continues(k, best, conts, gained)
        new, found_lower, mem = attempt(k, best, found_lower, cont, acr, mem)
        gained = jnp.where(cont, best.fun - new.fun, gained)
        k = jnp.where(cont, k, k + 1)
        if kinked.any():
            # across() moves every kinked parameter (sbottom RegionA with code0, 52: ~0.15
            # ms, twice a Newton step): only for the flips, and again only where they found
            # a lower minimum
            redo = (k >= first_flip) & (k < first_vertex) & may_flip & (new.fun != acr_fun)
            acr = branch(redo, lambda: across(new), lambda: acr)
            acr_fun = jnp.where(redo, new.fun, acr_fun)
        if flips.size:
            # straight to the next flip that runs: the loop over the flips not needed cost
            # its conditions (and across()) each (sbottom RegionC 1400_1050_60 with code1/code0,
            # 60 flip attempts of which ~8 run: the fit at mu = 1 3.1 -> 19.8 ms, 6 -> 13
            # Newton steps)
            at = jnp.arange(first_flip, first_vertex, dtype=k.dtype)
            ahead = flips_needed(new, acr) & (at >= k)
            to = jnp.where(jnp.any(ahead), at[jnp.argmax(ahead)], first_vertex)
            k = jnp.where((k >= first_flip) & (k < first_vertex), to, k)
        conts = conts + cont.astype(conts.dtype)
        return k, new, found_lower, conts, gained, acr, acr_fun, mem

    # the carry's initial value, replaced at k = 0: zeros of run's result (its structure
    # written out: jax.eval_shape(run, init) traced a whole solver run for it, a third of
    # the hypothesis test's tracing; a mismatch fails the while loop's type check)
    count = jnp.zeros((), jnp.int32)
    empty = MinimizeResult(jnp.zeros_like(init), jnp.zeros((), init.dtype), jnp.zeros_like(init),
                           count, count)  # fmt: skip
    zero = jnp.zeros((), jnp.int32)
    inf = jnp.full((), jnp.inf, init.dtype)
    no = jnp.zeros((), bool)
    mem = (jnp.zeros_like(init), jnp.zeros((), init.dtype), no)
    carry = (zero, empty, no, zero, inf, no & flippable, inf, mem)
    _, res, *_ = jax.lax.while_loop(more, step, carry)
    return res
