"""Differentiable (binned-KDE) and hard histograms, and learnable ordered bin edges.

:func:`soft_histogram` is the binned kernel density estimate ("bKDE") of the neos paper
(N. Simpson, L. Heinrich, arXiv:2203.05570): every event is smeared by a Gaussian kernel of
width ``h`` and contributes to bin ``k`` the kernel mass between the bin's edges,

    p_ik = Phi((e_{k+1} - x_i) / h) - Phi((e_k - x_i) / h).

Unlike the reference implementation (``relaxed``), the first bin's lower edge and the last
bin's upper edge are taken as -inf / +inf, so the kernel mass outside the binned range is
kept in the outer bins: ``sum_k p_ik = 1`` for every event and the total yield equals the sum
of weights. :func:`hard_histogram` uses the same overflow convention, so the soft histogram
tends to the hard one as ``h -> 0``. :class:`Binning` holds bin edges that can be trained and
stay strictly increasing by construction.

Example:
    >>> import jax.numpy as jnp
    >>> from diffhep.analysis.histograms import (
    ...     Binning, hard_histogram, relative_bandwidth, soft_histogram,
    ... )
    >>> x = jnp.array([-3.0, 0.1, 0.4, 0.45, 0.9, 2.0])
    >>> edges = Binning.uniform(4).edges()
    >>> [round(float(v), 4) for v in edges]
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> [float(v) for v in hard_histogram(x, edges)[0]]
    [2.0, 2.0, 0.0, 2.0]
    >>> sumw, sumw2 = soft_histogram(x, edges, relative_bandwidth(edges, 0.5))
    >>> [round(float(v), 3) for v in sumw]
    [2.055, 1.389, 0.661, 1.896]
    >>> round(float(sumw.sum()), 4)
    6.0
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

__all__ = ["Binning", "hard_histogram", "relative_bandwidth", "soft_histogram"]


def _as_arrays(*arrays):
    return tuple(None if a is None else jnp.asarray(a) for a in arrays)


def _prepare(values, edges, weights):
    """Validate shapes and promote ``values``, ``edges`` and ``weights`` to a common float dtype."""
    values = jnp.asarray(values)
    edges = jnp.asarray(edges)
    arrays = [values, edges] if weights is None else [values, edges, jnp.asarray(weights)]
    # one dtype by design (float32 events, float64 edges or weights): promoted as JAX does
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*arrays)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(dtype, float)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D (use jax.vmap for batches), got shape {values.shape}")
    if edges.ndim != 1 or edges.shape[0] < 2:
        raise ValueError(f"edges must be 1-D with at least 2 entries, got shape {edges.shape}")
    if weights is None:
        weights = jnp.ones(values.shape, dtype)
    else:
        weights = jnp.asarray(weights, dtype)
        if weights.shape != values.shape:
            raise ValueError(f"weights shape {weights.shape} != values shape {values.shape}")
    return values.astype(dtype), edges.astype(dtype), weights


def relative_bandwidth(edges, rel):
    """Kernel width ``rel`` times the mean bin width ``(edges[-1] - edges[0]) / nbins``.

    Args:
        edges: Bin edges, shape ``(nbins + 1,)``.
        rel: Bandwidth in units of the mean bin width (may be a traced scalar, e.g. a schedule).

    Returns:
        The absolute bandwidth to pass to :func:`soft_histogram`.
    """
    edges = jnp.asarray(edges)
    return rel * (edges[-1] - edges[0]) / (edges.shape[0] - 1)


def soft_histogram(values, edges, bandwidth, weights=None):
    """Binned Gaussian KDE with the outer kernel mass kept in the first and last bins.

    Args:
        values: Event observable, shape ``(n,)``.
        edges: Strictly increasing bin edges, shape ``(nbins + 1,)``. The outermost edges only
            set the scale of :func:`relative_bandwidth`: the first and last bins extend to
            -inf and +inf.
        bandwidth: Absolute kernel width ``h > 0`` (scalar, may be traced).
        weights: Per-event weights, shape ``(n,)``, any sign; default 1.

    Returns:
        ``(sumw, sumw2)``, each of shape ``(nbins,)``: ``sumw_k = sum_i w_i p_ik`` and
        ``sumw2_k = sum_i w_i**2 p_ik``, with dtype ``jnp.result_type(values, edges, weights)``.
    """
    return _soft_histogram(*_as_arrays(values, edges, weights), bandwidth)


@jax.jit  # one program per shape where called eagerly, not one per operation
def _soft_histogram(values, edges, weights, bandwidth):
    values, edges, weights = _prepare(values, edges, weights)
    dtype = values.dtype
    h = jnp.asarray(bandwidth, dtype)
    inf = jnp.full((values.shape[0], 1), jnp.inf, dtype)
    z = jnp.concatenate([-inf, (edges[None, 1:-1] - values[:, None]) / h, inf], axis=1)
    lower, upper = z[:, :-1], z[:, 1:]
    # Phi(b) - Phi(a) cancels catastrophically when both are close to 1; use the upper tail
    # Phi(-a) - Phi(-b) there instead (bins entirely above the event's kernel centre).
    p = jnp.where(lower > 0, ndtr(-lower) - ndtr(-upper), ndtr(upper) - ndtr(lower))
    hi_prec = jax.lax.Precision.HIGHEST
    sumw = jnp.matmul(weights, p, precision=hi_prec)
    sumw2 = jnp.matmul(weights * weights, p, precision=hi_prec)
    return sumw, sumw2


def hard_histogram(values, edges, weights=None):
    """Ordinary weighted histogram with under/overflow folded into the outer bins.

    Bin ``k`` is ``[e_k, e_{k+1})``; the last bin also includes its upper edge
    (``numpy.histogram`` convention). Events below ``e_0`` (above ``e_N``) enter the first
    (last) bin. Piecewise constant in ``values`` (zero gradient), linear in ``weights``.

    Args:
        values: Event observable, shape ``(n,)``.
        edges: Strictly increasing bin edges, shape ``(nbins + 1,)``.
        weights: Per-event weights, shape ``(n,)``, any sign; default 1.

    Returns:
        ``(sumw, sumw2)``, each of shape ``(nbins,)``: per-bin sums of weights and of squared
        weights, with dtype ``jnp.result_type(values, edges, weights)``.
    """
    return _hard_histogram(*_as_arrays(values, edges, weights))


@jax.jit  # one program per shape where called eagerly, not one per operation
def _hard_histogram(values, edges, weights):
    values, edges, weights = _prepare(values, edges, weights)
    nbins = edges.shape[0] - 1
    idx = jnp.clip(jnp.searchsorted(edges, values, side="right") - 1, 0, nbins - 1)
    sumw = jax.ops.segment_sum(weights, idx, num_segments=nbins)
    sumw2 = jax.ops.segment_sum(weights * weights, idx, num_segments=nbins)
    return sumw, sumw2


class Binning(eqx.Module):
    """Learnable bin edges on ``[lo, hi]``, strictly increasing by construction.

    The ``nbins`` bin widths are parametrised by unconstrained logits ``theta``::

        widths = (hi - lo) * (m + (1 - nbins * m) * softmax(theta))
        edges  = lo + concatenate([0], cumsum(widths)),  edges[-1] := hi exactly

    where ``m = min_width`` is a floor on the width as a fraction of ``hi - lo``. With
    ``m = 0`` this is the plain softmax parametrisation, but then very different logits make
    a width underflow against the running edge and two edges coincide; the default floor keeps
    every width resolvable (in float32 choose ``m`` well above ``nbins`` times the float
    resolution of the edges). ``lo``, ``hi``, ``trainable`` and ``min_width`` are static.

    Attributes:
        theta: Logits, shape ``(nbins,)`` (the only array leaf).
        lo: Fixed lower edge.
        hi: Fixed upper edge.
        trainable: If False, :meth:`edges` blocks gradients to ``theta``.
        min_width: Minimum bin width as a fraction of ``hi - lo``; ``nbins * min_width < 1``.
    """

    theta: jax.Array
    lo: float = eqx.field(static=True)
    hi: float = eqx.field(static=True)
    trainable: bool = eqx.field(static=True)
    min_width: float = eqx.field(static=True)

    def __init__(self, theta, lo=0.0, hi=1.0, *, trainable=True, min_width=1e-6):
        theta = jnp.asarray(theta)
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            theta = theta.astype(float)
        self.theta = theta
        self.lo, self.hi = float(lo), float(hi)
        self.trainable = bool(trainable)
        self.min_width = float(min_width)
        if not self.lo < self.hi:
            raise ValueError(f"need lo < hi, got lo={self.lo}, hi={self.hi}")
        nbins = theta.shape[-1] if theta.ndim else 0
        if nbins < 1 or not 0.0 <= self.min_width * nbins < 1.0:
            raise ValueError(
                f"need nbins >= 1 and 0 <= nbins * min_width < 1, "
                f"got nbins={nbins}, min_width={self.min_width}"
            )

    @classmethod
    def uniform(cls, nbins, lo=0.0, hi=1.0, *, trainable=True, min_width=1e-6):
        """``nbins`` equal-width bins on ``[lo, hi]`` (all logits zero)."""
        return cls(jnp.zeros(int(nbins)), lo, hi, trainable=trainable, min_width=min_width)

    @classmethod
    def from_edges(cls, edges, *, trainable=True, min_width=1e-6):
        """Binning reproducing the given strictly increasing ``edges`` (concrete values).

        Raises:
            ValueError: If ``edges`` is not 1-D with at least 2 finite, strictly increasing
                entries, or a bin is not wider than ``min_width * (edges[-1] - edges[0])``.
        """
        e = np.asarray(edges, dtype=np.float64)
        if e.ndim != 1 or e.shape[0] < 2:
            raise ValueError(f"edges must be 1-D with at least 2 entries, got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            i = int(np.flatnonzero(~np.isfinite(e))[0])
            raise ValueError(f"edges must be finite, got edges[{i}] = {e[i]} (index {i})")
        bad = np.flatnonzero(np.diff(e) <= 0)
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(
                f"edges must be strictly increasing, violated at index {i}: "
                f"edges[{i}] = {e[i]} <= edges[{i - 1}] = {e[i - 1]}"
            )
        nbins = e.shape[0] - 1
        if not 0.0 <= min_width * nbins < 1.0:
            raise ValueError(f"need 0 <= nbins * min_width < 1, got {nbins} * {min_width}")
        frac = np.diff(e) / (e[-1] - e[0])
        soft = (frac - min_width) / (1.0 - nbins * min_width)
        narrow = np.flatnonzero(soft <= 0)
        if narrow.size:
            raise ValueError(
                f"bin {int(narrow[0])} is not wider than min_width={min_width} of the range"
            )
        theta = np.log(soft)
        theta -= theta.mean()
        return cls(theta, e[0], e[-1], trainable=trainable, min_width=min_width)

    @property
    def nbins(self) -> int:
        """Number of bins."""
        return self.theta.shape[-1]

    def edges(self) -> jax.Array:
        """Bin edges, shape ``(nbins + 1,)``: ``edges[0] == lo`` and ``edges[-1] == hi``."""
        theta = self.theta if self.trainable else jax.lax.stop_gradient(self.theta)
        m = self.min_width
        frac = m + (1.0 - self.nbins * m) * jax.nn.softmax(theta, axis=-1)
        inner = self.lo + (self.hi - self.lo) * jnp.cumsum(frac[..., :-1], axis=-1)
        batch = theta.shape[:-1]
        lo = jnp.full((*batch, 1), self.lo, theta.dtype)
        hi = jnp.full((*batch, 1), self.hi, theta.dtype)
        return jnp.concatenate([lo, inner.astype(theta.dtype), hi], axis=-1)
