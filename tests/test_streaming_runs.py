"""Streamed runs end to end (training.chunk_events): ``diffhep train`` through the CLI writes
every artefact of an in-memory run (plots/, report.html with the plots embedded, the cut flow
of selection.json: that of the same test events read whole), ``diffhep evaluate`` of a
streamed run evaluates it streamed (the numbers of the training's summary, not those of an
in-memory split; the ROC's AUC from binned scores close to the per-event one; the scatter
panels' subsample bounded), the in-memory restore refuses it (naming the option), and an
interrupted run resumes to the numbers of an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import diffhep
from diffhep.cli import main
from diffhep.plotting import runs as plotting
from diffhep.plotting.runs import roc_curve
from diffhep.problems.ttbar_resonance import generate
from diffhep.runs import streaming, streaming_finish
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.ntuples import feature_names
from diffhep.runs.prepare import restore_run
from diffhep.runs.train import train_run
from diffhep.weights.weighting import NetYieldWarning
from test_streaming import CONFIG, _reference

diffhep.enable_x64()

SMALL = ["training.epochs=2", "training.batch_size=500", "training.chunk_events=600"]
CUTS = "selection.cuts=[{feature: MET_pt}, {feature: 'Muon_pt[0] + Electron_pt[0]'}]"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("zp")
    generate(out, events=4000, seed=2, chunk_size=900, samples=["zprime_1500", "ttbar", "wjets"],
             data=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def cli_run(files, tmp_path_factory):
    """A streamed run trained through the CLI: (run directory, CLI result)."""
    d = tmp_path_factory.mktemp("cli")
    (d / "config.yaml").write_text(CONFIG)
    sets = [f"data.base_dir={files}", *SMALL, CUTS]
    args = ["train", str(d / "config.yaml"), "--out", str(d / "run"), "--no-progress",
            *(a for s in sets for a in ("--set", s))]  # fmt: skip
    env = {"DIFFHEP_REPORT_DIAGNOSTICS": "0", "DIFFHEP_NO_WORKER": "1"}
    with warnings.catch_warnings(record=True) as rec:
        # its validation SR bin 0 holds signal and no background at both epochs (val CLs
        # 6e-6, an artefact): flagged and warned about once (tests/test_untrusted_bins.py)
        warnings.simplefilter("always", NetYieldWarning)
        result = CliRunner().invoke(main, args, env={**os.environ, **env})
    texts = [str(w.message) for w in rec if issubclass(w.category, NetYieldWarning)]
    assert [t.split(":")[0] for t in texts] == ["validation-split histograms (" + str(
        d / "run" / "metrics.jsonl") + ")"], texts  # fmt: skip
    return d / "run", result


PLOTS = ("training.png", "cuts.png", "histograms_SR.png", "histograms_CR.png", "cutflow.png",
         "roc.png", "observable_vs_features.png")  # fmt: skip


def test_cli_train_streamed_writes_plots_and_report(cli_run):
    run, result = cli_run
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("run directory:"))
    for name in ("summary.json", "workspace.json", "histograms.json", "model.eqx", "plots/",
                 "report.html"):  # fmt: skip
        assert name in line and (run / name.rstrip("/")).exists(), name
    assert "not written" not in line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["streamed"]["chunk_events"] == 600
    assert summary["streamed"]["events_per_second_last_epoch"] > 0
    assert "not_written" not in summary["streamed"] and summary["status"] != "incomplete"
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == sorted(PLOTS)
    page = (run / "report.html").read_text()
    for name in PLOTS:  # embedded, not linked
        assert f'<img alt="{name}" src="data:image/png;base64,' in page, name
    assert "Cut flow (test set)" in page and "uniform random subsample" in page
    assert summary["streamed"]["plots"]["roc.png"].startswith("every selected test event")


def test_streamed_cut_flow_equals_the_cut_flow_of_the_test_events_in_memory(cli_run):
    """selection.json's cut flow, added up over the test chunks, equals a brute-force cut
    flow (numpy comparisons with the saved thresholds) of the same test events read whole."""
    run, _ = cli_run
    cfg = load_config(run / "config.yaml")
    doc = json.loads((run / "selection.json").read_text())
    assert json.loads((run / "summary.json").read_text())["selection"] == doc
    features = list(feature_names(cfg.data))
    events = _reference(cfg, 2)
    rows = doc["cutflow"]
    assert [r["cut"] for r in rows[1:]] == doc["expression"].split(" && ")
    samples = ["zprime_1500", "ttbar", "wjets"]
    assert [k for k in rows[0] if k != "cut"] == samples
    selects = False
    for s in samples:
        x, w = events[s].x, events[s].w
        keep = np.ones(len(w), bool)
        expected = [(len(w), np.sum(w))]
        for cut in doc["cuts"]:
            assert cut["direction"] == ">"
            keep &= x[:, features.index(cut["feature"])] > np.float32(cut["thresholds"][0])
            expected.append((int(keep.sum()), np.sum(w[keep])))
        assert expected[-1][0] > 0, s
        selects |= expected[-1][0] < expected[0][0]
        got = [(r[s]["events"], r[s]["yield"]) for r in rows]
        assert [g[0] for g in got] == [e[0] for e in expected], s
        np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], rtol=1e-12)
    assert selects  # the cuts remove background events


def test_evaluate_streamed_run_gives_the_training_numbers(cli_run, monkeypatch):
    """``diffhep evaluate`` recomputes the streamed test histograms: the summary and the
    workspace of the training (an in-memory evaluation splits the events differently). Its
    plots are drawn again: the ROC's AUC from binned scores is within 1e-3 of the per-event
    AUC of the same events; the observable-vs-features subsample holds at most ``k``
    events (here 50)."""
    run, _ = cli_run
    before = json.loads((run / "summary.json").read_text())
    ws_before = (run / "workspace.json").read_text()
    (run / "summary.json").unlink()
    for p in (run / "plots").glob("*.png"):
        p.unlink()
    seen = []

    class Spy(streaming_finish.TestPass):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self)

    monkeypatch.setattr(streaming_finish, "TestPass", Spy)
    monkeypatch.setattr(streaming_finish, "SUBSAMPLE", 50)
    result = CliRunner().invoke(main, ["evaluate", str(run)],
                                env={**os.environ, "DIFFHEP_NO_WORKER": "1"})  # fmt: skip
    assert result.exit_code == 0, result.output
    after = json.loads((run / "summary.json").read_text())
    for key in ("expected_cls", "z0", "sigma_mu", "yields", "test_events", "best_epoch",
                "epochs_run", "status", "median_step_seconds", "selection"):  # fmt: skip
        assert after[key] == before[key], key
    s0, s1 = before["streamed"], after["streamed"]
    assert s1["events_per_second_last_epoch"] == s0["events_per_second_last_epoch"]
    assert s1["training_events"] == s0["training_events"]
    assert (run / "workspace.json").read_text() == ws_before
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == sorted(PLOTS)
    (test,) = seen
    ev = test.plot_events()
    params = test.params
    picked, sizes = {}, []
    for s, e in _reference(load_config(run / "config.yaml"), 2).items():
        keep = np.asarray(params.selection.passes(e.x))
        if s in ev.events:
            assert test.selected[s] == keep.sum()
            assert len(ev.events[s][0]) == min(50, keep.sum()), s
            sizes.append(keep.sum())
        picked[s] = (np.asarray(params.observable(e.x[keep])), e.w[keep])
    assert max(sizes) > 50  # the subsample bounds one event set
    assert "at most 50 per event set" in s1["plots"]["observable_vs_features.png"]
    sb, wb = (np.concatenate([picked[n][i] for n in ("ttbar", "wjets")]) for i in (0, 1))
    *_, exact = roc_curve(*picked["zprime_1500"], sb, wb)
    *_, binned = roc_curve(*ev.roc)
    assert binned == pytest.approx(exact, abs=1e-3)


def test_a_failed_plot_leaves_a_streamed_run_incomplete(cli_run, tmp_path, monkeypatch):
    """As an in-memory run: the other artefacts are written, summary.json says "incomplete"
    and names the plot, the report shows it, ``diffhep evaluate`` exits 1 (on a copy)."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)

    def broken(*args, **kwargs):
        raise ValueError("no ROC today")

    monkeypatch.setattr(plotting, "plot_roc", broken)
    result = CliRunner().invoke(main, ["evaluate", str(run)],
                                env={**os.environ, "DIFFHEP_NO_WORKER": "1"})  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "incomplete" in result.output and "no ROC today" in result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "incomplete"
    assert summary["failed"] == {"plots/roc.png": "ValueError: no ROC today"}
    names = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert names == sorted(set(PLOTS) - {"roc.png"})
    assert "no ROC today" in (run / "report.html").read_text()


def test_in_memory_restore_refuses_a_streamed_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(text=CONFIG).to_yaml())
    (run / "model.eqx").write_bytes(b"")
    with pytest.raises(ConfigError, match="streamed input") as exc:
        restore_run(run)
    assert exc.value.where == "training.chunk_events" and "diffhep evaluate" in exc.value.fix


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::diffhep.weights.weighting.NetYieldWarning")  # tiny sample
def test_interrupted_streamed_run_resumes_to_the_same_numbers(files, tmp_path, monkeypatch):
    """Stopped after epoch 1's checkpoint (Ctrl-C in epoch 2's batches), then resumed: the
    numbers and the model of the uninterrupted run."""
    cfg = load_config(text=CONFIG, overrides=[f"data.base_dir={files}", *SMALL])
    full = train_run(cfg, tmp_path / "full", progress=False)
    batches = streaming.StreamData.batches

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return batches(self, epoch)

    monkeypatch.setattr(streaming.StreamData, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", progress=False)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["epoch"] == 1
    monkeypatch.setattr(streaming.StreamData, "batches", batches)
    resumed = train_run(cfg, tmp_path / "cut", progress=False)
    for key in ("expected_cls", "z0", "sigma_mu", "yields", "best_epoch", "epochs_run"):
        assert resumed[key] == full[key], key
    a, b = (tmp_path / "full", tmp_path / "cut")
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (a, b)]  # fmt: skip
    assert losses[0] == losses[1]
    assert (a / "model.eqx").read_bytes() == (b / "model.eqx").read_bytes()


@pytest.mark.parametrize("chunk_events", [None, 600])
def test_an_empty_split_names_the_split_fractions(files, tmp_path, chunk_events):
    """A validation split left without events by its fraction names the config field of the
    fraction and a fix, streamed (training.chunk_events) or in memory: exit 2, no traceback
    (it named neither)."""
    (tmp_path / "config.yaml").write_text(CONFIG)
    sets = [f"data.base_dir={files}", "training.epochs=1",
            "data.split={train: 0.999998, validation: 0.000001, test: 0.000001}",
            f"training.chunk_events={chunk_events or 'null'}"]  # fmt: skip
    args = ["train", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"),
            "--no-progress", *(a for s in sets for a in ("--set", s))]  # fmt: skip
    env = {"DIFFHEP_REPORT_DIAGNOSTICS": "0", "DIFFHEP_NO_WORKER": "1"}
    result = CliRunner().invoke(main, args, env={**os.environ, **env})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "the validation split is empty" in result.output, result.output
    assert "at data.split.validation: " in result.output, result.output
    assert "fix: " in result.output and "larger data.split.validation" in result.output
