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

import affinity
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


def _own_structure(bins: int) -> dict:
    """pyhf's example with ``bins`` bins (3, 4, ...): a structure no other test compiles,
    one per test that lets its kernel into JAX's persistent cache, which the session's
    pytest processes share (another process's kernel of the same structure would be found
    there, not stored)."""
    spec = example_spec()
    signal, background = spec["channels"][0]["samples"]
    for i in range(bins - 2):
        signal["data"].append(9.0 + i)
        background["data"].append(47.0 + i)
        background["modifiers"][0]["data"].append(5.0)
        spec["observations"][0]["data"].append(50.0 + i)
    return spec


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


def _cache_dir() -> list[str]:
    import jax

    given = jax.config.jax_compilation_cache_dir
    return [given] if given else []


_CHILD = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
from diffhep.stats import executables, exported, workflows
from diffhep.stats.workspace import Workspace, example_spec
executables.set_store(sys.argv[1])
if len(sys.argv) > 2:  # the parent's persistent cache: XLA's options name it
    jax.config.update("jax_compilation_cache_dir", sys.argv[2])
spec = json.loads(sys.argv[3]) if len(sys.argv) > 3 else example_spec()
def refuse(*a, **k):
    raise AssertionError("compiled")
exported._compile = refuse
ws = Workspace(spec)
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
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(store), *_cache_dir()], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(json.loads(proc.stdout), first)


@pytest.mark.skipif(len(affinity.session_cores()) < 2, reason="the prefetch needs two cores")
@pytest.mark.parametrize("command", ["cls", "fit", "pulls", "gof"])
def test_the_cli_remembers_its_kernels_and_gives_the_same_result(tmp_path, command):
    """A statistics command records the kernels it called (for the next one's prefetch) and
    prints the same as without a cache."""
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    cache = tmp_path / "cache"

    def run(directory):
        env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": directory,
               "DIFFHEP_WORKER_START": "never"}  # fmt: skip
        with affinity.widened():  # the command's own cores: the session's
            proc = subprocess.run([sys.executable, "-m", "diffhep", command, str(ws)], env=env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    first, second = run(str(cache)), run(str(cache))
    assert first == second == run("")  # (no cache: compiled in memory)
    (alias,) = (cache / "exported" / "aliases").iterdir()
    stored = {p.name for p in (cache / "exported").glob("*.exe")}
    assert stored and set(alias.read_text().split()) == stored


@pytest.fixture
def persistent_cache():
    """JAX's persistent cache (the session's) storing every compilation; what the test
    wrote there is removed after it (other tests compile the same programs)."""
    import jax

    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        pytest.skip("no persistent compilation cache in this session")
    before = set(Path(directory).iterdir())
    saved = jax.config.jax_persistent_cache_min_compile_time_secs
    update = jax.config.update  # (a test may replace it meanwhile)
    update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    update("jax_persistent_cache_min_compile_time_secs", saved)
    for path in set(Path(directory).iterdir()) - before:
        path.unlink()


def test_a_kernel_in_jaxs_cache_from_before_is_compiled_again_and_runs_in_a_new_process(
    store, persistent_cache
):
    """An executable that JAX's persistent cache returns serialises incompletely (a new
    process that loaded it failed: "Function ... not found"). The entry an earlier version
    wrote for the kernel (jax.jit of the exported call) is not the stored kernel's: it is
    compiled by XLA, stored whole, and a new process runs it."""
    spec = _own_structure(3)
    first = _cls(spec)
    (exe,) = store.glob("*.exe")
    exe.unlink()
    exported._LOADED.clear()
    (program,) = store.glob("*.bin")
    import jax

    exp = jax.export.deserialize(bytearray(program.read_bytes()))
    ws = Workspace(spec)
    model, data = workflows._model_and_data(ws)
    leaves = jax.tree.leaves(exported.eqx.filter(model, exported.eqx.is_array))
    exported._jit(exp.call)(leaves, workflows._f64(1.0), data)  # as an earlier version did
    np.testing.assert_array_equal(_cls(spec), first)
    assert exe.exists()
    child = [sys.executable, "-c", _CHILD, str(store), *_cache_dir(), json.dumps(spec)]
    proc = subprocess.run(child, env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(json.loads(proc.stdout), first)


def test_an_executable_from_jaxs_cache_is_not_stored(store, persistent_cache, monkeypatch):
    """Where JAX's cache holds the stored kernel's own compilation after all (written by
    another program), what it returns is used but not stored."""

    import contextlib

    with monkeypatch.context() as m:  # the kernel's compilation written to JAX's cache
        m.setattr(executables, "_not_written_to_jaxs_cache", contextlib.nullcontext)
        spec = _own_structure(4)
        first = _cls(spec)
        (exe,) = store.glob("*.exe")
        exe.unlink()
        exported._LOADED.clear()
        hits = executables._hits
        np.testing.assert_array_equal(_cls(spec), first)
    assert executables._hits == hits + 1  # it came from JAX's cache
    assert not exe.exists()


def test_the_file_of_an_executable_follows_jaxs_compile_settings(monkeypatch):
    """Settings of JAX that change XLA's options (JAX_DISABLE_MOST_OPTIMIZATIONS, the
    execution-time effort, ...) and the kernel's compiler options give another file: an
    executable compiled under others is never loaded."""
    import jax

    monkeypatch.setattr(executables, "_STORE", Path("/store"))
    base = executables.path("k", {"xla_cpu_use_fusion_emitters": False})
    assert base == executables.path("k", {"xla_cpu_use_fusion_emitters": False})
    assert base != executables.path("k", None)
    assert base != executables.path("k2", {"xla_cpu_use_fusion_emitters": False})
    for name, value in (("jax_disable_most_optimizations", True),
                        ("jax_exec_time_optimization_effort", 0.5)):  # fmt: skip
        saved = jax.config.values[name]
        jax.config.update(name, value)
        try:
            assert base != executables.path("k", {"xla_cpu_use_fusion_emitters": False})
        finally:
            jax.config.update(name, saved)
        assert base == executables.path("k", {"xla_cpu_use_fusion_emitters": False})


def test_a_file_whose_digest_differs_is_not_loaded(store):
    """The SHA-256 in the file is checked before XLA reads it (a file damaged in a way that
    still deserialises could crash the process when it runs)."""
    _cls()
    (exe,) = store.glob("*.exe")
    good = exe.read_bytes()
    assert executables.load(exe) is not None
    head = len(executables._MAGIC)
    exe.write_bytes(good[:head] + bytes([good[head] ^ 1]) + good[head + 1 :])  # the digest
    assert executables.load(exe) is None


@pytest.mark.parametrize(
    ("cores", "imported", "workspace", "started"),
    [(2, False, "ws.json", True), (1, False, "ws.json", False), (2, True, "ws.json", False),
     (2, False, "-", False)],
)  # fmt: skip
def test_a_command_prefetches_with_a_second_core_before_the_statistics_import(
    store, tmp_path, monkeypatch, cores, imported, workspace, started
):
    """On one core the thread's load would only delay the imports (a wrong guess cost a
    warm sbottom 'cls' 0.35 s); once the statistics are imported (the worker's later
    commands) the kernels are in memory; standard input has no file to name."""
    from diffhep.cli import common

    (tmp_path / "ws.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "_cores", lambda: cores)
    if not imported:
        monkeypatch.delitem(sys.modules, "diffhep.stats.workflows")
    with common.prefetching("cls", workspace, {}):
        assert (executables._PREFETCH is not None) is started
    assert executables._PREFETCH is None  # each command's own


def test_the_stored_kernels_compilation_leaves_jaxs_cache_setting_to_other_threads(
    monkeypatch,
):
    """The kernel is not written to JAX's persistent cache; the setting that keeps it out
    is this thread's: another thread compiling meanwhile (a Dask worker's threads, a user's)
    still writes its programs (two such compilations at once left it infinite for the
    process)."""
    import jax

    seen = {}
    real_jit = jax.jit

    def jit(fn, **kw):
        jitted = real_jit(fn, **kw)

        class Lowering:
            def lower(self, *a):
                lowered = jitted.lower(*a)

                class Compiling:
                    def compile(self):
                        seen["here"] = jax.config.jax_persistent_cache_min_compile_time_secs
                        other = threading.Thread(
                            target=lambda: seen.setdefault(
                                "other", jax.config.jax_persistent_cache_min_compile_time_secs
                            )
                        )
                        other.start()
                        other.join()
                        return lowered.compile()

                return Compiling()

        return Lowering()

    before = jax.config.jax_persistent_cache_min_compile_time_secs
    monkeypatch.setattr(jax, "jit", jit)
    compiled, cached = executables.xla_compile(lambda x: 2 * x, np.arange(3.0))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(compiled(np.arange(3.0))), [0.0, 2.0, 4.0])
    assert seen == {"here": float("inf"), "other": before} and not cached
    assert jax.config.jax_persistent_cache_min_compile_time_secs == before


@pytest.mark.skipif(len(affinity.session_cores()) < 2, reason="the prefetch needs two cores")
def test_exclusion_prefetches_its_kernels_and_gives_the_same_rows(tmp_path):
    """``diffhep exclusion`` loads the kernels the last such run called on that workspace
    while it starts, as ``cls`` does: the same rows as without a cache."""
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    for i, scale in enumerate((0.5, 2.0)):  # two signal points
        signal = [scale * x for x in example_spec()["channels"][0]["samples"][0]["data"]]
        op = {"op": "replace", "path": "/channels/0/samples/0/data", "value": signal}
        (tmp_path / f"p{i}.json").write_text(json.dumps([op]))
    patches = [str(tmp_path / "p0.json"), str(tmp_path / "p1.json")]

    def exclusion(cache):
        env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": cache,
               "DIFFHEP_WORKER_START": "never"}  # fmt: skip
        with affinity.widened():
            proc = subprocess.run([sys.executable, "-m", "diffhep", "exclusion", str(ws),
                                   *patches], env=env, capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    cache = tmp_path / "cache"
    first, second = exclusion(str(cache)), exclusion(str(cache))
    assert first == second == exclusion("")  # (no cache: compiled in memory)
    (alias,) = (cache / "exported" / "aliases").iterdir()
    (exe,) = (cache / "exported").glob("*.exe")
    assert alias.read_text().split() == [exe.name]


_DEVICES = """
import json, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from diffhep.stats import executables, exported, workflows
from diffhep.stats.workspace import Workspace, example_spec
executables.set_store(sys.argv[1])
ws = Workspace(example_spec())
model, data = workflows._model_and_data(ws)
out = []
for device in jax.devices()[:2] * 2:  # the second device's arrays: not the executable's
    exported._LOADED.clear()
    if len(out) == 3:  # the stored program gone too
        for program in executables.store().glob("*.bin"):
            program.write_bytes(b"gone")
    m, d = jax.device_put((model, data), device)
    r = exported.call(workflows._cls_kernel, m, jax.device_put(np.float64(1.0), device), d,
                      test_stat="qtilde")
    out.append([str(r["cls_obs"].devices()), float(r["cls_obs"]), *map(float, r["cls_exp"])])
print(json.dumps(out))
"""


def test_arrays_on_another_device_run_the_jitted_kernel(store):
    """The stored executable is compiled for the default device; a call with arrays on
    another (two simulated CPU devices) runs the kernel jitted there, the same numbers, also
    where the stored program is gone."""
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = {**os.environ, "PYTHONPATH": SRC, "XLA_FLAGS": flags}
    proc = subprocess.run([sys.executable, "-c", _DEVICES, str(store)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert [row[0] for row in out] == ["{CpuDevice(id=0)}", "{CpuDevice(id=1)}"] * 2
    for row in out[1:]:
        np.testing.assert_allclose(row[1:], out[0][1:], rtol=1e-12)
