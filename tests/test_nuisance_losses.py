"""Loss terms on nuisance parameters (sigma_theta, pull_theta, impact): values and gradients.

References: pyhf 0.7.6 (numpy backend) on the workspace of the same histograms — the
inverse of a finite-difference Hessian of its ``logpdf`` on the mu = 1 Asimov data (the
Fisher information), its parameters' pre-fit widths, and its fixed-POI fit on the
background-only Asimov data (guarded by :mod:`oracle`); central finite differences for the
gradients. A tiny model: one channel of 3 bins, a signal, a background with a histosys and
per-bin MC statistical uncertainties (staterror).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

import oracle
from diffhep.analysis import losses
from diffhep.analysis.nuisance import NuisanceTerm, parse
from diffhep.analysis.pipeline import Pipeline
from diffhep.analysis.spec import Analysis, Channel, ShapeSystematic
from diffhep.runs.config import ConfigError, load_config

ANALYSIS = Analysis(
    samples=("signal", "background"),
    signal="signal",
    channels=(Channel("SR", 3),),
    shape_systematics=(ShapeSystematic("bkg_shape", "background", "bkg_up", "bkg_down"),),
    mc_stat=True,
)
SIG = np.array([2.0, 6.0, 12.0])
BKG = np.array([40.0, 20.0, 8.0])
UP = np.array([44.0, 23.0, 7.0])
DOWN = np.array([37.0, 18.0, 9.5])
SUMW2 = np.array([4.0, 3.0, 2.5])  # background; the others' are SIG / 10 etc.
PARAMETERS = ("bkg_shape", "staterror_SR[2]")
FD_STEP = 1e-5
RTOL_FD = 1e-4  # the fit terms: see tests/test_pipeline.py (RTOL_FIT)


def histograms(t):
    """The histograms as smooth functions of a scalar ``t`` (t = 0: the nominal ones)."""
    t = jnp.asarray(t, dtype=jnp.float64)
    shift = jnp.array([1.0, -0.5, 0.3])
    sig = SIG * (1.0 + 0.3 * t * jnp.array([1.0, 0.5, -0.8]))
    bkg = BKG + 4.0 * t * shift
    up = UP + 2.0 * t * jnp.array([0.2, 1.0, -0.4])
    return {
        ("SR", "signal"): (sig, sig / 10.0),
        ("SR", "background"): (bkg, SUMW2 * (1.0 + 0.5 * t)),
        ("SR", "bkg_up"): (up, up / 10.0),
        ("SR", "bkg_down"): (DOWN + 0.0 * t, DOWN / 10.0),
    }


@pytest.fixture(scope="module", autouse=True)
def fast_compilation():
    saved = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", saved)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(ANALYSIS, ("x",))


TERMS = (
    NuisanceTerm("sigma_theta", "bkg_shape", 1.0),  # the neos paper's (1 - sigma_gamma)^2
    NuisanceTerm("sigma_theta", "staterror_SR[2]"),  # the width follows the templates
    NuisanceTerm("pull_theta", "bkg_shape"),
    NuisanceTerm("impact", "bkg_shape"),
)
KEYS = (*(t.key for t in TERMS), "cls", "log_cls", "sigma_mu")


@pytest.fixture(scope="module")
def quantities(pipe):
    """One compiled function of ``t``: the loss terms KEYS of the pipeline and, per parameter
    of PARAMETERS, the raw sigma_theta, impact, pull and pre-fit width."""

    @jax.jit
    def fn(t):
        model = pipe.model(histograms(t))
        names = list(model.config.par_names)
        raw = {}
        for name in PARAMETERS:
            k = names.index(name)
            raw[name] = {
                "sigma_theta": losses.sigma_theta(model, k),
                "impact": losses.impact(model, k),
                "pull": losses.nuisance_pull(model, k),
                "prefit": losses.prefit_width(model, k),
            }
        return pipe.terms_from_sums({"histograms": histograms(t)}, KEYS), raw

    return fn


@pytest.fixture(scope="module")
def ours(quantities):
    return jax.tree.map(float, quantities(0.0)[1])


@pytest.fixture(scope="module")
def reference(pipe):
    """pyhf: the Fisher covariance at the nominal point (mu = 1), the pre-fit widths and the
    mu = 1 fit on the background-only Asimov data (the workspace's observations)."""
    h = {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in histograms(0.0).items()}
    spec = copy.deepcopy(pipe.workspace(h))
    with oracle.pyhf_numpy():
        model = pyhf.Workspace(spec).model()
        cfg = model.config
        init = np.asarray(cfg.suggested_init(), dtype=float)
        nominal = init.copy()
        nominal[cfg.poi_index] = 1.0
        asimov = model.expected_data(nominal)
        hess = oracle.fd_hessian(lambda p: -float(model.logpdf(p, asimov)[0]), nominal)
        cov = np.linalg.inv(hess)
        bkg_only = pyhf.Workspace(spec).data(model)
        fitted = np.asarray(oracle.fit(bkg_only, model, poi_value=1.0))
        widths = {}
        for name in cfg.parameters:
            ps = cfg.param_set(name)
            for i, w in enumerate(ps.width() if ps.constrained else [1.0] * ps.n_parameters):
                widths[name if ps.n_parameters == 1 else f"{name}[{i}]"] = w
    names = list(cfg.par_names)
    poi = cfg.poi_index
    out = {}
    for name in PARAMETERS:
        k = names.index(name)
        sd = np.sqrt(cov[k, k])
        out[name] = {
            "sigma_theta": sd / widths[name],
            "impact": cov[poi, k] / sd,
            "pull": (fitted[k] - init[k]) / widths[name],
            "prefit": widths[name],
        }
    return out


@pytest.mark.parametrize("name", PARAMETERS)
@pytest.mark.parametrize("quantity", ["prefit", "sigma_theta", "impact", "pull"])
def test_values_match_pyhf(ours, reference, name, quantity):
    got, want = ours[name][quantity], reference[name][quantity]
    # the pulls are genuinely non-zero (the nuisances absorb part of the tested signal)
    assert quantity != "pull" or abs(want) > 1e-2
    tol = 1e-5 if quantity != "pull" else 1e-4  # pyhf's scipy fit stops at 1e-12 in -log L
    np.testing.assert_allclose(got, want, rtol=tol, atol=1e-7)


def test_sigma_theta_is_below_one_where_the_data_constrain(ours):
    """A post-fit width can only shrink with data (the constraint alone gives 1)."""
    for name in PARAMETERS:
        assert 0.0 < ours[name]["sigma_theta"] < 1.0


@pytest.fixture(scope="module")
def term_fn(quantities):
    return lambda t: quantities(t)[0]


@pytest.fixture(scope="module")
def gradients(quantities):
    """d(term)/dt of every term at t = 0, all from one compiled reverse-mode Jacobian."""
    keys = [*(t.key for t in TERMS), "cls", "log_cls"]

    @jax.jit
    def grad(one_hot):  # one compiled backward pass, called once per term
        _, vjp = jax.vjp(lambda t: jnp.stack([quantities(t)[0][k] for k in keys]), 0.0)
        return vjp(one_hot)[0]

    eye = np.eye(len(keys))
    return {k: float(grad(jnp.asarray(eye[i]))) for i, k in enumerate(keys)}


def test_terms_are_their_formulas(term_fn, ours):
    v = {k: float(x) for k, x in term_fn(0.0).items()}
    b, s = ours["bkg_shape"], ours["staterror_SR[2]"]
    np.testing.assert_allclose(v[TERMS[0].key], (b["sigma_theta"] - 1.0) ** 2, rtol=1e-10)
    np.testing.assert_allclose(v[TERMS[1].key], s["sigma_theta"], rtol=1e-10)
    np.testing.assert_allclose(v[TERMS[2].key], b["pull"] ** 2, rtol=1e-8)
    np.testing.assert_allclose(v[TERMS[3].key], abs(b["impact"]), rtol=1e-10)


@pytest.mark.parametrize("term", TERMS, ids=lambda t: t.key)
def test_gradients_match_finite_differences(term_fn, gradients, term):
    grad = gradients[term.key]
    fd = (float(term_fn(FD_STEP)[term.key]) - float(term_fn(-FD_STEP)[term.key])) / (2 * FD_STEP)
    assert abs(fd) > 1e-4  # a non-trivial dependence on the histograms
    np.testing.assert_allclose(grad, fd, rtol=RTOL_FD)


def test_log_cls_is_the_log_of_cls_with_its_gradient(term_fn, gradients):
    """log_cls (the CLs loss's fix for small CLs) against log(cls) and finite differences;
    its gradient is the CLs gradient divided by CLs."""
    v = term_fn(0.0)
    np.testing.assert_allclose(float(v["log_cls"]), np.log(float(v["cls"])), rtol=1e-12)
    fd = (float(term_fn(FD_STEP)["log_cls"]) - float(term_fn(-FD_STEP)["log_cls"])) / (2 * FD_STEP)
    assert abs(fd) > 1e-3
    np.testing.assert_allclose(gradients["log_cls"], fd, rtol=RTOL_FD)
    np.testing.assert_allclose(gradients["log_cls"], gradients["cls"] / float(v["cls"]), rtol=1e-8)


def test_log_cls_stays_finite_where_cls_underflows():
    """At q_A = 1600 (CLs ~ 1e-350, 0 in float64) log CLs = log 2 + log Phi(-40) (scipy)."""
    from scipy.special import log_ndtr

    q = jnp.asarray(1600.0, dtype=jnp.float64)
    got = losses.log_expected_cls(None, profiled=(q, None))
    assert float(losses.expected_cls(None, profiled=(q, None))) == 0.0
    np.testing.assert_allclose(float(got), np.log(2.0) + log_ndtr(-40.0), rtol=1e-12)


def test_keys_round_trip():
    for t in (*TERMS, NuisanceTerm("impact", "staterror_SR[0]", 0.5)):
        assert parse(t.key) == t
    assert parse("sigma_mu") is None and parse("other[x]") is None


def test_unknown_parameter_in_the_pipeline_is_named(pipe):
    with pytest.raises(ValueError, match="unknown parameter 'gamma'"):
        pipe.terms_from_sums({"histograms": histograms(0.0)}, ("sigma_theta[gamma]",))


# ---------------------------------------------------------------------------- config
BASE = """
data: {generator: blobs, n_per_blob: 50}
analysis:
  samples: [{name: signal, role: signal}, {name: background, role: background}]
  shape_systematics:
    - {name: bkg_shape, sample: background, up: background_up, down: background_down}
  channels: [{name: SR, bins: 2}]
observable: {hidden: [4]}
training:
  loss: %s
"""


def test_neos_objective_is_expressible():
    """a0 CLs + a1 sigma_mu + a2 (1 - sigma_gamma)^2, in a schedule too."""
    loss = "{cls: 1.0, sigma_mu: 0.5, sigma_theta: {name: bkg_shape, weight: 2.0, target: 1.0}}"
    cfg = load_config(text=BASE % loss)
    assert cfg.training.phases()[0].terms == {
        "cls": 1.0,
        "sigma_mu": 0.5,
        "sigma_theta[bkg_shape;target=1.0]": 2.0,
    }
    assert load_config(text=cfg.to_yaml()) == cfg
    phases = "[{terms: {bce: 1}, epochs: 2}, {terms: {cls: 1, impact: [{name: a}, {name: b}]}}]"
    cfg = load_config(text=BASE % phases)
    assert cfg.training.phases()[1].terms == {"cls": 1.0, "impact[a]": 1.0, "impact[b]": 1.0}
    assert cfg.training.phases()[1].epochs is None


@pytest.mark.parametrize(
    "loss, where, message",
    [
        ("{cls: 1, sigma_theta: 1.0}", "training.loss", "needs a parameter"),
        ("{cls: 1, sigma_theta: {nam: g}}", "training.loss.sigma_theta.name", "missing"),
        ("{cls: 1, impact: [{name: g, weight: x}]}", "training.loss.impact.0.weight", "number"),
        (
            "[{terms: {pull_theta: {name: g, tar: 1}}}]",
            "training.loss.0.terms.pull_theta.tar",
            "unknown key",
        ),
        ("{cls: {name: g}}", "training.loss", "takes a weight"),
    ],
)
def test_bad_terms_name_their_yaml_path(loss, where, message):
    with pytest.raises(ConfigError) as err:
        load_config(text=BASE % loss)
    assert err.value.where == where
    assert message in str(err.value)
    assert "<" not in str(err.value).split("fix")[0].replace("<parameter>", "")


@pytest.mark.parametrize("name, where", [("gamma", "training.loss.sigma_theta.name"),
                                         ("mu", "training.loss.sigma_theta.name")])  # fmt: skip
def test_unknown_parameter_is_a_config_error(name, where):
    from diffhep.runs.prepare import prepare

    cfg = load_config(text=BASE % f"{{cls: 1, sigma_theta: {{name: {name}}}}}")
    with pytest.raises(ConfigError, match="not a nuisance parameter") as err:
        prepare(cfg, "cfg.yaml")
    assert err.value.where == where
    assert "bkg_shape" in err.value.fix
