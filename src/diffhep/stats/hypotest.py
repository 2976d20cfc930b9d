"""Profile-likelihood test statistics and asymptotic CLs (arXiv:1007.1727).

Definitions follow pyhf (``pyhf.infer.test_statistics``, ``pyhf.infer.calculators``):

- ``tmu``/``tmu_tilde`` = -2 ln lambda(mu) (eq. 8 / 11), clipped at 0; "tilde" variants are
  the same formula with the POI bounded below at 0 (the model's suggested bounds);
- ``qmu``/``qmu_tilde`` (eq. 14 / 16) = tmu, set to 0 when mu_hat > mu;
- ``q0`` (eq. 12) = t0, set to 0 when mu_hat < 0.

The asymptotic calculator uses the Asimov dataset of the background-only hypothesis (signal
for ``q0``), generated with the nuisance parameters fitted to the observed data, exactly as
pyhf does. Every function is differentiable (fits use implicit differentiation) and runs
under ``jit``/``vmap``.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> import diffhep
    >>> ws = diffhep.Workspace(diffhep.stats.workspace.example_spec())
    >>> model = ws.model()
    >>> r = diffhep.stats.hypotest.hypotest(1.0, model, ws.data(model))
    >>> round(float(r.cls_obs), 6)
    0.052516
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import exported
from .fit import DEFAULT_MAX_STEPS, DEFAULT_TOL, FitResult, fit_bounded, fit_defaults, poi_index
from .model import Model
from .numerics import branch, safe_sqrt

__all__ = [
    "DiscoveryResult",
    "HypotestResult",
    "asimov_data",
    "discovery",
    "hypotest",
    "q0",
    "qmu",
    "qmu_tilde",
    "test_statistic",
    "tmu",
    "tmu_tilde",
]

TEST_STATS = ("qtilde", "q", "q0", "tmu", "tmu_tilde")
_NSIGMA = np.asarray([2.0, 1.0, 0.0, -1.0, -2.0])  # numpy: no computation at import


def _fit_one(model, data, value, free, again, init, lower, upper, fixed, tol, max_steps):
    """One fit of a hypothesis test from ``init``: the POI free where ``free``, else fixed at
    ``value``; ``again`` allows the restarts (all may be traced)."""
    poi = poi_index(model)
    x0 = jnp.where(free, init, init.at[poi].set(value))
    fx = fixed.at[poi].set(~free)
    return fit_bounded(
        model, data, x0, lower, upper, fx, tol, max_steps, uncertainties=False, restart=again
    )


def _fits(
    model, data, poi_values, free_poi, init, lower, upper, fixed, tol, max_steps, restart=None
):
    """Several fits of one dataset, one after the other in one compiled loop
    (``lax.map``): POI fixed at ``poi_values`` unless ``free_poi``; ``restart`` (per fit,
    default all) allows the restart for several minima (:func:`fit_bounded`).

    A loop, not ``vmap``: the fits then stop independently, and tracing and compiling a
    batched while loop costs about twice as much (measured on the 50-bin benchmark model).
    """

    def one(args):
        value, free, again = args
        return _fit_one(model, data, value, free, again, init, lower, upper, fixed, tol, max_steps)

    free_poi = jnp.asarray(free_poi)
    restart = jnp.ones(free_poi.shape, bool) if restart is None else jnp.asarray(restart)
    return jax.lax.map(one, (jnp.asarray(poi_values, dtype=init.dtype), free_poi, restart))


def _profile(mu, model, data, init, lower, upper, fixed, tol, max_steps, extra):
    """The fit at ``mu``, the free fit and a fit at ``extra`` (the Asimov value) of one
    dataset, in one compiled loop (``lax.scan``), and the free fit again where it missed its
    minimum (:func:`_repair_start`). Returns the three fits and whether the free fit still
    ends above a fixed one (not converged)."""
    zero = jnp.zeros_like(mu)
    values = jnp.stack([mu, zero, jnp.asarray(extra, mu.dtype), zero])
    free = jnp.asarray([False, True, False, True])
    repairs = jnp.asarray([False, False, False, True])

    def step(carry, xs):
        free_fit, low_x, low_nll = carry
        value, fr, rep = xs
        missed, start = _repair_start(rep, free_fit, low_x, low_nll, init, fixed)

        def run():
            return _fit_one(model, data, value, fr, True, start, lower, upper, fixed, tol,
                            max_steps)  # fmt: skip

        res = branch(~rep | missed, run, lambda: _skipped(free_fit))
        carry = _keep(res, fr, rep, missed, True, free_fit, low_x, low_nll)
        return carry, res

    carry = (_empty_fit(init, model), init, jnp.full((), jnp.inf, init.dtype))
    (free_fit, _, low_nll), res = jax.lax.scan(step, carry, (values, free, repairs))
    pick = lambda i: jax.tree.map(lambda a: a[i], res)  # noqa: E731
    return pick(0), free_fit, pick(2), _missed(free_fit.twice_nll, low_nll)


def _repair_start(rep, free_fit, low_x, low_nll, start, fixed):
    """Whether a repair slot (``rep``) runs the free fit again, and its start.

    A free fit of the data whose ``-2 ln L`` exceeds that of a fit of the same data with the
    POI fixed (held at its value clipped to the bounds: a point of the free fit's domain)
    missed its minimum: that fit's best fit (``low_x``, the lowest of them, ``low_nll``) is
    a start of the free fit lower than where it ended. It runs again from there (its
    restarts on), only where it missed (2 of 1,600 random 4-bin models with histosys
    variations of 0.6-1.4x the nominal: 2.42 and 0.11 above; q clipped to 0, and 34.19
    instead of 34.31). A miss that no fixed fit undercuts is not seen (a review's fuzz: 6
    of 5,000 such models, 2 of them at mu_hat = 0, where the fit there with or without
    restarts ended where the free fit did)."""
    missed = rep & _missed(free_fit.twice_nll, low_nll)
    return missed, jnp.where(missed & ~fixed, jax.lax.stop_gradient(low_x), start)


def _skipped(free_fit):
    """What a repair slot gives where the free fit did not miss: no fit, no steps."""
    return free_fit._replace(n_steps=jnp.zeros_like(free_fit.n_steps))


def _keep(res, fr, rep, missed, data_fit, free_fit, low_x, low_nll):
    """The free fit of the data (replaced by its repair where that converged lower) and the
    lowest fixed-POI fit of the data so far (its best fit and ``-2 ln L``) after fit ``res``
    of a slot of the fits' scan (``fr``: free; ``rep``: a repair; ``data_fit``: of the data)."""
    repaired = missed & res.converged & (res.twice_nll < free_fit.twice_nll)
    better = (fr & data_fit & ~rep) | repaired
    free_fit = jax.tree.map(lambda new, old: jnp.where(better, new, old), res, free_fit)
    lower_fixed = ~fr & data_fit & (res.twice_nll < low_nll)
    low_x = jnp.where(lower_fixed, res.bestfit, low_x)
    low_nll = jnp.where(lower_fixed, res.twice_nll, low_nll)
    return free_fit, low_x, low_nll


def _stat_from_fits(name, mu, fixed_fit, free_fit, poi):
    t = jnp.clip(fixed_fit.twice_nll - free_fit.twice_nll, 0.0)
    muhat = free_fit.bestfit[poi]
    if name in ("q", "qtilde"):
        return jnp.where(muhat > mu, 0.0, t)
    if name == "q0":
        return jnp.where(muhat < 0, 0.0, t)
    return t


def test_statistic(
    name,
    mu,
    model: Model,
    data,
    init=None,
    bounds=None,
    fixed=None,
    *,
    tol=DEFAULT_TOL,
    max_steps=DEFAULT_MAX_STEPS,
):
    """Value of a test statistic: ``qtilde``, ``q``, ``q0``, ``tmu``, ``tmu_tilde``."""
    if name not in TEST_STATS:
        raise ValueError(f"unknown test statistic {name!r}; use one of {TEST_STATS}")
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, model.nominal.dtype)
    data = jnp.asarray(data, dtype=init.dtype)
    mu = jnp.asarray(0.0 if name == "q0" else mu, dtype=init.dtype)
    return exported.compiled(_statistic_kernel, model, mu, data, init, lower, upper, fixed,
                             name=name, tol=tol, max_steps=max_steps)  # fmt: skip


def _statistic_kernel(model, mu, data, init, lower, upper, fixed, *, name, tol, max_steps):
    # a fit at the Asimov value too, as in hypotest: a free fit that ended above it missed
    # its minimum (_repair_start), and the statistic is the hypothesis test's. It costs a
    # third fit (sbottom RegionA: ~7.5 -> ~11 ms warm, test_statistic q0 and qtilde)
    other = jnp.asarray(1.0 if name == "q0" else 0.0, mu.dtype)
    fixed_fit, free_fit, _, _ = _profile(mu, model, data, init, lower, upper, fixed, tol,
                                         max_steps, extra=other)  # fmt: skip
    return _stat_from_fits(name, mu, fixed_fit, free_fit, poi_index(model))


def qmu(mu, model, data, init=None, bounds=None, fixed=None):
    """q_mu, eq. (14) of arXiv:1007.1727."""
    return test_statistic("q", mu, model, data, init, bounds, fixed)


def qmu_tilde(mu, model, data, init=None, bounds=None, fixed=None):
    """q~_mu, eq. (16) of arXiv:1007.1727 (POI bounded below at 0)."""
    return test_statistic("qtilde", mu, model, data, init, bounds, fixed)


def tmu(mu, model, data, init=None, bounds=None, fixed=None):
    """t_mu = -2 ln lambda(mu), eq. (8) of arXiv:1007.1727."""
    return test_statistic("tmu", mu, model, data, init, bounds, fixed)


def tmu_tilde(mu, model, data, init=None, bounds=None, fixed=None):
    """t~_mu, eq. (11) of arXiv:1007.1727."""
    return test_statistic("tmu_tilde", mu, model, data, init, bounds, fixed)


def q0(model, data, init=None, bounds=None, fixed=None):
    """q_0 for discovery, eq. (12) of arXiv:1007.1727."""
    return test_statistic("q0", 0.0, model, data, init, bounds, fixed)


def asimov_data(asimov_mu, model: Model, data, init=None, bounds=None, fixed=None):
    """Asimov dataset (main + auxiliary) with nuisances fitted to ``data`` at ``asimov_mu``."""
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, model.nominal.dtype)
    data = jnp.asarray(data, dtype=init.dtype)
    mu = jnp.asarray(asimov_mu, dtype=init.dtype)
    return exported.compiled(_asimov_kernel, model, mu, data, init, lower, upper, fixed)


def _asimov_kernel(model, mu, data, init, lower, upper, fixed):
    res = _fits(model, data, mu[None], jnp.asarray([False]), init, lower, upper, fixed,
                DEFAULT_TOL, DEFAULT_MAX_STEPS)  # fmt: skip
    return model.expected_data(res.bestfit[0])


#: The significances of a test result (:class:`HypotestResult`, :class:`DiscoveryResult`).
_SIGNIFICANCE = property(
    lambda r: safe_sqrt(r.teststat), doc="Observed significance sqrt(q) (Z0 for ``q0``)."
)
_EXPECTED_SIGNIFICANCE = property(
    lambda r: safe_sqrt(r.teststat_asimov),
    doc="Median expected significance sqrt(q_A) (q on the Asimov data; Z for ``q0``).",
)


class HypotestResult(NamedTuple):
    """Asymptotic hypothesis test at one POI value (pyhf's ``hypotest`` outputs).

    For ``q0`` the "CLs" fields hold the discovery p-value p0 (as pyhf returns CLsb).
    """

    cls_obs: jax.Array
    cls_exp: jax.Array  # (5,) for -2, -1, 0, +1, +2 sigma (pyhf's order: 2, 1, 0, -1, -2)
    clsb_obs: jax.Array
    clb_obs: jax.Array
    clsb_exp: jax.Array
    teststat: jax.Array  # observed test statistic (q)
    teststat_asimov: jax.Array  # test statistic on the Asimov data (q_A)
    converged: jax.Array  # all fits converged
    n_clipped: jax.Array  # bins clipped to the Poisson floor in any fit
    bestfit: jax.Array  # unconditional best fit to the data

    significance = _SIGNIFICANCE
    expected_significance = _EXPECTED_SIGNIFICANCE


def hypotest(
    poi_test,
    model: Model,
    data,
    init=None,
    bounds=None,
    fixed=None,
    *,
    test_stat: str = "qtilde",
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> HypotestResult:
    """Asymptotic CLs (or p0 for ``q0``) with the expected band, as ``pyhf.infer.hypotest``.

    ``hypotest(poi_test, data, model)`` (pyhf's argument order) is accepted too.

    Args:
        poi_test: Tested POI value (ignored for ``q0``, which tests mu = 0).
        model: The model.
        data: Observed main + auxiliary data.
        init, bounds, fixed: Override the suggested values.
        test_stat: ``qtilde`` (default), ``q`` or ``q0``.
    """
    if not isinstance(model, Model) and isinstance(data, Model):
        # pyhf.infer.hypotest(poi, data, pdf): the order pyhf's users write
        model, data = data, model
    elif not isinstance(model, Model):
        raise TypeError(
            f"hypotest(poi_test, model, data): model must be a diffhep Model, got "
            f"{type(model).__name__} (pyhf's order hypotest(poi, data, pdf) is accepted too)"
        )
    if test_stat not in ("qtilde", "q", "q0"):
        raise ValueError(f"test_stat must be 'qtilde', 'q' or 'q0', not {test_stat!r}")
    poi_index(model)  # a model without a POI: the error before anything is compiled
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, model.nominal.dtype)
    data = jnp.asarray(data, dtype=init.dtype)
    mu = jnp.asarray(0.0 if test_stat == "q0" else poi_test, dtype=init.dtype)
    out = exported.compiled(_hypotest_kernel, model, mu, data, init, lower, upper, fixed,
                            test_stat=test_stat, tol=tol, max_steps=max_steps)  # fmt: skip
    return HypotestResult(*out)


#: A free fit of the data whose -2 ln L exceeds that of a fit of the same data with the POI
#: fixed by more than this (absolute, plus 1e-9 relative) missed its minimum
#: (:func:`_hypotest_kernel`); converged fits of one minimum differ by rounding (~1e-10)
_MISSED_BY = 1e-6


def _missed(free_nll, fixed_nll):
    """Whether a free fit (``-2 ln L``) ended above a fixed-POI fit of the same data."""
    return free_nll > fixed_nll + _MISSED_BY + 1e-9 * jnp.abs(free_nll)


def _empty_fit(init, model):
    """Zeros shaped as the fits' results (the scan's carry before the free fit ran; its
    structure written out: ``jax.eval_shape`` of a fit would trace a whole solver run)."""
    count = jnp.zeros((), jnp.int32)
    n_clipped = jnp.zeros((), jax.eval_shape(model.n_clipped, init).dtype)
    zeros = jnp.zeros_like(init)
    return FitResult(zeros, zeros, jnp.zeros((), init.dtype), count, count, n_clipped,
                     jnp.zeros(init.shape, bool))  # fmt: skip


def _hypotest_kernel(model, mu, data, init, lower, upper, fixed, *, test_stat, tol, max_steps):
    """The fits and the CLs values of :func:`hypotest` (a tuple of its fields)."""
    poi = poi_index(model)
    is_q0 = test_stat == "q0"
    asimov_mu = 1.0 if is_q0 else 0.0

    # The fits as one compiled loop body (lax.scan): on the observed data the POI fixed at mu,
    # free, and fixed at the Asimov value; the free fit again where it missed its minimum
    # (below); then, on the Asimov data generated by the fit at the Asimov value and from its
    # best fit (the origin), the POI fixed at mu and free. The free fit of the Asimov data
    # starts at its global minimum (every term of log L is at its maximum at the origin): it
    # does not restart (issue 20: restarts cost up to 2.7x on sbottom RegionA when all fits
    # did). One loop body holds one copy of the fit's code (two stages of three fits, as
    # before 2026-12-05, compiled 1.71 instead of 1.47 MB of optimised HLO on sbottom RegionA).
    values = jnp.stack(
        [mu, jnp.zeros_like(mu), jnp.full_like(mu, asimov_mu), jnp.zeros_like(mu), mu,
         jnp.zeros_like(mu)]
    )  # fmt: skip
    free = jnp.asarray([False, True, False, True, False, True])
    restarts = jnp.asarray([True, True, True, True, True, False])
    generates = jnp.asarray([False, False, True, False, False, False])  # the Asimov data's origin
    # Where the free fit of the data ended at the Asimov value (mu_hat at its bound 0, as at
    # most excluded points), the free fit's search (its restarts) covered the fit there: that
    # runs from the suggested values without restarts, and the lower of it and the free fit's
    # minimum is the fit at the Asimov value (the free fit's unless the other is lower by more
    # than rounding: sbottom RegionA at mu = 1, 36 Newton steps in all, 39 with restarts). Before
    # 2026-12-07 it inherited the free fit's minimum alone (31 steps): where the free fit had
    # missed its minimum, so had this fit, and the repair below had no fit to compare with
    # (1 of 3,000 random 4-bin models: free and fixed fits at 30.426 instead of 30.015, q
    # 3.86 instead of 4.27, converged). The other fits start at the suggested values too (a
    # free fit started where the fixed one ended can stay in that basin and end above the fit
    # from the start: a review's random models, 2.35 in -2 ln L above the test's own fit at
    # mu = 0, CLs 0.289 instead of 0.065)
    inherits = jnp.asarray([False, False, True, False, False, False])
    # The free fit of the data again where it ended above a fixed fit of the data
    # (:func:`_repair_start`), kept where it ends lower
    repairs = jnp.asarray([False, False, False, True, False, False])
    on_data = jnp.asarray([True, True, True, True, False, False])

    def step(carry, xs):
        asimov_data, asimov_origin, last, last_free, last_ok, free_fit, low_x, low_nll = carry
        value, fr, again, gen, inh, rep, data_fit = xs
        dataset = jnp.where(data_fit, data, asimov_data)
        origin = jnp.where(data_fit, init, asimov_origin)
        covered = inh & last_free & last_ok & ~fr & (last[poi] == value)
        missed, start = _repair_start(rep, free_fit, low_x, low_nll, origin, fixed)

        def run():
            return _fit_one(model, dataset, value, fr, again & ~covered, start, lower, upper,
                            fixed, tol, max_steps)  # fmt: skip

        res = branch(~rep | missed, run, lambda: _skipped(free_fit))
        inherit = covered & ~_missed(free_fit.twice_nll, res.twice_nll)
        kept = free_fit._replace(n_steps=res.n_steps)
        res = jax.tree.map(lambda a, b: jnp.where(inherit, a, b), kept, res)
        free_fit, low_x, low_nll = _keep(res, fr, rep, missed, data_fit, free_fit, low_x, low_nll)
        asimov_data = jnp.where(gen, model.expected_data(res.bestfit), asimov_data)
        asimov_origin = jnp.where(gen, res.bestfit, asimov_origin)
        carry = (asimov_data, asimov_origin, res.bestfit, fr, res.converged, free_fit, low_x,
                 low_nll)  # fmt: skip
        return carry, res

    no = jnp.zeros((), bool)
    inf = jnp.full((), jnp.inf, init.dtype)
    carry = (data, init, init, no, no, _empty_fit(init, model), init, inf)
    xs = (values, free, restarts, generates, inherits, repairs, on_data)
    carry, res = jax.lax.scan(step, carry, xs)
    free_d, low_nll = carry[5], carry[7]
    pick = lambda i: jax.tree.map(lambda a: a[i], res)  # noqa: E731
    fixed_d, asimov_fit, fixed_a, free_a = (pick(i) for i in (0, 2, 4, 5))

    q = _stat_from_fits(test_stat, mu, fixed_d, free_d, poi)
    qA = _stat_from_fits(test_stat, mu, fixed_a, free_a, poi)
    sq, sqA = safe_sqrt(q), safe_sqrt(qA)
    if test_stat in ("q", "q0"):
        stat = sq - sqA
    else:
        safe_sqA = jnp.where(sqA > 0, sqA, 1.0)
        stat = jnp.where(sq <= sqA, sq - sqA, (q - qA) / (2.0 * safe_sqA))
    # lazily: a command that loads its kernel needs none
    from jax.scipy.special import log_ndtr

    # the tail probabilities as logarithms: CLs is their ratio, which stays finite where both
    # underflow (a strong deficit: CLsb and CLb below 1e-308, CLs = 0/0 was NaN)
    log_clsb, log_clb = log_ndtr(-(stat + sqA)), log_ndtr(-stat)
    log_clsb_exp = log_ndtr(-(_NSIGMA.astype(init.dtype) + sqA))
    log_clb_exp = log_ndtr(-_NSIGMA.astype(init.dtype))
    clsb, clb, clsb_exp = jnp.exp(log_clsb), jnp.exp(log_clb), jnp.exp(log_clsb_exp)
    cls_obs = clsb if is_q0 else _cls(log_clsb, log_clb)
    cls_exp = clsb_exp if is_q0 else _cls(log_clsb_exp, log_clb_exp)
    fits = (fixed_d, free_d, asimov_fit, fixed_a, free_a)
    missed = _missed(free_d.twice_nll, low_nll)  # still above a fixed fit: not converged
    converged = jnp.all(jnp.stack([f.converged for f in fits])) & ~missed
    # a number that is not one (NaN from a non-finite fit) is never reported as converged
    converged = converged & jnp.isfinite(cls_obs) & jnp.all(jnp.isfinite(cls_exp))
    n_clipped = jnp.max(jnp.stack([f.n_clipped for f in fits]))
    return (cls_obs, cls_exp, clsb, clb, clsb_exp, q, qA, converged, n_clipped, free_d.bestfit)


def _cls(log_clsb, log_clb):
    """CLs = CLsb / CLb from their logarithms, at most 1.

    CLsb <= CLb (sqrt(q_A) >= 0), so CLs <= 1; at q_A = 0 (mu = 0) the two are equal and their
    ratio is 1 only up to rounding: compiled, the numerator and denominator are computed apart
    (``diffhep cls --poi-value 0`` printed CLs_exp 1.0000000000000004, a probability above 1).
    From the logarithms the ratio stays finite where both underflow: one Poisson bin observing
    5e5 events on a background of 1e6 and a signal of 1e4 has q = 10049.67, CLs = exp(-5024.85)
    = 0 (the ratio of the probabilities was 0/0 = NaN, reported as converged, and
    ``upper_limit`` read it as not excluded: h6-fuzz).
    """
    return jnp.exp(jnp.minimum(log_clsb - log_clb, 0.0))


class DiscoveryResult(NamedTuple):
    """Discovery test (q0) of the background-only hypothesis.

    Attributes:
        p0: Observed p-value of the background-only hypothesis.
        p0_exp: Expected p0 for the -2, -1, 0, +1, +2 sigma bands of the signal hypothesis
            (pyhf's order; the median is ``p0_exp[2]``).
        teststat: Observed q0; ``teststat_asimov``: q0 on the signal Asimov data.
        converged, n_clipped, bestfit: As :class:`HypotestResult`.
    """

    p0: jax.Array
    p0_exp: jax.Array
    teststat: jax.Array
    teststat_asimov: jax.Array
    converged: jax.Array
    n_clipped: jax.Array
    bestfit: jax.Array

    significance = _SIGNIFICANCE
    expected_significance = _EXPECTED_SIGNIFICANCE


def discovery(model: Model, data, init=None, bounds=None, fixed=None) -> DiscoveryResult:
    """Discovery test (q0): p0 and its expected band, Z0 = ``significance``, expected Z =
    ``expected_significance``."""
    r = hypotest(0.0, model, data, init, bounds, fixed, test_stat="q0")
    return DiscoveryResult(
        r.cls_obs, r.cls_exp, r.teststat, r.teststat_asimov, r.converged, r.n_clipped, r.bestfit
    )
