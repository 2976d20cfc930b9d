"""The layout of an analysis' histograms in its model (``diffhep.stats.layout``).

References: the pyhf JSON round trip the pipeline used before (``Analysis.workspace`` then
``Model.with_channels``) and a model built afresh from the written workspace JSON
(``Model.from_spec``, an independent walk of the spec). The analysis has every template
kind: three samples, staterror (mc_stat), two histosys (one symmetrised: up and down are one
event set), normsys (one symmetrised), three channels (the score, a feature in a region, a
count) and selection cuts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhep import Model
from diffhep.analysis.cuts import CutSpec
from diffhep.analysis.pipeline import Events, Pipeline
from diffhep.analysis.spec import Analysis, Channel, NormSystematic, ShapeSystematic
from diffhep.nn.training import _make_step
from diffhep.runs.config import load_config
from diffhep.runs.prepare import DEMO_CONFIG, _analysis
from diffhep.runs.train import _loss_fn
from diffhep.stats.layout import Layout

ROOT = Path(__file__).parents[1]
CONFIGS = {  # the demo, the ntuples example (histosys on two samples, normsys, mc_stat), INFERNO
    "demo": DEMO_CONFIG,
    "ntuples": ROOT / "examples" / "ntuples" / "analysis.yaml",
    "inferno": ROOT / "examples" / "inferno.yaml",
}

FEATURES = ("x0", "x1")
ARRAYS = ("nominal", "histosys_lo", "histosys_hi", "normsys_lo", "normsys_hi")
ARRAYS += ("staterror_uncrt", "shapesys_uncrt")
BLOBS = (  # event set, mean, expected yield
    ("signal", (-1.0, 1.0), 20.0),
    ("background", (1.0, -1.0), 100.0),
    ("other", (0.0, 0.0), 40.0),
    ("background_up", (1.5, -0.5), 110.0),
    ("background_down", (0.5, -1.5), 90.0),
    ("other_sym", (0.3, 0.2), 45.0),
)
ANALYSIS = Analysis(
    samples=("signal", "background", "other"),
    signal="signal",
    channels=(
        Channel("SR", 3, edges=(0.0, 0.48, 0.52, 1.0)),
        Channel("CR", 4, "x0", edges=(-4.0, -0.5, 0.5, 1.0, 4.0), region=(("x1", -10.0, 0.5),)),
        Channel("CNT", 1, "count", region=(("x1", 0.5, 10.0),)),
    ),
    shape_systematics=(
        ShapeSystematic("bkg_shape", "background", "background_up", "background_down"),
        ShapeSystematic("other_sym", "other", "other_sym", "other_sym"),
    ),
    norm_systematics=(
        NormSystematic("bkg_norm", ("background", "other"), 0.9, 1.15),
        NormSystematic("sig_sym", ("signal",), 1.1, 1.1),
    ),
    mc_stat=True,
)
CUTS = (CutSpec("x0", ">", init=-2.5), CutSpec("x1", "window", init=(-3.0, 3.0)))


@pytest.fixture(scope="module", autouse=True)
def x64_fast_compilation():
    """Float64, and XLA without its expensive passes (compilation dominates); restored."""
    saved = jax.config.read("jax_enable_x64"), jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_enable_x64", saved[0])
    jax.config.update("jax_disable_most_optimizations", saved[1])


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    events = {
        n: Events(
            jnp.asarray(rng.normal(m, 1.0, (60, 2))),
            jnp.asarray(rng.uniform(0.5, 1.5, 60) * y / 60),
        )
        for n, m, y in BLOBS
    }
    pipe = Pipeline(ANALYSIS, FEATURES)
    params = pipe.init_params(
        events, key=jax.random.key(1), hidden=(4,), dtype=jnp.float64, cuts=CUTS
    )
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_array(a) and a.dtype == jnp.float32 else a,
        params,
    )
    return pipe, params, events


@pytest.fixture(scope="module")
def histograms(setup):
    """Hard and soft (relaxed cuts) histograms, as numpy arrays."""
    pipe, params, events = setup
    return {
        "hard": jax.device_get(pipe.histograms(params, events)),
        "soft": jax.device_get(pipe.histograms(params, events, 0.3, slope=2.0)),
    }


def _round_trip(pipe, h):
    """The pipeline's former path: pyhf JSON dict of the histograms, parsed back by name."""
    return pipe.template.with_channels(pipe.analysis.workspace(h)["channels"])


def _from_json(pipe, h):
    """A model built afresh from the written workspace JSON."""
    lists = {k: (np.asarray(a).tolist(), np.asarray(b).tolist()) for k, (a, b) in h.items()}
    spec = json.loads(json.dumps(pipe.analysis.workspace(lists)))
    return Model.from_spec(spec, poi_name=pipe.analysis.poi)


def _assert_models_equal(got, want, rtol=0.0):
    for name in ARRAYS:
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        assert a.dtype == b.dtype, name
        if rtol:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.tables == want.tables
    assert got.config == want.config


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_fill_equals_the_json_round_trip(setup, histograms, kind):
    pipe, _, _ = setup
    h = histograms[kind]
    filled = pipe.layout.fill(pipe.template, h)
    _assert_models_equal(filled, _round_trip(pipe, h))
    fresh = _from_json(pipe, h)
    # pyhf fixes the gamma of a bin without MC uncertainty (an empty bin of the hard
    # histograms): a structure that follows the data, which a template (and the round trip)
    # keeps; the rest of the configuration agrees
    fixed = dataclasses.replace(fresh.config, fixed=filled.config.fixed)
    fresh = dataclasses.replace(fresh, config=fixed)
    _assert_models_equal(filled, fresh, rtol=1e-15)
    # every template kind is filled with non-trivial values
    assert np.all(np.asarray(filled.staterror_uncrt).sum(axis=1) > 0)
    assert not np.array_equal(filled.histosys_lo, filled.histosys_hi)
    assert filled.config.symmetric == ("other_sym", "sig_sym")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_templates_equal_the_json_round_trip(name):
    """The analyses of the shipped configs: the layout's model is the round trip's, for
    concrete and traced histograms (positive, random, with sumw2)."""
    analysis = _analysis(load_config(CONFIGS[name]))
    features = {f for ch in analysis.channels for f, *_ in ch.region}
    features |= {ch.observable for ch in analysis.channels} - {"nn", "count"}
    pipe = Pipeline(analysis, sorted(features) or ("x0",))
    rng = np.random.default_rng(7)
    h = {
        (ch.name, n): (rng.uniform(0.5, 5.0, ch.bins), rng.uniform(0.1, 1.0, ch.bins))
        for ch in analysis.channels
        for n in analysis.event_sets
    }
    _assert_models_equal(pipe.model(h), _round_trip(pipe, h))
    traced = eqx.filter_jit(pipe.model)(jax.tree.map(jnp.asarray, h))
    _assert_models_equal(traced, pipe.model(h))


def test_train_step_traces_once_without_json(setup):
    """The optimiser step (CLs loss, annealed bandwidth and slope) over several steps: traced
    once, and neither Analysis.workspace nor Model.with_channels is called while tracing."""
    import optax

    pipe, params, events = setup
    loss = eqx.debug.assert_max_traces(_loss_fn(pipe, {"cls": 1.0}), max_traces=1)
    opt = optax.adam(1e-3)
    step = _make_step(loss, opt)
    opt_state = opt.init(eqx.filter(params, eqx.is_inexact_array))

    def forbidden(*a, **k):
        raise AssertionError("pyhf JSON in the training step")

    values = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Analysis, "workspace", forbidden)
        mp.setattr(Model, "with_channels", forbidden)
        for i in range(3):
            hyper = {"bandwidth": jnp.asarray(0.3 / (i + 1)), "slope": jnp.asarray(2.0 + i)}
            params, opt_state, value, _, ok = step(params, opt_state, events, hyper)
            assert bool(ok)
            values.append(float(value))
    assert np.all(np.isfinite(values)) and len(set(values)) == 3


def test_fill_under_jit_equals_concrete_and_traces_once(setup, histograms):
    pipe, _, _ = setup

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def both(h):
        return pipe.model(h), _round_trip(pipe, h)

    for kind in ("hard", "soft"):
        h = jax.tree.map(jnp.asarray, histograms[kind])
        filled, trip = both(h)
        concrete = pipe.layout.fill(pipe.template, histograms[kind])
        _assert_models_equal(filled, concrete)
        for name in ARRAYS:  # the config of a traced round trip is the template's
            np.testing.assert_array_equal(getattr(filled, name), getattr(trip, name))


def _logpdf_at(model):
    """log L off the nominal point: normsys/histosys pulled, gammas away from 1, mu = 1.3."""
    cfg = model.config
    pars = np.asarray(cfg.init, dtype=float)
    for i, name in enumerate(cfg.par_names):
        if name == cfg.poi_name:
            pars[i] = 1.3
        elif name.startswith("staterror"):
            pars[i] = 1.0 + 0.01 * (i % 5)
        else:
            pars[i] = 0.3 - 0.2 * (i % 3)
    data = model.expected_data(jnp.asarray(cfg.init))
    return model.logpdf(jnp.asarray(pars), data)


def test_gradients_equal_the_json_round_trip(setup, histograms):
    pipe, _, _ = setup
    h = jax.tree.map(jnp.asarray, histograms["soft"])

    @eqx.filter_jit
    def grads(h):
        new = jax.value_and_grad(lambda hh: _logpdf_at(pipe.model(hh)))(h)
        old = jax.value_and_grad(lambda hh: _logpdf_at(_round_trip(pipe, hh)))(h)
        return new, old

    (v_new, g_new), (v_old, g_old) = grads(h)
    assert float(v_new) == pytest.approx(float(v_old), rel=1e-14)
    for key in h:
        for part in (0, 1):
            a, b = np.asarray(g_new[key][part]), np.asarray(g_old[key][part])
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=str(key))
    # every kind of histogram reaches the likelihood (sumw2 through the staterror widths)
    assert np.any(np.asarray(g_new[("SR", "background_up")][0]) != 0)
    assert np.any(np.asarray(g_new[("CR", "other")][1]) != 0)


def test_the_step_writes_no_json(setup):
    """The loss traces without Analysis.workspace or Model.with_channels."""
    pipe, params, events = setup

    def forbidden(*a, **k):
        raise AssertionError("pyhf JSON in the training step")

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(Analysis, "workspace", forbidden)
        mp.setattr(Model, "with_channels", forbidden)
        out = eqx.filter_jit(
            lambda p, ev: pipe.loss_terms(p, ev, ("sigma_mu",), jnp.asarray(0.3), jnp.asarray(2.0))
        )(params, events)
    finally:
        mp.undo()
    assert np.isfinite(float(out["sigma_mu"]))


def test_fill_rejects_missing_or_misshapen_histograms(setup, histograms):
    pipe, _, _ = setup
    h = dict(histograms["hard"])
    del h[("CR", "background_down")]
    with pytest.raises(ValueError, match="channel 'CR' and event set 'background_down'"):
        pipe.model(h)
    h = dict(histograms["hard"])
    h[("SR", "other")] = (np.ones(4), np.ones(3))
    with pytest.raises(
        ValueError, match=r"\('SR', 'other'\): sumw has shape \(4,\), expected \(3,\)"
    ):
        pipe.model(h)


def test_build_rejects_a_model_of_another_analysis():
    other = Analysis(("signal", "background"), "signal", (Channel("SR", 3),))
    small = Pipeline(other, FEATURES)
    with pytest.raises(ValueError, match="channel 'CR' of the analysis is not in the model"):
        Layout.build(ANALYSIS, small.template)
    with pytest.raises(
        ValueError,
        match=r"histosys \('bkg_shape', 'background'\) of the analysis is not in the model",
    ):
        Layout.build(
            Analysis(other.samples, "signal", other.channels, ANALYSIS.shape_systematics[:1]),
            small.template,
        )


_PICKLE_SCRIPT = """
import pickle, sys
sys.path.insert(0, {tests!r})
import test_layout as t
from diffhep.analysis.pipeline import Pipeline
sys.stdout.buffer.write(pickle.dumps(Pipeline(t.ANALYSIS, t.FEATURES).layout))
"""


def test_layout_pickles_by_value(setup, histograms):
    """Equal and of equal hash after pickling, also from a process with another string-hash
    seed (a cached hash must not travel), so a pickled pipeline reuses compiled steps."""
    pipe, _, _ = setup
    layout = pipe.layout
    copy = pickle.loads(pickle.dumps(layout))
    assert copy == layout and hash(copy) == hash(layout)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    script = _PICKLE_SCRIPT.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True)
    remote = pickle.loads(out.stdout)
    assert remote == layout and hash(remote) == hash(layout)
    other = pickle.loads(pickle.dumps(pipe))
    assert other.layout == layout
    _assert_models_equal(other.model(histograms["hard"]), pipe.model(histograms["hard"]))
