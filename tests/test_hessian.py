"""The Hessian from the rate Jacobians (diffhep.stats.hessian) against automatic
differentiation of the same objective, and the solver's Cholesky shortcut against eigh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adversarial import generate
from diffhep.stats import fit as fit_mod
from diffhep.stats import hessian, linalg, multimodal, restarts
from diffhep.stats.model import Model
from diffhep.stats.workspace import Workspace, builtin_example
from specs import (
    CODES_1,
    CODES_4,
    channel,
    combined,
    histosys,
    lumi,
    model_spec,
    normfactor,
    normsys,
    sample,
    shapesys_model,
)

jax.config.update("jax_enable_x64", True)

LUMI = {"name": "lumi", "auxdata": [1.0], "sigmas": [0.02], "inits": [1.0], "bounds": [[0.5, 1.5]]}


def _from_spec(spec, codes=None):
    """Model and data (the expected counts at the suggested start, rounded) of a model spec."""
    model = Model.from_spec(spec, modifier_settings=codes)
    main = np.round(np.asarray(model.expected_actualdata(model.config.suggested_init())))
    return model, jnp.asarray(np.concatenate([main, np.asarray(model.config.auxdata)]))


def _from_workspace(spec, patch=None):
    ws = Workspace(spec)
    ws = ws.patched(patch) if patch else ws
    model = ws.model()
    return model, jnp.asarray(ws.data(model))


def _cases():
    yield "sbottom", *_from_workspace(*builtin_example())
    for name, codes in (("combined code1/code0", CODES_1), ("combined code4/code4p", CODES_4)):
        yield name, *_from_spec(combined(LUMI, "staterror_SR"), codes)
    yield "shapesys", *_from_spec(shapesys_model())
    for seed in (3, 11, 1017):
        yield f"adversarial {seed}", *_from_workspace(generate(seed, small=True))


CASES = list(_cases())


def _points(model, rng, n=4):
    """Points inside the bounds: the suggested start, the POI at 0, and random points with
    alphas beyond +-1 (the extrapolation branches) and gammas near 0."""
    cfg = model.config
    init = np.asarray(cfg.suggested_init(), float)
    b = np.asarray(cfg.suggested_bounds(), float)
    yield init
    at_zero = init.copy()
    at_zero[cfg.par_slice(cfg.poi_name)] = 0.0
    yield at_zero
    for _ in range(n):
        x = init + rng.normal(0.0, 1.0, init.shape) * np.minimum(b[:, 1] - b[:, 0], 3.0) / 3
        yield np.clip(x, b[:, 0] + 1e-3 * (b[:, 1] - b[:, 0]), b[:, 1])


@pytest.mark.parametrize("name, model, data", CASES, ids=[c[0] for c in CASES])
def test_hessian_equals_autodiff(name, model, data):
    rng = np.random.default_rng(7)
    # data with empty bins too (the n = 0 branch of the Poisson term)
    nmain = model.config.nmaindata
    sparse = data.at[:nmain:2].set(0.0)
    vgh = jax.jit(hessian.value_grad_hessian)
    auto = jax.jit(
        lambda m, d, x: (
            restarts._objective(x, (m, d)),
            jax.grad(restarts._objective)(x, (m, d)),
            jax.hessian(restarts._objective)(x, (m, d)),
        )
    )
    for d in (data, sparse):
        for x in _points(model, rng):
            x = jnp.asarray(x)
            f1, g1, h1 = vgh(model, d, x)
            f0, g0, h0 = auto(model, d, x)
            scale_g = float(jnp.max(jnp.abs(g0))) + 1.0
            scale_h = float(jnp.max(jnp.abs(h0))) + 1.0
            assert abs(float(f1 - f0)) <= 1e-10 * (abs(float(f0)) + 1.0), name
            np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-11 * scale_g, err_msg=name)
            np.testing.assert_allclose(h1, h0, rtol=0, atol=1e-11 * scale_h, err_msg=name)


@pytest.mark.parametrize("name, model, data", CASES, ids=[c[0] for c in CASES])
def test_probes_equal_direct_evaluation(name, model, data):
    """The restart's probes from the rate decomposition (one histosys/normsys parameter moved
    at a time) equal the objective evaluated at each moved point, with empty bins too."""
    cand = np.flatnonzero(multimodal.interpolated(model.config))
    if not cand.size:
        pytest.skip(f"{name}: no histosys or normsys parameter (no probes)")
    # pyhf forbids one parameter name for a histosys/normsys and a direct modifier, so every
    # valid model takes the decomposition (the guard is for specs built around the checks)
    assert hessian.supports_probes(model, cand), name
    rng = np.random.default_rng(5)
    nmain = model.config.nmaindata
    sparse = data.at[:nmain:2].set(0.0)
    fast = jax.jit(lambda m, d, x, v: hessian.probe_objective(m, d, x, cand, v))

    @jax.jit
    def direct(m, d, x, v):
        moved = lambda c, val: restarts._objective(x.at[c].set(val), (m, d))  # noqa: E731
        return jax.vmap(lambda row: jax.vmap(moved)(jnp.asarray(cand), row))(v)

    for d in (data, sparse):
        for x in _points(model, rng, n=2):
            x = jnp.asarray(x)
            v = jnp.asarray(rng.uniform(-3.0, 3.0, (4, cand.size)))
            v = v.at[0].set(-x[cand]).at[1].set(x[cand])  # the mirror image and x itself
            f1, f0 = fast(model, d, x, v), direct(model, d, x, v)
            scale = float(jnp.max(jnp.abs(f0))) + 1.0
            np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-11 * scale, err_msg=name)


def _changes_at_pm1(model):
    """The histosys/normsys parameters, the changes of the expected counts with each alone at
    +1 and at -1 (from the model, not the templates), and the nominal expected counts."""
    cand = np.flatnonzero(multimodal.interpolated(model.config))

    @jax.jit  # one program, not one per operation of the model
    def rates(model):
        x0 = jnp.asarray(model.config.suggested_init(), dtype=float)
        lam = model.expected_actualdata(x0)

        def moved(v):
            return jax.vmap(lambda j: model.expected_actualdata(x0.at[j].add(v)))(cand)

        return moved(1.0) - lam, moved(-1.0) - lam, lam

    return cand, *(np.asarray(a) for a in rates(model))


@pytest.mark.parametrize("name, model, data", CASES, ids=[c[0] for c in CASES])
def test_even_size_equals_the_rates_at_pm1(name, model, data):
    """The not-monotone part of each histosys/normsys parameter's response that gates the
    flip restarts, computed from the templates, equals the one of the expected counts with
    the parameter alone at +1 and -1 (histosys and normsys of one name on one sample
    included): the even part in the bins that both move the same way."""
    cand, up, down, lam = _changes_at_pm1(model)
    even = np.where(up * down > 0, 0.5 * (up + down), 0.0)
    ref = np.zeros(model.config.npars)
    ref[cand] = np.sqrt(np.sum(even**2 / np.maximum(lam, 1.0), axis=1))
    got = jax.jit(multimodal.even_size)(model)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize(("name", "model", "data"), CASES, ids=[c[0] for c in CASES])
def test_even_vertex_is_the_turn_of_the_parabola_through_pm1(name, model, data):
    """Each histosys/normsys parameter's vertex, from the templates, equals the least-squares
    turning point of the parabolas through each bin's expected counts with the parameter
    alone at -1, 0 and +1 (weights 1 / counts), histosys and normsys of one name on one
    sample included."""
    cand, up, down, lam = _changes_at_pm1(model)
    a, b, w = 0.5 * (up - down), 0.5 * (up + down), 1.0 / np.maximum(lam, 1.0)
    bb = np.sum(b * b * w, axis=1)
    ref = np.zeros(model.config.npars)
    ref[cand] = np.where(bb > 0, -np.sum(a * b * w, axis=1) / (2 * np.where(bb > 0, bb, 1)), 0)
    got = np.asarray(jax.jit(multimodal.even_vertex)(model))
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-9, err_msg=name)


def test_even_vertex_where_every_bin_turns_at_one_point():
    """A histosys whose parabolas through -1, 0, +1 turn at -0.25 in both bins (counts
    100 + 10 a + 20 a^2 and 50 + 5 a + 10 a^2) and a normsys whose both variations lower
    the counts (0.8, 0.9: 0.05 a - 0.15 a^2 of the nominal, turning at +1/6): their
    vertices; a parameter without an even part has vertex 0."""
    spec = model_spec(
        channel("SR", sample("signal", [1.0, 1.0], normfactor("mu")),
                sample("bkg", [100.0, 50.0], histosys("shape", [110.0, 55.0], [130.0, 65.0]),
                       normsys("mono", 0.9, 1.1)),
                sample("other", [20.0, 30.0], normsys("xsec", 0.8, 0.9))),
    )  # fmt: skip
    model = Model.from_spec(spec)
    v = np.asarray(multimodal.even_vertex(model))
    cfg = model.config
    assert v[cfg.par_slice("shape")][0] == pytest.approx(-0.25, rel=1e-12)
    assert v[cfg.par_slice("xsec")][0] == pytest.approx(1.0 / 6.0, rel=1e-12)
    assert v[cfg.par_slice("mono")][0] == 0.0


def test_even_size_of_monotone_and_non_monotone_normsys():
    """A large sample's asymmetric but monotone normsys (+5%/-3%) has no even size; one whose
    both variations lower the counts (-1%/-2%) has its even part in standard deviations."""
    n = 1e6

    def size(lo, hi):
        spec = model_spec(
            channel("SR", sample("signal", [10.0], normfactor("mu")),
                    sample("bkg", [n], normsys("syst", lo, hi))),
        )  # fmt: skip
        model = Model.from_spec(spec)
        return float(multimodal.even_size(model)[model.config.par_slice("syst")][0])

    assert size(0.97, 1.05) == 0.0
    assert size(0.98, 0.99) == pytest.approx(0.015 * n / np.sqrt(n + 10.0), rel=1e-12)


def test_hessian_below_the_poisson_floor():
    """Negative expected yields (a histosys pulled far down): the tangent continuation of the
    Poisson term below its floor is differentiated like autodiff does."""
    spec = model_spec(
        channel(
            "SR",
            sample("signal", [3.0, 1.0], normfactor("mu")),
            sample("bkg", [5.0, 5.0], histosys("shape", [0.5, 1.0], [9.5, 9.0]), lumi()),
            sample("other", [2.0, 4.0], normsys("xsec", 0.8, 1.3)),
        ),
        parameters=[LUMI],
    )
    model, _ = _from_spec(spec)
    data = jnp.asarray([4.0, 0.0, *model.config.auxdata])  # an empty bin too
    values = {"lumi": 1.1, "mu": 0.2, "shape": -3.0, "xsec": 0.7}  # bkg 5 + 3 (0.5 - 5) < 0
    x = jnp.asarray([values[n] for n in model.config.par_names])
    assert float(jnp.min(model.expected_actualdata(x))) < 0  # the case is reached
    # compiled, as in test_hessian_equals_autodiff (op by op: 650 compilations, 12 s)
    f1, g1, h1 = jax.jit(hessian.value_grad_hessian)(model, data, x)
    f0, g0, h0 = jax.jit(
        lambda m, d, x: (
            restarts._objective(x, (m, d)),
            jax.grad(restarts._objective)(x, (m, d)),
            jax.hessian(restarts._objective)(x, (m, d)),
        )
    )(model, data, x)
    assert abs(float(f1 - f0)) <= 1e-10 * (abs(float(f0)) + 1.0)
    np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(g0))))
    np.testing.assert_allclose(h1, h0, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(h0))))


def test_sbottom_uses_it_and_fits_agree():
    """sbottom RegionA (58 global parameters) takes the rate-Jacobian Hessian; its fits and
    CLs equal those with the generic Hessian."""
    from diffhep.stats import hypotest

    model, data = _from_workspace(*builtin_example())
    assert hessian.supports(model, fit_mod.structure_of(model.config))
    run = jax.jit(lambda m, d: hypotest.hypotest(1.0, m, d))
    fast = run(model, data)
    old = hessian._MIN_DIRECTIONS
    try:
        hessian._MIN_DIRECTIONS = 10**9  # the generic way
        generic = jax.jit(lambda m, d: hypotest.hypotest(1.0, m, d))(model, data)
    finally:
        hessian._MIN_DIRECTIONS = old
    assert bool(fast.converged) and bool(generic.converged)
    np.testing.assert_allclose(fast.cls_obs, generic.cls_obs, rtol=1e-9)
    np.testing.assert_allclose(fast.cls_exp, generic.cls_exp, rtol=1e-9, atol=1e-15)


def _random_matrix(rng, n, kind):
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    if kind == "pd":
        w = rng.uniform(0.1, 10.0, n)
    elif kind == "indefinite":
        w = rng.uniform(-5.0, 5.0, n)
    else:  # near-singular: the floor of the eigenvalues acts
        w = np.concatenate([rng.uniform(1.0, 10.0, n - 2), [1e-13, 3e-12]])
    scale = np.exp(rng.uniform(-10, 10, n))  # very different curvatures per parameter
    return (Q * w) @ Q.T * scale[:, None] * scale[None, :]


@pytest.mark.parametrize("kind", ["pd", "indefinite", "near-singular"])
def test_cholesky_shortcut_equals_eigh(kind):
    rng = np.random.default_rng(5)
    for n in (16, 40, 70):
        M = jnp.asarray(_random_matrix(rng, n, kind))
        rhs = jnp.asarray(rng.normal(size=(n, 2)))
        fast = jax.jit(lambda m, r: linalg._inv_apply(m, r, True))(M, rhs)
        old = linalg._CHOLESKY_FROM
        try:  # read when traced: another function (a trace of its own) below
            linalg._CHOLESKY_FROM = 10**9
            ref = jax.jit(lambda m, r: linalg._inv_apply(m, r, True))(M, rhs)
        finally:
            linalg._CHOLESKY_FROM = old
        np.testing.assert_allclose(fast, ref, rtol=1e-7, atol=1e-9 * float(jnp.max(jnp.abs(ref))))


_BATCHED = """
import sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from diffhep.stats import linalg
rng = np.random.default_rng(0)
n, batch = 64, 64
Q = np.linalg.qr(rng.normal(size=(batch, n, n)))[0]
w = rng.uniform(-1.0, 10.0, size=(batch, n))  # indefinite and positive definite matrices
w[::2] = np.abs(w[::2]) + 0.5
M = np.einsum("bij,bj,bkj->bik", Q, w, Q)
r = rng.normal(size=(batch, n, 1))
f = jax.jit(jax.vmap(lambda m, v: linalg._inv_apply(m, v, True)))
for _ in range(5):
    out = np.asarray(jax.block_until_ready(f(jnp.asarray(M), jnp.asarray(r))))
np.save(sys.argv[1], out)
"""


def test_batched_modified_solves_finish_and_equal_eigh(tmp_path):
    """Many modified solves under vmap (the batched fits of a ranking or a scan), with jaxlib's
    default thread pool: they finish (a batched Cholesky and eigh at once used to deadlock the
    2-thread pool: `diffhep ranking` of sbottom RegionA hung) and equal the floored
    eigendecomposition computed with numpy."""
    import os
    import subprocess
    import sys

    script = tmp_path / "batched.py"
    script.write_text(_BATCHED)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI's own threads
    out_file = tmp_path / "out.npy"
    proc = subprocess.run([sys.executable, str(script), str(out_file)], env=env, timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = np.load(out_file)
    rng = np.random.default_rng(0)
    n, batch = 64, 64
    Q = np.linalg.qr(rng.normal(size=(batch, n, n)))[0]
    w = rng.uniform(-1.0, 10.0, size=(batch, n))
    w[::2] = np.abs(w[::2]) + 0.5
    M = np.einsum("bij,bj,bkj->bik", Q, w, Q)
    r = rng.normal(size=(batch, n, 1))
    for b in range(batch):
        s = 1.0 / np.sqrt(np.abs(np.diag(M[b])))
        lam, V = np.linalg.eigh(M[b] * s[:, None] * s[None, :])
        lam = np.maximum(np.abs(lam), 1e-10 * np.max(np.abs(lam)))
        ref = s[:, None] * (V @ ((V.T @ (r[b] * s[:, None])) / lam[:, None]))
        np.testing.assert_allclose(out[b], ref, rtol=1e-8, atol=1e-10 * np.max(np.abs(ref)))


def test_plateau_is_where_the_normsys_slope_falls_below_its_mean():
    """The plateau test of the turn restarts (code4 normsys): at a grid of values, a
    parameter is on a plateau where the slope of log(counts) of its sample's bin (central
    differences of the model's expected counts) is below PLATEAU times its mean slope
    (log hi - log lo) / 2, inside (-1, 1), for variations on either side of 1, and its mean
    slope moves the bin's counts by at least PLATEAU_SIZE Poisson standard deviations; never
    for one with both variations on one side (an even response) nor outside (-1, 1)."""
    entries = [(0.967416, 1.24881), (0.81142, 1.061308), (1.24881, 0.967416), (0.9, 1.1),
               (0.9, 0.95), (0.967416, 1.24881)]  # fmt: skip
    yields = [1000.0, 1000.0, 1000.0, 1000.0, 1000.0, 5.0]  # the last too small to matter
    bins = len(entries)
    samples = [
        sample(f"b{i}", np.eye(bins)[i] * n + 1e-3, normsys(f"ns{i}", lo, hi))
        for i, ((lo, hi), n) in enumerate(zip(entries, yields, strict=True))
    ]
    spec = model_spec(channel("SR", sample("signal", [1.0] * bins, normfactor("mu")), *samples))
    model = Model.from_spec(spec)
    idx = np.array([model.config.par_slice(f"ns{i}").start for i in range(bins)])
    on = jax.jit(lambda x: multimodal.plateau(model)(x))
    lo, hi = np.array(entries).T
    mean = 0.5 * (np.log(hi) - np.log(lo))
    init = np.asarray(model.config.suggested_init(), dtype=float)
    counts = np.asarray(model.expected_actualdata(jnp.asarray(init)))
    size = np.abs(mean) * np.asarray(yields) / np.sqrt(counts)  # one sample per bin
    eligible = ((hi - 1) * (lo - 1) < 0) & (size >= multimodal.PLATEAU_SIZE)
    seen = np.zeros(bins, bool)
    for a in np.linspace(-1.3, 1.3, 53):
        x = init.copy()
        x[idx] = a
        log_counts = [
            np.log(np.asarray(model.expected_actualdata(jnp.asarray(x).at[idx].add(d))))
            for d in (1e-6, -1e-6)
        ]
        slope = (log_counts[0] - log_counts[1]) / 2e-6  # bin i: ns_i's sample
        ratio = slope / mean
        ref = eligible & (abs(a) < 1.0) & (ratio < multimodal.PLATEAU)
        got = np.asarray(on(jnp.asarray(x)))[idx]
        clear = np.abs(ratio - multimodal.PLATEAU) > 1e-4  # not at the threshold
        np.testing.assert_array_equal(got[clear], ref[clear], err_msg=f"alpha {a}")
        seen |= got
    # the asymmetric variations (either way round) have a plateau, the mild one none, nor the
    # even one, nor the asymmetric one on 5 events (size 0.26)
    np.testing.assert_array_equal(seen, [True, True, True, False, False, False])
