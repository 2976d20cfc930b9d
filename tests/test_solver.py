"""The bounded Newton solver on its own: closed forms, bounds, implicit gradients, and a
regression sweep on a model with nearly degenerate nuisance parameters."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

import diffhep
import oracle
from diffhep.stats import solver
from diffhep.stats.numerics import branch
from diffhep.stats.solver import CONVERGED, SAME_MINIMUM, Structure, minimize

MINUIT_FIRST = ("minuit", "scipy")  # the oracle's fits: MINUIT, re-seated with scipy


def quadratic(x, args):
    center, scale = args
    return jnp.sum(scale * (x - center) ** 2) + 0.1 * jnp.sum(x[:-1] * x[1:])


def test_a_branch_under_vmap_runs_only_where_a_member_takes_it():
    """The restarts' branches (a probe, a restart fit) under ``vmap``: ``lax.cond`` would run
    the taken branch for every member of every batch (a select); ``branch`` runs it where at
    least one member takes it, and each member gets its own branch's value."""
    calls = []

    def expensive(x):
        jax.debug.callback(lambda: calls.append(1))
        return 2.0 * x

    f = jax.jit(jax.vmap(lambda p, x: branch(p, expensive, lambda y: y, x)))
    x = jnp.array([1.0, 3.0])
    out = f(jnp.array([False, False]), x)
    jax.effects_barrier()
    assert out.tolist() == [1.0, 3.0] and not calls
    out = f(jnp.array([False, True]), x)
    jax.effects_barrier()
    assert out.tolist() == [1.0, 6.0] and calls
    # without vmap a lax.cond: the branch not taken is not differentiated (no NaN from it)
    g = jax.grad(lambda y: branch(y > 0, lambda z: z, lambda z: jnp.sqrt(-z), y))(4.0)
    assert float(g) == 1.0


def test_box_constrained_quadratic_matches_scipy():
    from scipy.optimize import minimize as sp_minimize

    rng = np.random.default_rng(1)
    center = jnp.asarray(rng.normal(0, 3, 6))
    scale = jnp.asarray(rng.uniform(0.5, 2.0, 6))
    lower, upper = -jnp.ones(6), jnp.ones(6)
    res = minimize(quadratic, (center, scale), jnp.zeros(6), lower, upper, jnp.zeros(6, bool))
    assert int(res.status) == CONVERGED
    ref = sp_minimize(
        lambda x: float(quadratic(jnp.asarray(x), (center, scale))),
        np.zeros(6),
        jac=lambda x: np.asarray(jax.grad(quadratic)(jnp.asarray(x), (center, scale))),
        bounds=[(-1, 1)] * 6,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    np.testing.assert_allclose(res.x, ref.x, atol=1e-6)
    assert float(res.fun) <= ref.fun + 1e-12


def test_implicit_gradient_with_active_bounds_matches_finite_differences():
    rng = np.random.default_rng(2)
    center = jnp.asarray(rng.normal(0, 2, 5))
    scale = jnp.asarray(rng.uniform(0.5, 2.0, 5))
    lower, upper = -jnp.ones(5), jnp.ones(5)
    fixed = jnp.asarray([False, False, True, False, False])
    x0 = jnp.full(5, 0.3)

    @jax.jit  # compiled once for the ten finite-difference points (op by op: 143 compilations)
    def out(c):
        r = minimize(quadratic, (c, scale), x0, lower, upper, fixed)
        return jnp.sum(r.x * jnp.arange(1.0, 6.0)) + r.fun

    grad = jax.jit(jax.grad(out))(center)
    eps = 1e-6
    fd = [(out(center.at[i].add(eps)) - out(center.at[i].add(-eps))) / (2 * eps) for i in range(5)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_structure_blocks_follow_shared_bins():
    st = Structure.from_perbin(6, ((1, (0,)), (2, (0,)), (3, (1,)), (4, (2,)), (5, (2, 3))))
    assert st.blocks == ((1, 2), (3,), (4, 5))
    gidx, table = st.arrays()
    assert list(gidx) == [0] and table.shape == (3, 2)


def degenerate_spec(signal_scale: float, nbins: int = 30) -> dict:
    """Signal and backgrounds sharing several normalisation systematics: nearly flat (even
    slightly concave) directions at the starting point, as in real analyses."""
    x = np.linspace(0, 1, nbins)
    sig = signal_scale * 20 * np.exp(-0.5 * ((x - 0.7) / 0.08) ** 2)
    b1, b2 = 200 * np.exp(-2 * x) + 1, 50 * (1 - x) + 5
    norm = lambda n, lo, hi: {"name": n, "type": "normsys", "data": {"lo": lo, "hi": hi}}  # noqa: E731
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "signal",
                        "data": sig.tolist(),
                        "modifiers": [
                            {"name": "mu", "type": "normfactor", "data": None},
                            norm("sig_theory", 0.85, 1.15),
                            norm("eff", 0.95, 1.05),
                        ],
                    },
                    {
                        "name": "bkg1",
                        "data": b1.tolist(),
                        "modifiers": [
                            norm("eff", 0.95, 1.05),
                            norm("bkg1_xsec", 0.9, 1.1),
                            {"name": "stat", "type": "staterror", "data": (0.05 * b1).tolist()},
                        ],
                    },
                    {
                        "name": "bkg2",
                        "data": b2.tolist(),
                        "modifiers": [
                            norm("eff", 0.95, 1.05),
                            norm("bkg2_xsec", 0.8, 1.2),
                            {"name": "stat", "type": "staterror", "data": (0.05 * b2).tolist()},
                        ],
                    },
                ],
            }
        ]
    }


@pytest.mark.parametrize("signal_scale", [0.05, 0.3, 1.0, 2.5])
def test_free_fit_never_stops_above_pyhf_minimum(signal_scale):
    """Regression: an uphill projected step once passed for convergence (decrement < 0)."""
    spec = degenerate_spec(signal_scale)
    model = diffhep.Model.from_spec(spec)
    rng = np.random.default_rng(int(signal_scale * 100))
    nominal = np.asarray(model.expected_actualdata(model.config.suggested_init()))
    data = list(rng.poisson(nominal * 0.97).astype(float)) + list(model.config.auxdata)
    res = diffhep.stats.fit.fit(model, jnp.asarray(data), uncertainties=False)
    assert int(res.status) == CONVERGED
    pmodel = pyhf.Model(spec, poi_name="mu")
    _, twice_nll = oracle.fit(data, pmodel, return_fitted_val=True, optimizers=MINUIT_FIRST)
    assert float(res.twice_nll) <= float(twice_nll) + 1e-6


def test_fit_with_concave_start_reaches_pyhf_minimum():
    """Regression: on this model (a 50-bin benchmark model at one signal point) a projected
    step that went uphill passed for convergence after two steps, 18 units of -2 log L above
    the minimum (observed CLs 0.50 instead of 0.0071)."""
    ws = diffhep.Workspace.load(Path(__file__).parent / "data" / "regression_flat_direction.json")
    model = ws.model()
    data = jnp.asarray(ws.data(model))
    res = diffhep.stats.fit.fit(model, data, uncertainties=False)
    assert int(res.status) == CONVERGED
    pws = pyhf.Workspace(ws.spec)
    pmodel = pws.model()
    _, twice_nll = oracle.fit(
        pws.data(pmodel), pmodel, return_fitted_val=True, optimizers=MINUIT_FIRST
    )
    assert float(res.twice_nll) <= float(twice_nll) + 1e-6


def test_fit_that_runs_out_of_steps_is_continued():
    """A fit whose search ran out of Newton steps is continued from where it stopped
    (restarts._CONTINUATIONS; issue 20, adversarial sweep seed 1040 draw 4, which needs ~240
    steps): with a budget of 3 steps (this fit needs 5 from the start) it converges to the
    minimum of the fit with the default budget. Before, status 1 (maximum number of steps)."""
    from diffhep.stats.restarts import may_restart

    spec = degenerate_spec(0.05)
    model = diffhep.Model.from_spec(spec)
    assert may_restart(model)  # the fit runs the search
    rng = np.random.default_rng(5)
    nominal = np.asarray(model.expected_actualdata(model.config.suggested_init()))
    data = jnp.asarray(list(rng.poisson(nominal * 0.97).astype(float)) + list(model.config.auxdata))
    full = diffhep.stats.fit.fit(model, data, uncertainties=False)
    short = diffhep.stats.fit.fit(model, data, uncertainties=False, max_steps=3)
    assert int(full.status) == CONVERGED and int(short.status) == CONVERGED, int(short.status)
    assert float(short.twice_nll) == pytest.approx(float(full.twice_nll), rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(short.bestfit, full.bestfit, atol=1e-5)


def test_a_model_of_single_factors_has_one_minimum_from_every_start():
    """A model whose rates are affine in its parameters (each sample multiplied by at most one
    factor, nothing interpolated) runs no search for several minima (restarts.may_restart):
    -log L is convex. Brute force: fits from random starts anywhere within the bounds (a
    zero-count bin, a free background normalisation, shapesys gammas) all reach the fit from
    the suggested values. A model with a product of two factors searches."""
    from diffhep.stats.restarts import may_restart

    def sample(name, data, *mods):
        return {"name": name, "data": data, "modifiers": list(mods)}

    nf = lambda n: {"name": n, "type": "normfactor", "data": None}  # noqa: E731
    spec = {
        "channels": [
            {"name": "SR", "samples": [
                sample("signal", [12.0, 8.0, 3.0], nf("mu")),
                sample("bkg", [50.0, 30.0, 20.0], {"name": "ss", "type": "shapesys",
                                                   "data": [10.0, 15.0, 2.0]}),
                sample("other", [5.0, 9.0, 14.0], nf("k"))]},
            {"name": "CR", "samples": [sample("other", [40.0, 0.5], nf("k"))]},
        ],
        "observations": [{"name": "SR", "data": [0.0, 41.0, 37.0]},
                         {"name": "CR", "data": [52.0, 0.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": [
            {"name": "k", "bounds": [[0.0, 10.0]]}]}}],
        "version": "1.0.0",
    }  # fmt: skip
    ws = diffhep.Workspace(spec)
    model = ws.model()
    assert not may_restart(model)
    data = np.asarray(ws.data(model))
    bounds = np.asarray(model.config.bounds)
    rng = np.random.default_rng(3)
    for trial in range(3):
        main = rng.poisson(np.asarray(model.expected_actualdata(model.config.suggested_init())))
        d = data.copy()
        d[: main.size] = main if trial else data[: main.size]
        ref = diffhep.infer.fit(model, d, uncertainties=False)
        assert bool(ref.converged)
        for _ in range(6):
            start = rng.uniform(bounds[:, 0], np.minimum(bounds[:, 1], 5.0))
            res = diffhep.infer.fit(model, d, init=start, uncertainties=False)
            assert bool(res.converged)
            assert float(res.twice_nll) == pytest.approx(float(ref.twice_nll), abs=1e-7)

    # a staterror on the signal too: mu times a gamma, a product
    spec["channels"][0]["samples"][0]["modifiers"].append(
        {"name": "stat", "type": "staterror", "data": [1.0, 1.0, 1.0]}
    )
    assert may_restart(diffhep.Workspace(spec).model())


def double_well(x, a):
    """Minima at x0 = -1 and x0 = +1 (x1 = a), a saddle at x0 = 0."""
    return (x[0] ** 2 - 1.0) ** 2 + 0.3 * x[0] + (x[1] - a) ** 2 + 0.2 * x[0] * x[1]


def test_a_run_given_a_target_stops_only_on_its_way_there():
    """A restart's ``target`` (the minimum another start found): a run heading there stops
    once its full Newton step lands on it (status SAME_MINIMUM, not a success) in fewer steps
    than the run to convergence; a run in the other basin reaches its own minimum exactly as
    without a target (so a lower minimum is never missed); an inactive target changes
    nothing. Fails if the stop is dropped (CONVERGED, as many steps) or too eager (the run
    from the other basin stopped or moved)."""
    lo, hi, fixed = jnp.full(2, -5.0), jnp.full(2, 5.0), jnp.zeros(2, bool)

    def run(x0, target=None):
        return minimize(double_well, 0.5, jnp.asarray(x0), lo, hi, fixed, target=target)

    right = run([1.4, 0.0])
    left = run([-1.4, 0.0])
    assert int(right.status) == CONVERGED and int(left.status) == CONVERGED
    assert float(left.x[0]) < -0.9 < 0.9 < float(right.x[0])
    assert float(left.fun) < float(right.fun)  # the left minimum is the lower one
    # heading back to the right minimum from elsewhere in its basin: stops on the way
    again = run([1.6, 0.8], (right.x, True))
    full = run([1.6, 0.8])
    assert int(again.status) == SAME_MINIMUM and not bool(again.converged)
    assert int(again.n_steps) < int(full.n_steps)
    assert float(again.fun) >= float(right.fun)
    # in the other (lower) basin the target changes nothing
    other = run([-1.6, 0.8], (right.x, True))
    alone = run([-1.6, 0.8])
    assert int(other.status) == CONVERGED
    np.testing.assert_array_equal(np.asarray(other.x), np.asarray(alone.x))
    assert int(other.n_steps) == int(alone.n_steps)
    # an inactive target: the run as without one
    off = run([1.6, 0.8], (right.x, False))
    np.testing.assert_array_equal(np.asarray(off.x), np.asarray(full.x))
    assert int(off.n_steps) == int(full.n_steps) and int(off.status) == CONVERGED


def test_restarts_that_head_back_to_the_best_fit_stop_early_and_change_no_result(monkeypatch):
    """sbottom RegionA's free fit restarts from a probe/mirror start that leads back to the
    minimum the first run found: that restart now stops on the way (restarts.py, the
    ``target`` of its run) and the fit is the same to the bit in fewer Newton steps. The
    stop disabled (a decrement threshold of 0) gives the reference."""
    from diffhep.stats.fit import DEFAULT_MAX_STEPS, DEFAULT_TOL, fit_bounded, fit_defaults
    from diffhep.stats.workspace import builtin_example

    spec, patch = builtin_example()
    ws = diffhep.Workspace(spec).patched(patch)
    model = ws.model()
    data = jnp.asarray(ws.data(model))
    init, lower, upper, fixed = fit_defaults(model, None, None, None, data.dtype)

    def fit():  # a new function each time: traced again with the constant as it is now
        run = jax.jit(
            lambda m, d: fit_bounded(
                m, d, init, lower, upper, fixed, DEFAULT_TOL, DEFAULT_MAX_STEPS, uncertainties=False
            )
        )
        return run(model, data)

    now = fit()
    monkeypatch.setattr(solver, "_SAME_DECREMENT", 0.0)
    before = fit()
    assert int(now.status) == CONVERGED and int(before.status) == CONVERGED
    np.testing.assert_array_equal(np.asarray(now.bestfit), np.asarray(before.bestfit))
    assert float(now.twice_nll) == float(before.twice_nll)
    assert int(now.n_steps) < int(before.n_steps), (int(now.n_steps), int(before.n_steps))


def test_float32_fit_with_open_bounds_warns_nothing():
    """In float32 (a script without float64) with an infinite bound, the solver's constants
    fit the dtype: no ``overflow encountered in cast`` (1e300 did not fit in float32)."""
    import warnings

    f32 = jnp.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = minimize(
            lambda x, a: jnp.sum((x - a) ** 2),
            jnp.array([0.5, 3.0], f32),
            jnp.zeros(2, f32),
            jnp.zeros(2, f32),
            jnp.array([1.0, jnp.inf], f32),
            jnp.array([False, False]),
        )
    assert r.x.dtype == f32
    np.testing.assert_allclose(np.asarray(r.x), [0.5, 3.0], rtol=1e-6)
