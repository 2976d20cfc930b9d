"""Ntuple samples in the config: event sets and systematics from ROOT files (checked against
uproot + numpy by hand), bad data through the command line (nothing written), and the
end-to-end example (examples/ntuples) shortened, with pyhf's CLs on its workspace.json."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from diffhep.analysis.pipeline import Events
from diffhep.cli import main
from diffhep.io.apply import root_branch_names
from diffhep.io.datasets import DataError
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.ntuples import feature_names
from diffhep.runs.prepare import _analysis, load_events, prepare, restore_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ntuples"
SHORT = [
    "training.epochs=1",
    "training.batch_size=400",
    "training.loss=bce",
    "observable.hidden=[8]",
    "observable.object_hidden=[8]",
    "observable.latent=4",
    "analysis.channels=[{name: SR, bins: 3}]",
]


def _example_module():
    spec = importlib.util.spec_from_file_location("make_ntuples", EXAMPLE / "make_ntuples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ntuples(tmp_path_factory):
    out = tmp_path_factory.mktemp("ntuples")
    _example_module().generate(out, events=600, seed=3)
    return out


def _cfg(ntuples, extra=()):
    return load_config(EXAMPLE / "analysis.yaml", [f"data.base_dir={ntuples}", *SHORT, *extra])


def _brute(ntuples, pattern, weight_branch="btag_sf"):
    """Features and weights of a sample by hand: uproot arrays, numpy, a Python loop."""
    xs, ws = [], []
    for path in sorted(ntuples.glob(pattern)):
        a = uproot.open(path)["events"].arrays(library="np")
        for i in range(len(a["met"])):
            pt = a["Jet_pt"][i]
            if len(pt) >= 2 and a["lep_pt"][i] > 30:
                lead = [pt[0], a["Jet_eta"][i][0], a["Jet_btag"][i][0], 1.0]
                xs.append([a["met"][i], *lead])
                ws.append(a["xsec"][i] * a["genWeight"][i] / a["sumw"][i] * a[weight_branch][i])
    return np.array(xs), np.array(ws)


def test_samples_and_weight_systematics_from_root_files(ntuples):
    cfg = _cfg(ntuples)
    features, events = load_events(cfg, _analysis(cfg))
    assert features[:2] == ("met", "lep_pt")
    assert features[5:9] == ("Jet_pt[0]", "Jet_eta[0]", "Jet_btag[0]", "num(Jet_pt) > 0")
    assert len(features) == 5 + 4 * 4
    cols = [0, 5, 6, 7, 8]  # met, leading jet (pt, eta, btag, mask)
    for name, pattern, branch in [
        ("signal", "signal.root", "btag_sf"),
        ("ttbar", "ttbar_*.root", "btag_sf"),
        ("ttbar_btag_up", "ttbar_*.root", "btag_sf_up"),
        ("wjets_btag_down", "wjets.root", "btag_sf_down"),
    ]:
        x, w = _brute(ntuples, pattern, branch)
        ev = events[name]
        np.testing.assert_allclose(ev.x[:, cols], x, rtol=1e-6)  # features are float32
        np.testing.assert_allclose(ev.w, w, rtol=1e-12)
    # 10-20% negative weights in ttbar (before the filter: 15% generated)
    gen = np.concatenate([uproot.open(p)["events"]["genWeight"].array(library="np")
                          for p in sorted(ntuples.glob("ttbar_*.root"))])  # fmt: skip
    assert 0.10 <= np.mean(gen < 0) <= 0.20 and np.mean(events["ttbar"].w < 0) > 0.05


def test_weight_variations_share_events_in_every_split(ntuples):
    _, parts, _ = prepare(_cfg(ntuples))
    for part in (parts["train"], parts["validation"], parts["test"]):
        nom, up = part["ttbar"], part["ttbar_btag_up"]
        np.testing.assert_array_equal(nom.x, up.x)
        ratio = up.w / nom.w  # = btag_sf_up / btag_sf per event: 1 + 0.1 nb over 1 + 0.03 nb
        nb = np.round((ratio - 1) / (0.10 - 0.03 * ratio), 6)
        assert np.allclose(nb, np.round(nb)) and nb.max() >= 1


def test_variation_from_other_files_and_filter(ntuples, tmp_path):
    text = f"""
data: {{base_dir: {ntuples}, features: [met]}}
analysis:
  samples:
    - {{name: s, role: signal, files: [signal.root], filter: "lep_pt > 30"}}
    - {{name: b, role: background, files: [wjets.root], weight: genWeight}}
  shape_systematics:
    - {{name: alt, sample: b, up: {{files: ["ttbar_0.root"]}}, down: {{filter: "met < 50"}}}}
  channels: [{{name: SR, bins: 2}}]
"""
    cfg = load_config(text=text)
    _, events = load_events(cfg, _analysis(cfg))
    t0 = uproot.open(ntuples / "ttbar_0.root")["events"].arrays(["met", "genWeight"], library="np")
    np.testing.assert_allclose(events["b_alt_up"].x[:, 0], t0["met"], rtol=1e-6)
    np.testing.assert_allclose(events["b_alt_up"].w, t0["genWeight"])
    wj = uproot.open(ntuples / "wjets.root")["events"]["met"].array(library="np")
    np.testing.assert_allclose(events["b_alt_down"].x[:, 0], wj[wj < 50], rtol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        ("data.features=[met, 'log(met']", "data.features[1]: cannot parse"),
        (
            "analysis.samples=[{name: s, role: signal, files: [a.root]}, {name: b, "
            "role: background}]",
            "sample(s) b need 'files'",
        ),
        ("observable.kind=deepsets", "needs data.collections"),
        (
            "analysis.shape_systematics=[{name: x, sample: background, up: {weight: w}, "
            "down: {weight: w}}]",
            "need an ntuple sample",
        ),
    ],
)
def test_config_errors_name_the_field(change, message):
    base = "analysis: {channels: [{name: SR, bins: 2}], shape_systematics: [],\n"
    base += "  samples: [{name: signal, role: signal}, {name: background, role: background}]}\n"
    base += "data: {generator: blobs, features: [met]}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(text=base, overrides=[change])


def _train_cli(cfg_file, out, *sets):
    args = ["train", str(cfg_file), "--out", str(out), "--no-progress"]
    for s in (*SHORT, *sets):
        args += ["--set", s]
    return CliRunner().invoke(main, args)


def test_bad_data_exits_2_and_writes_nothing(ntuples, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")
    cases = [
        ("data.features=[met, mett]", "'mett' not found", "signal.root"),
        ("data.tree=Events", "tree 'Events' not found", "signal.root"),
        ("data.base_dir=/nonexistent", "no such file", "/nonexistent/signal.root"),
        ("data.features=[met, 'log(lep_pt - 40)']", "NaN/inf values", "signal.root"),
    ]
    for k, (override, message, file) in enumerate(cases):
        out = tmp_path / f"run{k}"
        res = _train_cli(EXAMPLE / "analysis.yaml", out, f"data.base_dir={ntuples}", override)
        assert res.exit_code == 2, res.output
        assert message in res.output and file in res.output, res.output
        assert "Traceback" not in res.output
        assert not out.exists()


def test_empty_sample_after_filter(ntuples):
    cfg = _cfg(ntuples)
    cfg.analysis.samples[2].filter = "met < 0"
    with pytest.raises(DataError, match=r"sample 'wjets' is empty: 0 of 600 events pass"):
        load_events(cfg, _analysis(cfg))


def readme_commands() -> list[list[str]]:
    """The command lines of the first code block of examples/ntuples/README.md (the
    example as a user runs it, comments stripped)."""
    block = re.search(r"```[^\n]*\n(.*?)```", (EXAMPLE / "README.md").read_text(), re.S)
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _run_line(args, cwd: Path):
    """One README line, from the directory ``cwd`` (a copy of the repository's layout):
    ``python`` scripts in a subprocess, ``diffhep`` and ``pyhf`` through their click
    commands in this process (one JAX start). Returns ``(exit code, output)``."""
    if args[0] == "python":
        res = subprocess.run([sys.executable, *args[1:]], cwd=cwd, capture_output=True, text=True,
                             timeout=300, check=False)  # fmt: skip
        return res.returncode, res.stdout + res.stderr
    if args[0] == "diffhep":
        res = CliRunner().invoke(main, args[1:])
    elif args[0] == "pyhf":
        import pyhf.cli

        from oracle import pyhf_numpy

        with pyhf_numpy():
            res = CliRunner().invoke(pyhf.cli.cli, args[1:])
    else:
        raise AssertionError(f"examples/ntuples/README.md: unknown command {args[0]!r}")
    out = res.output + ("".join(traceback.format_exception(res.exc_info[1]))
                        if res.exc_info and res.exit_code not in (0, 1, 2) else "")  # fmt: skip
    return res.exit_code, out


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's commands, verbatim, in a copy of examples/ntuples (same relative
    paths): ``(directory, {command name: (exit code, output)}, warnings raised)``."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(EXAMPLE, root / "examples" / "ntuples", ignore=shutil.ignore_patterns("data"))
    outputs = {}
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")  # every warning a user sees (test_..._warns_of_nothing)
        warnings.simplefilter("ignore", DeprecationWarning)  # (hidden from users by Python)
        mp.chdir(root)
        for args in readme_commands():
            key = " ".join(args[:2])
            outputs[key] = _run_line(args, root)
            if outputs[key][0] != 0:
                break
    return root, outputs, raised


#: Every artefact of a run directory (README "What you get"); plots of this example.
ARTEFACTS = ["config.yaml", "metrics.jsonl", "checkpoint.eqx", "checkpoint.json", "model.eqx",
             "model.json", "workspace.json", "histograms.json", "summary.json", "model.onnx",
             "preprocess.json", "report.html"]  # fmt: skip
# (no fit diagnostics: DIFFHEP_REPORT_DIAGNOSTICS=0 in the tests, see tests/test_report.py)
PLOTS = ["training.png", "histograms_SR.png", "roc.png", "observable_vs_features.png"]


def test_readme_example_runs_and_writes_every_artefact(readme_run):
    """examples/ntuples/README.md as written: every command succeeds, the run directory
    has every artefact (plots on), report.html embeds every plot, the summary says finished."""
    root, outputs, _ = readme_run
    commands = readme_commands()
    assert [c[0] for c in commands[:2]] == ["python", "diffhep"]  # generate, then train
    for key, (code, out) in outputs.items():
        assert code == 0, f"{key}: exit {code}\n{out}"
    assert len(outputs) == len(commands)
    train = next(c for c in commands if c[:2] == ["diffhep", "train"])
    run = root / train[train.index("--out") + 1]
    for name in ARTEFACTS:
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == sorted(PLOTS)
    page = (run / "report.html").read_text()
    for name in PLOTS:
        assert f'alt="{name}"' in page, name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and "failed" not in summary
    assert 0.0 < summary["expected_cls"] < 1.0
    spec = json.loads((run / "workspace.json").read_text())
    mods = {
        s["name"]: sorted((m["name"], m["type"]) for m in s["modifiers"])
        for s in spec["channels"][0]["samples"]
    }
    assert ("btag", "histosys") in mods["ttbar"] and ("btag", "histosys") in mods["wjets"]
    assert ("wjets_xsec", "normsys") in mods["wjets"] and ("mu", "normfactor") in mods["signal"]
    assert ("staterror_SR", "staterror") in mods["ttbar"]


def test_readme_example_warns_of_nothing(readme_run):
    """A new user following examples/ntuples/README.md gets no warning: in particular no
    validation or test histogram has a bin with signal and no background (NetYieldWarning;
    the metrics of such an epoch are untrusted, tests/test_untrusted_bins.py), which the
    example had with 5,000 events per sample (a handful of background MC events in the
    signal-like bins)."""
    root, outputs, raised = readme_run
    assert not raised, "\n".join(f"{w.category.__name__}: {w.message}" for w in raised)
    for key, (_, out) in outputs.items():
        assert "warning" not in out.lower(), f"{key}:\n{out}"
    run = root / "runs" / "ntuples"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["val_trusted"] is True for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trusted"] and summary["best_epoch_trusted"] and "untrusted" not in summary


def test_readme_example_pyhf_cls_equals_diffhep(readme_run):
    """``pyhf cls`` (numpy, float64) on the example's workspace.json gives the expected CLs
    diffhep reports (the workspace's observations are the Asimov data)."""
    pytest.importorskip("pyhf")
    root, outputs, _ = readme_run
    [(code, out)] = [v for k, v in outputs.items() if k == "pyhf cls"]
    assert code == 0, out
    run = root / "runs" / "ntuples"
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(out)["CLs_obs"] == pytest.approx(summary["expected_cls"], rel=1e-5)


def _only_tree(path):
    f = uproot.open(path)
    [name] = [k for k, c in f.classnames(cycle=False).items() if c == "TTree"]
    return f[name]


def test_readme_example_apply_scores_and_bins_as_diffhep(readme_run, monkeypatch):
    """The Deep Sets event score is exported; the README's ``diffhep apply`` reads its
    features (Jet_pt[0], num(Jet_pt) > 0, ...) from the ROOT file and scores and bins the
    events as diffhep does."""
    root, _, _ = readme_run
    monkeypatch.chdir(root)  # the run's config names its files relative to the repository
    commands = readme_commands()
    [apply] = [c for c in commands if c[:2] == ["diffhep", "apply"]]
    run, inputs = root / apply[2], [root / a for a in apply[3:] if a.endswith(".root")]
    scored_dir = root / apply[apply.index("--out") + 1]
    _, pipe, _, params = restore_run(run)
    features = list(pipe.features)
    names = root_branch_names(pipe.features)
    assert names["Jet_pt[0]"] == "Jet_pt_0" and names["num(Jet_pt) > 0"] == "num_Jet_pt_0"
    for path in inputs:  # wjets: 0 to 4+ jets
        scored = _only_tree(scored_dir / path.name).arrays(library="np")
        x = np.column_stack([scored[names[f]] for f in pipe.features]).astype(np.float32)
        masks = x[:, [features.index(f"num(Jet_pt) > {j}") for j in (0, 3)]]
        assert set(masks[:, 0]) == set(masks[:, 1]) == {0.0, 1.0}
        score = np.asarray(params.observable(x))
        np.testing.assert_allclose(scored["diffhep_score"], score, rtol=0, atol=1e-6)
        # the analysis selection: the samples' filter (no cuts in the example); the weight
        raw = _only_tree(path).arrays(library="np")
        passes = np.array([len(p) >= 2 for p in raw["Jet_pt"]]) & (raw["lep_pt"] > 30)
        assert 0 < passes.sum() < len(passes)
        np.testing.assert_array_equal(scored["diffhep_selected"], passes)
        np.testing.assert_allclose(scored["diffhep_weight"], raw["xsec"] * raw["genWeight"]
                                   / raw["sumw"] * raw["btag_sf"], rtol=1e-12)  # fmt: skip
        w = np.random.default_rng(0).uniform(0.5, 1.5, len(x))
        hists = pipe.histograms(params, dict.fromkeys(pipe.analysis.event_sets,
                                                      Events(x[passes], w[passes])))  # fmt: skip
        b = scored["diffhep_bin_SR"]
        assert (b[~passes] == -1).all() and (b[passes] >= 0).all()
        expected = hists[("SR", "wjets")][0]
        counts = np.bincount(b[passes], weights=w[passes], minlength=len(expected))
        np.testing.assert_allclose(counts, expected, rtol=1e-12)


#: A config change that makes the data fail to read, and the config field its error names
FIELD_CASES = [
    ("data.features=[met, mett]", "data.features[1]"),
    ("analysis.samples.0.files=[nothere.root]", "analysis.samples[0].files"),
    ("analysis.samples.1.weight=xsec * genW", "analysis.samples[1].weight"),
    ("analysis.samples.2.filter=lepx > 30", "analysis.samples[2].filter"),
    ("data.collections.0.branches=[Jet_ptx, Jet_eta]", "data.collections[0].branches"),
    ("data.tree=Events", "data.tree"),
    ("analysis.shape_systematics.0.up.weight=genW", "analysis.shape_systematics[0].up.weight"),
    ("analysis.shape_systematics.0.up={files: [nothere.root]}",
     "analysis.shape_systematics[0].up.files"),
    ("analysis.shape_systematics.0.up={tree: Events}", "analysis.shape_systematics[0].up.tree"),
    ("data.features=[met, 'log(lep_pt - 40)']", "data.features[1]"),  # NaN of selected events
    ("analysis.samples.2.filter=met < 0", "analysis.samples[2].filter"),  # no event passes
]  # fmt: skip


@pytest.mark.parametrize(("override", "field"), FIELD_CASES)
def test_data_errors_name_the_config_field(ntuples, override, field):
    """A missing file, tree or branch names the config field that reads it (and the config
    file), not only the data file (a new user's trial)."""
    cfg = _cfg(ntuples, [override])
    with pytest.raises(DataError) as err:
        load_events(cfg, _analysis(cfg), "analysis.yaml")
    assert f"(config: {field} of analysis.yaml)" in str(err.value), str(err.value)


@pytest.mark.parametrize(("override", "field"), FIELD_CASES)
def test_streamed_data_errors_name_the_config_field(ntuples, override, field):
    """A streamed run (training.chunk_events) names the same config field as the in-memory
    read (a new user's trial: it named the data file only)."""
    from diffhep.runs.streaming import read_groups, scan

    cfg = _cfg(ntuples, [override, "training.chunk_events=300", "observable.kind=mlp"])
    with pytest.raises(DataError) as in_memory:
        load_events(cfg, _analysis(cfg), "analysis.yaml")
    with pytest.raises(DataError) as streamed:
        scan(cfg, _analysis(cfg), read_groups(cfg), feature_names(cfg.data), 300, "analysis.yaml")
    named = f"(config: {field} of analysis.yaml)"
    assert named in str(in_memory.value), str(in_memory.value)
    assert named in str(streamed.value), str(streamed.value)
    assert streamed.value.file == in_memory.value.file
