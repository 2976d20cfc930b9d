"""Fit diagnostics by refits: pulls, impacts (ranking), profile-likelihood scans, discovery
significance and goodness of fit, with every batch of refits in one compiled loop.

Definitions follow cabinetry (``cabinetry.fit``) and pyhf:

- *pull* = (best fit - nominal) / pre-fit width, *constraint* = post-fit / pre-fit width
  (nominal values and widths: :mod:`diffhep.stats.covariance`);
- *impact* of a parameter on the POI (cabinetry's ``fit.ranking``): the POI shift when the
  parameter is fixed at best fit +- its pre-fit / post-fit width and everything else is
  refitted. ``method="covariance"`` is the linear approximation ``C[poi, i] / C[i, i] * d``;
- *significance*: pyhf's asymptotic discovery test (q0), observed and median expected;
- *goodness of fit*: ``-2 log`` ratio to the saturated model (Poisson terms at the data, the
  constraints at their maximum), chi2 with bins minus free unconstrained parameters degrees
  of freedom (cabinetry's ``_goodness_of_fit``).

Every function takes a :class:`~diffhep.stats.model.Model` and its data (main + auxiliary);
fits that do not converge raise :class:`~diffhep.errors.FitError`.

Example:
    >>> import diffhep
    >>> diffhep.enable_x64()
    >>> from diffhep.stats import diagnostics, workspace
    >>> ws = workspace.Workspace(workspace.example_spec())
    >>> model = ws.model()
    >>> r = diagnostics.ranking(model, ws.data(model))
    >>> r.to_list()[0]["parameter"]
    'uncorr_bkguncrt[1]'
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DiffhepError, FitError
from . import exported
from . import fit as fits
from .covariance import (
    PostFit,
    checked_postfit,
    constrained,
    constraint_arrays,
    modifier_types,
    nominal_parameters,
    prefit_uncertainties,
    require_poi,
)
from .fit import DEFAULT_MAX_STEPS, DEFAULT_TOL, fit_bounded, fit_defaults
from .hypotest import discovery
from .model import Model
from .solver import is_success

__all__ = [
    "BOUND_TOL",
    "CHUNK",
    "RankingResult",
    "best_fit",
    "checked_postfit",
    "fixed_fits",
    "gof",
    "poi_at_bound",
    "pulls",
    "ranking",
    "saturated_twice_nll",
    "scan",
    "significance",
]

#: Refits per compiled call (one shape for every ranking and scan of a model).
CHUNK = 64
#: A best fit within this fraction of its parameter's range (at least this much absolutely)
#: of a bound is at the bound (:func:`poi_at_bound`).
BOUND_TOL = 1e-6


def _fixed_fits(model, data, start, lower, upper, fixed, *, tol, max_steps, batch):
    """One fit per row of ``start``/``fixed`` (n, npars), in one compiled loop
    (``lax.map``; ``batch`` rows at a time under ``vmap``). Bounds widen to the start values
    of fixed parameters. Run through :func:`diffhep.stats.exported.call` (traced once per
    model structure: tracing this loop took ~2 s of a warm sbottom ranking)."""

    def one(args):
        x0, fx = args
        lo = jnp.where(fx, jnp.minimum(lower, x0), lower)
        hi = jnp.where(fx, jnp.maximum(upper, x0), upper)
        r = fit_bounded(model, data, x0, lo, hi, fx, tol, max_steps, uncertainties=False)
        return r.bestfit, r.twice_nll, r.status

    # batch 1: a plain loop (no vmap: each fit runs only the restarts it needs)
    return jax.lax.map(one, (start, fixed), batch_size=None if batch == 1 else batch)


def fixed_fits(
    model: Model,
    data,
    index,
    values,
    *,
    start=None,
    bounds=None,
    fixed=None,
    chunk: int = CHUNK,
    batch: int | None = None,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
):
    """Fits with parameters ``index`` (n, k) held at ``values`` (n, k), the others free from
    ``start`` (default: the suggested init), all in one compiled loop per ``chunk`` rows.

    Every chunk has the same shape (padding rows fix every parameter and cost nothing), so a
    model compiles once for rankings and scans of any size. ``batch`` fits run at a time
    under ``vmap`` (``1``: one after the other in a plain loop; ``None``, the default: ``1``
    on CPU, where a batched Newton loop runs a restart wherever one of its fits needs it and
    waits for its slowest fit, the whole chunk at once on an accelerator).
    Fewer than ``chunk`` fits run in a chunk of the next power of two.

    Returns:
        (bestfit (n, npars), twice_nll (n,), status (n,)) as numpy arrays.
    """
    dtype = model.nominal.dtype
    init, lower, upper, fx = fit_defaults(model, start, bounds, fixed, dtype)
    data = jnp.asarray(data, dtype=dtype)
    index = np.asarray(index, dtype=int)
    values = np.asarray(values, dtype=float)
    n, npars = index.shape[0], model.config.npars
    rows = np.arange(n)[:, None]
    x0 = np.tile(np.asarray(init), (n, 1))
    x0[rows, index] = values
    fixed_rows = np.tile(np.asarray(fx), (n, 1))
    fixed_rows[rows, index] = True
    chunk = min(chunk, 1 << max(n - 1, 0).bit_length())
    if batch is None:
        # on CPU one fit after the other: under vmap the batch runs a restart wherever one
        # of its fits needs it and waits for its slowest fit. 64 refits of sbottom RegionA:
        # 0.3 s in a plain loop, 21.6 s as one vmapped batch (warm, one process, load ~4;
        # 0.9 and 26.9 s on 2026-12-06, 34.1 s when every fit ran every restart's set-up);
        # accelerators take the whole chunk at once
        batch = 1 if jax.default_backend() == "cpu" else chunk
    pad = -n % chunk
    x0 = np.concatenate([x0, np.tile(np.asarray(init), (pad, 1))])
    fixed_rows = np.concatenate([fixed_rows, np.ones((pad, npars), dtype=bool)])
    outs = []
    for s in range(0, n + pad, chunk):
        out = exported.call(
            _fixed_fits, model, data, jnp.asarray(x0[s : s + chunk], dtype), lower, upper,
            jnp.asarray(fixed_rows[s : s + chunk]), tol=tol, max_steps=max_steps, batch=batch,
        )  # fmt: skip
        outs.append([np.asarray(o) for o in out])
    return tuple(np.concatenate(parts)[:n] for parts in zip(*outs, strict=True))


# --------------------------------------------------------------------------- pulls
def pulls(model: Model, post: PostFit) -> dict:
    """Pulls and constraints of the constrained parameters; normfactors separately.

    Returns:
        ``{"parameters": [{"name", "modifier", "bestfit", "uncertainty", "nominal",
        "prefit_uncertainty", "pull", "constraint"}], "normfactors": [{"name", "modifier",
        "bestfit", "uncertainty"}]}`` (fixed parameters left out).
    """
    nominal, width = nominal_parameters(model), prefit_uncertainties(model)
    cons, types = constrained(model), modifier_types(model)
    params, free_pars = [], []
    for k, name in enumerate(post.names):
        if post.fixed[k]:
            continue
        entry = {"name": name, "modifier": types[k], "bestfit": float(post.bestfit[k]),
                 "uncertainty": float(post.uncertainty[k])}  # fmt: skip
        if cons[k] and width[k] > 0:
            entry.update(
                nominal=float(nominal[k]),
                prefit_uncertainty=float(width[k]),
                pull=float((post.bestfit[k] - nominal[k]) / width[k]),
                constraint=float(post.uncertainty[k] / width[k]),
            )
            params.append(entry)
        else:
            free_pars.append(entry)
    return {"parameters": params, "normfactors": free_pars}


# --------------------------------------------------------------------------- ranking
def poi_at_bound(post: PostFit, poi: int) -> str | None:
    """``"lower"`` or ``"upper"`` when the best fit of parameter ``poi`` is at that bound of
    ``post.bounds`` (within :data:`BOUND_TOL` of its range), ``None`` inside them or fixed."""
    if post.fixed[poi]:
        return None
    lo, hi = (float(b) for b in post.bounds[poi])
    best = float(post.bestfit[poi])
    tol = BOUND_TOL * max(1.0, hi - lo)
    if best - lo <= tol:
        return "lower"
    if hi - best <= tol:
        return "upper"
    return None


def _bound_notes(post, poi, side, method, impacts, computed) -> tuple[str, ...]:
    """The note of a ranking whose POI is at its ``side`` bound (none inside the bounds)."""
    if side is None:
        return ()
    name, bound = post.names[poi], float(post.bounds[poi][0 if side == "lower" else 1])
    head = f"the best fit of {name} ({post.bestfit[poi]:g}) is at its {side} bound {bound:g}"
    beyond = "below" if side == "lower" else "above"
    if method == "covariance":
        return (
            f"{head}: these linear (Hessian) impacts ignore the bound (refits, --method refit, "
            f"cannot move {name} {beyond} it)",
        )
    lo, hi = (float(b) for b in post.bounds[poi])
    n = int(computed.sum())
    zero = int(np.sum(computed & (np.abs(impacts) <= BOUND_TOL * max(1.0, hi - lo))))
    if n and zero == n:
        head += f" and every refit ends there again: all {n} refit impacts are 0"
    elif n:
        head += f": {zero} of {n} refit impacts are 0"
    return (
        f"{head}. Refit impacts are truncated at the bound (a shift that would move {name} "
        f"{beyond} it gives 0); --method covariance gives the linear (Hessian) impacts",
    )


@dataclass(frozen=True)
class RankingResult:
    """Impacts on the POI, one entry per parameter other than the POI (pyhf order), as
    cabinetry's ``RankingResults``."""

    labels: list
    bestfit: np.ndarray
    uncertainty: np.ndarray
    prefit_up: np.ndarray
    prefit_down: np.ndarray
    postfit_up: np.ndarray
    postfit_down: np.ndarray
    poi: str
    poi_bestfit: float
    poi_uncertainty: float
    #: ``"lower"``/``"upper"`` when the POI's best fit is at that bound (:func:`poi_at_bound`)
    poi_at_bound: str | None = None
    #: What the numbers do not say by themselves (the POI at a bound), one sentence each
    notes: tuple[str, ...] = ()

    def order(self) -> np.ndarray:
        """Indices sorted by the largest post-fit impact (descending), cabinetry's order."""
        size = np.maximum(np.abs(self.postfit_up), np.abs(self.postfit_down))
        return np.argsort(-size, kind="stable")

    def to_list(self) -> list[dict]:
        """``[{"parameter", "prefit_up", "prefit_down", "postfit_up", "postfit_down"}]``,
        largest post-fit impact first."""
        return [
            {
                "parameter": self.labels[i],
                "prefit_up": float(self.prefit_up[i]),
                "prefit_down": float(self.prefit_down[i]),
                "postfit_up": float(self.postfit_up[i]),
                "postfit_down": float(self.postfit_down[i]),
            }
            for i in self.order()
        ]


def ranking(
    model: Model,
    data,
    post: PostFit | None = None,
    *,
    method: str = "refit",
    chunk: int = CHUNK,
) -> RankingResult:
    """Impact of every parameter on the POI, pre-fit and post-fit, up and down.

    Args:
        model, data: The model and its observed data (main + auxiliary).
        post: The nominal fit (:func:`postfit`; computed if not given).
        method: ``"refit"`` (cabinetry's definition: every fit with the parameter fixed,
            all of them batched) or ``"covariance"`` (linear approximation).
        chunk: Refits per compiled batch.

    When the POI's best fit is at a bound (:func:`poi_at_bound`), refits cannot move it
    beyond: refit impacts that would are 0 (all of them when every refit ends at the bound,
    e.g. sbottom RegionA 1300_850_60 at mu_SIG = 0, where cabinetry 0.6.0's impacts are all
    below 5e-6, its minimiser's noise, and it says nothing). The result's ``poi_at_bound``
    names the bound and ``notes`` says so.
    """
    if method not in ("refit", "covariance"):
        raise DiffhepError(f"unknown ranking method {method!r}", where="--method",
                           fix="use 'refit' or 'covariance'")  # fmt: skip
    poi = require_poi(model)
    post = post if post is not None else checked_postfit(model, data)
    width = prefit_uncertainties(model)
    others = np.array([k for k in range(model.config.npars) if k != poi], dtype=int)
    shifts = np.stack([width, -width, post.uncertainty, -post.uncertainty], axis=1)[others]
    needed = shifts != 0.0
    if method == "covariance":
        c = post.covariance
        cii = np.where(np.diag(c) > 0, np.diag(c), 1.0)
        slope = np.where(np.diag(c) > 0, c[poi] / cii, 0.0)[others]
        impacts = slope[:, None] * shifts
    else:
        rows, cols = np.nonzero(needed)
        impacts = np.zeros_like(shifts)
        if len(rows):
            index = others[rows][:, None]
            values = (post.bestfit[others[rows]] + shifts[rows, cols])[:, None]
            best, _, status = fixed_fits(
                model,
                data,
                index,
                values,
                start=post.bestfit,
                bounds=post.bounds,
                fixed=post.fixed,
                chunk=chunk,
            )
            bad = np.flatnonzero(~is_success(status))  # (the noise floor is a success)
            if len(bad):
                names = sorted({post.names[others[rows[b]]] for b in bad})
                raise FitError(
                    f"{len(bad)} impact fit(s) did not converge (parameters: "
                    f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''})",
                    fix="try --method covariance, or check these parameters' bounds",
                )
            impacts[rows, cols] = best[:, poi] - post.bestfit[poi]
    side = poi_at_bound(post, poi)
    return RankingResult(
        labels=[post.names[k] for k in others],
        bestfit=post.bestfit[others],
        uncertainty=post.uncertainty[others],
        prefit_up=impacts[:, 0],
        prefit_down=impacts[:, 1],
        postfit_up=impacts[:, 2],
        postfit_down=impacts[:, 3],
        poi=post.names[poi],
        poi_bestfit=float(post.bestfit[poi]),
        poi_uncertainty=float(post.uncertainty[poi]),
        poi_at_bound=side,
        notes=_bound_notes(post, poi, side, method, impacts, needed),
    )


# --------------------------------------------------------------------------- scans
def best_fit(model: Model, data, *, uncertainties: bool = True) -> fits.FitResult:
    """The global fit of a scan or a goodness-of-fit test (:func:`diffhep.stats.fit.fit`),
    converged; its uncertainties are those of ``diffhep fit``: NaN for the parameters that a
    singular or indefinite Hessian leaves undetermined (the best fit and ``-log L`` at it
    are valid all the same).

    Raises:
        FitError: The fit did not converge.
    """
    r = fits.fit(model, np.asarray(data, dtype=float), uncertainties=uncertainties)
    if not bool(r.converged):
        raise FitError(f"the fit did not converge: {r.message}",
                       fix="check parameter bounds and inits in the measurement")  # fmt: skip
    return r


def scan(model: Model, data, parameters, values, post=None, *, partial: bool = False) -> dict:
    """Profile-likelihood scan: ``-2 log L`` with ``parameters`` (one or two names) fixed at
    every row of ``values`` (n, k), the others refitted (one batched call).

    Args:
        model, data: The model and its observed data (main + auxiliary).
        parameters, values: The scanned parameters' names and their values (n, k).
        post: The global fit, a :class:`~diffhep.stats.covariance.PostFit` or a
            :class:`~diffhep.stats.fit.FitResult` (default: :func:`best_fit`).

    Returns:
        ``{"parameters", "values" (n, k), "twice_nll" (n,), "delta_twice_nll" (n,),
        "bestfit" (k,), "uncertainty" (k,)}``; ``delta`` is relative to the global minimum.
        An uncertainty that the Hessian leaves undetermined is ``None`` and
        ``"undetermined"`` names its parameters (the profile does not need it). A refit that
        does not converge raises a :class:`~diffhep.errors.FitError`; with ``partial``, its
        row's ``twice_nll`` and ``delta_twice_nll`` are ``None`` and ``"not_converged"``
        lists its values instead (the other rows are kept: the CLI's scan).
    """
    names = list(model.config.par_names)
    idx = []
    for p in parameters:
        if p not in names:
            raise DiffhepError(f"unknown parameter {p!r}", where="--parameter",
                               fix=f"use one of {', '.join(names[:20])}")  # fmt: skip
        idx.append(names.index(p))
    values = np.asarray(values, dtype=float).reshape(-1, len(idx))
    post = post if post is not None else best_fit(model, data)
    best = np.asarray(post.bestfit, dtype=float)
    index = np.tile(np.asarray(idx), (len(values), 1))
    # a FitResult has the model's bounds and fixed parameters (fixed_fits' defaults)
    _, tn, status = fixed_fits(model, data, index, values, start=best,
                               bounds=getattr(post, "bounds", None),
                               fixed=getattr(post, "fixed", None))  # fmt: skip
    failed = ~is_success(status)  # (a refit at the noise floor converged)
    if np.any(failed) and not partial:
        bad = values[failed]
        raise FitError(f"{len(bad)} scan fit(s) did not converge (first at {bad[0].tolist()})",
                       fix="narrow the scan range (--range)")  # fmt: skip
    tn = np.where(failed, np.nan, np.asarray(tn, dtype=float))
    ref = min(float(post.twice_nll), float(np.nanmin(tn, initial=np.inf)))
    unc = np.asarray(post.uncertainty, dtype=float)[idx]
    out = {
        "parameters": list(parameters),
        "values": values.tolist(),
        "twice_nll": [None if f else float(t) for f, t in zip(failed, tn, strict=True)],
        "delta_twice_nll": [None if f else float(t - ref) for f, t in zip(failed, tn, strict=True)],
        "bestfit": [float(best[i]) for i in idx],
        "uncertainty": [float(u) if np.isfinite(u) else None for u in unc],
    }
    if not np.all(np.isfinite(unc)):
        out["undetermined"] = [names[i] for i, u in zip(idx, unc, strict=True)
                               if not np.isfinite(u)]  # fmt: skip
    if np.any(failed):
        out["not_converged"] = values[failed].tolist()
    return out


# --------------------------------------------------------------------------- tests
def significance(model: Model, data) -> dict:
    """Observed and median expected discovery significance (q0, asymptotic)."""
    r = discovery(model, jnp.asarray(data, dtype=model.nominal.dtype))
    if not bool(r.converged):
        raise FitError("a fit of the discovery test did not converge",
                       fix="check the model (e.g. with 'diffhep fit')")  # fmt: skip
    return {
        "q0": float(r.teststat),
        "p0_obs": float(r.p0),
        "Z_obs": float(r.significance),
        "p0_exp": float(r.p0_exp[2]),
        "Z_exp": float(r.expected_significance),
        "poi": model.config.poi_name,
    }


def saturated_twice_nll(model: Model, data) -> float:
    """``-2 log L`` of the saturated model: Poisson terms at the data, constraint terms at
    the parameters that maximise them (cabinetry's definition). numpy and scipy only (JAX's
    special functions on concrete arrays ran op by op)."""
    from scipy.special import gammaln, xlogy

    data = np.asarray(data, dtype=float)
    n = data[: model.config.nmaindata]
    poisson = float(np.sum(xlogy(n, n) - n - gammaln(n + 1.0)))
    aux = data[model.config.nmaindata :]
    cons = 0.0
    if aux.size:
        par, is_p, _, factor, _ = constraint_arrays(model)
        pars = np.asarray(model.config.init, dtype=float).copy()
        pars[par] = np.where(is_p, aux / np.where(is_p, factor, 1.0), aux)
        cons = float(model.constraint_logpdf(aux, pars))
    return -2.0 * (poisson + cons)


def gof(model: Model, data, post=None) -> dict:
    """Goodness of fit against the saturated model: chi2 = 2 (NLL - NLL_saturated) with
    bins minus free unconstrained parameters degrees of freedom.

    It needs the minimum of ``-log L`` only: ``post`` (a
    :class:`~diffhep.stats.covariance.PostFit` or :class:`~diffhep.stats.fit.FitResult`)
    defaults to :func:`best_fit` without uncertainties, so that a Hessian that leaves
    parameters undetermined (two normfactors of one sample) does not stop it. Without
    degrees of freedom (``ndf <= 0``) ``chi2_ndf`` and ``p_value`` are ``None``.
    """
    post = post if post is not None else best_fit(model, data, uncertainties=False)
    twice = float(post.twice_nll)
    sat = saturated_twice_nll(model, data)
    chi2 = twice - sat
    fixed = np.asarray(getattr(post, "fixed", model.config.fixed), dtype=bool)
    ndf = int(model.config.nmaindata - (~constrained(model) & ~fixed).sum())
    from scipy.special import chdtrc  # = scipy.stats.chi2.sf, whose import took ~0.3 s more

    return {
        "twice_nll": twice,
        "saturated_twice_nll": sat,
        "chi2": float(chi2),
        "ndf": ndf,
        "chi2_ndf": float(chi2 / ndf) if ndf > 0 else None,
        "p_value": float(chdtrc(ndf, chi2)) if ndf > 0 else None,
    }
