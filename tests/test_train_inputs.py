"""``diffhep train`` on bad input: exit 2 with the file, the field and the fix, never a
traceback (issue 18 items 11, 12, 15): network widths, bin edges, a damaged checkpoint, an
output path that cannot be written, samples without positive weight, and two runs into one
run directory (a lock)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from diffhep.cli import main
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.prepare import DEMO_CONFIG
from diffhep.writers import LOCK_FILE, RunLocked, run_lock
from test_apply import unwritable  # noqa: F401 (fixture)


def _train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args), "--no-progress"])


def _no_traceback(res):
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output


# ---------------------------------------------------------------- config values (item 11)
@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("observable.hidden=[0]", "observable.hidden.0"),
        ("observable.hidden=[16, -4]", "observable.hidden.1"),
        ("observable.object_hidden=[0]", "observable.object_hidden.0"),
    ],
)
def test_nonpositive_widths_are_config_errors(override, where):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, [override])
    assert where in str(err.value) and "greater than or equal to 1" in str(err.value)


@pytest.mark.parametrize("edges", [[0.0, 2.0, 1.0], [0.0, 1.0, 1.0], [2.0, 1.0, 0.0]])
def test_unsorted_edges_are_config_errors(edges):
    channel = f"[{{name: SR, bins: 2}}, {{name: CR, bins: 2, observable: x0, edges: {edges}}}]"
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, [f"analysis.channels={channel}"])
    text = str(err.value)
    assert "analysis.channels.1" in text and "strictly increasing" in text, text


def test_cli_bad_widths_exit_2(tmp_path):
    res = _train(DEMO_CONFIG, "--out", tmp_path / "r", "--set", "observable.hidden=[0, 8]")
    assert res.exit_code == 2 and "observable.hidden.0" in res.output, res.output
    _no_traceback(res)


# ---------------------------------------------------------------- damaged checkpoints
@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("checkpoint.eqx", lambda b: b[: len(b) // 2]),  # truncated
        ("checkpoint.eqx", lambda b: b""),
        ("checkpoint.json", lambda b: b""),
        ("checkpoint.json", lambda b: b"\x00\xffgarbage"),
        ("checkpoint.json", lambda b: b[: len(b) // 2]),  # truncated
        ("checkpoint.json", lambda b: b'{"epoch": "two"}'),  # missing and wrong fields
        ("checkpoint.json", lambda b: b"[1, 2]"),
    ],
)
def test_damaged_checkpoint_on_resume(run_copy, name, damage):
    path = run_copy / name
    path.write_bytes(damage(path.read_bytes()))
    res = _train(run_copy / "config.yaml", "--out", run_copy)
    assert res.exit_code == 2, res.output
    assert str(path) in res.output and "damaged" in res.output and "--no-resume" in res.output
    _no_traceback(res)
    assert not (run_copy / LOCK_FILE).exists()  # the lock is released on the error


def test_damaged_checkpoint_json_on_evaluate(run_copy):
    (run_copy / "checkpoint.json").write_text("{not json")
    res = CliRunner().invoke(main, ["evaluate", str(run_copy)])
    assert res.exit_code == 2, res.output
    assert str(run_copy / "checkpoint.json") in res.output and "damaged" in res.output
    _no_traceback(res)


# ---------------------------------------------------------------- --out (item 11)
def test_out_under_a_file_or_unwritable(tmp_path, unwritable):  # noqa: F811
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker / "run", blocker, unwritable / "run"):
        res = _train(DEMO_CONFIG, "--out", out)
        assert res.exit_code == 2, res.output
        assert "--out" in res.output and str(out) in res.output, res.output
        _no_traceback(res)
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------- weights (item 12)
def _npz_run(tmp_path, background_w):
    rng = np.random.default_rng(0)
    files = {}
    for name in ("signal", "background"):
        x = rng.normal(size=(200, 2))
        w = np.full(200, 0.1) if name == "signal" else background_w(200)
        np.savez(tmp_path / f"{name}.npz", x=x, w=w)
        files[name] = str(tmp_path / f"{name}.npz")
    doc = {
        "data": {"files": files},
        "analysis": {
            "samples": [
                {"name": "signal", "role": "signal"},
                {"name": "background", "role": "background"},
            ],
            "channels": [{"name": "SR", "bins": 2}],
        },
        "observable": {"hidden": [4]},
        "training": {"epochs": 1, "batch_size": 50},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "weights",
    [
        lambda n: np.full(n, -0.5),  # all negative
        lambda n: np.zeros(n),
        lambda n: np.tile([1.0, -1.0], n // 2),  # sums to zero
    ],
    ids=["negative", "zero", "zero-sum"],
)
def test_nonpositive_sample_weight_is_refused(tmp_path, weights):
    path = _npz_run(tmp_path, weights)
    res = _train(path, "--out", tmp_path / "run")
    assert res.exit_code == 2, res.output
    text = res.output
    assert "'background'" in text and "analysis.samples[1]" in text and "<= 0" in text, text
    _no_traceback(res)
    assert not (tmp_path / "run" / "summary.json").exists()


# ---------------------------------------------------------------- the run lock (item 15)
HOLD = textwrap.dedent(
    """
    import sys, time
    from diffhep.writers import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_second_run_into_a_locked_directory_exits_2(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = _train(DEMO_CONFIG, "--out", out, "--set", "training.epochs=1")
        assert res.exit_code == 2, res.output
        assert f"pid {holder.pid}" in res.output and str(out) in res.output, res.output
        _no_traceback(res)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # left alone
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with run_lock(out):  # the holder died: its lock is taken over
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": "x"}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):  # not re-entrant
            with run_lock(tmp_path):
                pass
    (tmp_path / LOCK_FILE).write_text("garbage")  # a damaged lock file, no process holds it
    with run_lock(tmp_path):
        pass


def test_a_finished_run_releases_its_lock(tiny_run):
    assert not (tiny_run / LOCK_FILE).exists()


def test_taking_over_a_stale_lock_warns(tmp_path, caplog):
    """The lock file of a run that died (its pid no longer runs on this host) is taken over
    with a warning naming the file and the dead pid; a free directory takes no warning."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    info = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(info))
    with caplog.at_level("WARNING", logger="diffhep"), run_lock(tmp_path):
        pass
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "diffhep"]
    assert str(tmp_path / LOCK_FILE) in msg and f"pid {dead.pid}" in msg, msg
    assert "no longer running" in msg and "taken over" in msg, msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffhep"), run_lock(tmp_path):
        pass
    assert not [r for r in caplog.records if r.name == "diffhep"]


class _Resumed(Exception):
    """Raised where a run that passed the config check prepares its data."""


def test_resume_compares_configs_as_values(run_copy, monkeypatch):
    """A run's config.yaml spelled differently (keys reordered, as an older diffhep wrote it)
    is the same config: the run resumes; a different config is refused, naming --no-resume.
    (The resumed run stops where it prepares its data, after the check: that a resumed run
    gives the uninterrupted run's numbers is test_training's test_resume_after_kill_...)"""
    from diffhep.runs import train as train_mod

    def resumed(cfg, file):
        raise _Resumed(file)

    monkeypatch.setattr(train_mod, "prepare", resumed)
    path = run_copy / "config.yaml"
    doc = yaml.safe_load(path.read_text())
    other = run_copy.parent / "other.yaml"
    other.write_text(yaml.safe_dump({**doc, "training": {**doc["training"], "epochs": 3}}))
    res = _train(other, "--out", run_copy)
    assert res.exit_code == 2 and "different configuration" in res.output, res.output
    assert "--no-resume" in res.output
    given = run_copy.parent / "given.yaml"
    shutil.copy(path, given)
    path.write_text(yaml.safe_dump(doc, sort_keys=True))
    res = _train(given, "--out", run_copy)
    assert isinstance(res.exception, _Resumed), res.output  # past the check, with its data
    assert str(res.exception.args[0]) == str(given)


def test_annealing_schedule():
    """Bandwidth linear, cut slope geometric from epoch 1 to the last; constant without a
    final value or with one epoch."""
    from diffhep.runs.train import annealing

    cfg = load_config(DEMO_CONFIG, ["training.epochs=5", "histogram.bandwidth=0.4",
                                    "histogram.bandwidth_final=0.2", "selection.slope=2",
                                    "selection.slope_final=50"])  # fmt: skip
    hyper = annealing(cfg)
    assert hyper(1) == pytest.approx({"bandwidth": 0.4, "slope": 2.0})
    assert hyper(5) == pytest.approx({"bandwidth": 0.2, "slope": 50.0})
    assert hyper(3) == pytest.approx({"bandwidth": 0.3, "slope": 10.0})  # sqrt(2 * 50)
    flat = annealing(load_config(DEMO_CONFIG, ["training.epochs=1", "histogram.bandwidth=0.4"]))
    assert flat(1) == pytest.approx({"bandwidth": 0.4, "slope": 5.0})


def test_study_resume_of_another_config_names_runs_dir(tmp_path):
    """A study's run directory holding a checkpoint of another config: the fix names the
    study's --runs-dir, not train's --out / --no-resume that study does not have."""
    run = tmp_path / "runs" / "a-seed0"
    run.mkdir(parents=True)
    (run / "checkpoint.json").write_text("{}")
    shutil.copy(DEMO_CONFIG, run / "config.yaml")
    args = ["study", "cuts", "--seeds", "1", "--epochs", "3", "--runs-dir", str(run.parent),
            "--out", str(tmp_path / "out")]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "different configuration" in res.output, res.output
    assert f"fix: use a new --runs-dir, or delete {run} to train it again" in res.output
    assert "--no-resume" not in res.output and "--out" not in res.output, res.output
