"""The INFERNO benchmark: generator, analytic information, loss, evaluation protocol, study.

References: closed forms of the generator's distributions, an independent Monte Carlo
estimate (JAX autodiff of densities written here) of the unbinned information, the Fisher
information of Poisson counts written in NumPy, pyhf for the protocol's likelihood, and
finite differences for the INFERNO loss's gradient.
"""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest
from jax.scipy import stats

import oracle
from diffhep.problems import inferno as I
from diffhep.problems import toys
from diffhep.stats.model import Model
from diffhep.studies import inferno as S

pyhf.set_backend("numpy")


# ------------------------------------------------------------------ generator
def test_inferno_generator_distributions():
    n = 200_000
    ev = toys.inferno_3d(n, seed=3)
    xs, xb = (ev[k][0].astype(np.float64) for k in ("signal", "background"))
    se = 5.0 / np.sqrt(n)  # generous: 5 standard errors of a unit-variance mean
    np.testing.assert_allclose(xs.mean(0), [0.0, 0.0, 0.5], atol=se)
    np.testing.assert_allclose(xs.var(0)[:2], [1.0, 1.0], atol=5 * se * np.sqrt(2))
    np.testing.assert_allclose(xb.mean(0), [2.0, 0.0, 1 / 3], atol=3 * se)
    np.testing.assert_allclose(xb.var(0), [5.0, 9.0, 1 / 9], rtol=0.02)
    # the variations are the same events, transformed to (r, lambda): closed-form moments
    for name, (r, lam) in toys.INFERNO_SHIFTS.items():
        x = ev[f"background_{name}"][0].astype(np.float64)
        np.testing.assert_allclose(x[:, 0], xb[:, 0] + r, atol=1e-5)
        np.testing.assert_allclose(x[:, 2].mean(), 1.0 / lam, rtol=0.01)
        np.testing.assert_allclose(x[:, 2].std(), 1.0 / lam, rtol=0.02)


def test_inferno_shift_is_differentiable():
    x = jnp.asarray(toys.inferno_3d(1000, seed=0)["background"][0], jnp.float64)

    def moments(r, lam):
        y = toys.inferno_shift(x, r, lam)
        return jnp.stack([y[:, 0].mean(), y[:, 2].mean()])

    jac = jax.jacfwd(moments, argnums=(0, 1))(0.1, 2.0)
    np.testing.assert_allclose(jac[0], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(jac[1], [0.0, -3.0 / 2.0**2 * float(x[:, 2].mean())], rtol=1e-10)


# ------------------------------------------------------------------ analytic information
def test_analytic_information_converged():
    a, b = I.analytic_information(100), I.analytic_information(140)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for k in I.BENCHMARKS:  # the study's 0.5% requirement, with a wide margin
        assert abs(I.analytic_sigma_s(k, n=80) / I.analytic_sigma_s(k) - 1) < 1e-3


def _intensity(x, theta):
    """nu(x) = s p_s(x) + b p_b(x | r, lambda), written independently with jax.scipy."""
    s, r, lam, b = theta
    ps = stats.norm.pdf(x[:, 0]) * stats.norm.pdf(x[:, 1]) * stats.expon.pdf(x[:, 2], scale=0.5)
    pb = (
        stats.norm.pdf(x[:, 0], 2.0 + r, jnp.sqrt(5.0))
        * stats.norm.pdf(x[:, 1], 0.0, 3.0)
        * stats.expon.pdf(x[:, 2], scale=1.0 / lam)
    )
    return s * ps + b * pb


def test_analytic_information_matches_monte_carlo():
    """I = (s+b) E_mix[grad nu grad nu^T / nu^2] with events from the mixture itself."""
    n = 400_000
    ev = toys.inferno_3d(n, seed=11)
    s, b = I.NOMINAL[0], I.NOMINAL[3]
    rng = np.random.default_rng(5)
    pick = rng.random(n) < s / (s + b)
    x = np.where(pick[:, None], ev["signal"][0], ev["background"][0]).astype(np.float64)
    theta = jnp.asarray(I.NOMINAL)
    nu = _intensity(x, theta)
    grads = jax.jacfwd(lambda th: _intensity(x, th))(theta)  # (n, 4)
    terms = np.asarray(grads[:, :, None] * grads[:, None, :] / nu[:, None, None] ** 2) * (s + b)
    mc, se = terms.mean(0), terms.std(0) / np.sqrt(n)
    quad = I.analytic_information()
    assert np.all(np.abs(quad - mc) < 5 * se + 1e-12), (quad, mc, se)


# ------------------------------------------------------------------ counts and protocol
def _templates(seed=1, nbins=6):
    rng = np.random.default_rng(seed)
    b = rng.uniform(20.0, 300.0, nbins) * I.NOMINAL[3] / 1000
    t = {"signal": rng.uniform(0.5, 12.0, nbins), "background": b}
    for k in ("r", "lambda"):
        d = rng.normal(0.0, 0.06, nbins) * b
        t[f"background_{k}_up"], t[f"background_{k}_down"] = b + d, b - 0.9 * d
    return t


def _numpy_sigma(t, k):
    """sigma_s from the Fisher information of Poisson counts, written out in NumPy."""
    n = t["signal"] + t["background"]
    jac = np.stack(
        [
            t["signal"] / 50.0,
            (t["background_r_up"] - t["background_r_down"]) / 0.4,
            (t["background_lambda_up"] - t["background_lambda_down"]) / 1.0,
            t["background"] / 1000.0,
        ],
        axis=1,
    )
    info = jac.T @ (jac / n[:, None])
    info += np.diag([0.0, 1 / 0.4**2, 1 / 1.0**2, 1 / 100.0**2]) * (k >= 3)
    if k == 3:
        info[3, 3] = 0.0
    free = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2], 4: [0, 1, 2, 3]}[k]
    return float(np.sqrt(np.linalg.inv(info[np.ix_(free, free)])[0, 0]))


@pytest.mark.parametrize("k", list(I.BENCHMARKS))
def test_protocol_hessian_is_the_counts_information(k):
    """The HistFactory model's Hessian (code 4p histosys, lumi) at the nominal point equals the
    Fisher information of the counts with central-difference derivatives."""
    t = _templates()
    got = I.expected_uncertainty(t, k)
    np.testing.assert_allclose(got["hessian"], _numpy_sigma(t, k), rtol=1e-6)
    np.testing.assert_allclose(I.template_sigma(t, k), _numpy_sigma(t, k), rtol=1e-10)
    # the profile width is close to the Hessian's (the model is nearly linear here)
    assert abs(got["profile"] / got["hessian"] - 1) < 0.05


def _pyhf_model(t, k):
    """The protocol's model for pyhf: histosys constraints of width 1 (pyhf cannot set sigmas
    on histosys), so the templates are moved to one constraint width."""
    bm = I.BENCHMARKS[k]
    tt = {n: np.asarray(v, float) for n, v in t.items()}
    for name in ("r", "lambda"):
        f = bm.constraints[name] / I.STEP[name] if name in bm.constraints else 1.0
        for d in ("up", "down"):
            key = f"background_{name}_{d}"
            tt[key] = tt["background"] + f * (tt[key] - tt["background"])
    spec = I.workspace({n: v.tolist() for n, v in tt.items()}, k)
    for p in spec["parameters"]:
        if p["name"] in ("r", "lambda"):
            del p["sigmas"]
    return pyhf.Model(spec, poi_name="mu", validate=True), tt


@pytest.mark.parametrize("k", [0, 3, 4])
def test_protocol_matches_pyhf(k):
    """On benchmarks pyhf can express (fixed or unit-width constraints after moving the
    templates), pyhf's fixed-POI fits at diffhep's q = 1 crossings give q = 1, and pyhf's
    Hessian (finite differences) gives the same uncertainty on s."""
    t = _templates(seed=4)
    model, tt = _pyhf_model(t, k)
    got = I.expected_uncertainty(t, k)  # diffhep: sigmas on the original templates
    init = np.asarray(model.config.suggested_init(), float)
    data = model.expected_data(init)
    fixed = model.config.suggested_fixed()
    free = [i for i, f in enumerate(fixed) if not f]

    def nll(p):
        return -float(model.logpdf(p, data)[0])

    h = 1e-3  # truncation ~1e-6, round-off ~1e-7 (relative)
    H = np.zeros((len(free), len(free)))
    for a, i in enumerate(free):
        for c, j in enumerate(free):
            pp = [init.copy() for _ in range(4)]
            pp[0][i] += h
            pp[0][j] += h
            pp[1][i] += h
            pp[1][j] -= h
            pp[2][i] -= h
            pp[2][j] += h
            pp[3][i] -= h
            pp[3][j] -= h
            H[a, c] = (nll(pp[0]) - nll(pp[1]) - nll(pp[2]) + nll(pp[3])) / (4 * h * h)
    poi = free.index(model.config.poi_index)
    sigma_pyhf = 50.0 * np.sqrt(np.linalg.inv(H)[poi, poi])
    np.testing.assert_allclose(got["hessian"], sigma_pyhf, rtol=1e-5)
    if k == 0:  # the profile: q(mu) = 1 at the crossings diffhep found
        base = 2 * nll(init)
        lo, hi = _crossings(tt, k)
        for mu in (lo, hi):
            q = float(oracle.fit(data, model, poi_value=mu, return_fitted_val=True)[1]) - base
            np.testing.assert_allclose(q, 1.0, atol=1e-5)
        np.testing.assert_allclose((hi - lo) / 2 * 50, got["profile"], rtol=1e-5)  # brentq xtol


def _crossings(t, k):
    """The q = 1 crossings of diffhep's profile likelihood (by bisection on its fits)."""
    model = I.protocol_model({n: np.asarray(v, float).tolist() for n, v in t.items()}, k)
    from scipy.optimize import brentq

    def f(mu):
        return float(I._q(model, jnp.asarray(mu))[0]) - 1.0

    return brentq(f, 0.0, 1.0, xtol=1e-12), brentq(f, 1.0, 3.0, xtol=1e-12)


def test_protocol_accepts_a_benchmark_object_and_empty_bins():
    t = _templates()
    bm = I.Benchmark(("r",), {"r": 0.4})
    np.testing.assert_allclose(I.expected_uncertainty(t, bm)["hessian"], _numpy_sigma_r(t),
                               rtol=1e-6)  # fmt: skip
    jac = np.zeros((2, 4))
    jac[0] = [0.1, 1.0, 2.0, 0.05]
    info = I.counts_information(jac, np.array([50.0, 0.0]), 4)  # bin 2 empty
    assert np.all(np.isfinite(np.asarray(info)))


def test_protocol_model_first_built_inside_a_trace():
    """The cached template model must hold no tracers when its first use is in a jitted
    training step (a leak there broke a later evaluation outside the trace)."""
    I._template_model.cache_clear()
    t = {k: jnp.asarray(v) for k, v in _templates().items()}
    jitted = jax.jit(lambda t: I.protocol_model(t, 4).nominal.sum())
    want = float(t["signal"].sum() + t["background"].sum())
    np.testing.assert_allclose(float(jitted(t)), want, rtol=1e-12)
    out = I.expected_uncertainty({k: np.asarray(v) for k, v in t.items()}, 4)
    assert np.isfinite(out["hessian"])


@pytest.mark.parametrize("symmetrised", [False, True])
def test_protocol_model_equals_the_model_of_its_workspace(symmetrised):
    """protocol_model fills the template arrays directly (no pyhf dict in a training step):
    with concrete templates it is the model pyhf's route builds from ``workspace`` (every
    array and the whole config, symmetrised variations included), and traced templates give
    the same likelihood."""
    t = {k: np.asarray(v, float) for k, v in _templates().items()}
    if symmetrised:  # r's up and down on the same side: a symmetrised variation
        t["background_r_down"] = t["background_r_up"].copy()
    for k in (0, 2, 4):
        got = I.protocol_model(t, k)
        want = Model.from_spec(I.workspace({n: v.tolist() for n, v in t.items()}, k), poi_name="mu")
        assert got.config == want.config
        assert got.config.symmetric == (("r",) if symmetrised else ())
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        pars = jnp.asarray(want.config.init) * 1.1
        data = jnp.asarray(want.expected_data(jnp.asarray(want.config.init)))
        logpdf = jax.jit(
            lambda tt, kk, x, d: I.protocol_model(tt, kk).logpdf(x, d), static_argnums=1
        )
        np.testing.assert_allclose(logpdf(t, k, pars, data), want.logpdf(pars, data), rtol=1e-13)


def _numpy_sigma_r(t):
    """Benchmark 'r ~ N(0, 0.4), lambda and b known', written out in NumPy."""
    n = t["signal"] + t["background"]
    jac = np.stack([t["signal"] / 50.0, (t["background_r_up"] - t["background_r_down"]) / 0.4], 1)
    info = jac.T @ (jac / n[:, None]) + np.diag([0.0, 1 / 0.4**2])
    return float(np.sqrt(np.linalg.inv(info)[0, 0]))


# ------------------------------------------------------------------ the INFERNO loss
def test_inferno_loss_closed_form_and_gradient():
    """The loss equals sigma_s^2 of the counts information written in NumPy from
    finite-difference Jacobians, and its gradient matches finite differences."""
    ev = toys.inferno_3d(300, seed=2)
    xs, xb = (jnp.asarray(ev[k][0], jnp.float64) for k in ("signal", "background"))
    obs = S.SoftmaxObservable.create(
        np.concatenate([xs, xb]),
        (8,),
        nbins=4,
        key=jax.random.key(1),
        dtype=jnp.float64,
        activation="tanh",  # smooth, so that finite differences do not cross ReLU kinks
    )
    loss = S._loss("inferno", 4)
    # every function below is compiled once (op by op: 255 compilations, 5.5 s)
    soft_counts = jax.jit(lambda theta: S._soft_counts(obs, xs, xb, theta))

    def counts(theta):
        return np.asarray(soft_counts(jnp.asarray(theta)))

    theta0, eps = np.asarray(I.NOMINAL), 1e-5
    jac = np.stack(
        [(counts(theta0 + eps * e) - counts(theta0 - eps * e)) / (2 * eps) for e in np.eye(4)], 1
    )
    n = counts(theta0)
    info = jac.T @ (jac / n[:, None]) + np.diag([0.0, 1 / 0.4**2, 1.0, 1 / 100.0**2])
    want = np.linalg.inv(info)[0, 0]
    value = float(eqx.filter_jit(lambda o: loss(o, (xs, xb), {})[0])(obs))
    np.testing.assert_allclose(value, want, rtol=1e-7)

    # gradient along a random direction of the network weights vs central differences
    params, static = eqx.partition(obs, eqx.is_inexact_array)
    direction = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(7), a.shape, a.dtype), params
    )
    # the standardisation is not trained (its gradient is stopped): do not move it
    direction = eqx.tree_at(lambda o: (o.mean, o.scale), direction,
                            (jnp.zeros_like(obs.mean), jnp.zeros_like(obs.scale)))  # fmt: skip

    @jax.jit
    def f(t):
        p = jax.tree.map(lambda a, d: a + t * d, params, direction)
        return loss(eqx.combine(p, static), (xs, xb), {})[0]

    g = eqx.filter_jit(jax.grad(lambda p: loss(eqx.combine(p, static), (xs, xb), {})[0]))(params)
    ad = sum(
        jnp.vdot(a, d) for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction), strict=True)
    )
    h = 1e-5
    fd = (f(h) - f(-h)) / (2 * h)
    np.testing.assert_allclose(float(ad), float(fd), rtol=1e-5)


# ------------------------------------------------------------------ the study (smoke)
SMALL = {"n_train": 2000, "n_validation": 1000, "n_test": 4000, "hidden": (16,),
         "batch_size": 500}  # fmt: skip
ONLY = ["BCE classifier", "INFERNO 2", "diffhep sigma_mu 2"]


def test_inferno_study_smoke(tmp_path):
    path = S.inferno_study(tmp_path / "docs", seeds=1, epochs=1, runs_dir=tmp_path / "runs",
                           settings=SMALL, only=ONLY)  # fmt: skip
    r = json.loads((tmp_path / "docs" / "inferno.json").read_text())
    assert set(r["rows"]) == {*ONLY, "optimal classifier"}
    for k in map(str, I.BENCHMARKS):
        np.testing.assert_allclose(r["analytic"][k], I.analytic_sigma_s(int(k)), rtol=1e-12)
        for runs in r["rows"].values():
            assert runs[0][k]["hessian"] > r["analytic"][k]  # nothing beats the bound
    # the optimal classifier row is the protocol on the true likelihood-ratio bins
    data = S._data(0, S.SETTINGS | SMALL)
    opt = lambda x: np.clip((I.optimal_score(x) * 10).astype(int), 0, 9)  # noqa: E731
    t = S.hard_templates(opt, *data["test"])
    np.testing.assert_allclose(
        r["rows"]["optimal classifier"][0]["2"]["hessian"], I.template_sigma(t, 2), rtol=1e-6
    )
    text = path.read_text()
    assert "| analytic likelihood |" in text and "INFERNO 2" in text
    # a second call reuses the finished runs (same numbers)
    S.inferno_study(tmp_path / "docs2", seeds=1, epochs=1, runs_dir=tmp_path / "runs",
                    settings=SMALL, only=ONLY)  # fmt: skip
    r2 = json.loads((tmp_path / "docs2" / "inferno.json").read_text())
    assert r2["rows"] == r["rows"]


@pytest.mark.slow
def test_inferno_study_workers_give_the_same_numbers(tmp_path):
    def run(workers):
        out, runs = tmp_path / f"docs{workers}", tmp_path / f"runs{workers}"
        S.inferno_study(out, seeds=2, epochs=2, settings=SMALL, runs_dir=runs, only=ONLY[1:],
                        workers=workers)  # fmt: skip
        return json.loads((out / "inferno.json").read_text())["rows"]

    assert run(2) == run(1)


def test_fresh_training_events_per_epoch():
    data = S._data(3, S.SETTINGS | SMALL)
    (xs, xb), (vs, _) = data["train"], data["validation"]
    fresh = S._batches(xs, xb, 500, seed=3, fresh=True)
    e1, e1_again, e2 = list(fresh(1)), list(fresh(1)), list(fresh(2))
    assert len(e1) == len(xs) // 500 and e1[0][0].shape == (500, 3)
    for (a, b), (c, d) in zip(e1, e1_again, strict=True):  # deterministic in the epoch
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    sig1 = np.concatenate([a for a, _ in e1])
    sig2 = np.concatenate([a for a, _ in e2])
    # new events every epoch, never those of the fixed training or validation samples
    for other in (sig2, xs, vs):
        assert not np.isin(sig1[:, 0], other[:, 0]).any()
    # without ``fresh`` every epoch is a permutation of the fixed training sample
    fixed = np.concatenate([a for a, _ in S._batches(xs, xb, 500, seed=3)(2)])
    np.testing.assert_array_equal(np.sort(fixed[:, 0]), np.sort(xs[:, 0]))


def test_cli_inferno_study_rejects_overrides():
    from click.testing import CliRunner

    from diffhep.cli import main

    res = CliRunner().invoke(main, ["study", "inferno", "--set", "training.epochs=1"])
    assert res.exit_code == 2 and "no YAML config" in res.output


def test_cli_workers_only_for_the_inferno_study():
    from click.testing import CliRunner

    from diffhep.cli import main

    res = CliRunner().invoke(main, ["study", "cuts", "--workers", "2"])
    assert res.exit_code == 2 and "--workers applies to the inferno study only" in res.output
