"""The Deep Sets observable: permutation invariance, masking, a plain-Python forward pass as
reference, the standardisation, and its gradient against central finite differences."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhep.nn.deepsets import DeepSetsObservable, Layout

# 2 event features, then 3 jets x (pt, eta, mask), then 2 leptons x (pt, mask)
LAYOUT = Layout(event=(0, 1), collections=((2, 3, 2), (11, 2, 1)))


@eqx.filter_jit
def logits(obs, x):
    return obs.logits(x)


def _events(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 15))
    x[:, :2] = rng.normal(size=(n, 2)) * [10, 1] + [50, 0]
    for start, m, k in LAYOUT.collections:
        for i in range(n):
            real = rng.integers(0, m + 1)
            for j in range(m):
                c = start + j * (k + 1)
                if j < real:
                    x[i, c : c + k] = rng.normal(30, 10, k)
                    x[i, c + k] = 1.0
                else:
                    x[i, c : c + k] = rng.normal(0, 100, k)  # garbage in padded slots
    return x


@pytest.fixture(scope="module", params=["sum", "mean"])
def obs(request):
    return DeepSetsObservable.create(
        _events(), LAYOUT, hidden=(8,), object_hidden=(6, 5), latent=3,
        key=jax.random.key(1), pooling=request.param, dtype=jnp.float64,
    )  # fmt: skip


def _permute_objects(x, rng):
    y = x.copy()
    for start, m, k in LAYOUT.collections:
        for i in range(len(x)):
            perm = rng.permutation(m)
            blocks = x[i, start : start + m * (k + 1)].reshape(m, k + 1)
            y[i, start : start + m * (k + 1)] = blocks[perm].ravel()
    return y


def test_permutation_invariance_and_masking(obs):
    x = _events(seed=2)
    rng = np.random.default_rng(3)
    ref = np.asarray(logits(obs, x))
    np.testing.assert_allclose(logits(obs, _permute_objects(x, rng)), ref, rtol=1e-12)
    # padded slots: any values give the same output
    y = x.copy()
    for start, m, k in LAYOUT.collections:
        for j in range(m):
            c = start + j * (k + 1)
            pad = y[:, c + k] == 0
            y[pad, c : c + k] = rng.normal(0, 1e3, (pad.sum(), k))
    np.testing.assert_array_equal(np.asarray(logits(obs, y)), ref)
    # but the objects do matter (the test can fail): move one jet's pt
    z = x.copy()
    z[:, 2] += 20.0 * z[:, 4]
    assert not np.allclose(np.asarray(logits(obs, z)), ref)


def _mlp_numpy(mlp, v):
    for i, layer in enumerate(mlp.layers):
        v = np.asarray(layer.weight) @ v + np.asarray(layer.bias)
        if i < len(mlp.layers) - 1:
            v = np.maximum(v, 0.0)
    return v


def test_forward_pass_matches_plain_python(obs):
    """Object by object in Python: standardise, phi, masked pool, rho."""
    x = _events(seed=4)
    mean, scale = np.asarray(obs.mean), np.asarray(obs.scale)
    out = []
    for row in x:
        z = (row - mean) / scale
        parts = [z[list(LAYOUT.event)]]
        for phi, (start, m, k) in zip(obs.phis, LAYOUT.collections, strict=True):
            pooled, count = np.zeros(3), 0
            for j in range(m):
                c = start + j * (k + 1)
                if row[c + k] == 1.0:
                    pooled += _mlp_numpy(phi, z[c : c + k])
                    count += 1
            parts.append(pooled / max(count, 1) if obs.pooling == "mean" else pooled)
        out.append(_mlp_numpy(obs.rho, np.concatenate(parts)).item())
    np.testing.assert_allclose(np.asarray(logits(obs, x)), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(obs(x)), 1 / (1 + np.exp(-np.array(out))), rtol=1e-12)


def test_standardisation_of_objects_over_real_objects_only(obs):
    x = _events()
    start, m, _ = LAYOUT.collections[0]
    objs = [x[i, start + j * 3 : start + j * 3 + 2] for i in range(len(x)) for j in range(m)
            if x[i, start + j * 3 + 2] == 1.0]  # fmt: skip
    objs = np.array(objs)
    for j in range(m):
        c = start + j * 3
        np.testing.assert_allclose(np.asarray(obs.mean)[c : c + 2], objs.mean(0), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(obs.scale)[c : c + 2], objs.std(0), rtol=1e-12)
        assert float(obs.mean[c + 2]) == 0.0 and float(obs.scale[c + 2]) == 1.0
    np.testing.assert_allclose(np.asarray(obs.mean)[:2], x[:, :2].mean(0), rtol=1e-12)


def test_gradient_matches_central_differences(obs):
    x = _events(seed=5)
    leaves, treedef = jax.tree.flatten(eqx.filter(obs, eqx.is_inexact_array))
    # a weight of the first collection's phi: index into the flattened parameters
    target = obs.phis[0].layers[0].weight

    @jax.jit
    def f(w):
        o = eqx.tree_at(lambda m: m.phis[0].layers[0].weight, obs, w)
        return jnp.sum(jnp.tanh(o.logits(x)))

    g = np.asarray(jax.grad(f)(target))
    eps = 1e-6
    for idx in [(0, 0), (2, 1), (5, 0)]:
        e = np.zeros(target.shape)
        e[idx] = eps
        fd = (f(target + e) - f(target - e)) / (2 * eps)
        assert g[idx] == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    assert len(leaves) > 0 and treedef is not None


def test_bad_layout_is_refused():
    with pytest.raises(ValueError, match="do not fit the layout"):
        DeepSetsObservable.create(np.zeros((4, 5)), LAYOUT, key=jax.random.key(0))
