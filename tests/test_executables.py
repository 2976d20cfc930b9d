"""Compiled kernels stored as XLA executables and prefetched at a command's start
(diffhep.stats.executables): the same bits as a compilation, nothing compiled or lowered when
one is stored, damaged files and wrong guesses never used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from diffhep.stats import executables, exported, workflows
from diffhep.stats.workspace import Workspace, example_spec

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh store, no prefetch, no kernel in memory."""
    directory = tmp_path / "store"
    monkeypatch.setattr(executables, "_STORE", directory)
    monkeypatch.setattr(executables, "_PREFETCH", None)
    monkeypatch.setattr(executables, "_CALLED", [])
    monkeypatch.setattr(exported, "_LOADED", {})
    return directory


def _cls(spec=None, poi=1.0):
    ws = Workspace(spec or example_spec())
    model, data = workflows._model_and_data(ws)
    r = exported.call(workflows._cls_kernel, model, workflows._f64(poi), data, test_stat="qtilde")
    return np.array([float(r["cls_obs"]), *np.asarray(r["cls_exp"], dtype=float)])


def _no_compilation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although the executable is stored")

    monkeypatch.setattr(exported, "_compile", refuse)
    monkeypatch.setattr(exported, "_jit", refuse)


def _loads_by_thread(monkeypatch) -> list[str]:
    threads: list[str] = []
    real = executables.load

    def counting(file):
        threads.append(threading.current_thread().name)
        return real(file)

    monkeypatch.setattr(executables, "load", counting)
    return threads


def test_a_stored_executable_gives_the_same_bits_without_compiling(store, monkeypatch):
    first = _cls()
    assert len(list(store.glob("*.exe"))) == 1
    exported._LOADED.clear()  # as a new process: only the files
    _no_compilation(monkeypatch)
    np.testing.assert_array_equal(_cls(), first)
    other = example_spec()  # another point of the same structure: the same executable
    other["observations"][0]["data"] = [d + 7 for d in other["observations"][0]["data"]]
    exported._LOADED.clear()
    got = _cls(other)
    monkeypatch.undo()
    monkeypatch.setattr(executables, "_STORE", None)  # the reference: compiled in memory
    monkeypatch.setattr(exported, "_LOADED", {})
    np.testing.assert_array_equal(got, _cls(other))
    assert not np.array_equal(got, first)


def test_a_damaged_executable_is_compiled_again(store):
    first = _cls()
    (exe,) = store.glob("*.exe")
    data = bytearray(exe.read_bytes())
    data[len(data) // 2] ^= 0xFF
    exe.write_bytes(bytes(data))
    assert executables.load(exe) is None  # its digest differs: XLA never reads it
    exe.write_bytes(bytes(data[: len(data) // 3]))  # cut short
    assert executables.load(exe) is None
    exported._LOADED.clear()
    np.testing.assert_array_equal(_cls(), first)  # compiled (found in JAX's cache) and stored
    assert executables.load(exe) is not None


def test_prefetch_hands_over_what_the_last_command_called(store, tmp_path, monkeypatch):
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    options = {"test_stat": "qtilde"}
    executables.prefetch("cls", ws, options)
    executables._PREFETCH.named.wait()
    assert executables._PREFETCH.names == []  # no command remembered yet
    first = _cls()
    executables.remember()
    (alias,) = (store / "aliases").iterdir()
    (exe,) = store.glob("*.exe")
    assert alias.read_text().split() == [exe.name]

    def next_command(path, opts):
        monkeypatch.setattr(executables, "_PREFETCH", None)
        monkeypatch.setattr(executables, "_CALLED", [])
        exported._LOADED.clear()
        executables.prefetch("cls", path, opts)
        return _cls()

    loads = _loads_by_thread(monkeypatch)
    _no_compilation(monkeypatch)
    np.testing.assert_array_equal(next_command(ws, options), first)
    assert loads == ["diffhep-prefetch"]  # loaded while the command started, then taken
    loads.clear()
    copy = tmp_path / "copy.json"  # the same bytes elsewhere: the same guess
    copy.write_bytes(ws.read_bytes())
    np.testing.assert_array_equal(next_command(copy, options), first)
    assert loads == ["diffhep-prefetch"]
    for path, opts in ((ws, {"test_stat": "q"}), (tmp_path / "other.json", options)):
        if not path.exists():  # other bytes: no guess
            path.write_text(json.dumps(example_spec(), indent=2))
        loads.clear()
        np.testing.assert_array_equal(next_command(path, opts), first)
        assert loads == ["MainThread"]  # not prefetched: loaded when asked for


def test_a_wrong_guess_is_not_used(store, tmp_path, monkeypatch):
    """An alias naming another kernel's executable (a patch of another structure): that one
    is loaded on the thread, but the command's own is the one called."""
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    first = _cls()
    (exe,) = store.glob("*.exe")
    decoy = store / ("0" * 32 + exe.name[exe.name.index(".") :])
    decoy.write_bytes(exe.read_bytes())  # a valid executable under another kernel's name
    executables.prefetch("cls", ws, {})
    executables._PREFETCH.named.wait()
    alias = executables._PREFETCH.alias
    monkeypatch.setattr(executables, "_PREFETCH", None)
    (store / "aliases").mkdir()
    (store / "aliases" / alias).write_text(decoy.name + "\n")
    exported._LOADED.clear()
    loads = _loads_by_thread(monkeypatch)
    executables.prefetch("cls", ws, {})
    np.testing.assert_array_equal(_cls(), first)
    assert sorted(loads) == ["MainThread", "diffhep-prefetch"]  # its own from the store
    executables.remember()
    assert (store / "aliases" / alias).read_text().split() == [exe.name]  # corrected


_CHILD = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
from diffhep.stats import executables, exported, workflows
from diffhep.stats.workspace import Workspace, example_spec
executables.set_store(sys.argv[1])
def refuse(*a, **k):
    raise AssertionError("compiled")
exported._compile = refuse
ws = Workspace(example_spec())
model, data = workflows._model_and_data(ws)
r = exported.call(workflows._cls_kernel, model, workflows._f64(1.0), data, test_stat="qtilde")
print(json.dumps([float(r["cls_obs"]), *map(float, r["cls_exp"])]))
"""


def test_a_new_process_runs_a_stored_executable_that_calls_lapack(store):
    """A new process that loads the hypothesis test (Cholesky and eigen-decompositions:
    LAPACK) without lowering anything gets the same bits; without LAPACK's set-up
    (executables.ready_lapack) it crashed."""
    first = _cls()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(store)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(json.loads(proc.stdout), first)


def test_the_cli_remembers_its_kernels_and_gives_the_same_result(tmp_path):
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": str(cache),
           "DIFFHEP_WORKER_START": "never"}  # fmt: skip

    def cls():
        proc = subprocess.run([sys.executable, "-m", "diffhep", "cls", str(ws)], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    first, second = cls(), cls()
    assert first == second
    (alias,) = (cache / "exported" / "aliases").iterdir()
    (exe,) = (cache / "exported").glob("*.exe")
    assert alias.read_text().split() == [exe.name]
    expected = workflows.cls(ws)
    assert second["CLs_obs"] == pytest.approx(expected["CLs_obs"], rel=1e-12)
    np.testing.assert_allclose(second["CLs_exp"], expected["CLs_exp"], rtol=1e-12)
