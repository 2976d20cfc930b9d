"""Parameter uncertainties before and after a fit, and what follows from them alone:
pre-fit widths, the post-fit covariance and correlations, grouped impacts and yield
uncertainties (no refits; those are in :mod:`diffhep.stats.diagnostics`).

Definitions follow cabinetry (``cabinetry.model_utils``, ``cabinetry.fit``):

- *nominal value* and *pre-fit width* of a constrained parameter: the value maximising its
  constraint term (the auxiliary datum; ``aux / factor`` for Poisson constraints) and the
  constraint's width (sigma; ``1 / sqrt(factor)`` for Poisson constraints); 0 for
  unconstrained or fixed parameters (cabinetry's ``prefit_uncertainties``);
- *post-fit covariance*: the inverse Hessian of ``-log L`` at the best fit over the free
  parameters (pyhf's ``fit(return_uncertainties=True)`` with exact derivatives);
- *grouped impact* of a set of parameters: ``sqrt(sigma_poi^2 - sigma_poi'^2)`` where
  ``sigma_poi'`` is the POI's Hessian uncertainty with the group fixed at its best fit;
- *yield uncertainties* (cabinetry's ``yield_stdev``): symmetrised variations
  ``v_i = (y(theta + sigma_i) - y(theta - sigma_i)) / 2`` per parameter, combined with the
  correlation matrix, ``var = v^T rho v`` (diagonal pre-fit).

Example:
    >>> import diffhep
    >>> diffhep.enable_x64()
    >>> from diffhep.stats import covariance, workspace
    >>> ws = workspace.Workspace(workspace.example_spec())
    >>> model = ws.model()
    >>> post = covariance.postfit(model, ws.data(model))
    >>> [round(float(x), 4) for x in post.correlation[0]]
    [1.0, -0.33, -0.4747]
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DiffhepError, FitError
from . import exported
from .fit import DEFAULT_MAX_STEPS, DEFAULT_TOL, fit_bounded, fit_defaults
from .model import Model
from .solver import STATUS_MESSAGES, is_success
from .uncertainties import _hessian_determined, covariance, undetermined_names

__all__ = [
    "PostFit",
    "checked_postfit",
    "constrained",
    "correlations",
    "grouped_impacts",
    "modifier_types",
    "nominal_parameters",
    "parameter_groups",
    "postfit",
    "postfit_yields",
    "prefit_uncertainties",
    "prefit_yields",
    "require_poi",
    "yields",
]


# --------------------------------------------------------------------------- parameters
def constrained(model: Model) -> np.ndarray:
    """Mask of the parameters with a constraint term (pyhf order)."""
    out = np.zeros(model.config.npars, dtype=bool)
    out[np.asarray(model.tables.aux_par, dtype=int)] = True
    return out


def _constraint_terms(model: Model):
    # one compiled call per model structure (exported.compiled): run eagerly, its ~20
    # operations were compiled (or loaded from the persistent cache) one by one, ~0.3-0.5 s
    # of a warm command; under a filter_jit, keyed by names, again for every signal point
    return tuple(model._constraint_terms())


def constraint_arrays(model: Model):
    """(parameter index, is Poisson, sigma, factor, auxiliary datum) per constraint term."""
    terms = exported.compiled(_constraint_terms, model)
    sigma, factor, aux = (np.asarray(a, dtype=float) for a in terms)
    poisson = np.asarray(model.tables.aux_poisson, dtype=bool)
    return np.asarray(model.tables.aux_par, dtype=int), poisson, sigma, factor, aux


def nominal_parameters(model: Model) -> np.ndarray:
    """Values maximising the constraint terms (unconstrained parameters: their inits).

    The pre-fit point of cabinetry's ``asimov_parameters`` (alphas 0, gammas and lumi 1 for
    the default auxiliary data), taking custom auxiliary data into account.
    """
    out = np.asarray(model.config.init, dtype=float).copy()
    par, poisson, _, factor, aux = constraint_arrays(model)
    out[par] = np.where(poisson, aux / np.where(poisson, factor, 1.0), aux)
    return out


def prefit_uncertainties(model: Model) -> np.ndarray:
    """Constraint widths (sigma, or ``1/sqrt(factor)`` for Poisson constraints); 0 for
    unconstrained and fixed parameters (cabinetry's ``prefit_uncertainties``)."""
    out = np.zeros(model.config.npars)
    par, poisson, sigma, factor, _ = constraint_arrays(model)
    out[par] = np.where(poisson, 1.0 / np.sqrt(np.where(poisson, factor, 1.0)), sigma)
    out[np.asarray(model.config.fixed, dtype=bool)] = 0.0
    return out


def modifier_types(model: Model) -> list[str]:
    """The modifier type of every parameter (pyhf order)."""
    out = []
    for (a, b), modtype in zip(model.config.par_slices, model.config.par_modtypes, strict=True):
        out += [modtype] * (b - a)
    return out


def require_poi(model: Model) -> int:
    """The POI's index; a model without one is bad input (:class:`DiffhepError`)."""
    if model.config.poi_index is None:
        raise DiffhepError(
            "the model has no parameter of interest",
            where="measurements[].config.poi",
            fix="set the measurement's POI",
        )
    return model.config.poi_index


# --------------------------------------------------------------------------- fits
@dataclass(frozen=True)
class PostFit:
    """A converged fit with its covariance (inverse Hessian over the free parameters).

    Attributes:
        bestfit, uncertainty: Best fit and Hessian uncertainties (0 for fixed parameters).
        covariance, correlation: Matrices in pyhf order (fixed rows/columns 0; correlation
            diagonal 1 for the free parameters, 0 for the fixed ones).
        twice_nll: ``-2 log L`` at the best fit.
        fixed: Parameters held constant in this fit.
        names: Parameter names (``gamma[0]`` for per-bin parameters).
        hessian: Hessian of ``-log L`` at the best fit (all parameters).
        bounds: Parameter bounds of the fit (npars, 2); refits use the same.
        determined: Per parameter, whether the Hessian determines its uncertainty, by the
            criterion of :func:`diffhep.stats.fit.fit` (``uncertainty_ok``: the Hessian
            scaled to a unit diagonal, per-bin blocks and their Schur complement, see
            :func:`~diffhep.stats.uncertainties.structured_variances`); True for fixed ones.
    """

    bestfit: np.ndarray
    uncertainty: np.ndarray
    covariance: np.ndarray
    correlation: np.ndarray
    twice_nll: float
    fixed: np.ndarray
    names: list
    hessian: np.ndarray
    bounds: np.ndarray
    determined: np.ndarray


def _fit_and_hessian(model, data, init, lower, upper, fixed, *, tol, max_steps):
    """The fit, the Hessian at its best fit and its covariance, as a dict of arrays for
    :func:`diffhep.stats.exported.call` (traced once per model structure: tracing this took
    ~2-3 s of every warm pulls/ranking/yields command on sbottom RegionA)."""
    res = fit_bounded(model, data, init, lower, upper, fixed, tol, max_steps, uncertainties=False)
    H, determined = _hessian_determined(model, data, jax.lax.stop_gradient(res.bestfit), fixed)
    return {"bestfit": res.bestfit, "twice_nll": res.twice_nll, "status": res.status, "H": H,
            "covariance": covariance(H, fixed), "determined": determined}  # fmt: skip


def postfit(
    model: Model,
    data,
    *,
    poi_value: float | None = None,
    init=None,
    bounds=None,
    fixed=None,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> PostFit:
    """Maximum-likelihood fit with the full covariance (POI fixed at ``poi_value`` if given).

    Raises:
        FitError: The fit did not converge or the Hessian is not positive definite.
    """
    # numpy arrays in, so that no conversion or update runs (compiles) as a JAX operation
    cfg = model.config
    init = np.array(cfg.init if init is None else init, dtype=float)
    fixed = np.array(cfg.fixed if fixed is None else fixed, dtype=bool)
    if poi_value is not None:
        poi = require_poi(model)
        init[poi], fixed[poi] = poi_value, True
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, model.nominal.dtype)
    data = jnp.asarray(np.asarray(data, dtype=float), dtype=model.nominal.dtype)
    out = exported.call(
        _fit_and_hessian, model, data, init, lower, upper, fixed, tol=tol, max_steps=max_steps
    )
    status, H = int(out["status"]), out["H"]
    if not is_success(status):
        raise FitError(
            f"the fit did not converge: {STATUS_MESSAGES[status]}",
            fix="check parameter bounds and inits in the measurement",
        )
    fixed = np.asarray(fixed)
    free = ~fixed
    Hf = np.asarray(H)[np.ix_(free, free)]
    # judged scaled to a unit diagonal: unscaled, the rounding of a large diagonal (a
    # staterror of relative width 1e-9: 1e18) made the smallest eigenvalue of a well
    # conditioned Hessian negative (-15 of ~20, the scaled one 0.11)
    d = np.diag(Hf)
    s = 1.0 / np.sqrt(np.where(d > 0, d, 1.0))
    if (not np.all(np.isfinite(Hf)) or np.any(d <= 0)
            or np.linalg.eigvalsh(Hf * s[:, None] * s[None, :]).min() <= 0):  # fmt: skip
        raise FitError(
            "the Hessian at the best fit is not positive definite (no covariance)",
            fix="check for parameters without effect on the likelihood or at their bounds",
        )
    cov = np.asarray(out["covariance"])
    unc = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    safe = np.where(unc > 0, unc, 1.0)
    corr = np.where(np.outer(free, free), cov / np.outer(safe, safe), 0.0)
    return PostFit(
        np.asarray(out["bestfit"]), unc, cov, corr, float(out["twice_nll"]), fixed,
        list(model.config.par_names), np.asarray(H),
        np.stack([np.asarray(lower), np.asarray(upper)], axis=1), np.asarray(out["determined"]),
    )  # fmt: skip


def _undetermined_error(names) -> FitError:
    """The error of a fit whose Hessian leaves ``names`` undetermined (as ``diffhep fit``)."""
    shown = ", ".join(names[:20]) + (f" ... ({len(names)} parameters)" if len(names) > 20 else "")
    return FitError(
        "the fit converged, but the Hessian at the best fit is singular or indefinite (no "
        f"covariance): the uncertainties of {shown} are undetermined",
        fix="the data do not constrain these parameters (no effect on the likelihood, or "
        "none apart from another one: e.g. two normfactors of one sample): fix them (one "
        "of a pair) in the measurement, or add a constraint",
    )


def checked_postfit(model: Model, data, *, poi_value: float | None = None,
                    near_singular: bool = True) -> PostFit:  # fmt: skip
    """:func:`~diffhep.stats.covariance.postfit`, naming the parameters that a singular or
    indefinite Hessian leaves undetermined, as ``diffhep fit`` does.

    Where ``postfit`` fails (not converged, or a Hessian that is not positive definite) the
    fit is repeated with the fit's own uncertainty check (:func:`diffhep.stats.fit.fit`,
    only then: it costs a fit) and a :class:`~diffhep.errors.FitError` names them; where it
    finds none, ``postfit``'s error is raised. A Hessian that passes ``postfit``'s check
    only by rounding (a parameter without effect: a zero row, smallest eigenvalue 4e-16; two
    normfactors of one sample: uncertainties of 1e5) is judged by the fit's criterion
    (``PostFit.determined``, the same as ``diffhep fit``'s): refused with the parameters
    named where the covariance is not finite, and with ``near_singular`` wherever it finds
    them.
    """
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # judged below
            post = postfit(model, data, poi_value=poi_value)
    except FitError:
        from . import fit as _fit

        data = jnp.asarray(np.asarray(data, dtype=float), dtype=model.nominal.dtype)
        if poi_value is None:
            r = _fit.fit(model, data)
        else:
            r = _fit.fixed_poi_fit(poi_value, model, data)
        names = undetermined_names(model.config, r.uncertainty_ok) if r.converged else []
        if not names:
            raise
        raise _undetermined_error(names) from None
    free = ~post.fixed
    finite = np.all(np.isfinite(post.covariance[np.ix_(free, free)]))
    names = undetermined_names(model.config, post.determined)
    if names and (near_singular or not finite):
        raise _undetermined_error(names)
    if not finite:
        raise FitError("the covariance at the best fit is not finite",
                       fix="check for parameters without effect on the likelihood")  # fmt: skip
    return post


def correlations(post: PostFit, threshold: float = 0.0) -> dict:
    """The correlation matrix of the free parameters; with ``threshold > 0`` only the
    parameters with an off-diagonal ``|rho| >= threshold`` with another one."""
    free = ~post.fixed
    corr = post.correlation
    off = np.abs(corr - np.diag(np.diag(corr)))
    keep = free & (off.max(axis=1) >= threshold) if threshold > 0 else free
    idx = np.flatnonzero(keep)
    return {
        "parameters": [post.names[i] for i in idx],
        "correlation": corr[np.ix_(idx, idx)].tolist(),
    }


def parameter_groups(model: Model, patterns=None, by_modifier: bool = False) -> dict:
    """Groups of parameter indices: ``patterns`` maps a group name to fnmatch patterns of
    parameter names (``"jes*"``; a per-bin parameter matches by its name with or without the
    bin); ``by_modifier`` adds one group per modifier type. The POI is never in a group."""
    poi = model.config.poi_index
    names = model.config.par_names
    groups: dict[str, list[int]] = {}
    for group, pats in (patterns or {}).items():
        pats = [pats] if isinstance(pats, str) else list(pats)
        idx = [
            k
            for k, n in enumerate(names)
            if k != poi
            and any(
                fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.split("[")[0], p) for p in pats
            )
        ]
        if not idx:
            raise DiffhepError(f"group {group!r} matches no parameter", where="--group",
                               fix=f"patterns {pats} must match parameter names")  # fmt: skip
        groups[group] = idx
    if by_modifier:
        for k, t in enumerate(modifier_types(model)):
            if k != poi:
                groups.setdefault(t, []).append(k)
    return groups


def grouped_impacts(model: Model, post: PostFit, groups: dict) -> list[dict]:
    """``sqrt(sigma_poi^2 - sigma_poi'^2)`` per group (``sigma_poi'``: the POI's Hessian
    uncertainty with the group fixed at its best fit)."""
    poi = require_poi(model)
    H = post.hessian
    free = ~post.fixed
    total = post.uncertainty[poi] ** 2
    out = []
    for name, idx in groups.items():
        fx = post.fixed.copy()
        fx[idx] = True
        cov = np.asarray(covariance(H, fx))
        rest = cov[poi, poi] if free[poi] else 0.0
        out.append({"group": name, "impact": float(np.sqrt(max(total - rest, 0.0))),
                    "parameters": [post.names[k] for k in idx]})  # fmt: skip
    return out


# --------------------------------------------------------------------------- yields
def _variations(model, pars, shifts):
    """Per-sample yields (plus the sum over samples) at pars +- shifts[i] e_i (compiled once
    per model structure: :func:`yields`)."""

    def at(p):
        y = model.expected_actualdata_by_sample(p)
        return jnp.concatenate([y, jnp.sum(y, axis=0, keepdims=True)])

    eye = jnp.diag(shifts)
    up = jax.vmap(lambda d: at(pars + d))(eye)
    down = jax.vmap(lambda d: at(pars - d))(eye)
    return at(pars), 0.5 * (up - down)


def yields(model: Model, data, pars, uncertainty, correlation=None) -> dict:
    """Yields per channel, sample and bin with their standard deviations.

    Args:
        model, data: The model and the observed data (main first).
        pars, uncertainty: Parameter values and uncertainties (pre-fit:
            :func:`nominal_parameters` and :func:`prefit_uncertainties`).
        correlation: Parameter correlations (``None``: uncorrelated, as pre-fit).

    Returns:
        ``{channel: {"samples": {name: {"yields", "stdev", "sum", "sum_stdev"}}, "total":
        {...}, "data": [...], "data_sum": n}}``, every number a float.
    """
    dtype = model.nominal.dtype
    pars, shifts = jnp.asarray(pars, dtype), jnp.asarray(uncertainty, dtype)
    nominal, v = exported.compiled(_variations, model, pars, shifts)
    nominal, v = np.asarray(nominal), np.asarray(v)  # (S+1, B), (P, S+1, B)
    slices = model.config.channel_slices
    chans = list(model.config.channels)
    # per-channel sums as extra "bins"
    v = np.concatenate([v] + [v[..., slices[c]].sum(-1, keepdims=True) for c in chans], -1)
    nom = np.concatenate([nominal] + [nominal[:, slices[c]].sum(-1, keepdims=True)
                                      for c in chans], -1)  # fmt: skip
    if correlation is None:
        var = np.sum(v**2, axis=0)
    else:
        var = np.einsum("isb,ij,jsb->sb", v, np.asarray(correlation), v)
    sd = np.sqrt(np.clip(var, 0.0, None))
    main = np.asarray(data, dtype=float)[: model.config.nmaindata]
    nb = model.config.nmaindata
    out = {}
    names = [*model.config.samples, "total"]
    for c_i, c in enumerate(chans):
        sl = slices[c]
        entry = {
            name: {"yields": nom[s, sl].tolist(), "stdev": sd[s, sl].tolist(),
                   "sum": float(nom[s, nb + c_i]), "sum_stdev": float(sd[s, nb + c_i])}
            for s, name in enumerate(names)
        }  # fmt: skip
        total = entry.pop("total")
        out[c] = {"samples": entry, "total": total, "data": main[sl].tolist(),
                  "data_sum": float(main[sl].sum())}  # fmt: skip
    return out


def prefit_yields(model: Model, data) -> dict:
    """:func:`yields` at the nominal parameters with the pre-fit widths, uncorrelated."""
    return yields(model, data, nominal_parameters(model), prefit_uncertainties(model))


def postfit_yields(model: Model, data, post: PostFit) -> dict:
    """:func:`yields` at the best fit with the full covariance."""
    return yields(model, data, post.bestfit, post.uncertainty, post.correlation)
