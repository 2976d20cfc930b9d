"""HistFactory interpolation codes, as pyhf implements them (``pyhf.interpolators``).

``alpha`` is the nuisance parameter; ``lo``/``nom``/``hi`` the templates at alpha = -1, 0, +1.
Additive codes (histosys) return the change of the bin content; multiplicative codes
(normsys) return the factor applied to the sample. All functions broadcast and are safe to
differentiate (no NaN gradients from the branch that is not taken).

Reference: K. Cranmer et al., HistFactory, CERN-OPEN-2012-016; pyhf's interpolators.

Example:
    >>> import jax.numpy as jnp
    >>> float(code4p(jnp.asarray(0.5), 8.0, 10.0, 13.0))
    1.4482421875
    >>> round(float(code1(jnp.asarray(-1.0), 0.9, 1.1)), 12)
    0.9
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "code0",
    "code0_weights",
    "code1",
    "code4",
    "code4_coefficients",
    "code4p",
    "code4p_weights",
    "log_code1",
]


def code0_weights(alpha, xp=jnp):
    """Weights ``(w_lo, w_nom, w_hi)`` with code0's change = w_lo*lo + w_nom*nom + w_hi*hi.

    The additive codes are linear in the templates at fixed alpha; computing the weights on
    one value per modifier (not per bin) makes derivatives with respect to alpha cheap.
    """
    up = alpha > 0
    zero = xp.zeros_like(alpha)
    return xp.where(up, zero, -alpha), alpha * xp.where(up, -1.0, 1.0), xp.where(up, alpha, zero)


def code4p_weights(alpha, xp=jnp):
    """Weights ``(w_lo, w_nom, w_hi)`` of :func:`code4p` (see :func:`code0_weights`)."""
    a2 = alpha * alpha
    # inside |alpha| <= 1: alpha/2 (hi - lo) + alpha^2 (3 a^4 - 10 a^2 + 15)/16 (hi - 2 nom + lo)
    q = a2 * (a2 * (a2 * 3.0 - 10.0) + 15.0) * 0.0625
    w_lo = xp.where(alpha > 1, 0.0, xp.where(alpha < -1, -alpha, q - 0.5 * alpha))
    w_nom = xp.where(alpha > 1, -alpha, xp.where(alpha < -1, alpha, -2.0 * q))
    w_hi = xp.where(alpha > 1, alpha, xp.where(alpha < -1, 0.0, q + 0.5 * alpha))
    return w_lo, w_nom, w_hi


def _apply(weights, lo, nom, hi):
    w_lo, w_nom, w_hi = weights
    return w_lo * lo + w_nom * nom + w_hi * hi


def code0(alpha, lo, nom, hi):
    """Piecewise-linear additive interpolation (histosys ``code0``)."""
    return _apply(code0_weights(alpha), lo, nom, hi)


def code4p(alpha, lo, nom, hi):
    """Piecewise-linear additive interpolation with a 6th-order polynomial for |alpha| < 1.

    pyhf's default for histosys (``code4p``).
    """
    return _apply(code4p_weights(alpha), lo, nom, hi)


def _safe_pow(base, exponent, xp=jnp):
    ok = base > 0
    safe = xp.where(ok, base, 1.0)
    return xp.where(ok, safe**exponent, xp.where(exponent == 0, 1.0, 0.0))


def _safe_log(x, xp=jnp):
    return xp.log(xp.where(x > 0, x, 1.0))


def code1(alpha, lo, hi, xp=jnp):
    """Exponential multiplicative interpolation (normsys ``code1``): hi^alpha or lo^-alpha."""
    return xp.where(alpha > 0, _safe_pow(hi, alpha, xp), _safe_pow(lo, -alpha, xp))


def log_code1(alpha, lo, hi, xp=jnp):
    """Logarithm of :func:`code1`, computed directly (``alpha log hi`` or ``-alpha log lo``).

    Written with signed exponents (not ``|alpha|``) so that the derivative at alpha = 0 is the
    one-sided derivative of the lo branch, as the value is, rather than its negative.
    """
    log_hi = xp.log(xp.where(hi > 0, hi, 1e-300))
    log_lo = xp.log(xp.where(lo > 0, lo, 1e-300))
    return xp.where(alpha > 0, alpha * log_hi, -alpha * log_lo)


# pyhf's code4 polynomial coefficients for alpha0 = 1 (inverse of the boundary-condition
# matrix; see pyhf.interpolators.code4).
_A_INV = np.asarray(
    [
        [15.0 / 16, -15.0 / 16, -7.0 / 16, -7.0 / 16, 1.0 / 16, -1.0 / 16],
        [3.0 / 2, 3.0 / 2, -9.0 / 16, 9.0 / 16, 1.0 / 16, 1.0 / 16],
        [-5.0 / 8, 5.0 / 8, 5.0 / 8, 5.0 / 8, -1.0 / 8, 1.0 / 8],
        [3.0 / -2, 3.0 / -2, -7.0 / -8, 7.0 / -8, -1.0 / 8, -1.0 / 8],
        [3.0 / 16, -3.0 / 16, -3.0 / 16, -3.0 / 16, 1.0 / 16, -1.0 / 16],
        [1.0 / 2, 1.0 / 2, -5.0 / 16, 5.0 / 16, 1.0 / 16, 1.0 / 16],
    ]
)


def code4_coefficients(lo, hi, xp=jnp):
    """The coefficients ``c`` (6, ...) of :func:`code4`'s polynomial inside (-1, 1),
    ``1 + c[0] alpha + ... + c[5] alpha^6``."""
    log_hi, log_lo = _safe_log(hi, xp), _safe_log(lo, xp)
    b = xp.stack([hi - 1.0, lo - 1.0, log_hi * hi, -log_lo * lo, log_hi**2 * hi, log_lo**2 * lo])
    return xp.tensordot(_A_INV.astype(b.dtype), b, axes=1)


def code4(alpha, lo, hi, xp=jnp):
    """Exponential extrapolation with a 6th-order polynomial for |alpha| < 1 (normsys ``code4``).

    pyhf's default for normsys. Continuous with continuous first and second derivatives.
    ``xp``: ``jax.numpy``, or numpy for an eager evaluation on concrete values.
    """
    alpha, lo, hi = xp.broadcast_arrays(
        xp.asarray(alpha), xp.asarray(lo, dtype=jnp.result_type(float)), xp.asarray(hi)
    )
    c = code4_coefficients(lo, hi, xp)
    inner = 1.0 + alpha * (
        c[0] + alpha * (c[1] + alpha * (c[2] + alpha * (c[3] + alpha * (c[4] + alpha * c[5]))))
    )
    return xp.where(
        alpha >= 1.0,
        _safe_pow(hi, xp.abs(alpha), xp),
        xp.where(alpha > -1.0, inner, _safe_pow(lo, xp.abs(alpha), xp)),
    )
