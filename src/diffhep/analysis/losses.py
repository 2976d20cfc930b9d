"""Analysis sensitivity measures as differentiable functions (the training objectives).

Two kinds, on the same footing (scalars to minimise or metrics to report):

- **likelihood based**, functions of a :class:`~diffhep.Model` whose templates come from
  histograms: :func:`expected_cls` (median expected CLs at mu = 1 on the background-only
  Asimov data, ``qmu_tilde``), :func:`discovery_significance` (median expected Z0 from ``q0``
  on the signal-plus-background Asimov data), :func:`sigma_mu` (the POI's standard deviation
  from the inverse Fisher information with the nuisance parameters, as INFERNO). Each needs
  at most one profile fit, differentiated implicitly; on an Asimov dataset the unconditional
  fit is known exactly (the generating parameters), so it is not run.
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
from jax.scipy.special import ndtr

from ..stats.fit import (
    DEFAULT_MAX_STEPS,
    DEFAULT_TOL,
    covariance,
    fit_bounded,
    fit_defaults,
    poi_index,
)
from ..stats.fit import fisher_information as _fisher_information
from ..stats.model import Model

__all__ = [
    "YIELD_EPS",
    "asimov_significance",
    "b_over_s2",
    "binary_cross_entropy",
    "discovery_significance",
    "expected_cls",
    "inverse_asimov_significance",
    "inverse_s_over_sqrt_s_plus_b",
    "nominal_pars",
    "sigma_mu",
]


def _soft_yields(s, b):
    """``max(s, 0) + YIELD_EPS`` and the same for ``b`` (signed weights can make them < 0)."""
    s, b = jnp.asarray(s), jnp.asarray(b)
    return jnp.where(s >= 0, s, 0.0) + YIELD_EPS, jnp.where(b >= 0, b, 0.0) + YIELD_EPS


def _safe_sqrt(x):
    return jnp.where(x > 0, jnp.sqrt(jnp.where(x > 0, x, 1.0)), 0.0)


def nominal_pars(model: Model, mu) -> jax.Array:
    """The model's suggested parameters with the POI set to ``mu`` (the Asimov origin)."""
    init = jnp.asarray(model.config.init, dtype=model.nominal.dtype)
    return init.at[poi_index(model)].set(mu)


def _profiled_q(model: Model, mu_asimov, mu_test, tol, max_steps):
    """``-2 ln lambda(mu_test)`` on the Asimov data of ``mu_asimov`` (nominal nuisances).

    The unconditional fit of an Asimov dataset is its origin, so one fit (POI fixed at
    ``mu_test``) suffices. Returns the test statistic and whether that fit converged.
    """
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
    return jnp.clip(q, 0.0), res.converged


def expected_cls(model: Model, mu=1.0, *, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
    """Median expected CLs of ``mu`` under the background-only hypothesis (``qmu_tilde``).

    On the background-only Asimov data the observed and Asimov test statistics coincide,
    so CLs = CLsb / CLb = Phi(-sqrt(q_A)) / (1/2). This equals ``cls_exp[2]`` of
    :func:`diffhep.stats.hypotest.hypotest` (and pyhf's) on that dataset.
    """
    q, _ = _profiled_q(model, 0.0, mu, tol, max_steps)
    return 2.0 * ndtr(-_safe_sqrt(q))


def discovery_significance(model: Model, *, tol=DEFAULT_TOL, max_steps=DEFAULT_MAX_STEPS):
    """Median expected discovery significance Z0 = sqrt(q0) on the mu = 1 Asimov data."""
    q, _ = _profiled_q(model, 1.0, 0.0, tol, max_steps)
    return _safe_sqrt(q)


def fisher_covariance(model: Model, mu=1.0) -> jax.Array:
    """Covariance of all parameters from the inverse Fisher information at the nominal
    point with POI ``mu`` (fixed parameters have zero rows and columns)."""
    info = _fisher_information(model, nominal_pars(model, mu))
    return covariance(info, jnp.asarray(model.config.fixed))


def sigma_mu(model: Model, mu=1.0) -> jax.Array:
    """Expected standard deviation of the POI with nuisances profiled (INFERNO's objective):
    ``sqrt(inverse Fisher information[poi, poi])`` at the nominal point."""
    cov = fisher_covariance(model, mu)
    poi = poi_index(model)
    return _safe_sqrt(cov[poi, poi])


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
    return _safe_sqrt(2.0 * jnp.where(exact, t1 - t2, limit))
