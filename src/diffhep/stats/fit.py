"""Maximum-likelihood fits of HistFactory models, differentiable by implicit differentiation.

``fit`` (global MLE) and ``fixed_poi_fit`` minimise ``-log L`` with the bounded,
structure-aware Newton solver of :mod:`diffhep.stats.solver`. They run under ``jit`` and ``vmap``
and can be differentiated with respect to the model's templates and the data.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> import diffhep
    >>> ws = diffhep.Workspace(diffhep.stats.workspace.example_spec())
    >>> model = ws.model()
    >>> result = diffhep.stats.fit.fit(model, ws.data(model))
    >>> bool(result.converged), round(float(result.bestfit[0]), 4)
    (True, 0.0)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import exported, restarts
from .model import Model
from .solver import STATUS_MESSAGES, is_success

# the fit's uncertainties and the information matrices (stats.uncertainties), importable
# from here as before
from .uncertainties import (
    Variances,
    _uncertainties,
    covariance,
    fisher_information,
    hessian,
    nll,
    structure_of,  # noqa: F401 (re-exported)
    structured_variances,
    undetermined_names,
)

__all__ = [
    "FitResult",
    "Variances",
    "covariance",
    "fisher_information",
    "fit",
    "fixed_poi_fit",
    "hessian",
    "nll",
    "structured_variances",
    "twice_nll",
    "undetermined_names",
]

DEFAULT_TOL = 1e-12
DEFAULT_MAX_STEPS = 200


class FitResult(NamedTuple):
    """Result of a fit.

    Attributes:
        bestfit: Best-fit parameter values (pyhf order).
        uncertainty: Standard deviations from the inverse Hessian of ``-log L`` over the
            parameters that are not fixed (0 for fixed ones, NaN for free parameters the
            Hessian does not determine: see ``uncertainty_ok``).
        twice_nll: ``-2 log L`` at the best fit.
        n_steps: Number of Newton steps.
        status: 0 converged, 1 maximum steps, 2 non-finite start, 3 stalled, 4 converged at
            the noise floor of ``-log L`` (a success, like 0).
        n_clipped: Bins whose expected yield was clipped to the Poisson floor at the best fit.
        uncertainty_ok: Per parameter, whether its uncertainty is determined: False where
            the Hessian restricted to the free parameters is singular or indefinite along a
            direction involving it (e.g. two normfactors of one sample), and everywhere
            when uncertainties were not computed. True for fixed parameters.
    """

    bestfit: jax.Array
    uncertainty: jax.Array
    twice_nll: jax.Array
    n_steps: jax.Array
    status: jax.Array
    n_clipped: jax.Array
    uncertainty_ok: jax.Array

    @property
    def converged(self):
        return is_success(self.status)

    @property
    def message(self) -> str:
        return STATUS_MESSAGES[int(self.status)]


def twice_nll(pars, model: Model, data):
    """``-2 log L``, as ``pyhf.infer.mle.twice_nll`` (but a scalar)."""
    return -2.0 * model.logpdf(pars, data)


def fit_defaults(model: Model, init, bounds, fixed, dtype):
    cfg = model.config
    init = jnp.asarray(cfg.init if init is None else init, dtype=dtype)
    b = np.asarray(cfg.bounds if bounds is None else bounds, dtype=float)
    lower, upper = jnp.asarray(b[:, 0], dtype=dtype), jnp.asarray(b[:, 1], dtype=dtype)
    fixed = jnp.asarray(cfg.fixed if fixed is None else fixed, dtype=bool)
    return init, lower, upper, fixed


def fit_bounded(
    model, data, init, lower, upper, fixed, tol, max_steps, uncertainties=True, restart=True,
    centre=None,
):  # fmt: skip
    """The fit behind :func:`fit` and :func:`fixed_poi_fit` (bounds and fixed mask given).

    ``restart`` (a bool, may be traced) allows the restart for several minima; a caller that
    knows its start is the global minimum (the free fit of Asimov data from the parameters
    that generated it, where every term of ``log L`` is at its maximum) turns it off.
    ``centre``: where the constraint terms pull the parameters if not at ``init`` (a toy's
    auxiliary data; :func:`diffhep.stats.restarts.search`).
    """
    data = jnp.asarray(data, dtype=model.nominal.dtype)
    if not restarts.may_restart(model):
        res = restarts.run_fit(model, data, init, lower, upper, fixed, tol, max_steps)
    else:
        res = restarts.search(
            model, data, init, lower, upper, fixed, restart, tol, max_steps, centre=centre
        )
    if uncertainties:
        unc, ok = _uncertainties(model, data, jax.lax.stop_gradient(res.x), fixed)
    else:
        unc, ok = jnp.zeros_like(res.x), jnp.zeros(res.x.shape, bool)
    n_clipped = model.n_clipped(res.x)
    twice = 2.0 * (res.fun - model.logpdf_constant(data))
    return FitResult(res.x, unc, twice, res.n_steps, res.status, n_clipped, ok)


def fit(
    model: Model,
    data,
    init=None,
    bounds=None,
    fixed=None,
    *,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
    uncertainties: bool = True,
) -> FitResult:
    """Global maximum-likelihood fit (pyhf's ``infer.mle.fit``).

    Args:
        model: The model.
        data: Main data followed by auxiliary data.
        init, bounds, fixed: Override the model's suggested values (pyhf order).
        tol: Convergence tolerance on the predicted decrease of ``-log L``.
        max_steps: Maximum number of Newton steps.
        uncertainties: Compute Hessian uncertainties (skip for speed inside loss functions).
    """
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, model.nominal.dtype)
    return _compiled_fit(model, data, init, lower, upper, fixed, tol, max_steps, uncertainties)


def _fit_kernel(model, data, init, lower, upper, fixed, *, tol, max_steps, uncertainties):
    return tuple(fit_bounded(model, data, init, lower, upper, fixed, tol, max_steps, uncertainties))


def _compiled_fit(model, data, init, lower, upper, fixed, tol, max_steps, uncertainties):
    """:func:`fit_bounded`, compiled once per model structure when called from plain Python
    (:func:`diffhep.stats.exported.compiled`)."""
    data = jnp.asarray(data, dtype=model.nominal.dtype)
    out = exported.compiled(_fit_kernel, model, data, init, lower, upper, fixed, tol=tol,
                            max_steps=max_steps, uncertainties=uncertainties)  # fmt: skip
    return FitResult(*out)


def fixed_poi_fit(
    poi_value,
    model: Model,
    data,
    init=None,
    bounds=None,
    fixed=None,
    *,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
    uncertainties: bool = True,
) -> FitResult:
    """Fit with the POI held at ``poi_value`` (pyhf's ``infer.mle.fixed_poi_fit``)."""
    poi = poi_index(model)
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, model.nominal.dtype)
    init = init.at[poi].set(poi_value)
    fixed = fixed.at[poi].set(True)
    return _compiled_fit(model, data, init, lower, upper, fixed, tol, max_steps, uncertainties)


def poi_index(model: Model) -> int:
    if model.config.poi_index is None:
        from ..errors import FitError

        raise FitError(
            "the model has no parameter of interest",
            fix="set the measurement's 'poi' (or pass poi_name when building the model)",
        )
    return model.config.poi_index
