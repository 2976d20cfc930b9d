"""The curvature of ``-log L``: observed and expected information, covariance, and the
fit's uncertainties from the structured Hessian (singular directions named, never clipped).

:func:`nll` is the objective whose Hessian everything here takes; :func:`structure_of` its
sparsity (per-bin blocks), shared with the fits of :mod:`diffhep.stats.fit`.

Example:
    >>> import diffhep
    >>> diffhep.enable_x64()
    >>> from diffhep.stats import uncertainties, workspace
    >>> ws = workspace.Workspace(workspace.example_spec())
    >>> model = ws.model()
    >>> info = uncertainties.fisher_information(model, model.config.init)
    >>> cov = uncertainties.covariance(info, model.config.fixed)  # its inverse: no fixed pars
    >>> import numpy as np
    >>> bool(np.allclose(np.asarray(cov) @ np.asarray(info), np.eye(model.config.npars)))
    True
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import exported
from .linalg import HessianParts, Structure, _diagonal, _masked, hessian_parts
from .model import Model

__all__ = [
    "SINGULAR_TOL",
    "Variances",
    "covariance",
    "dense_hessian",
    "fisher_information",
    "hessian",
    "nll",
    "structure_of",
    "structured_variances",
    "undetermined_names",
]


def nll(pars, args):
    """``-log L(pars)``; ``args = (model, data)``. The objective of every fit.

    Not a nested ``jax.jit``: the trace of a nested jit is cached across calls, and the
    numpy constants it closes over were then shared with (and deduplicated against) the
    enclosing program's differently from a fresh process, so a program traced after a
    training run had other constants and missed the persistent compilation cache."""
    model, data = args
    return -model.logpdf(pars, data)


@cache
def structure_of(config) -> Structure:
    """Hessian sparsity of a model (per-bin blocks of staterror/shapesys/shapefactor)."""
    return Structure.from_perbin(config.npars, config.perbin)


def dense_hessian(parts, structure: Structure, npars: int):
    """Assemble the dense Hessian from its structured parts (one scatter, any number of
    blocks: a Python loop of per-block scatters made compilation quadratic in the bins and
    crashed XLA at a few hundred)."""
    gidx, table = structure.arrays()
    H = jnp.zeros((npars, npars), dtype=parts.A.dtype)
    if len(gidx):
        H = H.at[np.ix_(gidx, gidx)].set(parts.A)
    if table.shape[0]:
        b, i, j = np.nonzero((table >= 0)[:, :, None] & (table >= 0)[:, None, :])
        H = H.at[table[b, i], table[b, j]].set(parts.D[b, i, j])
        if len(gidx):
            b, i = np.nonzero(table >= 0)
            rows = np.repeat(table[b, i], len(gidx))
            cols = np.tile(gidx, len(b))
            vals = parts.C[b, i].reshape(-1)
            H = H.at[rows, cols].set(vals).at[cols, rows].set(vals)
    return H


def hessian(model: Model, pars, data) -> jax.Array:
    """Hessian of ``-log L`` at ``pars`` (the observed information matrix)."""
    pars = jnp.asarray(pars, dtype=model.nominal.dtype)
    data = jnp.asarray(data, dtype=pars.dtype)
    return exported.compiled(_hessian, model, pars, data)


def _hessian(model, pars, data):
    st = structure_of(model.config)
    parts = hessian_parts(lambda x: jax.grad(nll)(x, (model, data)), pars, st)
    return dense_hessian(parts, st, st.npars)


def fisher_information(model: Model, pars) -> jax.Array:
    """Expected (Fisher) information matrix at ``pars``.

    The Hessian of ``-log L`` evaluated on the Asimov data of ``pars`` itself. For the Poisson
    and Gaussian terms of HistFactory this equals the expectation of the Hessian.
    """
    pars = jnp.asarray(pars, dtype=model.nominal.dtype)
    return exported.compiled(_fisher_information, model, pars)


def _fisher_information(model, pars):
    return _hessian(model, pars, model.expected_data(pars))


def covariance(information, fixed=None) -> jax.Array:
    """Parameter covariance: inverse of an information matrix over the non-fixed parameters.

    Rows and columns of fixed parameters are zero.
    """
    information = jnp.asarray(information)
    n = information.shape[0]
    free = jnp.ones(n, bool) if fixed is None else ~jnp.asarray(fixed, dtype=bool)
    m = jnp.where(free[:, None] & free[None, :], information, 0.0)
    m = m + jnp.diag(jnp.where(free, 0.0, 1.0))
    cov = jnp.linalg.inv(m)
    return jnp.where(free[:, None] & free[None, :], cov, 0.0)


#: Eigenvalues of the Hessian scaled to a unit diagonal (its correlation form, free of the
#: parameters' units) at or below this count as zero: a direction that neither the data nor
#: the constraints determine (the scaled matrix of two normfactors of one sample is
#: [[1, 1], [1, 1]], eigenvalue 0 up to rounding at 1e-16).
SINGULAR_TOL = 1e-9
#: A parameter whose component in such a direction (unit vector) exceeds this is undetermined.
_NULL_COMPONENT = 1e-3


class Variances(NamedTuple):
    """Diagonal of the inverse Hessian over the free parameters.

    Attributes:
        variance: Variance per parameter (0 for fixed ones, NaN for undetermined ones).
        determined: False for free parameters along a singular or negative-curvature
            direction of the Hessian (their variance is infinite or meaningless).
    """

    variance: jax.Array
    determined: jax.Array


def _pinv_sym(M):
    """Pseudo-inverse of (batched) symmetric M over eigenvalues > SINGULAR_TOL; the
    eigenvalues and eigenvectors (columns) are returned too."""
    w, V = jnp.linalg.eigh(M)
    good = w > SINGULAR_TOL
    inv_w = jnp.where(good, 1.0 / jnp.where(good, w, 1.0), 0.0)
    return (V * inv_w[..., None, :]) @ jnp.swapaxes(V, -1, -2), good, V


def structured_variances(parts: HessianParts, free, structure: Structure) -> Variances:
    """Variances (diagonal of ``H^-1`` over the ``free`` parameters) from the structured
    Hessian, in time and memory linear in the number of bins.

    With G global parameters and per-bin blocks D_b coupled to them by C_b, the inverse has
    the global part ``S^-1`` (``S = A - sum_b C_b^T D_b^-1 C_b``, the Schur complement) and
    the diagonal blocks ``D_b^-1 + X_b S^-1 X_b^T`` (``X_b = D_b^-1 C_b``). Everything is
    computed on the Hessian scaled to a unit diagonal, so that singular or indefinite
    directions are found whatever the parameters' units: H is positive definite exactly
    when every D_b and S are, and a zero or negative eigenvalue of either (vector u of S,
    extended to the blocks as ``-X u``) names the parameters it involves as undetermined.

    Args:
        parts: Structured Hessian (see :func:`diffhep.stats.solver.hessian_parts`).
        free: Boolean mask of the parameters not held fixed.
        structure: The Hessian's block structure.
    """
    gidx, table = structure.arrays()
    G, nb = len(gidx), table.shape[0]
    valid = table >= 0
    safe = np.where(valid, table, 0)
    free = jnp.asarray(free, bool)
    m, _, _ = _masked(parts, free, structure, 0.0)  # fixed rows/columns -> identity
    d = _diagonal(m, structure)
    pos = jnp.isfinite(d) & (d > 0)
    scale = jnp.where(pos, 1.0 / jnp.sqrt(jnp.where(pos, d, 1.0)), 1.0)
    sG = scale[gidx]
    sP = jnp.where(valid, scale[safe], 1.0)
    null = jnp.zeros(structure.npars, scale.dtype)  # largest component in a bad direction
    var = jnp.zeros(structure.npars, scale.dtype)
    if nb:
        D = m.D * sP[..., None] * sP[:, None, :]
        Dinv, good, V = _pinv_sym(D)
        nullP = jnp.max(jnp.where(good[..., None, :], 0.0, jnp.abs(V)), axis=-1)
        varP = jnp.diagonal(Dinv, axis1=1, axis2=2)
    if G:
        A = m.A * sG[:, None] * sG[None, :]
        if nb:
            C = m.C * sP[..., None] * sG[None, None, :]
            X = Dinv @ C  # (nb, k, G)
            A = A - jnp.einsum("bkg,bkh->gh", C, X)
            A = 0.5 * (A + A.T)
        Sinv, goodS, U = _pinv_sym(A)
        varG = jnp.diagonal(Sinv)
        badS = ~goodS
        if nb:
            varP = varP + jnp.einsum("bkg,bkg->bk", X @ Sinv, X)
            ext = jnp.einsum("bkg,gj->bkj", X, U)  # per-bin part of the directions -X u
            norm = jnp.sqrt(1.0 + jnp.sum(ext**2, axis=(0, 1)))  # (G,) |(u, -X u)|
            nullP = jnp.maximum(nullP, jnp.max(jnp.where(badS, jnp.abs(ext) / norm, 0.0), axis=-1))
        else:
            norm = jnp.ones(G, A.dtype)
        nullG = jnp.max(jnp.where(badS[None, :], jnp.abs(U) / norm[None, :], 0.0), axis=-1)
        null = null.at[gidx].set(nullG)
        var = var.at[gidx].set(varG)
    if nb:
        null = null.at[table[valid]].set(nullP[valid])
        var = var.at[table[valid]].set(varP[valid])
    var = var * scale**2
    determined = ~free | (pos & (null <= _NULL_COMPONENT) & jnp.isfinite(var) & (var > 0))
    var = jnp.where(free, jnp.where(determined, var, jnp.nan), 0.0)
    return Variances(var, determined)


def undetermined_names(config, determined) -> list[str]:
    """Names (``name`` or ``name[i]``) of the parameters whose uncertainty is undetermined."""
    determined = np.asarray(determined, bool)
    return [n for n, ok in zip(config.par_names, determined, strict=True) if not ok]


def _uncertainties(model, data, pars, fixed):
    st = structure_of(model.config)
    parts = hessian_parts(lambda x: jax.grad(nll)(x, (model, data)), pars, st)
    v = structured_variances(parts, ~fixed, st)
    return jnp.sqrt(v.variance), v.determined


def _hessian_determined(model, data, pars, fixed):
    """The dense Hessian at ``pars`` and, per parameter, whether it determines its
    uncertainty by the fit's criterion (:func:`structured_variances`), from one set of
    structured parts: the post-fit covariance and the fit judge the same matrix alike."""
    st = structure_of(model.config)
    parts = hessian_parts(lambda x: jax.grad(nll)(x, (model, data)), pars, st)
    return dense_hessian(parts, st, st.npars), structured_variances(parts, ~fixed, st).determined
