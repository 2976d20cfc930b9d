"""The minimum background per bin of the likelihood losses (``histogram.min_background``,
:meth:`Pipeline.floor_background`): bookkeeping against a hand computation, and a toy where
the unfloored expected-CLs loss is minimised by a bin holding signal and no background MC."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from diffhep.analysis.histograms import Binning
from diffhep.analysis.pipeline import Params, Pipeline
from diffhep.analysis.spec import Analysis, Channel, NormSystematic, ShapeSystematic
from diffhep.types import Events


def _hists(analysis, rng, **nominal):
    hists = {
        (ch.name, n): (rng.uniform(0.0, 3.0, ch.bins), rng.uniform(0.0, 1.0, ch.bins))
        for ch in analysis.channels
        for n in analysis.event_sets
    }
    for n, sumw in nominal.items():
        hists[("SR", n)] = (np.asarray(sumw), hists[("SR", n)][1])
    return analysis.with_derived(hists)


def test_floor_background_against_hand_computation():
    analysis = Analysis(
        samples=("sig", "b1", "b2"),
        signal="sig",
        channels=(Channel("SR", 4), Channel("CR", 3)),
        shape_systematics=(
            ShapeSystematic("two_sided", "b1", "b1_up", "b1_down"),
            ShapeSystematic("mirrored", "b1", "b1_m_up", "b1_m_down", symmetrize=True),
            ShapeSystematic("one_sided", "b2", "b2_up", "b2"),
        ),
    )
    rng = np.random.default_rng(1)
    hists = _hists(analysis, rng, b1=[0.0, 0.5, 2.0, 9.0], b2=[0.0, 1.0, 0.5, 1.0])
    b_min = 2.5
    out = Pipeline(analysis, ("x",), min_background=b_min).floor_background(hists)
    for ch in ("SR", "CR"):
        t1, t2 = (float(np.clip(np.sum(hists[(ch, n)][0]), 0, None)) for n in ("b1", "b2"))
        total = np.asarray(hists[(ch, "b1")][0]) + np.asarray(hists[(ch, "b2")][0])
        deficit = np.maximum(b_min - total, 0.0)
        added = {"b1": deficit * t1 / (t1 + t2), "b2": deficit * t2 / (t1 + t2)}
        sets = {
            "b1": ("b1", "b1_up", "b1_down", "b1_m_up", "b1_m_down"),
            "b2": ("b2", "b2_up"),
        }
        for sample, names in sets.items():
            for n in names:
                want = np.asarray(hists[(ch, n)][0]) + added[sample]
                np.testing.assert_allclose(out[(ch, n)][0], want, rtol=1e-12)
                np.testing.assert_array_equal(out[(ch, n)][1], hists[(ch, n)][1])
        np.testing.assert_array_equal(out[(ch, "sig")][0], hists[(ch, "sig")][0])
        floored = np.asarray(out[(ch, "b1")][0]) + np.asarray(out[(ch, "b2")][0])
        np.testing.assert_allclose(floored, np.maximum(total, b_min), rtol=1e-12)
    # SR's first bin is below the floor; the last is not (and stays as it was)
    assert float(out[("SR", "b1")][0][3]) == 9.0
    # the symmetrised down template is still 2 x nominal - up
    np.testing.assert_allclose(
        out[("SR", "b1_m_down")][0], 2 * out[("SR", "b1")][0] - out[("SR", "b1_m_up")][0]
    )
    assert Pipeline(analysis, ("x",)).floor_background(hists) is hists
    with pytest.raises(ValueError, match="min_background"):
        Pipeline(analysis, ("x",), min_background=-1.0)


def test_floor_removes_the_empty_background_bin_optimum():
    """A cut t splits a feature into two bins; signal (20 expected events) sits above the
    background (1000 expected events from 500 MC events of weight 2). Brute force over t:
    without a floor the expected-CLs loss is smallest with the cut above the last background
    MC event (a bin with signal and a soft background near 0: a statistical artefact); with
    a floor of 3 MC-event weights (the 95% CL upper limit on a bin without MC events) the
    best cut keeps background MC in the signal bin."""
    rng = np.random.default_rng(0)
    w_mc = 2.0
    events = {
        "sig": Events(rng.normal(2.0, 1.0, (500, 1)), np.full(500, 0.04)),
        "bkg": Events(rng.normal(0.0, 1.0, (500, 1)), np.full(500, w_mc)),
    }
    analysis = Analysis(
        ("sig", "bkg"),
        "sig",
        (Channel("SR", 2, observable="x", edges=(-5.0, 0.0, 5.0)),),
        norm_systematics=(NormSystematic("bkg_norm", ("bkg",), 0.95, 1.05),),
    )
    cuts = np.arange(1.8, 3.25, 0.1)
    x_bkg, x_sig = events["bkg"].x[:, 0], events["sig"].x[:, 0]
    best = {}
    for b_min in (0.0, 3 * w_mc):
        pipe = Pipeline(analysis, ("x",), min_background=b_min)
        loss = jax.jit(lambda p, pipe=pipe: pipe.loss_terms(p, events, ("cls",), 0.02)["cls"])

        def params(t):
            return Params(None, (Binning.from_edges([-5.0, t, 5.0], trainable=False),))

        values = np.array([float(loss(params(t))) for t in cuts])
        assert np.all(np.isfinite(values))
        t = cuts[int(np.argmin(values))]
        soft_b = pipe.histograms(params(t), events, bandwidth=0.02)[("SR", "bkg")][0][1]
        best[b_min] = (t, int(np.sum(x_bkg > t)), int(np.sum(x_sig > t)), float(soft_b))
    t0, n_bkg0, n_sig0, soft0 = best[0.0]
    assert n_bkg0 == 0 and n_sig0 > 0 and soft0 < 0.05 * w_mc, best  # the artefact
    t1, n_bkg1, n_sig1, _ = best[3 * w_mc]
    assert n_bkg1 >= 1 and n_sig1 > n_sig0 and t1 < t0, best
