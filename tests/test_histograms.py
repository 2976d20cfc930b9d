"""Soft (bKDE) and hard histograms and learnable bin edges against independent references."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffhep.analysis.histograms import Binning, hard_histogram, relative_bandwidth, soft_histogram

EDGES = np.array([0.0, 0.1, 0.35, 0.5, 0.8, 1.0])


def _np_hist(values, edges, weights):
    """numpy.histogram reference with under/overflow clipped into the outer bins."""
    x = np.clip(values, edges[0], edges[-1])
    return (
        np.histogram(x, bins=edges, weights=weights)[0],
        np.histogram(x, bins=edges, weights=weights**2)[0],
    )


def _bkde_reference(values, edges, h, weights, keep_overflow=True):
    """Direct scipy evaluation of the bKDE formula (``keep_overflow=False``: relaxed/neos)."""
    e = np.asarray(edges, dtype=np.float64).copy()
    if keep_overflow:
        e[0], e[-1] = -np.inf, np.inf
    cdf = norm.cdf((e[None, :] - values[:, None]) / h)
    p = cdf[:, 1:] - cdf[:, :-1]
    return weights @ p, weights**2 @ p


def _fd_grad(f, x, eps=1e-6):
    """Central finite-difference gradient of the scalar ``f`` at the float64 array ``x``."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
    return grad


def _assert_grad_close(analytic, numeric):
    numeric = np.asarray(numeric)
    np.testing.assert_allclose(
        np.asarray(analytic), numeric, rtol=1e-6, atol=1e-6 * np.max(np.abs(numeric))
    )
    assert np.max(np.abs(numeric)) > 1e-3  # the check is not vacuous


@pytest.mark.parametrize("bandwidth", [1e-4, 1e-5])
def test_soft_tends_to_hard_as_bandwidth_vanishes(bandwidth):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 1.5, 2000)
    x = x[np.min(np.abs(x[:, None] - EDGES[None, :]), axis=1) > 1e-3]
    w = rng.normal(0.3, 1.0, x.size)
    assert (w < 0).any() and (x < EDGES[0]).any() and (x > EDGES[-1]).any()
    sumw, sumw2 = soft_histogram(x, EDGES, bandwidth, w)
    ref_w, ref_w2 = _np_hist(x, EDGES, w)
    np.testing.assert_allclose(sumw, ref_w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sumw2, ref_w2, rtol=1e-10, atol=1e-12)
    hard_w, hard_w2 = hard_histogram(x, EDGES, w)
    np.testing.assert_allclose(sumw, hard_w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sumw2, hard_w2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rel", [0.3, 2.0])
def test_total_mass_conserved_with_overflow_and_negative_weights(rel):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0.5, 0.4, 200), [-50.0, -3.0, 4.0, 30.0]])
    w = rng.uniform(-0.5, 2.0, x.size)
    w[-4:] = [1.5, -0.7, 2.0, 0.9]  # far outside the range, one negative
    h = float(relative_bandwidth(EDGES, rel))
    sumw, sumw2 = soft_histogram(x, EDGES, h, w)
    np.testing.assert_allclose(float(jnp.sum(sumw)), w.sum(), rtol=1e-12)
    np.testing.assert_allclose(float(jnp.sum(sumw2)), np.sum(w**2), rtol=1e-12)
    unit, _ = soft_histogram(x, EDGES, h)
    np.testing.assert_allclose(float(jnp.sum(unit)), x.size, rtol=1e-12)
    # The reference bKDE (kernel mass outside [e0, eN] dropped) loses yield in this setup:
    # the four far-away events vanish entirely and the tails of the others leak out.
    naive_unit, _ = _bkde_reference(x, EDGES, h, np.ones_like(x), keep_overflow=False)
    assert naive_unit.sum() < x.size - 4 - 1.0
    naive_w, naive_w2 = _bkde_reference(x, EDGES, h, w, keep_overflow=False)
    assert abs(naive_w.sum() - w.sum()) > 0.01 * abs(w.sum())
    assert abs(naive_w2.sum() - np.sum(w**2)) > 0.01 * np.sum(w**2)


def test_soft_matches_direct_scipy_formula():
    x = np.array([-0.2, 0.05, 0.33, 0.5, 0.71, 1.3])
    w = np.array([1.0, -0.5, 2.0, 0.25, 1.5, -1.0])
    h = 0.15
    sumw, sumw2 = soft_histogram(x, EDGES, h, w)
    ref_w, ref_w2 = _bkde_reference(x, EDGES, h, w)
    np.testing.assert_allclose(sumw, ref_w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sumw2, ref_w2, rtol=1e-12, atol=1e-15)
    # relative_bandwidth is rel times the mean bin width
    np.testing.assert_allclose(float(relative_bandwidth(EDGES, 0.75)), 0.75 * 1.0 / 5, rtol=1e-15)
    # an absolute bandwidth given via relative_bandwidth gives the same histogram
    same = soft_histogram(x, EDGES, relative_bandwidth(EDGES, h * 5), w)[0]
    np.testing.assert_allclose(same, ref_w, rtol=1e-12, atol=1e-15)


def test_soft_far_tail_is_accurate():
    # an event far below the range: Phi(b) - Phi(a) with both ~1 would cancel to 0 or noise
    x, h = np.array([-1.0]), 0.1
    sumw, _ = soft_histogram(x, EDGES, h)
    e = EDGES[1:-1]
    ref = np.concatenate([[norm.cdf((e[0] - x[0]) / h)], -np.diff(norm.sf((e - x[0]) / h))])
    ref = np.append(ref, norm.sf((e[-1] - x[0]) / h))
    np.testing.assert_allclose(sumw, ref, rtol=1e-10)
    assert 0 < float(sumw[-1]) < 1e-50


def test_hard_matches_numpy_histogram_including_edges():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-0.3, 1.3, 300), EDGES, EDGES, [-5.0, 7.0]])
    w = rng.normal(0.2, 1.0, x.size)
    sumw, sumw2 = hard_histogram(x, EDGES, w)
    ref_w, ref_w2 = _np_hist(x, EDGES, w)
    np.testing.assert_allclose(sumw, ref_w, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(sumw2, ref_w2, rtol=1e-13, atol=1e-13)
    # explicit conventions: [e_k, e_k+1), last edge in the last bin, overflow clipped
    counts = hard_histogram(np.array([0.1, 1.0, 0.0, -1.0, 2.0, 0.35]), EDGES)[0]
    np.testing.assert_array_equal(counts, [2.0, 1.0, 1.0, 0.0, 2.0])
    np.testing.assert_array_equal(
        hard_histogram(x, EDGES)[0], _np_hist(x, EDGES, np.ones_like(x))[0]
    )


def _loss(sumw, sumw2):
    """A smooth, nonlinear scalar of both histogram outputs."""
    c = jnp.arange(1.0, sumw.shape[0] + 1.0)
    return jnp.sum(c * sumw**2 / (sumw2 + 1.0)) + jnp.sum(jnp.sin(sumw))


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    x = rng.uniform(-0.2, 1.2, 9)
    w = rng.normal(0.5, 1.0, 9)
    theta = rng.normal(0.0, 1.0, 5)
    h = 0.12

    def loss(x, w, theta, h):
        edges = Binning(theta).edges()
        return _loss(*soft_histogram(x, edges, h, w))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(x, w, theta, h)
    loss = jax.jit(loss)
    _assert_grad_close(grads[0], _fd_grad(lambda v: loss(v, w, theta, h), x))
    _assert_grad_close(grads[1], _fd_grad(lambda v: loss(x, v, theta, h), w))
    _assert_grad_close(grads[2], _fd_grad(lambda v: loss(x, w, v, h), theta))
    _assert_grad_close(grads[3], _fd_grad(lambda v: loss(x, w, theta, v[0]), np.array([h]))[0])

    # bandwidth relative to the (learnable) bin width, gradients through both paths
    def loss_rel(theta, rel):
        edges = Binning(theta, -0.5, 1.5).edges()
        return _loss(*soft_histogram(x, edges, relative_bandwidth(edges, rel), w))

    g_theta, g_rel = jax.grad(loss_rel, argnums=(0, 1))(theta, 0.4)
    loss_rel = jax.jit(loss_rel)
    _assert_grad_close(g_theta, _fd_grad(lambda v: loss_rel(v, 0.4), theta))
    _assert_grad_close(g_rel, _fd_grad(lambda v: loss_rel(theta, v[0]), np.array([0.4]))[0])


def test_hard_histogram_gradients():
    x = np.array([0.05, 0.2, 0.2, 0.9, 3.0])
    w = np.array([1.0, -2.0, 0.5, 1.5, 0.3])
    c = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])

    def loss(x, w):
        sumw, sumw2 = hard_histogram(x, EDGES, w)
        return jnp.sum(c * sumw) + jnp.sum(c * sumw2)

    gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
    np.testing.assert_array_equal(gx, np.zeros_like(x))
    cb = np.array([1.0, 2.0, 2.0, 5.0, 5.0])  # coefficient of each event's bin
    np.testing.assert_allclose(gw, cb + 2 * w * cb, rtol=1e-15)


def test_binning_edges_strictly_increasing_with_exact_endpoints():
    rng = np.random.default_rng(5)
    floorless_collapsed = 0
    # 4 x 25 = 100 random draws of logits of very different magnitudes
    for nbins, lo, hi in [(1, -2.0, 3.0), (4, 0.0, 1.0), (12, -7.5, -7.25), (29, 0.0, 1000.0)]:
        scale = rng.choice([1.0, 30.0, 300.0], size=(25, 1))
        theta = rng.normal(0.0, 1.0, (25, nbins)) * scale
        edges = np.asarray(jax.vmap(lambda t, lo=lo, hi=hi: Binning(t, lo, hi).edges())(theta))
        # min_width=0 is the plain softmax parametrisation ...
        plain = np.asarray(
            jax.vmap(lambda t, lo=lo, hi=hi: Binning(t, lo, hi, min_width=0.0).edges())(theta)
        )
        sm = np.exp(theta - theta.max(axis=1, keepdims=True))
        sm /= sm.sum(axis=1, keepdims=True)
        ref = lo + np.concatenate([np.zeros((25, 1)), np.cumsum(sm * (hi - lo), axis=1)], axis=1)
        for i in range(25):
            assert edges[i].shape == (nbins + 1,)
            assert edges[i, 0] == lo and edges[i, -1] == hi
            assert np.all(np.diff(edges[i]) > 0), (theta[i], edges[i])
            np.testing.assert_allclose(
                plain[i, :-1], ref[i, :-1], rtol=1e-12, atol=1e-12 * max(abs(lo), hi)
            )
            assert plain[i, 0] == lo and plain[i, -1] == hi
            floorless_collapsed += int(np.any(np.diff(plain[i]) <= 0))
    # ... whose edges collide for large logits: the reason for the default width floor
    assert floorless_collapsed > 10


def test_binning_from_edges_round_trip():
    rng = np.random.default_rng(6)
    for nbins in (1, 2, 7, 40):
        edges = np.sort(rng.uniform(-3.0, 5.0, nbins + 1))
        for min_width in (0.0, 1e-6):
            b = Binning.from_edges(edges, min_width=min_width)
            assert b.nbins == nbins and b.theta.shape == (nbins,)
            out = np.asarray(b.edges())
            np.testing.assert_allclose(out, edges, rtol=1e-12, atol=0)
            assert out[0] == edges[0] and out[-1] == edges[-1]
    uni = Binning.uniform(4, -1.0, 3.0)
    np.testing.assert_allclose(uni.edges(), [-1.0, 0.0, 1.0, 2.0, 3.0], rtol=1e-12, atol=1e-15)
    assert uni.nbins == 4


@pytest.mark.parametrize(
    ("edges", "match"),
    [
        ([0.0, 0.5, 0.4, 1.0], "index 2"),
        ([0.0, 0.2, 0.5, 0.5, 1.0], "index 3"),
        ([1.0, 0.0], "index 1"),
        ([0.0], "at least 2"),
        ([[0.0, 1.0]], "1-D"),
        ([0.0, np.nan, 1.0], "index 1"),
    ],
)
def test_binning_from_edges_rejects_bad_edges(edges, match):
    with pytest.raises(ValueError, match=match):
        Binning.from_edges(edges)


def test_binning_not_trainable_blocks_gradient():
    x = jnp.array([0.1, 0.3, 0.55, 0.9])
    theta = jnp.array([0.3, -0.2, 0.5])

    def loss(binning):
        return _loss(*soft_histogram(x, binning.edges(), 0.1))

    g_on = eqx.filter_grad(loss)(Binning(theta))
    g_off = eqx.filter_grad(loss)(Binning(theta, trainable=False))
    assert np.max(np.abs(g_on.theta)) > 1e-3
    np.testing.assert_array_equal(g_off.theta, np.zeros(3))
    np.testing.assert_array_equal(Binning(theta, trainable=False).edges(), Binning(theta).edges())


def test_jit_vmap_and_dtypes():
    rng = np.random.default_rng(7)
    batch = rng.uniform(-0.2, 1.2, (4, 50))
    wts = rng.normal(1.0, 0.5, (4, 50))
    soft = jax.jit(soft_histogram)
    hard = jax.jit(hard_histogram)
    for i in range(4):
        for got, ref in zip(
            soft(batch[i], EDGES, 0.07, wts[i]),
            soft_histogram(batch[i], EDGES, 0.07, wts[i]),
            strict=True,
        ):
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15)
        for got, ref in zip(
            hard(batch[i], EDGES, wts[i]), _np_hist(batch[i], EDGES, wts[i]), strict=True
        ):
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)

    vsoft = jax.vmap(soft_histogram, in_axes=(0, None, None, 0))(batch, EDGES, 0.07, wts)
    vhard = jax.vmap(hard_histogram, in_axes=(0, None, 0))(batch, EDGES, wts)
    for i in range(4):
        ref_soft = _bkde_reference(batch[i], EDGES, 0.07, wts[i])
        np.testing.assert_allclose(vsoft[0][i], ref_soft[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(vsoft[1][i], ref_soft[1], rtol=1e-12, atol=1e-15)
        ref_hard = _np_hist(batch[i], EDGES, wts[i])
        np.testing.assert_allclose(vhard[0][i], ref_hard[0], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(vhard[1][i], ref_hard[1], rtol=1e-13, atol=1e-13)

    # a jitted Binning -> soft histogram pipeline
    f = eqx.filter_jit(lambda b, x: soft_histogram(x, b.edges(), 0.07)[0])
    np.testing.assert_allclose(
        f(Binning.from_edges(EDGES), batch[0]),
        _bkde_reference(batch[0], EDGES, 0.07, np.ones(50))[0],
        rtol=1e-10,
    )

    # dtype follows the inputs
    x32, w32, e32 = (jnp.asarray(a, jnp.float32) for a in (batch[0], wts[0], EDGES))
    for out in (*soft_histogram(x32, e32, 0.07, w32), *hard_histogram(x32, e32, w32)):
        assert out.dtype == jnp.float32
    assert soft_histogram(x32, e32, 0.07)[0].dtype == jnp.float32
    assert Binning(jnp.zeros(3, jnp.float32)).edges().dtype == jnp.float32
    np.testing.assert_allclose(
        soft_histogram(x32, e32, 0.07, w32)[0],
        _bkde_reference(np.asarray(x32, np.float64), EDGES, 0.07, np.asarray(w32, np.float64))[0],
        rtol=1e-4,
    )
    for out in (*soft_histogram(x32, EDGES, 0.07, w32), *hard_histogram(x32, EDGES, w32)):
        assert out.dtype == jnp.float64
    assert soft_histogram(x32, e32, 0.07, wts[0])[0].dtype == jnp.float64


def test_float32_events_with_float64_edges_under_strict_promotion():
    """This module runs with strict dtype promotion (tests/conftest.py): mixing float32 and
    float64 implicitly raises here, and the histograms promote their inputs explicitly, so
    float32 events with float64 edges and weights give the float64 numpy histogram."""
    with pytest.raises(jax.dtypes.TypePromotionError):
        _ = jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.float64)
    x = np.random.default_rng(3).uniform(-0.2, 1.2, 60).astype(np.float32)
    w = np.linspace(0.5, 1.5, 60)
    sumw, sumw2 = hard_histogram(jnp.asarray(x), EDGES, w)
    assert sumw.dtype == jnp.float64
    ref = _np_hist(x.astype(np.float64), EDGES, w)
    np.testing.assert_allclose(sumw, ref[0], rtol=1e-13)
    np.testing.assert_allclose(sumw2, ref[1], rtol=1e-13)
    soft = soft_histogram(jnp.asarray(x), EDGES, 0.07, w)[0]
    assert soft.dtype == jnp.float64 and np.isclose(float(soft.sum()), w.sum(), rtol=1e-6)
