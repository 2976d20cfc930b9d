"""The differentiable analysis pipeline: template swapping, loss gradients and loss values.

References are independent of the code under test: the original model of a real workspace
(``Model.with_channels``), central finite differences (gradients of every loss term), pyhf
0.7.6 with its numpy backend (expected CLs, Z0, a finite-difference Fisher information, the
JSON workspace) and closed forms evaluated with numpy (event-based losses).

Everything runs on tiny problems (2 features, 40 events per event set, 3 bins) and every
compiled function is built once per module: JAX compilation dominates the run time.
"""

from __future__ import annotations

import copy
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

import oracle
from diffhep import Model
from diffhep.analysis import losses
from diffhep.analysis.pipeline import LOSS_TERMS, Events, Pipeline
from diffhep.analysis.spec import Analysis, Channel, NormSystematic, ShapeSystematic
from diffhep.stats.hypotest import hypotest
from diffhep.stats.workspace import Workspace, apply_patch, builtin_example

FEATURES = ("x0", "x1")
N_EVENTS = 40
# (event set, mean of the Gaussian blob, expected yield), as in the neos example
BLOBS = (
    ("signal", (-1.0, 1.0), 20.0),
    ("background", (1.0, -1.0), 100.0),
    ("background_up", (2.5, 2.0), 100.0),
    ("background_down", (-2.5, -1.5), 100.0),
)
SHAPE = (ShapeSystematic("bkg_shape", "background", "background_up", "background_down"),)
BANDWIDTH = 0.1  # soft histograms, in units of the mean bin width
FIT_TERMS = ("cls", "log_cls", "z0", "inv_z0", "sigma_mu")  # terms that need a likelihood model
FD_STEP = 1e-5
# Event-based terms are plain compositions of smooth functions: FD agrees to ~1e-10.
RTOL_EVENT = 1e-7
# Fit-based terms: the profile fits stop at a Newton decrement of 1e-12 (DEFAULT_TOL), where
# the residual gradient of the profiled nuisances can be ~1e-6; the implicit (envelope)
# gradient is evaluated at that point, so it differs from the derivative of the exact profile
# by residual x d(grad)/d(params). In a variant of the basic problem (bandwidth 0.3, uniform
# edges) z0 is off by 9e-6 relative, and by 4e-9 when the fit runs with tol=1e-24. Here the
# observed errors are below 2e-7; a wrong term in a derivative gives errors of order one.
RTOL_FIT = 1e-4
RTOL_PYHF = 1e-5


@pytest.fixture(scope="module", autouse=True)
def fast_compilation():
    """XLA without its expensive optimisation passes: compilation, not execution, is the cost
    of these tiny problems (restored afterwards)."""
    saved = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", saved)


@pytest.fixture(scope="module", autouse=True)
def pyhf_numpy():
    """pyhf with its numpy backend and tight fits; restored afterwards."""
    saved = pyhf.get_backend()
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=1e-12))
    yield
    pyhf.set_backend(*saved)


# ---------------------------------------------------------------------------- with_channels
TEMPLATES = ("nominal", "histosys_lo", "histosys_hi", "normsys_lo", "normsys_hi")
TEMPLATES += ("staterror_uncrt",)


def _map_channel_data(channels, fn):
    """A deep copy of a ``channels`` list with ``fn`` applied to every template entry:
    sample data, histosys lo/hi data, normsys lo/hi and staterror data."""
    out = copy.deepcopy(channels)
    for ch in out:
        for s in ch["samples"]:
            s["data"] = fn(s["data"])
            for m in s["modifiers"]:
                if m["type"] == "histosys":
                    m["data"] = {k: fn(m["data"][k]) for k in ("lo_data", "hi_data")}
                elif m["type"] == "normsys":
                    m["data"] = {k: fn(m["data"][k]) for k in ("lo", "hi")}
                elif m["type"] == "staterror":
                    m["data"] = fn(m["data"])
    return out


def _scramble(spec, seed):
    """The workspace with every template entry multiplied by a random factor in [0.5, 2]."""
    rng = np.random.default_rng(seed)

    def rescale(x):
        if isinstance(x, list):
            return [float(v) * float(rng.uniform(0.5, 2.0)) for v in x]
        return float(x) * float(rng.uniform(0.5, 2.0))

    out = copy.deepcopy(spec)
    out["channels"] = _map_channel_data(spec["channels"], rescale)
    return out


def _to_jax(channels):
    return _map_channel_data(channels, jnp.asarray)


def _trim(spec, n_histosys):
    """The workspace keeping only the first ``n_histosys`` histosys modifiers of each sample."""
    out = copy.deepcopy(spec)
    for ch in out["channels"]:
        for s in ch["samples"]:
            kept, n = [], 0
            for m in s["modifiers"]:
                if m["type"] == "histosys":
                    n += 1
                    if n > n_histosys:
                        continue
                kept.append(m)
            s["modifiers"] = kept
    return out


def _assert_same_templates(model, reference, rtol=1e-14):
    assert model.config == reference.config
    for name in TEMPLATES:
        np.testing.assert_allclose(
            np.asarray(getattr(model, name)),
            np.asarray(getattr(reference, name)),
            rtol=rtol,
            atol=0.0,
            err_msg=name,
        )


def _random_pars(model, rng, n):
    """``n`` random points inside the suggested bounds (near the suggested init)."""
    init = np.asarray(model.config.init)
    bounds = np.asarray(model.config.bounds)
    pts = init + rng.uniform(-0.3, 0.3, (n, init.size)) * np.minimum(1.0, np.ptp(bounds, 1))
    return np.clip(pts, bounds[:, 0] + 1e-3, bounds[:, 1] - 1e-3)


@eqx.filter_jit
def _logpdfs(model, pars, data):
    """``model.logpdf`` at several points (one compilation per model structure)."""
    return jax.vmap(lambda p: model.logpdf(p, data))(jnp.asarray(pars))


@pytest.fixture(scope="module")
def sbottom():
    bkg_only, patch = builtin_example()
    return apply_patch(bkg_only, patch)


def test_with_channels_restores_a_real_model(sbottom):
    ws = Workspace(sbottom)
    model = ws.model()
    scrambled = Workspace(_scramble(sbottom, seed=1)).model()
    data = np.asarray(ws.data(model))
    # the scrambled model really is different in every template (so the test can fail)
    for name in TEMPLATES:
        assert not np.allclose(getattr(scrambled, name), getattr(model, name)), name

    restored = scrambled.with_channels(sbottom["channels"])
    _assert_same_templates(restored, model)
    pars = _random_pars(model, np.random.default_rng(2), 3)
    np.testing.assert_allclose(
        _logpdfs(restored, pars, data), _logpdfs(model, pars, data), rtol=1e-12
    )


def test_with_channels_jit_traces_once(sbottom):
    """Channels with JAX-array data go through one trace; templates follow the arrays."""
    small = _trim(sbottom, n_histosys=1)
    small_scrambled = _scramble(small, seed=3)
    model = Workspace(small).model()
    other = Workspace(small_scrambled).model()
    assert model.histosys_lo.shape[0] > 0 and model.staterror_uncrt.shape[0] > 0
    data = jnp.asarray(Workspace(small).data(model))
    pars = jnp.asarray(_random_pars(model, np.random.default_rng(4), 1)[0])

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def swap(base, channels, pars, data):
        m = base.with_channels(channels)
        return m, m.logpdf(pars, data)

    for channels, reference in ((small, model), (small_scrambled, other)):
        m, logpdf = swap(other, _to_jax(channels["channels"]), pars, data)
        _assert_same_templates(m, reference)
        np.testing.assert_allclose(logpdf, _logpdfs(reference, pars[None], data)[0], rtol=1e-12)


def test_with_channels_rejects_foreign_channels(sbottom):
    model = Workspace(_trim(sbottom, n_histosys=0)).model()
    channels = _trim(sbottom, n_histosys=0)["channels"]
    model.with_channels(channels)  # the unmodified channels are accepted

    bad = copy.deepcopy(channels)
    bad[0]["name"] = "no_such_channel"
    with pytest.raises(ValueError, match="no_such_channel"):
        model.with_channels(bad)
    bad = copy.deepcopy(channels)
    bad[-1]["samples"][-1]["name"] = "no_such_sample"
    with pytest.raises(ValueError, match="no_such_sample"):
        model.with_channels(bad)
    bad = copy.deepcopy(channels)
    bad[-1]["samples"][1]["data"] = [*bad[-1]["samples"][1]["data"], 1.0]
    with pytest.raises(ValueError, match="shape"):
        model.with_channels(bad)


def _small_spec():
    return {
        "channels": [
            {
                "name": "sr",
                "samples": [
                    {
                        "name": "sig",
                        "data": [1.0, 2.0, 3.0],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "bkg",
                        "data": [5.0, 5.0, 5.0],
                        "modifiers": [
                            {
                                "name": "shape",
                                "type": "histosys",
                                "data": {"lo_data": [4.0, 4.0, 4.0], "hi_data": [6.0, 6.0, 6.0]},
                            },
                            {"name": "stat", "type": "staterror", "data": [1.0, 1.0, 1.0]},
                        ],
                    },
                ],
            }
        ]
    }


def _modifier_with_data(channels, kind, data):
    out = copy.deepcopy(channels)
    for m in out[0]["samples"][1]["modifiers"]:
        if m["type"] == kind:
            if kind == "histosys":
                m["data"]["lo_data"] = data
            else:
                m["data"] = data
    return out


@pytest.mark.parametrize("kind", ["histosys", "staterror"])
def test_with_channels_rejects_modifier_data_of_another_length(kind):
    spec = _small_spec()
    model = Model.from_spec(spec)
    for data in ([1.0, 2.0], [1.0, 2.0, 3.0, 4.0]):
        with pytest.raises(ValueError):
            model.with_channels(_modifier_with_data(spec["channels"], kind, data))


@pytest.mark.parametrize("kind", ["histosys", "staterror"])
def test_with_channels_rejects_one_bin_modifier_data(kind):
    spec = _small_spec()
    model = Model.from_spec(spec)
    with pytest.raises(ValueError):
        model.with_channels(_modifier_with_data(spec["channels"], kind, [9.0]))


# ---------------------------------------------------------------------------- the pipelines
@pytest.fixture(scope="module")
def events():
    rng = np.random.default_rng(7)
    return {
        name: Events(
            jnp.asarray(rng.normal(mean, 1.0, (N_EVENTS, 2))), jnp.full(N_EVENTS, y / N_EVENTS)
        )
        for name, mean, y in BLOBS
    }


def _init(pipe, events):
    return pipe.init_params(events, key=jax.random.key(0), hidden=(5,), dtype=jnp.float64)


@pytest.fixture(scope="module")
def nn_edges(events):
    """Bin edges of the score at the terciles of the nominal background (all bins filled):
    the untrained observable's scores cluster around 0.5."""
    probe = Pipeline(Analysis(("signal", "background"), "signal", (Channel("SR", 3),)), FEATURES)
    scores = np.sort(np.asarray(_init(probe, events).observable(events["background"].x)))
    n = len(scores)
    inner = [0.5 * (scores[k * n // 3 - 1] + scores[k * n // 3]) for k in (1, 2)]
    return (0.0, *inner, 1.0)


@pytest.fixture(scope="module")
def pipes(nn_edges):
    samples = ("signal", "background")
    analyses = {
        "basic": Analysis(
            samples,
            "signal",
            (Channel("SR", 3, edges=nn_edges, learnable_edges=True),),
            shape_systematics=SHAPE,
        ),
        "mcstat_norm": Analysis(
            samples,
            "signal",
            (Channel("SR", 3, edges=nn_edges),),
            shape_systematics=SHAPE,
            norm_systematics=(NormSystematic("bkg_norm", ("background",), 0.9, 1.15),),
            mc_stat=True,
        ),
        "two_channels": Analysis(
            samples,
            "signal",
            (
                Channel("SR", 3, edges=nn_edges),
                Channel(
                    "CR",
                    3,
                    observable="x0",
                    edges=(-3.0, -0.5, 1.0, 3.0),
                    region=(("x1", -10.0, 0.5),),
                    learnable_edges=True,
                ),
            ),
            shape_systematics=SHAPE,
        ),
    }
    return {k: Pipeline(a, FEATURES) for k, a in analyses.items()}


@pytest.fixture(scope="module")
def params(pipes, events):
    return {k: _init(p, events) for k, p in pipes.items()}


def _trainable_spec(params):
    """Filter spec of the trained leaves: the MLP and the learnable bin edges (the input
    standardisation and fixed edges are float leaves too, but their gradients are stopped)."""
    spec = jax.tree.map(eqx.is_inexact_array, params)
    spec = eqx.tree_at(
        lambda s: (s.observable.mean, s.observable.scale), spec, replace=(False, False)
    )
    for i, b in enumerate(params.binnings):
        spec = eqx.tree_at(lambda s, i=i: s.binnings[i].theta, spec, replace=b.trainable)
    return spec


# terms whose gradient is checked per pipeline: every term on the basic one (but the skim
# fraction, constant without cuts: tests/test_cuts.py checks it); the terms that depend on the
# likelihood structure on the others (the event-based terms do not see it)
GRAD_TERMS = {
    "basic": tuple(t for t in LOSS_TERMS if t != "skim"),
    "mcstat_norm": ("cls", "sigma_mu"),
    "two_channels": ("z0", "sigma_mu"),
}


def _value_and_grads(pipe, terms):
    @eqx.filter_jit
    def fn(dyn, static, events, bandwidth):
        out = {}
        for t in terms:

            def loss(d, t=t):
                return pipe.loss_terms(eqx.combine(d, static), events, (t,), bandwidth)[t]

            out[t] = jax.value_and_grad(loss)(dyn)
        return out

    def call(dyn, static, events, bandwidth):
        # a traced bandwidth: a Python float would be static and recompile for every value
        return fn(dyn, static, events, jnp.asarray(bandwidth, jnp.float64))

    return call


@pytest.fixture(scope="module")
def compiled(pipes):
    """One compiled values-and-gradients function per pipeline (reused everywhere)."""
    return {k: _value_and_grads(p, GRAD_TERMS[k]) for k, p in pipes.items()}


def _directions(dyn, seed, only_edges=False):
    """A random direction in the trainable leaves (optionally only the bin-edge logits)."""
    rng = np.random.default_rng(seed)
    d = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), dyn)
    if only_edges:
        d = eqx.tree_at(
            lambda p: p.observable, d, replace_fn=lambda o: jax.tree.map(jnp.zeros_like, o)
        )
    return d


def _dot(a, b):
    return float(
        sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    )


def _check_directional(fn, dyn, static, events, direction, terms):
    res = fn(dyn, static, events, BANDWIDTH)
    up = fn(jax.tree.map(lambda a, d: a + FD_STEP * d, dyn, direction), static, events, BANDWIDTH)
    dn = fn(jax.tree.map(lambda a, d: a - FD_STEP * d, dyn, direction), static, events, BANDWIDTH)
    out = {}
    for t in terms:
        value, grad = res[t]
        analytic = _dot(grad, direction)
        fd = float(up[t][0] - dn[t][0]) / (2 * FD_STEP)
        assert np.isfinite(float(value)) and np.isfinite(analytic), t
        rtol = RTOL_FIT if t in FIT_TERMS else RTOL_EVENT
        # the absolute term covers directional derivatives that vanish (edges in BCE)
        atol = 1e-9 * max(1.0, abs(float(value)))
        assert abs(analytic - fd) <= rtol * abs(fd) + atol, (t, analytic, fd)
        out[t] = fd
    return out


@pytest.mark.parametrize(
    "name", ["basic", "mcstat_norm", pytest.param("two_channels", marks=pytest.mark.slow)]
)
def test_loss_gradients_match_finite_differences(name, pipes, params, compiled, events):
    terms = GRAD_TERMS[name]
    dyn, static = eqx.partition(params[name], _trainable_spec(params[name]))
    fn = compiled[name]
    fd = _check_directional(fn, dyn, static, events, _directions(dyn, seed=11), terms)
    for t in terms:  # a zero derivative would make the comparison empty
        assert abs(fd[t]) > 1e-6, t
    if any(ch.learnable_edges for ch in pipes[name].analysis.channels):
        fd = _check_directional(
            fn, dyn, static, events, _directions(dyn, seed=12, only_edges=True), terms
        )
        for t in set(terms) & set(FIT_TERMS):  # the likelihood sees the edges
            assert abs(fd[t]) > 1e-6, t


# ---------------------------------------------------------------------------- hard histograms
def _numpy_histograms(pipe, params, events):
    """Weighted histograms with numpy: regions as masks, under/overflow in the outer bins."""
    out = {}
    for name, ev in events.items():
        x, w = np.asarray(ev.x), np.asarray(ev.w)
        score = np.asarray(params.observable(ev.x))
        for ch in pipe.analysis.channels:
            mask = np.ones(len(w), bool)
            for f, lo, hi in ch.region:
                v = x[:, FEATURES.index(f)]
                mask &= (v >= lo) & (v < hi)
            v = score if ch.observable == "nn" else x[:, FEATURES.index(ch.observable)]
            e = np.asarray(ch.edges)
            v = np.clip(v, e[0], e[-1])
            out[(ch.name, name)] = (
                np.histogram(v, e, weights=w * mask)[0],
                np.histogram(v, e, weights=(w * mask) ** 2)[0],
            )
    return out


@pytest.mark.parametrize("name", ["mcstat_norm", "two_channels"])
def test_hard_histograms_match_numpy(name, pipes, params, events):
    got = pipes[name].histograms(params[name], events)
    want = _numpy_histograms(pipes[name], params[name], events)
    assert set(got) == set(want)
    for key, (sumw, sumw2) in want.items():
        np.testing.assert_allclose(np.asarray(got[key][0]), sumw, rtol=1e-12, err_msg=str(key))
        np.testing.assert_allclose(np.asarray(got[key][1]), sumw2, rtol=1e-12, err_msg=str(key))


# ---------------------------------------------------------------------------- likelihood losses
@eqx.filter_jit
def _core_results(model):
    """The loss functions and the full asymptotic hypotest of one model (compiled once)."""
    poi = model.config.poi_index
    background_only = jnp.asarray(model.config.init, dtype=jnp.float64).at[poi].set(0.0)
    data = model.expected_data(background_only)
    return {
        "cls": losses.expected_cls(model),
        "cls_hypotest": hypotest(1.0, model, data).cls_exp[2],
        "z0": losses.discovery_significance(model),
        "sigma_mu": losses.sigma_mu(model),
    }


@pytest.fixture(scope="module")
def hard(pipes, params, events):
    """Hard histograms of the untrained observable in the mc_stat + normsys analysis."""
    pipe = pipes["mcstat_norm"]
    h = pipe.histograms(params["mcstat_norm"], events)
    for ch in pipe.analysis.channels:  # every background bin is filled: a regular model
        assert np.all(np.asarray(h[(ch.name, "background")][0]) > 0)
        assert np.any(np.asarray(h[(ch.name, "signal")][0]) > 0)
    return pipe, h


@pytest.fixture(scope="module")
def core(hard):
    pipe, h = hard
    return jax.tree.map(float, _core_results(pipe.model(h)))


def _pyhf_pars(model, mu):
    pars = np.asarray(model.config.suggested_init(), dtype=float)
    pars[model.config.poi_index] = mu
    return pars


def _global_q0(model, data):
    """q0 = -2 ln L(0) / L(muhat) (0 for muhat < 0) with the lowest fits pyhf's logpdf has
    from 20 random starts (:func:`oracle.global_fit`)."""
    free_pars, free = oracle.global_fit(data, model)
    _, at_zero = oracle.global_fit(data, model, poi_value=0.0)
    return max(at_zero - free, 0.0) if free_pars[model.config.poi_index] >= 0 else 0.0


def _pyhf_results(spec):
    """pyhf's median expected CLs (qtilde, mu = 1, on the workspace's observations), Z0 =
    sqrt(q0) on the mu = 1 Asimov data and the POI's standard deviation from the inverse of a
    finite-difference Hessian of -log L on that data, at the nominal point.

    Z0 comes from the lowest fits of pyhf's logpdf from many starts (``z0``), not from pyhf's
    q0 (``z0_pyhf``): the profile at mu = 0 of these models has two minima in the histosys
    parameter, and pyhf's fit from the suggested init stops in the worse one (hard-histogram
    model: -2 ln L 17.9428 at alpha = +0.259 instead of 17.9236 at alpha = -0.307, Z0
    0.93249 instead of 0.92211; checked on a dense grid in alpha with the other nuisances
    profiled). Where pyhf finds the lowest minimum, the two are equal."""
    ws = pyhf.Workspace(copy.deepcopy(spec))
    model = ws.model()
    data = ws.data(model)
    cfg = model.config
    _, cls_exp = oracle.hypotest(1.0, data, model, test_stat="qtilde", return_expected=True)
    init, bounds, fixed = cfg.suggested_init(), cfg.suggested_bounds(), cfg.suggested_fixed()
    asimov_sb = model.expected_data(_pyhf_pars(model, 1.0))
    q0_pyhf = oracle.test_statistic("q0", 0.0, asimov_sb, model, init, bounds, fixed)
    q0 = _global_q0(model, asimov_sb)
    assert q0 <= q0_pyhf + 1e-9  # a lower minimum of L(0) only lowers q0

    def nll(pars):
        return -float(model.logpdf(pars, asimov_sb)[0])

    free = ~np.asarray(fixed)
    hess = oracle.fd_hessian(nll, _pyhf_pars(model, 1.0))[np.ix_(free, free)]
    poi = int(np.searchsorted(np.flatnonzero(free), cfg.poi_index))  # POI among the free
    return {
        "cls": float(cls_exp),
        "z0": float(np.sqrt(q0)),
        "z0_pyhf": float(np.sqrt(q0_pyhf)),
        "sigma_mu": float(np.sqrt(np.linalg.inv(hess)[poi, poi])),
        "model": model,
        "data": data,
    }


@pytest.fixture(scope="module")
def pyhf_reference(hard):
    """pyhf's results for the workspace of the hard histograms."""
    pipe, h = hard
    return _pyhf_results(pipe.workspace(h))


def test_workspace_observations_are_background_only_asimov(hard, pyhf_reference):
    model = pyhf_reference["model"]
    main = np.asarray(pyhf_reference["data"][: model.config.nmaindata])
    np.testing.assert_allclose(main, model.expected_actualdata(_pyhf_pars(model, 0.0)), rtol=1e-12)


def test_expected_cls_matches_hypotest_and_pyhf(core, pyhf_reference):
    assert 1e-4 < core["cls"] < 0.9  # a non-trivial value
    # the same minima by two routes (the loss fits from the suggested start, hypotest's fit of
    # the Asimov data's origin starts where its free fit ended): the Asimov data follow the
    # fitted parameters, converged to 1e-12 in -log L, i.e. to ~1e-7 in the parameters
    np.testing.assert_allclose(core["cls"], core["cls_hypotest"], rtol=1e-7)
    np.testing.assert_allclose(core["cls"], pyhf_reference["cls"], rtol=RTOL_PYHF)


def test_discovery_significance_matches_pyhf(core, pyhf_reference):
    """Z0 of pyhf's logpdf with the global minimum at mu = 0 (see :func:`_pyhf_results`:
    pyhf's own q0 comes from the worse of two minima here, Z0 0.93249 instead of 0.92211)."""
    assert core["z0"] > 0.1
    np.testing.assert_allclose(core["z0"], pyhf_reference["z0"], rtol=RTOL_PYHF)


def test_sigma_mu_matches_finite_difference_fisher_information(core, pyhf_reference):
    assert 0.0 < core["sigma_mu"] < 10.0
    np.testing.assert_allclose(core["sigma_mu"], pyhf_reference["sigma_mu"], rtol=1e-5)


def test_soft_loss_terms_match_pyhf(pipes, params, events, compiled):
    """The likelihood loss terms (soft histograms) are pyhf's numbers for the workspace of
    those histograms, with z0 = -Z0 and inv_z0 = 1 / Z0 (Z0 with the global minimum at
    mu = 0, see :func:`_pyhf_results`)."""
    pipe, p = pipes["basic"], params["basic"]
    dyn, static = eqx.partition(p, _trainable_spec(p))
    got = {t: float(v) for t, (v, _) in compiled["basic"](dyn, static, events, BANDWIDTH).items()}
    ref = _pyhf_results(pipe.workspace(pipe.histograms(p, events, BANDWIDTH)))
    np.testing.assert_allclose(got["cls"], ref["cls"], rtol=RTOL_PYHF)
    np.testing.assert_allclose(got["z0"], -ref["z0"], rtol=RTOL_PYHF)
    np.testing.assert_allclose(got["inv_z0"], 1.0 / ref["z0"], rtol=RTOL_PYHF)
    np.testing.assert_allclose(got["sigma_mu"], ref["sigma_mu"], rtol=1e-5)


@pytest.mark.parametrize("name", ["mcstat_norm", "two_channels"])
def test_workspace_json_round_trip(name, pipes, params, events, core):
    """pyhf reads the JSON workspace (schema-valid) and finds diffhep's model and CLs."""
    pipe = pipes[name]
    h = pipe.histograms(params[name], events)
    spec = json.loads(json.dumps(pipe.workspace(h)))
    pyhf.schema.validate(spec, "workspace.json")
    ws = pyhf.Workspace(spec)
    model = ws.model()
    data = ws.data(model)
    ours = Workspace(copy.deepcopy(spec)).model()
    assert list(ours.config.par_names) == list(model.config.par_names)
    pars = _random_pars(ours, np.random.default_rng(5), 3)
    np.testing.assert_allclose(
        _logpdfs(ours, pars, jnp.asarray(data)),
        [float(model.logpdf(p, data)[0]) for p in pars],
        rtol=1e-10,
    )
    # the model the pipeline builds without recompilation is the same model
    np.testing.assert_allclose(
        np.asarray(pipe.model(h).expected_data(_pyhf_pars(model, 1.0))),
        model.expected_data(_pyhf_pars(model, 1.0)),
        rtol=1e-12,
    )
    if name == "mcstat_norm":  # the full expected CLs (the compiled core result)
        _, cls_exp = oracle.hypotest(1.0, data, model, test_stat="qtilde", return_expected=True)
        np.testing.assert_allclose(core["cls"], float(cls_exp), rtol=RTOL_PYHF)


# ---------------------------------------------------------------------------- closed forms
def test_asimov_significance_closed_forms():
    # Z_A of the Elwood-Kruecker talk / Cowan et al. (evaluated independently to 40 digits)
    assert abs(float(losses.asimov_significance(14.0, 5.0, 0.3 * 5.0)) - 3.6149635) < 1e-7
    for s, b in ((14.0, 5.0), (3.0, 100.0), (0.5, 2000.0)):
        no_uncertainty = np.sqrt(2.0 * ((s + b) * np.log1p(s / b) - s))
        values = [float(losses.asimov_significance(s, b, r * b)) for r in (1e-2, 1e-3, 1e-6)]
        np.testing.assert_allclose(values[-1], no_uncertainty, rtol=1e-7)
        assert values[0] < values[1] < no_uncertainty  # an uncertainty costs significance
    s, b = np.array([1.0, 4.0, 30.0]), np.array([10.0, 2.0, 500.0])
    se, be = s + losses.YIELD_EPS, b + losses.YIELD_EPS
    np.testing.assert_allclose(losses.inverse_s_over_sqrt_s_plus_b(s, b), (se + be) / se**2)
    np.testing.assert_allclose(losses.b_over_s2(s, b), be / se**2)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _bce(ls, ws, lb, wb):
    """Class-balanced weighted BCE: -sum ws log p(s) / sum ws - sum wb log(1-p(b)) / sum wb."""
    return -np.sum(ws * _log_sigmoid(ls)) / np.sum(ws) - np.sum(wb * _log_sigmoid(-lb)) / np.sum(wb)


def test_binary_cross_entropy_closed_form():
    rng = np.random.default_rng(9)
    ls, lb = rng.normal(0, 3, 25), rng.normal(0, 3, 30)
    ws, wb = rng.uniform(0.1, 1.0, 25), rng.uniform(-0.3, 1.0, 30)  # negative weights
    assert np.any(wb < 0)
    got = float(losses.binary_cross_entropy(ls, ws, lb, wb))
    np.testing.assert_allclose(got, _bce(ls, ws, lb, wb), rtol=1e-12)
    # extreme logits stay finite and exact
    ls[0], lb[0] = -40.0, 40.0
    np.testing.assert_allclose(
        float(losses.binary_cross_entropy(ls, ws, lb, wb)), _bce(ls, ws, lb, wb), rtol=1e-12
    )


def test_event_based_loss_terms_closed_forms(pipes, params, events):
    rel = 0.25
    pipe = Pipeline(pipes["basic"].analysis, FEATURES, z_asimov_rel_uncertainty=rel)
    p = params["basic"]
    terms = ("bce", "bce_aug", "s_sqrt_sb", "z_asimov")
    got = {k: float(v) for k, v in pipe.loss_terms(p, events, terms, BANDWIDTH).items()}

    def logits(name):
        return np.asarray(p.observable.logits(events[name].x))

    def weights(name):
        return np.asarray(events[name].w)

    def soft_yield(name):
        return np.sum(weights(name) / (1.0 + np.exp(-logits(name))))

    eps = losses.YIELD_EPS
    s, b = soft_yield("signal") + eps, soft_yield("background") + eps
    sb2 = (rel * b) ** 2
    z_a = np.sqrt(
        2.0
        * (
            (s + b) * np.log((s + b) * (b + sb2) / (b**2 + (s + b) * sb2))
            - b**2 / sb2 * np.log(1.0 + sb2 * s / (b * (b + sb2)))
        )
    )
    np.testing.assert_allclose(got["s_sqrt_sb"], (s + b) / s**2, rtol=1e-12)
    np.testing.assert_allclose(got["z_asimov"], 1.0 / z_a, rtol=1e-10)
    for term, bkg in (
        ("bce", ("background",)),
        ("bce_aug", ("background", "background_up", "background_down")),
    ):
        want = _bce(
            logits("signal"),
            weights("signal"),
            np.concatenate([logits(n) for n in bkg]),
            np.concatenate([weights(n) for n in bkg]),
        )
        np.testing.assert_allclose(got[term], want, rtol=1e-12, err_msg=term)


# ---------------------------------------------------------------------------- soft -> hard
def test_soft_cls_tends_to_hard_cls(hard, params, events, compiled, core):
    pipe, h = hard
    p = params["mcstat_norm"]
    rel_bandwidth = 1e-6
    # no event lies within 1000 kernel widths of an inner edge: the kernel tails vanish
    (ch,) = pipe.analysis.channels
    edges = np.asarray(ch.edges)
    kernel_width = rel_bandwidth * (edges[-1] - edges[0]) / ch.bins
    for ev in events.values():
        scores = np.asarray(p.observable(ev.x))
        assert np.min(np.abs(scores[:, None] - edges[None, 1:-1])) > 1000 * kernel_width
    soft = pipe.histograms(p, events, rel_bandwidth)
    for key, (sumw, sumw2) in h.items():
        np.testing.assert_allclose(np.asarray(soft[key][0]), sumw, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(soft[key][1]), sumw2, rtol=1e-12, atol=1e-12)
    dyn, static = eqx.partition(p, _trainable_spec(p))
    value, _ = compiled["mcstat_norm"](dyn, static, events, rel_bandwidth)["cls"]
    np.testing.assert_allclose(float(value), core["cls"], rtol=1e-6)


def test_mc_stat_gradient_is_finite_with_an_empty_bin(hard):
    """mc_stat: a nominal sample with an empty bin (soft histograms underflow to exactly 0
    far from the events) must not make the likelihood's gradient NaN."""
    pipe, h = hard
    hists = {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in h.items()}
    sumw, sumw2 = hists[("SR", "signal")]
    hists[("SR", "signal")] = (sumw.at[-1].set(0.0), sumw2.at[-1].set(0.0))
    model = pipe.model(hists)
    pars = jnp.asarray(model.config.init).at[model.config.poi_index].set(1.0)
    data = model.expected_data(pars)

    @eqx.filter_jit
    def value_and_grad(hists):
        return jax.value_and_grad(lambda hh: pipe.model(hh).logpdf(pars, data))(hists)

    logpdf, grad = value_and_grad(hists)
    assert np.isfinite(float(logpdf))
    for key, (gw, gw2) in grad.items():
        assert np.all(np.isfinite(gw)) and np.all(np.isfinite(gw2)), key
