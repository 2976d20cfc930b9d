# ruff: noqa: E501
"""Streamed training input (runs.streaming, training.chunk_events): the histograms accumulated
chunk by chunk equal the in-memory hard histograms of the same events (read whole, split by
the same per-entry labels); an epoch's batches are deterministic and hold every training
event once; a one-step epoch's loss and gradient equal the in-memory full-batch ones."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffhep
from diffhep.io.expressions import Expression
from diffhep.io.sources import expand, iterate
from diffhep.problems.ttbar_resonance import generate
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.ntuples import feature_names
from diffhep.runs.prepare import prepare_streamed
from diffhep.runs.streaming import read_groups, split_labels
from diffhep.types import Events

diffhep.enable_x64()

PRESEL = "sum(Jet_pt > 30) >= 4 && sum(Muon_pt > 30) + sum(Electron_pt > 30) == 1 && MET_pt > 20"
W = "genWeight * btagWeight_DeepCSVB"
CONFIG = f"""
seed: 4
data:
  tree: Events
  features: [MET_pt, "Muon_pt[0] + Electron_pt[0]", "sum(Jet_pt * (Jet_pt > 30))",
             "sum((Jet_pt > 30) & (Jet_btagDeepFlavB > 0.3))"]
analysis:
  samples:
    - {{name: zprime_1500, role: signal, files: ["zprime_1500_*.root"], weight: "{W}", filter: "{PRESEL}"}}
    - {{name: ttbar, role: background, files: ["ttbar_*.root"], weight: "{W}", filter: "{PRESEL}"}}
    - {{name: wjets, role: background, files: ["wjets_*.root"], weight: "{W}", filter: "{PRESEL}"}}
  shape_systematics:
    - {{name: jes, samples: [zprime_1500, ttbar, wjets],
       up: {{columns: {{Jet_pt: Jet_pt_jesAbsoluteUp}}}}, down: {{columns: {{Jet_pt: Jet_pt_jesAbsoluteDown}}}}}}
    - {{name: btag_b, samples: [ttbar, wjets],
       up: {{weight: "genWeight * btagWeight_DeepCSVB_bUp"}}, down: {{weight: "genWeight * btagWeight_DeepCSVB_bDown"}}}}
    - {{name: wjets_ht, sample: wjets, up: {{weight: "{W} * (0.9 + 0.1 * LHE_HT / 300)"}}, down: {{symmetrize: true}}}}
  norm_systematics: [{{name: lumi, samples: [zprime_1500, ttbar, wjets], lo: 0.975, hi: 1.025}}]
  channels:
    - {{name: SR, bins: 3, filter: "sum((Jet_pt > 30) & (Jet_btagDeepFlavB > 0.3)) >= 2"}}
    - {{name: CR, bins: 2, observable: "sum(Jet_pt * (Jet_pt > 30))", edges: [100, 500, 5000],
       filter: "sum((Jet_pt > 30) & (Jet_btagDeepFlavB > 0.3)) == 1"}}
observable: {{hidden: [8], kind: mlp, dtype: float64}}
histogram: {{min_background: 0}}
training: {{loss: cls, epochs: 1, batch_size: 400, chunk_events: 300}}
"""


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    out = tmp_path_factory.mktemp("zp")
    generate(out, events=5000, seed=2, chunk_size=900, samples=["zprime_1500", "ttbar", "wjets"],
             data=False)  # fmt: skip
    cfg = load_config(text=CONFIG, overrides=[f"data.base_dir={out}"])
    return cfg, *prepare_streamed(cfg)


def _reference(cfg, split):
    """Every event set's events of ``split`` read whole (one chunk per file), labelled by
    entry, with weights divided by the split's fraction of the set's events."""
    out = {}
    for g in read_groups(cfg):
        ren = {f: Expression(f).renamed(g.columns).text if g.columns else f
               for f in feature_names(cfg.data)}  # fmt: skip
        filt = Expression(g.filter).renamed(g.columns).text if g.columns else g.filter
        wexpr = {k: Expression(w).renamed(g.columns).text if g.columns else w
                 for k, w in g.weights.items()}  # fmt: skip
        xs, ws, labs = [], {k: [] for k in wexpr}, []
        for fi, path in enumerate(expand(list(g.files), cfg.data.base_dir)):
            (c,) = iterate(path, tree="Events",
                           expressions=[*ren.values(), filt, *wexpr.values()], step_size=10**9)  # fmt: skip
            keep = c[filt]
            labs.append(split_labels(cfg, g.sample, fi, np.arange(len(keep)))[keep])
            xs.append(np.stack([c[f][keep] for f in ren.values()], 1).astype(np.float32))
            for k, e in wexpr.items():
                ws[k].append(c[e][keep])
        lab = np.concatenate(labs)
        sel = lab == split
        for k in wexpr:
            out[k] = Events(
                np.concatenate(xs)[sel], np.concatenate(ws[k])[sel] * len(lab) / sel.sum()
            )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("split", [1, 2])
def test_accumulated_histograms_equal_in_memory(streamed, split):
    cfg, pipe, data, params = streamed
    got, fraction = data.histograms(params, split)
    ref_events = _reference(cfg, split)
    ev = {n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in ref_events.items()}
    ref = jax.device_get(pipe.histograms(params, ev))
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k][0], ref[k][0], rtol=1e-10, atol=1e-12, err_msg=str(k))
        np.testing.assert_allclose(got[k][1], ref[k][1], rtol=1e-10, atol=1e-12, err_msg=str(k))
    assert float(np.sum(ref[("SR", "ttbar")][0])) > 0
    assert fraction == pytest.approx(1.0)  # no cuts


@pytest.mark.slow
def test_epoch_batches_deterministic_and_cover_the_training_events(streamed):
    cfg, _pipe, data, _params = streamed
    ref = _reference(cfg, 0)
    one = [jax.device_get(b) for b in data.batches(1)]
    again = [jax.device_get(b) for b in data.batches(1)]
    other = [jax.device_get(b) for b in data.batches(2)]
    assert len(one) == data.n_steps() > 1
    for a, b in zip(one, again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k].x, b[k].x)
            np.testing.assert_array_equal(a[k].w, b[k].w)
    assert not np.array_equal(one[0]["ttbar"].x, other[0]["ttbar"].x)
    for name in ("ttbar", "wjets_btag_b_up", "zprime_1500_jes_up"):
        n = len(ref[name].w)
        b = len(one[0][name].w)
        x = np.concatenate([s[name].x for s in one])[:n]
        w = np.concatenate([s[name].w for s in one])[:n] * b / n
        order_got, order_ref = np.lexsort(x.T), np.lexsort(ref[name].x.T)
        np.testing.assert_array_equal(x[order_got], ref[name].x[order_ref])
        np.testing.assert_allclose(w[order_got], ref[name].w[order_ref], rtol=1e-12)


@pytest.mark.slow
def test_one_step_epoch_equals_full_batch_loss_and_gradient(streamed):
    cfg, pipe, data, params = streamed
    data.cfg = cfg.model_copy(
        update={"training": cfg.training.model_copy(update={"batch_size": 10**6})}
    )
    try:
        (batch,) = list(data.batches(1))
    finally:
        data.cfg = cfg
    ref = {n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in _reference(cfg, 0).items()}

    def loss(p, ev):
        return pipe.loss_terms(p, ev, ("cls", "bce"), 0.5)["cls"]

    v1, g1 = eqx.filter_value_and_grad(loss)(params, batch)
    v2, g2 = eqx.filter_value_and_grad(loss)(params, ref)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-10)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-14)


def test_streamed_input_refuses_generators():
    cfg = load_config(text="data: {generator: blobs}\ntraining: {chunk_events: 1000}\n"
                      "analysis: {samples: [{name: signal, role: signal}, {name: background, "
                      "role: background}], channels: [{name: SR, bins: 2}]}")  # fmt: skip
    with pytest.raises(ConfigError, match="ntuple samples"):
        prepare_streamed(cfg)
