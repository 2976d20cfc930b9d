"""L-GSO (diffhep.surrogate.lgso) on a black box with a known optimum.

The problem (diffhep.problems.black_box): a detector of resolution psi with a digitised
read-out, objective E[(y - x)^2] + c / psi = psi^2 + w^2 / 12 + c / psi, optimum
psi* = (c / 2)^(1/3) = 0.5 for c = 0.25. Stated tolerance: |psi - psi*| < 0.1 (the objective
then within 4% of its minimum). References: the closed form and finite differences of the
black box with common random numbers.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

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


# ---------------------------------------------------------------- a selection as the black box
def _cut_pool():
    """The 2-D cut toy's shapes (signal at (1.5, 2), background N(0, 9 I)), 3000 events each:
    rows (x1, x2, is_signal)."""
    rng = np.random.default_rng(0)
    sig = rng.multivariate_normal((1.5, 2.0), [[0.5, 0.2], [0.2, 0.5]], 3000)
    bkg = rng.normal(0.0, 3.0, (3000, 2))
    return np.concatenate([np.column_stack([sig, np.ones(3000)]),
                           np.column_stack([bkg, np.zeros(3000)])])  # fmt: skip


def _cut_risk(y, x):
    """-Z0 of one counting bin, 50 signal and 1000 background events expected."""
    p, sig = y[:, 0], x[:, 2]
    s = 50 * jnp.sum(sig * p) / jnp.sum(sig)
    b = 1000 * jnp.sum((1 - sig) * p) / jnp.sum(1 - sig)
    return -jnp.sqrt(2 * ((s + b) * jnp.log1p(s / b) - s))


def _passes(x, psi, rng=None):
    return ((x[:, 0] > psi[0]) & (x[:, 1] > psi[1])).astype(float)[:, None]


@pytest.mark.parametrize(
    "psi, cheap",
    [((0.0, 0.0), True),
     pytest.param((1.0, 0.3), False, marks=pytest.mark.slow),
     pytest.param((-0.5, 1.5), False, marks=pytest.mark.slow)],
)  # fmt: skip
def test_bernoulli_surrogate_of_a_selection(psi, cheap):
    """Hard cuts x1 > psi_1, x2 > psi_2 as the black box (0/1 per event), the Bernoulli
    surrogate p(pass | x, psi) after one L-GSO iteration: its gradient of -Z0 agrees in sign
    and within 35% per component with central finite differences of the hard cuts on 6000
    events (observed within 17% at (0, 0) with the cheap settings, 25% otherwise)."""
    pool = _cut_pool()
    size = dict(n_psi=12, m_x=128, first_fit=5) if cheap else dict(n_psi=16, m_x=256)
    res = lgso(_passes, lambda rng, n: pool[rng.integers(0, len(pool), n)], _cut_risk,
               list(psi), bounds=[(-1.0, 3.0)] * 2,
               settings=Settings(surrogate="bernoulli", columns=(0, 1), hidden=(16, 16),
                                 max_iterations=1, epsilon=0.3, k_x=64, **size))  # fmt: skip
    _, grad = surrogate_gradient(res.surrogate, _cut_risk, list(psi), pool,
                                 np.zeros((len(pool), 1)))  # fmt: skip

    def exact(p):
        return float(_cut_risk(jnp.asarray(_passes(pool, p)), jnp.asarray(pool)))

    h = 0.15
    fd = np.array([(exact(np.add(psi, h * e)) - exact(np.subtract(psi, h * e))) / (2 * h)
                   for e in np.eye(2)])  # fmt: skip
    assert np.all(np.abs(fd) > 0.1)  # the reference is not noise
    assert np.all(np.sign(grad) == np.sign(fd)), (grad, fd)
    np.testing.assert_allclose(grad, fd, rtol=0.35)
    # its own validation: the held-out psi's Z0 from the surrogate vs the black box's
    assert res.records[-1]["val_risk_error"] < 0.15


# ------------------------------------------------------------------- compiled code is reused
class _ScaledError(eqx.Module):
    """A risk made afresh for every run (equal instances: the same compiled code)."""

    scale: float = eqx.field(static=True)

    def __call__(self, y, x):
        return self.scale * bb.squared_error(y, x)


def _run_small():
    settings = Settings(max_iterations=2, n_psi=4, m_x=16, k_x=64, surrogate_steps=3,
                        first_fit=1, columns=(0,))  # fmt: skip
    return lgso(
        lambda x, p, rng: bb.detector(x, p, rng),
        lambda rng, n: bb.sample_truth(rng, n),
        _ScaledError(1.0),
        [1.0],
        cost=Partial(bb.cost, costs=(0.25,)),
        bounds=[(0.05, 3.0)],
        settings=settings,
    )


def test_a_second_run_compiles_nothing():
    """lgso() compiles its surrogate fit, gradient and checks once per problem and shapes:
    a second run, with its risk (an equinox Module) and cost (a jax.tree_util.Partial) made
    afresh, traces nothing (before: every run traced and compiled them again, ~40 CPU-s per
    run on the blobs) and follows the same path."""
    traces = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traces.append(event)

    first = _run_small()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        second = _run_small()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(traces) == 0
    np.testing.assert_array_equal(first.path, second.path)
