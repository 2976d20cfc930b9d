"""Where the restarts of a fit start (:func:`diffhep.stats.restarts.search`): single-parameter
probes and the mirror image, the reflection through the start, the flip of one parameter to
the other side or across its kink, random starts, and the test of a strained fit that some of
them run on. The measured cases behind each are in the functions' docstrings (issue 20)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import hessian as hessian_mod
from .numerics import branch

__all__ = [
    "EVEN_FLIP",
    "PROBES",
    "REFLECT_FROM",
    "STRAINED",
    "TURN_STEP",
    "TURN_WITHIN",
    "VERTEX_MOVE",
    "falls_across_kink",
    "flip_start",
    "inverse_start",
    "kink_start",
    "probe_start",
    "probes",
    "random_start",
    "reflection_start",
    "single_moves",
    "strained",
    "turn_start",
]

#: Values tried for each restart candidate (besides its mirror image -x): a parameter whose
#: change to one of them alone lowers -log L starts the restart there
PROBES = (0.0, -1.0, 1.0)
#: The reflection restart runs where a reflected parameter ends farther than this from its
#: start, and an eligible histosys/normsys parameter that does is flipped
#: (:func:`diffhep.stats.restarts.search`)
REFLECT_FROM = 1.0
#: An eligible histosys/normsys parameter whose even response (:func:`multimodal.even_size`)
#: moves the expected counts by at least this many Poisson standard deviations is flipped in
#: every fit
EVEN_FLIP = 1.0
#: The flip to the mirror image through the vertex runs where it moves the parameter by more
#: than this (:func:`diffhep.stats.restarts._restarts`)
VERTEX_MOVE = 1e-3
#: The flip across a kink at alpha = 0 (:func:`kink_start`) starts at least this far across
KINK_STEP = 1e-2
#: The flip restart runs where the best fit's deviance (twice the objective, which is 0 where
#: every expected count equals its observation and every constrained parameter its auxiliary
#: datum) exceeds this many times the number of data (main and auxiliary)
#: (:func:`diffhep.stats.restarts.search`)
STRAINED = 4.0
#: The profile fits of a turn restart hold the parameter this far on either side of the best
#: fit (:func:`turn_start`)
TURN_STEP = 0.05
#: The turn restart runs where the cubic model of the profile turns within this distance of
#: the best fit (:func:`turn_start`)
TURN_WITHIN = 0.5


def single_moves(model, data, candidates, objective):
    """``at(x, v)``: ``objective`` (the fit's ``-log L``) at ``x`` with one candidate parameter
    (``candidates``, static) moved at a time, ``out[k, i]`` with ``x[candidates[i]] = v[k, i]``
    (the others held; ``v`` within the bounds)."""
    args = (model, data)
    cand = jnp.asarray(candidates)

    if hessian_mod.supports_probes(model, candidates):
        # from the rate decomposition: ~10x cheaper (sbottom RegionA: 220 evaluations 1.9 ms
        # -> 0.15 ms), equal up to rounding; shifted by the base row so that a move to x has
        # the value of x as the solver sees it

        def at(x, v):
            f = hessian_mod.probe_objective(
                model, data, x, candidates, jnp.concatenate([v, x[cand][None]])
            )
            return f[:-1] - f[-1] + objective(x, args)

        return at

    def at(x, v):
        def one(c, values):
            xs = jnp.where(jnp.arange(x.size) == c, values[:, None], x)
            return jax.vmap(lambda y: objective(y, args))(xs)

        return jax.vmap(one, in_axes=(0, 1), out_axes=1)(cand, v)

    return at


def probes(model, data, lower, upper, candidates, dtype, objective):
    """``probes_at(x)``: for each candidate parameter (``candidates``, static), the lowest
    ``objective`` (the fit's ``-log L``) when it alone is moved from ``x`` to ``-x`` or to one
    of :data:`PROBES` (the others held), and the value that gives it."""
    cand = jnp.asarray(candidates)
    tried = jnp.asarray(PROBES, dtype=dtype)
    at = single_moves(model, data, candidates, objective)

    def probes_at(x):
        n = len(PROBES)
        v = jnp.concatenate([-x[cand][None], jnp.broadcast_to(tried[:, None], (n, cand.size))])
        v = jnp.clip(v, lower[cand], upper[cand])
        f = at(x, v)
        f = jnp.where(jnp.isfinite(f), f, jnp.inf)
        i = jnp.argmin(f, axis=0)
        pick = jnp.arange(cand.size)
        return f[i, pick], v[i, pick]

    return probes_at


def probe_start(probes_at, best, probing, lower, upper, candidates, eligible, mirror):
    """The start of the probe/mirror restart from the best fit ``best``.

    The likelihood may have several minima in the parameters with a kink at 0 or a symmetrised
    variation (``mirror``: :func:`multimodal.mirrored`) and in those with an even response
    (:func:`multimodal.even_response`); ``eligible`` are those of them the restart may move. It
    starts where changing single ``candidates`` (to -x, or one of :data:`PROBES`) lowers -log L at
    the best fit; if none does, from the mirror image of all ``mirror`` parameters, or of all
    eligible ones if there are none (the probes alone miss minima of the profile that are not lower
    along the axis: multichan_coupledhistosys at mu = 1 from +0.59; mirroring all 38 candidates of
    sbottom RegionA instead of its 10 symmetrised ones made its hypotest 1.7x slower, the restart
    then ran longer). The probes run only where ``probing`` (a branch: models without eligible
    parameters pay nothing, nor does a vmapped batch in which no member probes).

    Measured minima: pyhf's "combined" model with code1/code0 at jes = -0.0046 and +0.0058;
    sbottom RegionA/400_205_60 at mu = 1 on Asimov data at three JER NPs all at +-0.8 (0.137
    apart in twice_nll), 550_180_50 at one of them at +0.31 or -0.34 (0.016 apart);
    multichan_coupledhistosys (code4p) on the Asimov data at mu = 1 at -0.54 and +0.62
    (30.13 and 33.99).
    """
    cand = jnp.asarray(candidates)

    def no_probes(x):
        return jnp.full(cand.shape, jnp.inf, x.dtype), x[cand]

    f_c, v_c = branch(probing, probes_at, no_probes, best.x)
    gain = (f_c < best.fun) & eligible[cand]
    moved = jnp.zeros(best.x.shape, bool).at[cand].set(gain)
    start = best.x.at[cand].set(jnp.where(gain, v_c, best.x[cand]))
    flip = jnp.where(jnp.any(mirror), mirror, eligible)
    mirrored = jnp.clip(jnp.where(flip, -best.x, best.x), lower, upper)
    return jnp.where(jnp.any(moved), start, mirrored)


def reflection_start(best, init, lower, upper, reflect):
    """The start of the reflection restart and whether it is needed.

    The best fit's histosys/normsys/normfactor parameters (``reflect``:
    :func:`multimodal.global_shift`) reflected through the start (per-bin gammas and lumi back at
    the start): the other side of the start, where a second basin lies that neither the first fit's
    path nor single-parameter probes reach (adversarial s31-d4: from mu = 1 the fit ends at mu = 10,
    hs2 = +4.45, -2lnL 107.60; from the reflection at mu = 0, hs2 = -3.82, 90.43, pyhf's minimum;
    small seed 0 draw 1 at mu = 0: 2692.51, from the reflection 2631.37 with hs0 and hs1 at -5, then
    the probes from there 2470.43).

    Needed only where the best fit lies more than :data:`REFLECT_FROM` (the +-1 sigma
    variations) from the start in one of them: nearer, the fit stayed where the
    interpolation interpolates and the probes cover the other side (sbottom RegionA: at most
    0.81, its hypotest 1.6x slower with the reflection in every fit; s31-d4: 1.34 to 9).
    """
    reflected = jnp.clip(jnp.where(reflect, 2.0 * init - best.x, init), lower, upper)
    far = jnp.any(reflect & (jnp.abs(best.x - init) > REFLECT_FROM))
    return reflected, far


def flip_start(best, init, lower, upper, j):
    """The start of flip restart ``j``: histosys/normsys parameter or normfactor ``j`` moved to
    the other side of its start, at least 1 (the +-1 sigma variation) from it, the others left
    at the best fit.

    That reaches a basin on the other side of one systematic that neither the reflection of
    all of them nor the probes (single-parameter values with the others held, which are
    higher: the profile's barrier) reach. Which parameter's other side holds the lower basin
    is not told by local quantities at the best fit (its distance from the start, evenness of
    its response, the flip's cost with the others held, or that cost over its quadratic
    prediction each pick a wrong parameter in one of the three cases below), so each
    histosys/normsys parameter is flipped once, one fit each, from the best fit so far.
    Measured at mu = 0, the flip that finds the lower basin: adversarial seed 1001, ns1 = -5
    -> +5 (20554.92 -> 20485.37 at +3.59); seed 1014, hs1 = +0.795 -> -1 (14189.90 ->
    12876.70 at hs1 = -5); seed 1031, ns1 = +0.69 -> -1 (43097.80 -> 41899.07 at -1.42; its
    profile in ns1 is bimodal: 42948 at -1.5, 68683 at 0, 51042 at +0.5). The flips run
    while the best fit is strained (:func:`_strained`), and for a parameter farther than
    :data:`REFLECT_FROM` from its start and eligible for the mirror restart (an even
    response, a kink or a symmetrised variation) also where it is not (seed 1048 draw 0 at
    mu = 1: ns2 = -2.11 -> +2.11, 3647.13 -> 3642.39 at +2.46;
    :func:`diffhep.stats.restarts._restarts`), as for an eligible parameter with a large even
    response at any distance
    (:func:`multimodal.even_size`).
    """
    dist = jnp.abs(best.x[j] - init[j])
    side = jnp.where(best.x[j] >= init[j], -1.0, 1.0)
    to = jnp.clip(init[j] + side * jnp.maximum(dist, 1.0), lower[j], upper[j])
    return best.x.at[j].set(to)


def falls_across_kink(model, data, lower, upper, kinked, objective):
    """``falls(x)``: per parameter, whether ``objective`` falls from alpha = 0 to
    :data:`KINK_STEP` across the kink, on the side of 0 away from ``x`` (the others held):
    where it does, the kink is a ridge (a V of the rate that the data push down or up) with a
    basin on the other side, and a flip across it (:func:`kink_start`) may find a lower
    minimum; where it rises, the other side holds no basin next to the kink (a parameter the
    solver holds at its kink rises on both sides). ``kinked``: the static indices of the
    parameters with a kink. Measured: flipping every kinked parameter whose response is even
    made a warm hypotest of sbottom with code1/code0 5-20x slower (25-33 flips per fit; RegionC
    1400_1050_60 16 -> 312 ms); after the free fit of that point 7 of its 33 fall across."""
    cand = jnp.asarray(kinked)
    at = single_moves(model, data, kinked, objective)

    def falls(x):
        across = jnp.where(x[cand] >= 0, -KINK_STEP, KINK_STEP)
        v = jnp.clip(jnp.stack([jnp.zeros_like(across), across]), lower[cand], upper[cand])
        f = at(x, v)
        return jnp.zeros(x.shape, bool).at[cand].set(f[1] < f[0])

    return falls


def kink_start(best, lower, upper, j):
    """The start of the flip of parameter ``j`` across its kink at alpha = 0: its mirror image
    ``-x`` (at least :data:`KINK_STEP` across), the others left at the best fit.

    Where the kinked response moves some bin the same way on both sides (a V in the rate),
    -log L can have a minimum on each side of the kink near it, and that on the other side
    can be narrow with the other parameters where the best fit put them (h6-fuzz,
    tests/test_fuzz_regressions_h6.py, a one-sided code0 histosys: the free fit ends at
    -0.0895, -2lnL 65.3232; from +0.0895, +0.05, +0.01 or +1e-4 (the others held) the fit
    reaches the minimum at +0.123, 65.3126, from +0.2, +0.5 or +1 (:func:`flip_start`'s
    start) it returns to -0.0895)."""
    x = best.x[j]
    to = jnp.where(x >= 0, -1.0, 1.0) * jnp.maximum(jnp.abs(x), KINK_STEP)
    return best.x.at[j].set(jnp.clip(to, lower[j], upper[j]))


def inverse_start(best, lower, upper, j):
    """The start of the inverse flip of normfactor ``j``: its value ``x`` at the best fit
    replaced by ``1 / x`` (its reflection through 1 in log space; 0 goes to its upper bound),
    the others left at the best fit; a negative ``x`` stays (no flip).

    Where two unconstrained factors multiply a rate (:func:`multimodal.unconstrained_products`),
    the likelihood can have two minima that differ in a normfactor by a factor, a barrier
    between them, and nothing the other restarts see: no interpolated parameter far out, no
    strained fit, and the linear flip through a start at the parameter's bound stays at that
    bound. Measured (tests/test_fuzz_regressions_h6.py): a shapefactor shared by three
    channels times nf_shared (init at its upper bound 3, mu's at 5): every fit with mu fixed
    ends at nf_shared = 1.63 (-2 ln L 100.6357 at mu = 0; positive definite Hessian, the
    profile in nf_shared has minima at 0.6 and 1.6, a barrier of 0.15 at 1.2), the inverse
    0.615 reaches 100.0816 (and 100.0872 at mu = 1, where the hypotest's q was 0.563 instead
    of <= 0.0077); two channels with normfactors nf_ch0, nf_ch1 x a 5-bin shared shapefactor
    and nf_shared: the fit at mu = 0 from the suggested values ends at nf_shared = 3.34
    (4.3605, barrier 0.05 at 2.5), the inverse 0.299 reaches 4.0746 at its bound 0 (those of
    nf_ch0 and nf_ch1 return to 4.3605)."""
    x = best.x[j]
    to = jnp.where(x > 0, 1.0 / jnp.where(x > 0, x, 1.0), jnp.where(x == 0, upper[j], x))
    return best.x.at[j].set(jnp.clip(to, lower[j], upper[j]))


def random_start(init, lower, upper, fixed, r):
    """The start of random restart ``r``: every free parameter drawn uniformly within
    +-min(1, a quarter of its bound range) of the start (the +-1 sigma variations of the
    systematics, +-1 around 1 for the gammas), clipped to the bounds; the key is fixed, so
    the fit is deterministic.

    Where the best fit is still strained after the flips (:func:`_strained`), the data lie
    far from the model, the rates sit in the extrapolated parts of several interpolations
    at once, and the basins are not told apart by moving one parameter: adversarial seed
    1002 draw 2 at mu = 0 (178 parameters, deviance 1335 on 210 data) ends at 3606.95 from
    the start and every restart; from random starts around the start 5 of 8 fits reach
    3551.20 (hs1 and ns0 both at their bound -5, the gammas following; a 20-start L-BFGS-B
    search found 3564.86), after 240-410 Newton steps (so these fits get
    ``(1 + _CONTINUATIONS) * max_steps``)."""
    width = jnp.minimum(1.0, (upper - lower) / 4.0)
    u = jax.random.uniform(jax.random.fold_in(jax.random.key(0), r), init.shape, init.dtype)
    x = jnp.clip(init + (2.0 * u - 1.0) * width, lower, upper)
    return jnp.where(fixed, init, x)


def strained(best, data):
    """Whether the best fit's deviance (twice the objective, 0 where every expected count
    equals its observation and every constrained parameter its auxiliary datum) exceeds
    :data:`STRAINED` per datum (main and auxiliary): far from the data the parameters are
    pushed into the extrapolated, non-convex part of the interpolation (the three flip cases
    of :func:`_flip_start`: 11566 on 278 data, 18316 on 275, ~41000 on 264); a fit that
    describes the data pays nothing (sbottom RegionA/1000_205_60: deviance 3.5 (mu = 0) to
    147 (mu = 10) on 68 data, gate 272)."""
    return 2.0 * best.fun > STRAINED * data.size


def turn_start(best, j, plus, minus, lower, upper):
    """The start of the turn restart of parameter ``j`` (a code4 normsys parameter on a
    plateau of its polynomial, :func:`multimodal.plateau`) and whether it runs, from the
    profile fits ``plus`` and ``minus`` (``(x, fun)`` each: the fits from ``best`` with ``j``
    held at ``best.x[j] +- TURN_STEP``).

    At the best fit (a minimum) the profile ``p`` of ``-log L`` in ``j`` (the others at
    their minimum) has curvature ``c2`` and third derivative ``c3`` (their central
    differences from the two profile fits, step :data:`TURN_STEP`) and moves along ``v``
    (the other parameters' change per unit of ``j``, from the same fits). Its cubic model
    turns (a barrier) at ``t* = -2 c2 / c3``; where that lies within :data:`TURN_WITHIN` of the
    best fit and inside (-1, 1) (the polynomial's region), the restart starts beyond it along
    the valley, at ``x + 2 t* v``.

    Measured (h5-fuzz, tests/test_fuzz_regressions.py): a 3e5-event bin ties the normfactor
    nf_ch2 to ns0 (hi 1.249, lo 0.967 in another channel, code4: a plateau at -0.58), whose
    profile has minima at -0.43 and -1.41 (-2lnL 98.232 and 98.066, barrier 98.55 at -0.8);
    the fit at mu = 1 ends at -0.433; the profile fits (5 Newton steps each) give c2 = 8.31,
    c3 = 53.1 (the exact derivatives' values to 3 digits), t* = -0.31, and the restart from
    -1.06 along the valley reaches -1.429 in 8 steps. Moves of ns0 alone (the probes, the
    flips to the polynomial's ends) are higher (the valley is narrow), and so are starts
    along ``v`` at fixed distances (the valley is curved); a quartic model of the profile was
    not robust (a helper's branch, 2026-12-07).
    """
    (x_p, f_p), (x_m, f_m) = plus, minus
    h = TURN_STEP
    c2 = (f_p + f_m - 2.0 * best.fun) / h**2
    c3 = 3.0 * (f_p - f_m) / h**3
    v = (x_p - x_m) / (2.0 * h)
    t = -2.0 * c2 / jnp.where(c3 != 0, c3, 1.0)
    ok = (c2 > 0) & (c3 != 0) & jnp.isfinite(t) & (jnp.abs(t) < TURN_WITHIN)
    ok = ok & (jnp.abs(best.x[j] + t) < 1.0)
    return ok, jnp.clip(best.x + 2.0 * t * v, lower, upper)
