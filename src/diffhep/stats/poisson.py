"""The Poisson terms of the likelihood, evaluated without cancellation.

``n log(lam) - lam - log(n!)`` is split into a part that vanishes at ``lam = n``
(:func:`_poisson_rel`, small near a fit's minimum) and a constant of the counts
(:func:`_poisson_const`): with counts of 1e6 (or auxiliary data of 1e11) the naive sum of
three large terms moves in rounding steps that fits take for progress.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["POISSON_FLOOR"]

#: Expected yields below this value are clipped inside the Poisson log-likelihood.
#: Small enough not to change any physical model (1e-10 events), large enough that
#: log(lambda) stays finite and well-conditioned.
POISSON_FLOOR = 1e-10
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)
#: Above this count the constant of the Poisson term comes from Stirling's series (its first
#: omitted term, 1/(1188 n^9), is below 1e-21 there).
_STIRLING_FROM = 100.0


def _poisson_rel(n, lam, xp=jnp):
    """``n log(lam / n) - (lam - n)`` for ``n, lam > 0``: the Poisson log-likelihood minus its
    value at ``lam = n``, without cancellation (``log1p`` near ``lam = n``, where the naive
    ``n log lam - lam`` subtracts two large numbers). ``xp``: ``jax.numpy`` or numpy (an
    eager evaluation on concrete values, :func:`diffhep.stats.model._module`).

    Its derivatives are given directly (``-(lam - n) / lam`` in ``lam``, ``log(lam / n)`` in
    ``n``): differentiating the two branches of the value made every Hessian-vector product
    of a fit ~25% more expensive (50-bin benchmark model)."""
    if xp is np:
        return _rel(n, lam, np)
    return _poisson_rel_jax(n, lam)


def _rel(n, lam, xp):
    d = (lam - n) / n
    near = xp.abs(d) < 0.5
    log_ratio = xp.where(near, xp.log1p(xp.where(near, d, 0.0)), xp.log(lam / n))
    return n * (log_ratio - d)


@jax.custom_jvp
def _poisson_rel_jax(n, lam):
    return _rel(n, lam, jnp)


@_poisson_rel_jax.defjvp
def _poisson_rel_jvp(primals, tangents):
    n, lam = primals
    dn, dlam = tangents
    return _poisson_rel_jax(n, lam), jnp.log(lam / n) * dn - (lam - n) / lam * dlam


def _special(xp):
    """``(xlogy, gammaln)`` of the array module ``xp``: scipy's for numpy, JAX's otherwise."""
    if xp is np:
        from scipy.special import gammaln as np_gammaln
        from scipy.special import xlogy as np_xlogy

        return np_xlogy, np_gammaln
    from jax.scipy.special import gammaln, xlogy  # lazily: only a trace needs them (~30 ms)

    return xlogy, gammaln


def _poisson_const(n, xp=jnp):
    """``n log n - n - log Gamma(n + 1)`` for ``n > 0`` (the Poisson log-likelihood at its
    maximum): Stirling's series above :data:`_STIRLING_FROM`, where the three terms cancel to
    ``-log(2 pi n) / 2``, and the direct formula below (``xp`` as :func:`_poisson_rel`)."""
    xlog, lgamma = _special(xp)
    big = n > _STIRLING_FROM
    nb = xp.where(big, n, 2.0 * _STIRLING_FROM)
    inv = 1.0 / nb
    inv2 = inv * inv
    series = -0.5 * xp.log(nb) - _HALF_LOG_2PI
    series = series - inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    ns = xp.where(big, 1.0, n)
    direct = xlog(ns, ns) - ns - lgamma(ns + 1.0)
    return xp.where(big, series, direct)
