"""Streamed runs end to end (training.chunk_events): ``diffhep train`` through the CLI names
the artefacts it writes (no plots/), ``diffhep evaluate`` of a streamed run evaluates it
streamed (the numbers of the training's summary, not those of an in-memory split), the
in-memory restore refuses it (naming the option), and an interrupted run resumes to the
numbers of an uninterrupted one."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import diffhep
from diffhep.cli import main
from diffhep.problems.ttbar_resonance import generate
from diffhep.runs import streaming
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.prepare import restore_run
from diffhep.runs.train import train_run
from test_streaming import CONFIG

diffhep.enable_x64()

SMALL = ["training.epochs=2", "training.batch_size=500", "training.chunk_events=600"]


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
    sets = [f"data.base_dir={files}", *SMALL]
    args = ["train", str(d / "config.yaml"), "--out", str(d / "run"), "--no-progress",
            *(a for s in sets for a in ("--set", s))]  # fmt: skip
    env = {"DIFFHEP_REPORT_DIAGNOSTICS": "0", "DIFFHEP_NO_WORKER": "1"}
    result = CliRunner().invoke(main, args, env={**os.environ, **env})
    return d / "run", result


def test_cli_train_streamed_names_what_it_wrote(cli_run):
    run, result = cli_run
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("run directory:"))
    assert "plots/" not in line.split(";")[0] and not (run / "plots").exists()
    assert "not written for streamed input" in line and "report.html" in line
    for name in ("summary.json", "workspace.json", "histograms.json", "model.eqx"):
        assert name in line and (run / name).is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["streamed"]["chunk_events"] == 600
    assert summary["streamed"]["events_per_second_last_epoch"] > 0


def test_evaluate_streamed_run_gives_the_training_numbers(cli_run):
    """``diffhep evaluate`` recomputes the streamed test histograms: the summary and the
    workspace of the training (an in-memory evaluation splits the events differently)."""
    run, _ = cli_run
    before = json.loads((run / "summary.json").read_text())
    ws_before = (run / "workspace.json").read_text()
    (run / "summary.json").unlink()
    result = CliRunner().invoke(main, ["evaluate", str(run)],
                                env={**os.environ, "DIFFHEP_NO_WORKER": "1"})  # fmt: skip
    assert result.exit_code == 0, result.output
    after = json.loads((run / "summary.json").read_text())
    for key in ("expected_cls", "z0", "sigma_mu", "yields", "test_events", "best_epoch",
                "epochs_run", "status", "median_step_seconds"):  # fmt: skip
        assert after[key] == before[key], key
    s0, s1 = before["streamed"], after["streamed"]
    assert s1["events_per_second_last_epoch"] == s0["events_per_second_last_epoch"]
    assert s1["training_events"] == s0["training_events"]
    assert (run / "workspace.json").read_text() == ws_before


def test_in_memory_restore_refuses_a_streamed_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(text=CONFIG).to_yaml())
    (run / "model.eqx").write_bytes(b"")
    with pytest.raises(ConfigError, match="streamed input") as exc:
        restore_run(run)
    assert exc.value.where == "training.chunk_events" and "diffhep evaluate" in exc.value.fix


@pytest.mark.slow
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
