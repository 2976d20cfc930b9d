"""Analysis sensitivity measures as differentiable functions (the training objectives).

Two kinds, on the same footing (scalars to minimise or metrics to report):

- **likelihood based**, functions of a :class:`~diffhep.Model` whose templates come from
  histograms: :func:`expected_cls` (median expected CLs at mu = 1 on the background-only
  Asimov data, ``qmu_tilde``), :func:`discovery_significance` (median expected Z0 from ``q0``
  on the signal-plus-background Asimov data), :func:`sigma_mu` (the POI's standard deviation
  from the inverse Fisher information with the nuisance parameters, as INFERNO), and the
  nuisance-parameter terms of :mod:`diffhep.analysis.nuisance`: :func:`sigma_theta` (a
  parameter's post-fit width over its pre-fit width), :func:`nuisance_pull` (its pull in
  the expected-CLs profile fit) and :func:`impact` (``rho * sigma_mu``). Each needs at most
  one profile fit, differentiated implicitly; on an Asimov dataset the unconditional fit is
  known exactly (the generating parameters), so it is not run.
- **event based**: :func:`binary_cross_entropy` on logits; the soft-yield losses of the
  Elwood-Kruecker talk, :func:`inverse_s_over_sqrt_s_plus_b` (``(s+b)/s^2``),
  :func:`b_over_s2` and :func:`inverse_asimov_significance` (``1/Z_A`` with a relative
  background uncertainty; :func:`asimov_significance` is Z_A itself, Cowan et al.,
  arXiv:1007.1727). The soft yields enter as ``s + YIELD_EPS`` and ``b + YIELD_EPS``, so
  these losses and their gradients stay finite when a selection keeps nothing; a soft yield
  made negative by negative event weights is floored at 0 first (no gradient flows there;
  ``Z_A`` would be NaN and ``b / s^2`` unbounded below).

Example:
    >>> round(float(asimov_significance(14.0, 5.0, 0.3 * 5.0)), 6)
    3.614964
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import log_ndtr, ndtr

from ..stats.fit import (
    DEFAULT_MAX_STEPS,
    DEFAULT_TOL,
    fit_bounded,
    fit_defaults,
    poi_index,
)
from ..stats.model import Model
from ..stats.numerics import safe_sqrt
from ..stats.uncertainties import covariance
from ..stats.uncertainties import fisher_information as _fisher_information

__all__ = [
    "YIELD_EPS",
    "asimov_significance",
    "b_over_s2",
    "binary_cross_entropy",
    "discovery_significance",
    "expected_cls",
    "impact",
    "inverse_asimov_significance",
    "inverse_s_over_sqrt_s_plus_b",
    "log_expected_cls",
    "nominal_pars",
    "nuisance_pull",
    "prefit_width",
    "profile_fit",
    "sigma_mu",
    "sigma_theta",
]


def _soft_yields(s, b):
    """``max(s, 0) + YIELD_EPS`` and the same for ``b`` (signed weights can make them < 0)."""
    s, b = jnp.asarray(s), jnp.asarray(b)
    return jnp.where(s >= 0, s, 0.0) + YIELD_EPS, jnp.where(b >= 0, b, 0.0) + YIELD_EPS


def nominal_pars(model: Model, mu) -> jax.Array:
    """The model's suggested parameters with the POI set to ``mu`` (the Asimov origin)."""
    init = jnp.asarray(model.config.init, dtype=model.nominal.dtype)
    return init.at[poi_index(model)].set(mu)


def _profiled_q(model: Model, mu_asimov, mu_test, tol, max_steps):
    """``-2 ln lambda(mu_test)`` on the Asimov data of ``mu_asimov`` (nominal nuisances).

    The unconditional fit of an Asimov dataset is its origin, so one fit (POI fixed at
    ``mu_test``) suffices. Returns the test statistic and whether that fit converged.
    """
    q, res = profile_fit(model, mu_asimov, mu_test, tol=tol, max_steps=max_steps)
    return q, res.converged


def profile_fit(
    model: Model, mu_asimov=0.0, mu_test=1.0, *, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS
):
    """The fit with the POI fixed at ``mu_test`` on the Asimov data of ``mu_asimov`` (nominal
    nuisances): ``(-2 ln lambda(mu_test) clipped at 0, FitResult)``. With the defaults it is
    the fit of :func:`expected_cls`; :func:`nuisance_pull` reads its parameters."""
    origin = nominal_pars(model, mu_asimov)
    data = model.expected_data(origin)
    init, lower, upper, fixed = fit_defaults(model, None, None, None, model.nominal.dtype)
    poi = poi_index(model)
    res = fit_bounded(
        model,
        data,
        init.at[poi].set(mu_test),
        lower,
        upper,
        fixed.at[poi].set(True),
        tol,
        max_steps,
        uncertainties=False,
    )
    q = res.twice_nll - model.twice_nll(origin, data)
    return jnp.clip(q, 0.0), res


def expected_cls(
    model: Model, mu=1.0, *, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS, profiled=None
):
    """Median expected CLs of ``mu`` under the background-only hypothesis (``qmu_tilde``).

    On the background-only Asimov data the observed and Asimov test statistics coincide,
    so CLs = CLsb / CLb = Phi(-sqrt(q_A)) / (1/2). This equals ``cls_exp[2]`` of
    :func:`diffhep.stats.hypotest.hypotest` (and pyhf's) on that dataset. ``profiled``: the
    :func:`profile_fit` of ``(model, 0, mu)`` if already computed (it is reused).
    """
    q, _ = profiled if profiled is not None else _profiled_q(model, 0.0, mu, tol, max_steps)
    return 2.0 * ndtr(-safe_sqrt(q))


def log_expected_cls(
    model: Model, mu=1.0, *, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS, profiled=None
):
    """``log`` of :func:`expected_cls`, ``log 2 + log Phi(-sqrt(q_A))`` (stable in the tail).

    The same minimum as expected CLs, but its gradient is the CLs gradient divided by CLs, so
    it does not shrink as CLs falls (at CLs ~ 1e-6 the gradient of CLs itself is ~1e-6 of
    the log's, which brings many network weights' gradients near Adam's ``eps``).
    """
    q, _ = profiled if profiled is not None else _profiled_q(model, 0.0, mu, tol, max_steps)
    return jnp.log(2.0) + log_ndtr(-safe_sqrt(q))


def discovery_significance(model: Model, *, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
    """Median expected discovery significance Z0 = sqrt(q0) on the mu = 1 Asimov data."""
    q, _ = _profiled_q(model, 1.0, 0.0, tol, max_steps)
    return safe_sqrt(q)


def fisher_covariance(model: Model, mu=1.0) -> jax.Array:
    """Covariance of all parameters from the inverse Fisher information at the nominal
    point with POI ``mu`` (fixed parameters have zero rows and columns)."""
    info = _fisher_information(model, nominal_pars(model, mu))
    return covariance(info, jnp.asarray(model.config.fixed))


def sigma_mu(model: Model, mu=1.0, cov=None) -> jax.Array:
    """Expected standard deviation of the POI with nuisances profiled (INFERNO's objective):
    ``sqrt(inverse Fisher information[poi, poi])`` at the nominal point. ``cov``: the
    :func:`fisher_covariance` if already computed."""
    cov = fisher_covariance(model, mu) if cov is None else cov
    poi = poi_index(model)
    return safe_sqrt(cov[poi, poi])


def prefit_width(model: Model, index: int) -> jax.Array:
    """Pre-fit width of parameter ``index``: ``1 / sqrt`` of its constraint term's curvature
    at the nominal point (sigma of a Gaussian constraint, ``1 / sqrt(factor)`` of a Poisson
    one; staterror widths follow the templates). 1 for an unconstrained parameter (its
    widths are then absolute)."""
    nominal = nominal_pars(model, 1.0)
    aux = model.expected_auxdata(nominal)

    def nll(t):
        return -model.constraint_logpdf(aux, nominal.at[index].set(t))

    curvature = jax.grad(jax.grad(nll))(nominal[index])
    return jnp.where(curvature > 0, 1.0 / safe_sqrt(jnp.where(curvature > 0, curvature, 1.0)), 1.0)


def sigma_theta(model: Model, index: int, mu=1.0, cov=None) -> jax.Array:
    """Post-fit width of parameter ``index`` (inverse Fisher information at the nominal point
    with POI ``mu``, as :func:`sigma_mu`) over its :func:`prefit_width`: 1 when the data add
    nothing to the constraint, < 1 when the analysis constrains it. ``cov``: the
    :func:`fisher_covariance` if already computed."""
    cov = fisher_covariance(model, mu) if cov is None else cov
    return safe_sqrt(cov[index, index]) / prefit_width(model, index)


def impact(model: Model, index: int, mu=1.0, cov=None) -> jax.Array:
    """Shift of mu-hat when parameter ``index`` moves by its post-fit one sigma and the others
    are profiled, to first order: ``cov[mu, theta] / sigma_theta = rho * sigma_mu`` (signed),
    from the inverse Fisher information at the nominal point with POI ``mu``. The refit impact
    of a ranking (theta fixed at +-1 sigma, refit) agrees with it where the likelihood is
    quadratic in (mu, theta)."""
    cov = fisher_covariance(model, mu) if cov is None else cov
    poi = poi_index(model)
    width = safe_sqrt(cov[index, index])
    return cov[poi, index] / jnp.where(width > 0, width, 1.0)


def nuisance_pull(
    model: Model,
    index: int,
    mu_asimov=0.0,
    mu_test=1.0,
    *,
    tol=DEFAULT_TOL,
    max_steps=DEFAULT_MAX_STEPS,
    profiled=None,
) -> jax.Array:
    """Pull ``(theta_hat - theta_0) / prefit_width`` of parameter ``index`` in the fit with
    the POI fixed at ``mu_test`` on the Asimov data of ``mu_asimov`` (the defaults: the fit of
    :func:`expected_cls`; a nuisance that can mimic the signal is pulled to absorb it).
    Differentiated implicitly through the fit. ``profiled``: that :func:`profile_fit`."""
    if profiled is None:
        profiled = profile_fit(model, mu_asimov, mu_test, tol=tol, max_steps=max_steps)
    theta = profiled[1].bestfit[index]
    return (theta - nominal_pars(model, mu_asimov)[index]) / prefit_width(model, index)


def binary_cross_entropy(logits_signal, w_signal, logits_background, w_background):
    """Class-balanced weighted binary cross-entropy on logits (signal = 1).

    Each class's weights are normalised to sum to one, so the classes weigh equally
    whatever their yields. Negative weights enter with their sign.
    """
    ls = optax.sigmoid_binary_cross_entropy(logits_signal, jnp.ones_like(logits_signal))
    lb = optax.sigmoid_binary_cross_entropy(logits_background, jnp.zeros_like(logits_background))
    ws = w_signal / jnp.sum(w_signal)
    wb = w_background / jnp.sum(w_background)
    return jnp.sum(ws * ls) + jnp.sum(wb * lb)


#: Expected events added to the soft yields of the event-based losses (finite at s, b = 0).
YIELD_EPS = 1e-6


def inverse_s_over_sqrt_s_plus_b(s, b):
    """``(s + b) / s^2`` = 1 / (s / sqrt(s + b))^2: minimising it maximises s/sqrt(s+b)."""
    s, b = _soft_yields(s, b)
    return (s + b) / s**2


def b_over_s2(s, b):
    """``b / s^2``: minimising it maximises s / sqrt(b)."""
    s, b = _soft_yields(s, b)
    return b / s**2


def inverse_asimov_significance(s, b, rel_uncertainty):
    """``1 / Z_A`` with background uncertainty ``rel_uncertainty * b``: the talk's Asimov loss."""
    s, b = _soft_yields(s, b)
    return 1.0 / asimov_significance(s, b, rel_uncertainty * b)


def asimov_significance(s, b, sigma_b):
    """Median discovery significance Z_A of a counting experiment with background
    uncertainty ``sigma_b`` (Cowan et al.; the formula of the Elwood-Kruecker talk), b > 0.

    Z_A = sqrt(2 ((s+b) ln[(s+b)(b+sb^2) / (b^2+(s+b) sb^2)] - b^2/sb^2 ln[1 + sb^2 s/(b(b+sb^2))]))

    and, at ``sigma_b = 0``, its limit sqrt(2 ((s+b) ln(1 + s/b) - s)).
    """
    s, b, sb2 = jnp.asarray(s), jnp.asarray(b), jnp.asarray(sigma_b) ** 2
    exact = sb2 > 0
    sb2 = jnp.where(exact, sb2, 1.0)
    # ln[(s+b)(b+sb2) / (b^2+(s+b)sb2)] = ln(1 + s b / (b^2+(s+b)sb2)): exact for s << b
    t1 = (s + b) * jnp.log1p(s * b / (b**2 + (s + b) * sb2))
    t2 = b**2 / sb2 * jnp.log1p(sb2 * s / (b * (b + sb2)))
    limit = (s + b) * jnp.log1p(s / b) - s
    return safe_sqrt(2.0 * jnp.where(exact, t1 - t2, limit))
