"""What the analysis config gained for a real analysis (issue 23): normfactors, several signal
samples (one chosen per run), observed data, control regions with their own filter and
observable, one-sided, symmetrised and feature-level (renamed branch) variations, and a
systematic written once for several samples.

Each field is checked where it ends up: the events (by hand, uproot + numpy), the written
``workspace.json`` of a tiny ``diffhep train`` run (by hand from the files), and the CLs of that
workspace in pyhf. Bad configs give a ConfigError naming the YAML path.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from diffhep.cli import main
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.prepare import _analysis, load_events, with_filters

FEATURES = ["met", "sum(Jet_btag > 0.5)", "sum(Jet_pt)"]
CR_EDGES = [0.0, 150.0, 300.0, 2000.0]


def _write(path, rng, n, scale):
    njet = rng.integers(1, 5, n)
    pt = rng.exponential(40 * scale, njet.sum()) + 20
    btag = rng.uniform(0, 1, njet.sum())
    counts = np.asarray(njet, dtype=np.int64)
    import awkward as ak

    jets = ak.zip(
        {
            "pt": ak.unflatten(pt.astype("f4"), counts),
            "pt_up": ak.unflatten((pt * 1.1).astype("f4"), counts),
            "btag": ak.unflatten(btag.astype("f4"), counts),
        }
    )
    data = {
        "met": rng.exponential(30 * scale, n).astype("f4"),
        "w": rng.normal(1.0, 0.3, n).astype("f4"),
        "w_up": rng.normal(1.1, 0.05, n).astype("f4"),
        "Jet": jets,
    }
    with uproot.recreate(path) as f:
        f.mktree("events", {k: v.type if k == "Jet" else v.dtype for k, v in data.items()})
        f["events"].extend(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("cfgfiles")
    rng = np.random.default_rng(11)
    for name, n, scale in [("sig_a", 400, 2.0), ("sig_b", 400, 3.0), ("ttbar", 1000, 1.0),
                           ("wjets", 600, 0.8), ("data", 250, 1.0)]:  # fmt: skip
        _write(out / f"{name}.root", rng, n, scale)
    return out


def _yaml(base):
    return f"""
seed: 1
data: {{base_dir: {base}, tree: events, features: {FEATURES}}}
analysis:
  samples:
    - {{name: sig_a, role: signal, files: [sig_a.root], weight: "0.05 * w"}}
    - {{name: sig_b, role: signal, files: [sig_b.root], weight: "0.05 * w"}}
    - {{name: ttbar, role: background, files: [ttbar.root], weight: "0.5 * w"}}
    - {{name: wjets, role: background, files: [wjets.root], weight: "0.3 * w"}}
    - {{name: data, role: data, files: [data.root]}}
  signal: sig_a
  normfactors: [{{name: k_ttbar, samples: [ttbar], nominal: 1.0, bounds: [0, 5]}}]
  shape_systematics:
    - {{name: jes, samples: [ttbar, wjets], up: {{columns: {{Jet_pt: Jet_pt_up}}}},
       down: {{symmetrize: true}}}}
    - {{name: wsf, sample: ttbar, up: {{weight: "0.5 * w * w_up"}}}}
  norm_systematics: [{{name: lumi, samples: [sig_a, sig_b, ttbar, wjets], lo: 0.98, hi: 1.02}}]
  mc_stat: true
  channels:
    - {{name: SR, bins: 1, filter: "sum(Jet_btag > 0.5) >= 2"}}
    - {{name: CR, bins: 3, observable: "sum(Jet_pt)", edges: {CR_EDGES},
       filter: "sum(Jet_btag > 0.5) < 2"}}
observable: {{hidden: [4]}}
training: {{epochs: 1, batch_size: 200, loss: bce}}
"""


def _by_hand(path, pt="Jet_pt", weight=None):
    """met, number of b-tags, sum of jet pT and the weight of every event of a file."""
    a = uproot.open(path)["events"].arrays(library="np")
    nb = np.array([np.sum(b > 0.5) for b in a["Jet_btag"]], dtype=float)
    ht = np.array([np.sum(p) for p in a[pt]], dtype=float)
    w = np.ones(len(nb)) if weight is None else weight(a)
    return a["met"].astype(float), nb, ht, w


def test_events_of_the_chosen_signal_and_a_renamed_branch_variation(files):
    cfg = load_config(text=_yaml(files))
    analysis = _analysis(cfg)
    assert analysis.samples == ("sig_a", "ttbar", "wjets") and analysis.signal == "sig_a"
    features, events = load_events(cfg, analysis)
    assert "sig_b" not in events and "data" not in events  # not read at all
    # the feature-level variation: the features re-evaluated on Jet_pt_up
    for sample in ("ttbar", "wjets"):
        _, nb, ht_up, _ = _by_hand(files / f"{sample}.root", pt="Jet_pt_up")
        np.testing.assert_allclose(events[f"{sample}_jes_up"].x[:, 2], ht_up, rtol=1e-6)
        np.testing.assert_allclose(events[f"{sample}_jes_up"].x[:, 1], nb)
        assert not np.allclose(events[sample].x[:, 2], ht_up)
    # one-sided and symmetrised: no events of their own
    names = {(s.name, s.sample): (s.up, s.down, s.symmetrize) for s in analysis.shape_systematics}
    assert names[("wsf", "ttbar")] == ("ttbar_wsf_up", "ttbar", False)
    assert names[("jes", "wjets")] == ("wjets_jes_up", "wjets_jes_down", True)
    assert "wjets_jes_down" not in events and "wjets_jes_down" in analysis.histogram_sets
    # the channel filters become region windows on the features
    regions = {c.name: c.region for c in with_filters(cfg, analysis, features).channels}
    assert regions["SR"][0][:2] == ("sum(Jet_btag > 0.5)", 2.0)
    assert regions["CR"][0][0] == "sum(Jet_btag > 0.5)" and regions["CR"][0][2] == 2.0


@pytest.fixture(scope="module")
def prepared(files):
    """A run's workspace without training (the untrained observable): prepare, then the
    workspace and observed CLs as ``diffhep train`` writes them (runs.evaluate)."""
    from diffhep.runs.evaluate import observed_summary, run_workspace
    from diffhep.runs.prepare import prepare

    cfg = load_config(text=_yaml(files), overrides=["analysis.signal=sig_b"])
    pipe, parts, params = prepare(cfg)
    ws = json.loads(json.dumps(run_workspace(pipe, params, parts)))  # as written
    return ws, observed_summary(ws, parts["observed"])


def _channel(ws, name):
    return next(c for c in ws["channels"] if c["name"] == name)


def _mods(ws, channel, sample):
    s = next(s for s in _channel(ws, channel)["samples"] if s["name"] == sample)
    return s, {(m["name"], m["type"]): m["data"] for m in s["modifiers"]}


def _check_fields(ws, files):
    for ch in ("SR", "CR"):
        assert [s["name"] for s in _channel(ws, ch)["samples"]] == ["sig_b", "ttbar", "wjets"]
        _, mods = _mods(ws, ch, "sig_b")
        assert ("mu", "normfactor") in mods and ("lumi", "normsys") in mods
        tt, mods = _mods(ws, ch, "ttbar")
        assert mods[("k_ttbar", "normfactor")] is None
        # one-sided: down = nominal; symmetrised: down = 2 nominal - up
        assert mods[("wsf", "histosys")]["lo_data"] == tt["data"]
        assert mods[("wsf", "histosys")]["hi_data"] != tt["data"]
        jes = mods[("jes", "histosys")]
        np.testing.assert_allclose(
            jes["lo_data"], 2 * np.array(tt["data"]) - np.array(jes["hi_data"]), atol=1e-9
        )
        _, wmods = _mods(ws, ch, "wjets")  # one systematic written for two samples
        assert ("jes", "histosys") in wmods and ("k_ttbar", "normfactor") not in wmods
    params = ws["measurements"][0]["config"]["parameters"]
    assert params == [{"name": "k_ttbar", "inits": [1.0], "bounds": [[0.0, 5.0]]}]
    # observations: every data event (not a split), by hand from the file
    _, nb, ht, _ = _by_hand(files / "data.root")
    obs = {o["name"]: o["data"] for o in ws["observations"]}
    assert sum(obs["SR"]) == pytest.approx(np.sum(nb >= 2))
    expected, _ = np.histogram(ht[nb < 2], bins=CR_EDGES)
    np.testing.assert_allclose(obs["CR"], expected)


def _pyhf_cls(ws):
    """pyhf's observed CLs (mu = 1, qtilde) of a workspace (the guarded oracle)."""
    import pyhf

    import oracle

    w = pyhf.Workspace(ws)
    model = w.model()
    return float(oracle.hypotest(1.0, w.data(model), model, test_stat="qtilde"))


def test_workspace_has_every_new_field(prepared, files):
    ws, observed = prepared
    _check_fields(ws, files)
    assert observed["observed_events"] == 250 and observed["observed_cls_converged"]


def test_workspace_cls_equals_pyhf(prepared):
    ws, observed = prepared
    assert 0 < observed["observed_cls"] < 1
    assert observed["observed_cls"] == pytest.approx(_pyhf_cls(ws), rel=1e-4, abs=1e-7)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::diffhep.weights.weighting.NetYieldWarning")  # tiny sample
def test_train_writes_the_fields_and_pyhf_agrees(files, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFHEP_REPORT_DIAGNOSTICS", "1")  # the report's fit diagnostics too
    out = tmp_path / "r"
    cfg_file = tmp_path / "analysis.yaml"
    cfg_file.write_text(_yaml(files))
    res = CliRunner().invoke(
        main, ["train", str(cfg_file), "--out", str(out), "--no-progress", "--signal", "sig_b"]
    )
    assert res.exit_code == 0, res.output
    assert (out / "config.yaml").read_text().count("signal: sig_b") == 1  # --signal
    ws = json.loads((out / "workspace.json").read_text())
    _check_fields(ws, files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["observed_events"] == 250
    assert summary["observed_cls"] == pytest.approx(_pyhf_cls(ws), rel=1e-4, abs=1e-7)
    # the report's fit diagnostics (issue 22) fit the observed data, not the Asimov data
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["data"] == "observed"
    for o in ws["observations"]:
        assert diag["yields"]["postfit"][o["name"]]["data"] == o["data"]


BASE = """
data: {features: [met, nb]}
analysis:
  samples:
    - {name: s1, role: signal, files: [s1.root]}
    - {name: s2, role: signal, files: [s2.root]}
    - {name: tt, role: background, files: [tt.root]}
  signal: s1
  channels: [{name: SR, bins: 2}]
"""
# (data.generator is ignored where samples have files; it lets a case drop the files)


@pytest.mark.parametrize(
    "change, message",
    [
        ("analysis.signal=null", "analysis.signal: several signal samples (s1, s2)"),
        ("analysis.signal=zz", "analysis.signal: 'zz' is not a signal sample; use one of s1, s2"),
        (
            "analysis.samples=[{name: s1, role: signal}, {name: tt, role: background}, "
            "{name: d, role: data}]",
            "analysis.samples[2] ('d'): a 'data' sample is read from files",
        ),
        (
            "analysis.samples=[{name: s1, role: signal, files: [a]}, {name: d1, role: data, "
            "files: [a]}, {name: d2, role: data, files: [a]}]",
            "analysis.samples: several samples with role 'data' (d1, d2)",
        ),
        (
            "analysis.normfactors=[{name: k, samples: [nope]}]",
            "analysis.normfactors[0] ('k'): unknown sample 'nope'",
        ),
        (
            "analysis.normfactors=[{name: k, samples: [tt], bounds: [2, 1]}]",
            "normfactor 'k': bounds need low < high",
        ),
        ("analysis.normfactors=[{name: mu, samples: [tt]}]", "'mu' is the POI's name"),
        (
            "analysis.shape_systematics=[{name: j, samples: [tt, s1], up: tt_up}]",
            "up names one event set, which cannot vary several samples",
        ),
        (
            "analysis.shape_systematics=[{name: j, sample: tt, samples: [tt], up: {weight: w}}]",
            "give either 'sample' or 'samples'",
        ),
        (
            "analysis.shape_systematics=[{name: j, sample: tt, up: {weight: w}, "
            "down: {symmetrize: true, weight: w}}]",
            "a symmetrised down has no other keys",
        ),
        (
            "analysis.shape_systematics=[{name: j, sample: tt, up: {columns: {'Jet_pt': '1x'}}}]",
            "analysis.shape_systematics[0].up.columns",
        ),
        ("analysis.channels.0.filter='nb >= '", "analysis.channels[0].filter: cannot parse"),
    ],
)
def test_bad_config_names_the_path(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(text=BASE, overrides=[change, "data.generator=blobs"])


def test_a_channel_filter_outside_the_features_names_the_field(files):
    cfg = load_config(text=_yaml(files), overrides=["analysis.channels.1.filter='num(Jet_pt) > 2'"])
    features, _ = ("met", "sum(Jet_btag > 0.5)", "sum(Jet_pt)"), None
    with pytest.raises(ConfigError, match=r"'num\(Jet_pt\)' is not a feature") as info:
        with_filters(cfg, _analysis(cfg), features)
    assert info.value.where == "analysis.channels[1].filter"
    assert "sum(Jet_pt)" in info.value.fix


def test_cli_bad_config_exits_2(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(BASE)
    res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "o"),
                                    "--signal", "zz"])  # fmt: skip
    assert res.exit_code == 2 and "analysis.signal" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()
