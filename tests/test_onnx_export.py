"""ONNX export of the event score: onnxruntime against diffhep to 1e-6 (score) and exactly
(selection, bin of every channel), for every activation, cut direction and channel kind."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import numpy as np
import onnxruntime as ort
import pytest

from diffhep.analysis.cuts import CutSpec
from diffhep.analysis.pipeline import Events, Pipeline
from diffhep.analysis.spec import Analysis, Channel
from diffhep.io.onnx.export import ExportError, export_onnx
from diffhep.nn.deepsets import DeepSetsObservable, Layout
from diffhep.nn.observables import ACTIVATIONS

FEATURES = ("x0", "x1", "x2")
CUTS = [CutSpec("x0", ">"), CutSpec("x1", "<"), CutSpec("x2", "window")]


def _events(n=3000, seed=1):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shift, y in (("sig", 0.8, 10.0), ("bkg", -0.3, 80.0)):
        x = rng.normal(shift, 1.2, size=(n, 3)).astype(np.float32)
        out[name] = Events(x, np.full(n, y / n))
    return out


def _pipeline(channels):
    return Pipeline(Analysis(("sig", "bkg"), "sig", channels), FEATURES)


def _params(pipe, events, activation="relu", dtype="float32", cuts=CUTS, seed=0):
    import jax.numpy as jnp

    params = pipe.init_params(
        events,
        key=jax.random.key(seed),
        hidden=(16, 8),
        activation=activation,
        dtype=jnp.float32 if dtype == "float32" else jnp.float64,
        cuts=cuts,
    )
    if params.observable is not None:  # larger weights: scores spread over [0, 1]
        params = eqx.tree_at(
            lambda p: p.observable.mlp,
            params,
            jax.tree.map(lambda a: 3 * a if eqx.is_array(a) else a, params.observable.mlp),
        )
    return params


def _run(path, x):
    sess = ort.InferenceSession(str(path / "model.onnx"))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"features": x}), strict=True))


def _reference_bins(pipe, params, x, score):
    """Brute force in numpy: hard cuts, regions ([lo, hi) in the feature dtype) and
    numpy.searchsorted bins (float64) with the overflow in the outer bins."""
    passed = np.ones(len(x), bool)
    for c in params.selection.cuts if params.selection is not None else ():
        t = np.asarray(c.thresholds, np.float32)
        v = x[:, c.index]
        passed &= {">": v > t[0], "<": v < t[-1], "window": (v > t[0]) & (v < t[-1])}[c.direction]
    out = {}
    for ch, b in zip(pipe.analysis.channels, params.binnings, strict=True):
        edges = np.asarray(b.edges(), np.float64)
        if ch.observable == "nn":
            v = score.astype(np.float64)
        elif ch.observable == "count":
            v = np.zeros(len(x))
        else:
            v = x[:, pipe.features.index(ch.observable)].astype(np.float64)
        idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
        mask = passed.copy()
        for f, lo, hi in ch.region:
            col = x[:, pipe.features.index(f)]
            mask &= (col >= np.float32(lo)) & (col < np.float32(hi))
        out[ch.name] = np.where(mask, idx, -1)
    return passed, out


def _check(tmp_path, pipe, params, events):
    prep = export_onnx(tmp_path, pipe, params)
    assert json.loads((tmp_path / "preprocess.json").read_text()) == prep
    assert prep["inputs"]["features"]["names"] == list(pipe.features)
    x = np.concatenate([np.asarray(events[n].x) for n in ("sig", "bkg")])
    got = _run(tmp_path, x)
    score = None
    if params.observable is not None:
        score = np.asarray(params.observable(x))
        assert got["score"].shape == score.shape
        np.testing.assert_allclose(got["score"], score, rtol=0, atol=1e-6)
        assert 0.05 < score.std()  # the check is not on a constant
    passed, bins = _reference_bins(pipe, params, x, score)
    np.testing.assert_array_equal(got["selected"], passed)
    assert 0.1 < passed.mean() < 0.95 or params.selection is None
    for ch in pipe.analysis.channels:
        ref, onnx_bins = bins[ch.name], got[f"bin_{ch.name}"]
        differ = ref != onnx_bins
        if differ.any():  # only allowed within float rounding of an edge
            edges = np.asarray(prep["channels"][0]["edges"])
            dist = np.min(np.abs(score[differ, None] - edges[None]), axis=1)
            assert (dist < 1e-6).all(), (ch.name, dist)
        assert differ.sum() <= 1
        assert len(np.unique(ref)) > 1
    # the bins reproduce diffhep's own hard histograms (weights of every event set)
    hists = pipe.histograms(params, events)
    for n in ("sig", "bkg"):
        xs = np.asarray(events[n].x)
        out = _run(tmp_path, xs)
        for ch in pipe.analysis.channels:
            b = out[f"bin_{ch.name}"]
            w = np.asarray(events[n].w)
            sums = np.bincount(b[b >= 0], weights=w[b >= 0], minlength=ch.bins)
            np.testing.assert_allclose(sums, hists[(ch.name, n)][0], rtol=1e-12, atol=1e-12)
    return prep


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_with_cuts_matches_onnxruntime(tmp_path, activation):
    events = _events()
    pipe = _pipeline(
        (
            Channel("SR", 5, "nn", (0.0, 0.3, 0.5, 0.6, 0.8, 1.0)),
            Channel("CR", 3, "x1", (-1.0, 0.0, 1.0, 2.0), (("x2", -0.5, 1.5),)),
        )
    )
    _check(tmp_path, pipe, _params(pipe, events, activation), events)


def test_float64_network_matches_onnxruntime(tmp_path):
    events = _events()
    pipe = _pipeline((Channel("SR", 4),))
    _check(tmp_path, pipe, _params(pipe, events, "tanh", "float64"), events)


def test_cuts_alone_and_count_channel(tmp_path):
    events = _events()
    pipe = _pipeline(
        (Channel("yield", 1, "count"), Channel("shape", 4, "x0", (-2.0, -1.0, 0.0, 1.0, 2.0)))
    )
    params = _params(pipe, events)
    assert params.observable is None
    _check(tmp_path, pipe, params, events)
    assert "score" not in _run(tmp_path, np.zeros((2, 3), np.float32))


def test_every_cut_direction_alone(tmp_path):
    events = _events()
    pipe = _pipeline((Channel("SR", 3),))
    for i, cut in enumerate(CUTS):
        d = tmp_path / str(i)
        d.mkdir()
        _check(d, pipe, _params(pipe, events, cuts=[cut]), events)


# 3 event features, then 3 jets x (pt, eta, mask): the layout of diffhep.runs.ntuples
DS_FEATURES = (
    *FEATURES,
    *(f for j in range(3) for f in (f"pt[{j}]", f"eta[{j}]", f"num(pt) > {j}")),
)
DS_LAYOUT = Layout(event=(0, 1, 2), collections=((3, 3, 2),))


def _ds_events(n=2000, seed=2):
    """Events with 0..3 jets (zero-padded as ntuples pads them), every multiplicity present."""
    out = _events(n, seed)
    rng = np.random.default_rng(seed + 10)
    for name, events in out.items():
        x = np.zeros((n, len(DS_FEATURES)), np.float32)
        x[:, :3] = events.x
        njets = np.arange(n) % 4  # 0, 1, 2, 3 jets
        for j in range(3):
            real = njets > j
            c = 3 + 3 * j
            pt = rng.exponential(40.0 if name == "sig" else 25.0, n) + 20.0
            x[:, c] = np.where(real, pt, 0.0)
            x[:, c + 1] = np.where(real, rng.normal(0, 1.5, n), 0.0)
            x[:, c + 2] = real
        out[name] = Events(x, events.w)
    return out


def _ds_params(pipe, events, pooling, dtype):
    import jax.numpy as jnp

    jdtype = jnp.float32 if dtype == "float32" else jnp.float64
    params = pipe.init_params(events, key=jax.random.key(0), hidden=(4,), dtype=jdtype, cuts=CUTS)
    x = np.concatenate([np.asarray(e.x) for e in events.values()])
    obs = DeepSetsObservable.create(
        x, DS_LAYOUT, hidden=(12, 6), object_hidden=(8, 5), latent=4, key=jax.random.key(3),
        pooling=pooling, activation="tanh", dtype=jdtype,
    )  # fmt: skip
    obs = eqx.tree_at(  # larger weights: scores spread over [0, 1]
        lambda o: o.rho, obs, jax.tree.map(lambda a: 3 * a if eqx.is_array(a) else a, obs.rho)
    )
    return eqx.tree_at(lambda p: p.observable, params, obs)


@pytest.mark.parametrize(
    ("pooling", "dtype"),
    [
        ("sum", "float32"),
        ("mean", "float64"),
        pytest.param("sum", "float64", marks=pytest.mark.slow),
        pytest.param("mean", "float32", marks=pytest.mark.slow),
    ],
)
def test_deepsets_with_cuts_matches_onnxruntime(tmp_path, pooling, dtype):
    events = _ds_events()
    pipe = Pipeline(
        Analysis(
            ("sig", "bkg"),
            "sig",
            (
                Channel("SR", 5, "nn", (0.0, 0.3, 0.5, 0.6, 0.8, 1.0)),
                Channel("CR", 3, "pt[0]", (0.0, 40.0, 80.0, 120.0), (("x2", -0.5, 1.5),)),
            ),
        ),
        DS_FEATURES,
    )
    params = _ds_params(pipe, events, pooling, dtype)
    prep = _check(tmp_path, pipe, params, events)
    assert prep["observable"]["type"] == "DeepSetsObservable"
    assert prep["observable"]["pooling"] == pooling
    # zero-jet and full events score as diffhep does, and the padded slots do not matter
    x = np.asarray(events["sig"].x)[:8]
    assert set(x[:, -1]) == {0.0, 1.0} and (x[:, 5] == 0).any()
    garbage = x.copy()
    for j in range(3):
        pad = garbage[:, 5 + 3 * j] == 0
        garbage[pad, 3 + 3 * j : 5 + 3 * j] = 1e3
    got = _run(tmp_path, garbage)["score"]
    np.testing.assert_allclose(got, np.asarray(params.observable(x)), rtol=0, atol=1e-6)
    assert len(_run(tmp_path, x[:0])["score"]) == 0


def test_unsupported_observable_is_a_clear_error_and_writes_nothing(tmp_path):
    events = _events(200)
    pipe = _pipeline((Channel("SR", 2),))
    params = _params(pipe, events, cuts=[])
    other = eqx.nn.Linear(3, "scalar", key=jax.random.key(0))
    params = eqx.tree_at(lambda p: p.observable, params, other)
    with pytest.raises(ExportError, match="no ONNX exporter for observables of type Linear"):
        export_onnx(tmp_path, pipe, params)
    assert list(tmp_path.iterdir()) == []
