"""Bounded, structure-aware Newton minimisation with implicit differentiation.

Profile-likelihood fits of HistFactory models have a known sparsity (per-bin gammas couple
only within their bin): the Hessian and the Newton step use it (:mod:`diffhep.stats.linalg`),
so a step costs ``G + k`` Hessian-vector products and a Schur-complement solve linear in the
number of bins.

The minimiser is a projected Newton method with Levenberg-Marquardt damping and an
acceptance test, honouring box bounds through an active set (parameters at a bound whose
gradient pushes outwards are held). It runs entirely in ``lax.while_loop`` so fits can be
``jit``-ed and ``vmap``-ed.

Gradients of the solution follow the implicit function theorem (no unrolled iterations):
at the optimum the gradient with respect to the free parameters vanishes, so
``dx*/dphi = -H_FF^{-1} d(grad_F f)/dphi``; parameters at an active bound or fixed do not
move (fixed ones follow their given value).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .linalg import (
    HessianParts,
    Structure,
    _diagonal,
    _directions,
    _masked,
    _matvec,
    _parts_from_products,
    _rescaled,
    _solve,
    hessian_parts,
    parts_from_dense,
)

__all__ = ["MinimizeResult", "Structure", "implicit_vjp", "is_success", "minimize"]

CONVERGED, MAX_STEPS, NONFINITE, STALLED, NOISE_FLOOR, SAME_MINIMUM = 0, 1, 2, 3, 4, 5
#: Statuses that are a success: the minimum is found to the objective's own precision.
SUCCESS = (CONVERGED, NOISE_FLOOR)
STATUS_MESSAGES = {
    CONVERGED: "converged",
    MAX_STEPS: "maximum number of steps reached",
    NONFINITE: "objective or gradient not finite",
    STALLED: "no Newton or gradient step decreases the objective (sizes down to 2^-39)",
    NOISE_FLOOR: "converged at the noise floor (the predicted decrease is below the rounding "
    "noise of the objective)",
    SAME_MINIMUM: "stopped on the way to the minimum given as the target (a restart heading "
    "back to the minimum another start found)",
}
#: Relative rounding noise of the objective below which a predicted decrease that no step can
#: realise counts as convergence (status ``NOISE_FLOOR``)
NOISE_REL = 1e-9


def is_success(status):
    """Whether a solver status (array or int) is a success (:data:`SUCCESS`)."""
    return (status == CONVERGED) | (status == NOISE_FLOOR)


def _free_set(x, g, lower, upper, fixed):
    at_lo = (x <= lower) & (g > 0)
    at_hi = (x >= upper) & (g < 0)
    return ~fixed & ~at_lo & ~at_hi


class MinimizeResult(NamedTuple):
    x: jax.Array
    fun: jax.Array
    grad: jax.Array
    n_steps: jax.Array
    status: jax.Array  # CONVERGED, MAX_STEPS, NONFINITE, STALLED, NOISE_FLOOR, SAME_MINIMUM

    @property
    def converged(self):
        return is_success(self.status)


#: The log-coordinate candidate is tried where the Newton decrement fell by less than this
#: factor since the last step (slow, linear progress; Newton's own is quadratic)
_SLOW_RATE = 0.25
#: ... and only near a minimum: where the Newton decrement (twice the predicted decrease of
#: the objective) is below this. Farther, the log candidate can lead into another basin
#: (adversarial seed 1031 draw 3: the free fit at -2lnL 2619.55 instead of 2615.20, seed 1017
#: draw 0 at mu = 0: 13875.66 instead of 13608.38 before this gate and the full-step gate
#: it replaces); nearer, the basin is decided and the candidate only changes the path
_NEAR = 1.0

# backtracking rounds run only while no step passes, so small sizes cost nothing in the common
# case; an eigenvalue-modified Newton direction far from the minimum can need them (sbottom
# RegionB/C points stalled with 12 sizes, at points with a gradient of order 1)
_STEP_SIZES = tuple(2.0**-k for k in range(40))

#: A run given a ``target`` (a minimum found before) stops where its full Newton step, with a
#: Newton decrement below :data:`_SAME_DECREMENT`, lands within :data:`_SAME_TOL` (relative,
#: at least absolute) of the target in every parameter (status ``SAME_MINIMUM``, not a
#: success): Newton's quadratic convergence there leads to the target itself.
_SAME_DECREMENT = 1e-3
_SAME_TOL = 1e-5


def _free_solve(parts: HessianParts, free, rhs, structure: Structure):
    """Newton step ``-H^-1 rhs`` over the ``free`` variables (0 elsewhere), with the
    eigenvalue-modified Hessian. One call site per Newton step (:func:`_direction`); not a
    nested ``jax.jit`` (see :func:`diffhep.stats.uncertainties.nll`)."""
    mparts, _, _ = _masked(parts, free, structure, 0.0)
    return jnp.where(free, -_solve(mparts, jnp.where(free, rhs, 0.0), structure, True), 0.0)


def _near_bound(x, g, lower, upper, free):
    """Free variables within a small distance of a bound that the gradient pushes against
    (Bertsekas' epsilon-active set). A Newton direction that moves them through the bound is
    cut by the projection to a path that can ascend (sbottom RegionB/1200_205_60: mu_SIG at
    9e-10 above 0); they are moved to the bound instead and the others solved without them."""
    width = jnp.minimum(upper - lower, jnp.finfo(x.dtype).max)  # finite (inf: open bounds)
    w = jnp.max(jnp.where(free, jnp.abs(x - jnp.clip(x - g, lower, upper)), 0.0))
    eps = jnp.minimum(1e-6 * jnp.maximum(width, 1.0), w)
    lo = free & (x - lower <= eps) & (g > 0)
    hi = free & (upper - x <= eps) & (g < 0)
    return lo, hi


def _direction(parts, g, x, free, lower, upper, structure, log=None):
    """Projected Newton directions with an eigenvalue-modified (positive definite) Hessian.

    Returns the plain step over the free variables (those at a bound's edge taken to it), a
    second step in which variables the plain step would push through a bound are held at
    that bound and the others re-solved, and, with ``log = (parts_u, g_u, use)``, the plain
    step in other coordinates (the log-coordinate candidate of :func:`_run`) where
    ``use(step)`` holds for the plain step (zeros elsewhere), and whether it did.

    The (up to) three solves are requests to one loop over a single solve: its code (a
    Schur-complement solve with eigenvalue modification) is then compiled once, not three
    times, and each request runs only when needed: the second where a variable is at a
    bound's edge or pushed through one (the common case has none), the third where ``use``.
    """
    lo, hi = _near_bound(x, g, lower, upper, free)
    edge = jnp.where(lo, lower - x, 0.0) + jnp.where(hi, upper - x, 0.0)
    inner = free & ~lo & ~hi
    last = 1 if log is None else 2

    def pushed(step):
        target = x + step
        hit = inner & ((target < lower) | (target > upper))
        held = jnp.where(hit, jnp.clip(target, lower, upper) - x, 0.0) + edge
        return hit, held

    def after(k, step, use_log):
        """The request after ``k`` (``last + 1``: done)."""
        hit, _ = pushed(step)
        needed = jnp.any(hit) | jnp.any(lo | hi)
        nxt = jnp.where((k == 0) & needed, 1, jnp.where((k <= 1) & use_log, 2, last + 1))
        return nxt.astype(k.dtype)

    def body(c):
        k, step, step2, step_u, use_log = c
        hit, held = pushed(step)
        fr = jnp.where(k == 0, inner, inner & ~hit)
        rhs = jnp.where(k == 0, g, g + _matvec(parts, held, structure))
        p = parts
        if log is not None:
            p = jax.tree.map(lambda a, b: jnp.where(k == 2, b, a), parts, log[0])
            fr = jnp.where(k == 2, free, fr)
            rhs = jnp.where(k == 2, log[1], rhs)
        sol = _free_solve(p, fr, rhs, structure)
        step = jnp.where(k == 0, sol + edge, step)
        step2 = jnp.where(k == 1, sol + held, jnp.where(k == 0, step, step2))
        step_u = jnp.where(k == 2, sol, step_u)
        if log is not None:
            use_log = jnp.where(k == 0, log[2](step), use_log)
        return after(k, step, use_log), step, step2, step_u, use_log

    zero = jnp.zeros_like(x)
    c = (jnp.zeros((), jnp.int32), zero, zero, zero, jnp.zeros((), bool))
    _, step, step2, step_u, use_log = jax.lax.while_loop(lambda c: c[0] <= last, body, c)
    return step, step2, step_u, use_log


def _sided(local, x, kinks, fixed, lower):
    """``(x_eval, f, g, parts)``: :func:`_run`'s ``local`` at ``x``, where every parameter
    with a kink at 0 (``kinks``) that sits there is evaluated on the side it can descend to.

    At its kink the objective's derivatives are the left branch's (the interpolations are
    written so), which is the side to take where that slope descends (``g > 0``: leftwards).
    Where it does not, the right branch's are needed: a second evaluation with those
    parameters at ``tiny ** 0.25`` (1e-77 in float64: the same value of the objective, the
    right branch's derivatives; at ``tiny`` itself the second derivatives of a model with
    code1 were NaN, alpha^2 underflowing below 1e-154) gives them; where the right slope
    does not descend either, the parameter stays at the kink (a minimum there: :func:`_run`
    holds it like a bound). One call site of ``local`` in a loop of at most two rounds (the
    objective's code compiled once)."""
    at_kink = kinks & (x == 0) & ~fixed
    tiny = jnp.finfo(x.dtype).tiny ** 0.25

    def body(c):
        k, xe, _, _, _ = c
        f, g, parts = local(xe)
        # the left slope does not descend, or there is no left side (a lower bound at 0,
        # where the left branch's slope said "hold" and the fit stopped at 0 with the right
        # side falling: a review's 1-bin code1 model, -2lnL 18.01 instead of 10.03): look right
        look = at_kink & ((g <= 0) | (lower >= 0)) & (k == 0)
        nxt = jnp.where(jnp.any(look), k + 1, 2).astype(k.dtype)
        return nxt, jnp.where(look, tiny, xe), f, g, parts

    shapes = jax.eval_shape(local, x)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    c = (jnp.zeros((), jnp.int32), x, *zeros)
    _, xe, f, g, parts = jax.lax.while_loop(lambda c: c[0] < 2, body, c)
    return xe, f, g, parts


def _run(
    fun, args, x0, lower, upper, fixed, logscale, structure, tol, max_steps, target=None,
    kinks=None,
):  # fmt: skip
    value_and_grad = jax.value_and_grad(lambda x: fun(x, args))

    def value(x):
        return fun(x, args)

    ts = jnp.asarray(_STEP_SIZES, dtype=x0.dtype)
    dirs = _directions(structure, x0.dtype)

    own = getattr(fun, "local", None)

    def local(x):
        """Objective, gradient and structured Hessian at x: the objective's own ``local``
        where it has one for these arguments, else from one linearisation (``G + k``
        Hessian-vector products)."""
        if own is not None:
            out = own(x, args, structure)
            if out is not None:
                f, g, H = out
                return f, g, parts_from_dense(H, structure)
        (f, g), lin = jax.linearize(value_and_grad, x)
        hv = jax.vmap(lambda v: lin(v)[1])(dirs)
        return f, g, _parts_from_products(hv, structure)

    x0 = jnp.clip(x0, lower, upper)
    zero = jnp.zeros((), x0.dtype)
    init = dict(
        x=x0,
        x_eval=x0,
        f=zero,
        g=jnp.zeros_like(x0),
        it=jnp.zeros((), jnp.int32),
        done=jnp.zeros((), bool),
        status=jnp.asarray(MAX_STEPS, jnp.int32),
        decrement=jnp.full((), jnp.inf, x0.dtype),  # the last step's Newton decrement
    )

    def cond(s):
        return ~s["done"] & (s["it"] < max_steps)

    def body(s):
        x = s["x"]
        if kinks is None:
            f, g, parts = local(x)
            lower_k, upper_k = lower, upper
        else:
            # a parameter with a kink at 0 (normsys code1, histosys code0) moves on one
            # side of it per step: the kink is a bound of the side it is on (a step through
            # it stops there), and at the kink the side its slope descends to (_sided), else
            # it is held there like a parameter at a bound: where its left slope is negative
            # and its right one positive, the minimum is at the kink, which Newton's smooth
            # model never reaches (sbottom RegionC 1400_1050_60 with normsys code1: stalled at
            # -2lnL 102.98062, two normsys parameters at 0 with gradient 0.1 and 0.04; pyhf
            # 102.98060)
            xe, f, g, parts = _sided(local, x, kinks, fixed, lower)
            right = kinks & ((x > 0) | (xe > x))
            left = kinks & ((x < 0) | ((x == 0) & ~right))
            lower_k = jnp.where(right, jnp.maximum(lower, 0.0), lower)
            upper_k = jnp.where(left, jnp.minimum(upper, 0.0), upper)
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
        free = _free_set(x, g, lower_k, upper_k, fixed)
        # a third candidate where the Newton phase is slow near a minimum (the decrement
        # below _NEAR and down by less than _SLOW_RATE since the last step, where Newton's own
        # rate is quadratic): the Newton step in u = log x for the multiplicative parameters
        # (``logscale``, where x > 0), backtracked in u like the x-space steps. Their products
        # are straight lines in u: a valley along gamma_1 * gamma_2 = c (a bin of 2.4e6 events
        # with a staterror and a shapesys of ~80% each, adversarial seed 1017 draw 0) is a
        # hyperbola in x, along which the x-space Newton steps, their model spoilt by the
        # residual's curvature, gain ~1e-4 per step (300 steps at mu = 0). Products of free
        # factors (a shapefactor, the gammas of its bins, a normfactor) make -log L
        # indefinite in x (seed 1035 draw 4, 130 steps into the free fit: 5 negative
        # eigenvalues, down to -25, along sf_0 x stat_0 x ss_0_5 x ns1; positive definite in
        # u where the bin's rate is one sample's): the eigenvalue-modified x-space step is a
        # poor model there, cut 2^-3 to 2^-15 at most steps, and 1035/4's fits took 400-530
        # steps (limit 200) while the log candidate ran only after a full step (rare there)
        # and only at full length (too long: the u-space model holds for a part of it). The
        # step is the plain one over the free variables, clipped to the bounds (in u far:
        # log 0 = -inf)
        log = None
        if logscale is not None:
            lm = logscale & (x > 0) & (lower_k >= 0)
            sx = jnp.where(lm, x, 1.0)
            u = jnp.where(lm, jnp.log(sx), x)
            lu = jnp.where(lm, jnp.log(jnp.where(lm, lower_k, 1.0)), lower_k)
            uu = jnp.where(lm, jnp.log(jnp.where(lm, upper_k, 1.0)), upper_k)
            gu = sx * g

            def use(step):
                slow = -(g @ step) > _SLOW_RATE * s["decrement"]
                near = -(g @ step) < _NEAR
                return slow & near & finite & ~(-(g @ step) < tol) & jnp.any(lm & free)

            parts_u = _rescaled(parts, sx, jnp.where(lm, x * g, 0.0), structure)
            log = (parts_u, gu, use)
        step, step2, step_u, use_log = _direction(
            parts, g, x, free, lower_k, upper_k, structure, log
        )
        # Newton decrement over the free variables (>= 0: the modified Hessian is positive
        # definite): twice the predicted decrease of f; the KKT measure of convergence
        decrement = -(g @ step)
        converged = finite & (decrement < tol)
        if target is not None:  # a restart heading back to the minimum found before
            tx, active = target
            lands = jnp.all(jnp.abs(x + step - tx) <= _SAME_TOL * jnp.maximum(1.0, jnp.abs(tx)))
            same = active & finite & ~converged & (decrement < _SAME_DECREMENT) & lands
        else:
            same = jnp.zeros((), bool)

        # fallback when no Newton step decreases f (a modified Hessian far from the minimum
        # or a bound that the projection turns into an ascent): the projected, diagonally
        # scaled gradient path, which descends for a small enough step unless x is a KKT point
        scaled = -jnp.where(fixed, 0.0, g) / jnp.maximum(jnp.abs(_diagonal(parts, structure)), 1.0)
        n_sizes = len(_STEP_SIZES)

        # One backtracking loop, one evaluation of the objective in the compiled program
        # (its code is the bulk of the fit's, and compile time grows with it): rounds
        # 0 .. n_sizes - 1 try both projected Newton paths at once (the two candidates of
        # one step size per round, halving until one passes Armijo on the actual
        # displacement), plus, where the Newton phase is slow, the log candidate of the
        # same size; rounds n_sizes .. 2 n_sizes - 1 the gradient path. The rounds run only
        # while needed: a full Newton step, the common case, is one round
        def trial(k):
            newton = k < n_sizes
            t = ts[jnp.where(newton, k, k - n_sizes)]
            rows = jnp.where(newton, jnp.stack([step2, step]), scaled[None])
            cand = jnp.clip(x + t * rows, lower_k, upper_k)
            predicted = -((cand - x) @ g)
            if logscale is not None:
                cu = jnp.clip(u + t * step_u, lu, uu)
                with_log = newton & use_log
                cand = jnp.concatenate(
                    [cand, jnp.where(with_log, jnp.where(lm, jnp.exp(cu), cu), cand[0])[None]]
                )
                predicted = jnp.concatenate(
                    [predicted, jnp.where(with_log, -((cu - u) @ gu), predicted[0])[None]]
                )
            # each distinct candidate once, one after the other: the second path equals the
            # first unless a variable is held at a bound, and the log candidate runs only
            # where the Newton phase is slow (one evaluation in the common case, not three)
            distinct = jnp.concatenate([jnp.ones(1, bool), jnp.any(cand[1:] != cand[:1], axis=1)])
            if logscale is not None:
                distinct = distinct.at[2].set(with_log & distinct[2])
            order = jnp.argsort(~distinct, stable=True)
            n_eval = jnp.sum(distinct).astype(jnp.int32)

            def evaluate(c):
                i, f = c
                j = order[i]
                return i + 1, f.at[j].set(value(cand[j]))

            _, f_c = jax.lax.while_loop(
                lambda c: c[0] < n_eval,
                evaluate,
                (jnp.zeros((), jnp.int32), jnp.full(cand.shape[0], jnp.inf, cand.dtype)),
            )
            ok = jnp.isfinite(f_c) & (predicted > 0) & (f - f_c >= 1e-4 * predicted)
            best = jnp.argmin(jnp.where(ok, f_c, jnp.inf))
            return jnp.any(ok), cand[best]

        def ls_cond(c):
            k, found, _ = c
            return ~found & (k < 2 * n_sizes) & ~converged & finite & ~same

        def ls_body(c):
            k, _, _ = c
            found, xn = trial(k)
            return k + 1, found, xn

        _, found, x_new = jax.lax.while_loop(
            ls_cond, ls_body, (jnp.zeros((), jnp.int32), jnp.zeros((), bool), x)
        )
        # no step decreases f although the model predicts a decrease at the level of the
        # rounding errors of f itself: that is convergence (at the noise floor), not a failure
        noise = NOISE_REL * (1.0 + jnp.abs(f))
        at_noise = finite & ~converged & ~found & ~same & (decrement < noise)
        accept = finite & found & ~converged & ~same
        stalled = finite & ~found & ~converged & ~at_noise & ~same
        status = jnp.where(converged, CONVERGED, jnp.where(stalled, STALLED, s["status"]))
        status = jnp.where(at_noise, NOISE_FLOOR, jnp.where(same, SAME_MINIMUM, status))
        status = jnp.where(finite, status, NONFINITE)
        return dict(
            x=jnp.where(accept, x_new, x),
            x_eval=x,
            f=f,
            g=g,
            it=s["it"] + 1,
            done=converged | at_noise | stalled | same | ~finite,
            status=status.astype(jnp.int32),
            decrement=decrement,
        )

    s = jax.lax.while_loop(cond, body, init)
    # f and g belong to x_eval, the last point where they were computed: that is the solution
    # on convergence, and the last evaluated point when the step budget ran out.
    return MinimizeResult(s["x_eval"], s["f"], s["g"], s["it"], s["status"])


@eqx.filter_custom_vjp
def _minimize(diff, fun, lower, upper, fixed, logscale, structure, tol, max_steps, target, kinks):
    args, x0 = diff
    return _run(
        fun, args, x0, lower, upper, fixed, logscale, structure, tol, max_steps, target, kinks
    )


@_minimize.def_fwd
def _minimize_fwd(
    perturbed, diff, fun, lower, upper, fixed, logscale, structure, tol, max_steps, target, kinks
):
    args, x0 = diff
    res = _run(
        fun, args, x0, lower, upper, fixed, logscale, structure, tol, max_steps, target, kinks
    )
    return res, res


@_minimize.def_bwd
def _minimize_bwd(
    res, ct, perturbed, diff, fun, lower, upper, fixed, logscale, structure, tol, max_steps,
    target, kinks,
):  # fmt: skip
    args, _ = diff
    return implicit_vjp(res, ct, fun, args, lower, upper, fixed, structure, kinks)


def implicit_vjp(res: MinimizeResult, ct, fun, args, lower, upper, fixed, structure, kinks=None):
    """Cotangents ``(args_bar, x0_bar)`` of a minimum ``res`` of ``fun(x, args)`` (from any
    start: a search over several starts that keeps the lowest minimum has this derivative
    too) by the implicit function theorem: the gradient over the free variables vanishes at
    the minimum; variables at an active bound stay there, fixed ones follow their start, and
    so do parameters at their kink (``kinks``: a minimum at a kink stays there)."""
    x = jax.lax.stop_gradient(res.x)
    zero = jnp.zeros_like(x)
    xbar = zero if ct.x is None else ct.x
    fbar = jnp.zeros((), x.dtype) if ct.fun is None else ct.fun

    def grad_fn(y, a):
        return jax.grad(lambda z: fun(z, a))(y)

    free = _free_set(x, res.grad, lower, upper, fixed)
    if kinks is not None:
        free = free & ~(kinks & (x == 0))
    parts = hessian_parts(lambda y: grad_fn(y, args), x, structure)
    mparts, _, _ = _masked(parts, free, structure, jnp.zeros((), x.dtype))
    v = jnp.where(free, _solve(mparts, jnp.where(free, xbar, 0.0), structure), 0.0)
    _, vjp = jax.vjp(lambda a: (fun(x, a), grad_fn(x, a)), args)
    (args_bar,) = vjp((fbar, -v))
    hv = _matvec(parts, v, structure)
    x0_bar = jnp.where(fixed, xbar - hv + fbar * res.grad, 0.0)
    return (args_bar, x0_bar)


def minimize(
    fun,
    args,
    x0,
    lower,
    upper,
    fixed,
    structure: Structure | None = None,
    *,
    tol: float = 1e-12,
    max_steps: int = 200,
    logscale=None,
    target=None,
    kinks=None,
) -> MinimizeResult:
    """Minimise ``fun(x, args)`` within box bounds; differentiable in ``args`` and ``x0``.

    Args:
        fun: Scalar objective ``fun(x, args)`` (a hashable Python callable). It may have an
            attribute ``local(x, args, structure)`` returning ``(value, gradient, dense
            Hessian)`` at ``x``, or ``None`` where the solver's own Hessian (Hessian-vector
            products along the structure) is to be used.
        args: PyTree of arrays the objective depends on; gradients flow to its float leaves.
        x0: Starting point (values of fixed parameters are taken from here).
        lower, upper: Bounds, arrays like ``x0``.
        fixed: Boolean array; ``True`` holds the parameter at its ``x0`` value.
        structure: Sparsity of the Hessian (default: dense).
        tol: Stop when the predicted decrease of the objective is below ``tol``.
        max_steps: Maximum number of Newton steps.
        logscale: Boolean array (or None): parameters that act as positive factors (gammas,
            normfactors, lumi). Where one is positive and its lower bound is not negative,
            each step also tries the Newton step in ``log x`` (products of such factors,
            curved valleys in ``x``, are straight lines there) and keeps the lower value.
        target: ``(x_min, active)`` or None: a minimum found before (by another start) and
            whether to use it. Where ``active``, the run stops as soon as it is provably
            heading there (its full Newton step, with a decrement below 1e-3, lands within
            1e-5 of ``x_min``, relative, in every parameter) with status ``SAME_MINIMUM``,
            which is not a success: a restart that would only find the same minimum again
            costs one or two steps instead of four or more.
        kinks: Boolean array (or None): parameters whose objective has a kink at 0 (its
            derivative jumps there; normsys ``code1``, histosys ``code0``), with the left
            branch's derivatives at 0. Each step keeps such a parameter on one side of 0 (a
            step through it stops there) and, at 0, moves it to the side its slope descends
            to or holds it there where neither does: a minimum at the kink.

    Returns:
        :class:`MinimizeResult` with the solution, objective, gradient, number of steps and
        status (``CONVERGED``, ``NOISE_FLOOR`` (both a success, see :func:`is_success`),
        ``MAX_STEPS``, ``STALLED``, ``NONFINITE`` or ``SAME_MINIMUM``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> jax.config.update("jax_enable_x64", True)
        >>> f = lambda x, a: jnp.sum((x - a) ** 2)
        >>> r = minimize(f, jnp.array([0.5, 3.0]), jnp.zeros(2), jnp.zeros(2),
        ...              jnp.array([1.0, 2.0]), jnp.array([False, False]))
        >>> [float(v) for v in r.x]
        [0.5, 2.0]
    """
    x0 = jnp.asarray(x0)
    structure = structure or Structure.dense(x0.shape[-1])
    lower = jnp.asarray(lower, dtype=x0.dtype)
    upper = jnp.asarray(upper, dtype=x0.dtype)
    fixed = jnp.asarray(fixed, dtype=bool)
    if logscale is not None:
        logscale = jnp.asarray(logscale, dtype=bool)
    if target is not None:
        tx, active = target
        target = (jax.lax.stop_gradient(jnp.asarray(tx, x0.dtype)), jnp.asarray(active, bool))
    if kinks is not None:
        kinks = jnp.asarray(kinks, dtype=bool)
    return _minimize(
        (args, x0), fun, lower, upper, fixed, logscale, structure, tol, max_steps, target, kinks
    )
