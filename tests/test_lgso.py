"""L-GSO (diffhep.surrogate.lgso) on a black box with a known optimum.

The problem (diffhep.problems.black_box): a detector of resolution psi with a digitised
read-out, objective E[(y - x)^2] + c / psi = psi^2 + w^2 / 12 + c / psi, optimum
psi* = (c / 2)^(1/3) = 0.5 for c = 0.25. Stated tolerance: |psi - psi*| < 0.1 (the objective
then within 4% of its minimum). References: the closed form and finite differences of the
black box with common random numbers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from diffhep.problems import black_box as bb
from diffhep.surrogate.lgso import Settings, lgso, surrogate_gradient

TOLERANCE = 0.1


def _run(seed, d=1, **kw):
    costs = bb.COSTS[:d]
    return lgso(
        lambda x, p, rng: bb.detector(x, p, rng),
        lambda rng, n: bb.sample_truth(rng, n, d),
        bb.squared_error,
        [1.5] * d,
        cost=lambda p: bb.cost(p, costs),
        bounds=[(0.05, 3.0)] * d,
        settings=Settings(seed=seed, **kw),
    )


def test_recovers_the_known_optimum():
    res = _run(seed=0)
    assert bb.optimum([0.25]) == pytest.approx([0.5])
    assert res.converged
    assert abs(res.psi[0] - 0.5) < TOLERANCE
    assert bb.expected_objective(res.psi, [0.25]) < 1.04 * bb.expected_objective([0.5], [0.25])
    # the surrogate's own check where it is used: its mean risk at held-out psi values
    # agrees with the black box's within a few Monte-Carlo standard errors
    last = res.records[-1]
    assert last["val_risk_error"] < 4 * last["val_risk_se"]
    assert res.calls == res.records[-1]["calls"]
    # where it ended, the surrogate's gradient of E[R] agrees with the black box's
    _check_gradient(res.surrogate, float(res.path[-1][0]))


@pytest.mark.slow
def test_recovers_the_optimum_on_most_seeds():
    hits = [abs(_run(seed).psi[0] - 0.5) < TOLERANCE for seed in range(5)]
    assert sum(hits) >= 4, hits


@pytest.mark.slow
def test_two_parameters():
    res = _run(seed=0, d=2)
    assert np.all(np.abs(res.psi - bb.optimum(bb.COSTS[:2])) < TOLERANCE)


def _fd(psi, h=0.05, n=400_000):
    """Central finite difference of the black box's E[(y - x)^2] (common random numbers)."""
    rng = np.random.default_rng(1)
    x = bb.sample_truth(rng, n)
    e = rng.normal(size=x.shape)
    y = [bb.detector(x, [p], rng, noise=e) for p in (psi - h, psi + h)]
    f = [np.mean(bb.squared_error(yi, x)) for yi in y]
    return (f[1] - f[0]) / (2 * h)


def _check_gradient(surrogate, psi):
    rng = np.random.default_rng(2)
    x, z = bb.sample_truth(rng, 20_000), rng.normal(size=(20_000, 1))
    _, grad = surrogate_gradient(surrogate, bb.squared_error, [psi], x, z)
    fd = _fd(psi)
    assert fd == pytest.approx(2 * psi, rel=0.05)  # the reference itself: d(psi^2)/dpsi
    assert np.sign(grad[0]) == np.sign(fd)
    assert grad[0] == pytest.approx(fd, rel=0.35)


@pytest.mark.slow
@pytest.mark.parametrize("psi", [0.3, 0.8, 1.2])
def test_surrogate_gradient_matches_finite_differences(psi):
    """One L-GSO iteration at psi trains the surrogate on the trust region around it; its
    gradient of E[R] (no cost term) agrees in sign and within 35% with the black box's."""
    res = lgso(
        lambda x, p, rng: bb.detector(x, p, rng),
        lambda rng, n: bb.sample_truth(rng, n),
        bb.squared_error,
        [psi],
        bounds=[(0.05, 3.0)],
        settings=Settings(max_iterations=1, n_psi=24, m_x=128, epsilon=0.15),
    )
    _check_gradient(res.surrogate, psi)


def test_batch_level_risk():
    """A risk that is one number for the batch (e.g. a significance of summed yields) is
    accepted; its validation has no per-sample standard error."""
    res = lgso(
        lambda x, p, rng: bb.detector(x, p, rng),
        lambda rng, n: bb.sample_truth(rng, n),
        lambda y, x: jnp.sqrt(((y - x) ** 2).mean()),
        [1.0],
        settings=Settings(max_iterations=2, surrogate_steps=5, first_fit=1, k_x=64),
    )
    assert len(res.records) == 2
    assert res.records[0]["val_risk_se"] is None
    assert np.isfinite(res.records[0]["val_risk_error"])
