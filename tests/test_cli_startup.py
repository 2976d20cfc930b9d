"""The process's own command runs its start-up without the cyclic garbage collector and
switches it back on for the work (cli._Main, cli.common.run); click's test runner (which
passes the arguments) is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import affinity
from diffhep.cli import common, main
from diffhep.stats.workspace import builtin_example, example_spec

SRC = str(Path(__file__).parents[1] / "src")

PROBE = """
import gc, sys
import diffhep.cli as cli
from diffhep.cli import main
cli._quick_exit = lambda code: None  # (tested below) print what was seen after the command
seen = []
import diffhep.cli.common as common
real_run = common.run
def run(fn, *a, **k):
    seen.append(("before", gc.isenabled()))
    out = real_run(lambda *x, **y: (seen.append(("during", gc.isenabled())), fn(*x, **y))[1],
                   *a, **k)
    return out
common.run = run
import diffhep.cli.stats as stats
stats.run = run
sys.argv = ["diffhep", "cls", sys.argv[1]]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print(seen, gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
"""


def test_the_collector_is_paused_for_start_up_only(tmp_path):
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": ""}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ws)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["CLs_obs"] > 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "[('before', False), ('during', True)] True True", last


def test_the_test_runner_keeps_the_collector(tmp_path):
    import gc

    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    frozen = gc.get_freeze_count()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    result = CliRunner().invoke(main, ["cls", str(ws)])
    assert result.exit_code == 0, result.output
    assert gc.isenabled() and gc.get_freeze_count() == frozen and not common.GC_PAUSED
    if cores is not None:  # the test runner's process keeps its cores (cli.common.ONE_CORE)
        assert os.sched_getaffinity(0) == cores


QUICK = """
import atexit, sys
atexit.register(lambda: print("finalised", file=sys.stderr))
from diffhep.cli import main
sys.argv = ["diffhep", *sys.argv[1:]]
main()
"""


def test_stats_commands_end_without_finalisation_their_output_and_code_intact(tmp_path):
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": ""}

    def diffhep(*args):
        return subprocess.run([sys.executable, "-c", QUICK, *args], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    done = diffhep("cls", str(ws))
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(json.loads(done.stdout)) == {"CLs_obs", "CLs_exp"}
    assert "finalised" not in done.stderr
    bad = diffhep("cls", str(ws), "--poi-value", "1e9")
    assert bad.returncode == 2 and "outside the bounds" in bad.stderr
    assert "finalised" not in bad.stderr
    other = diffhep("--version")  # not a statistics command: the usual end
    assert other.returncode == 0 and "finalised" in other.stderr
    figure = tmp_path / "pulls.png"
    for args in (["gof", str(ws)], ["pulls", str(ws), "--plot", str(figure)]):  # diagnostics
        done = diffhep(*args)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout) and "finalised" not in done.stderr
    assert figure.read_bytes().startswith(b"\x89PNG") and figure.stat().st_size > 1000


CORES = """
import os, sys
import diffhep.cli as cli
cli._quick_exit = lambda code: None
from diffhep.cli import main
sys.argv = ["diffhep", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
import threading
here = threading.get_native_id()
tasks = {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
single = all(len(a) == 1 for a in tasks.values())  # no thread spans two cores
beside = any(a != tasks[here] for a in tasks.values())  # XLA's threads not on Python's core
print("cores", len(tasks[here]), single, beside, file=sys.stderr)
"""


@pytest.mark.skipif(
    len(affinity.session_cores()) < 2, reason="needs a process allowed on two or more cores"
)
def test_a_local_exclusion_runs_on_one_core(tmp_path):
    """XLA's CPU thread pool costs a one-point-at-a-time exclusion (and cls) ~10x its CPU
    time on a shared machine (cli.common.ONE_CORE): the process's own command keeps XLA's
    threads on one core and its Python thread on another (every thread on one core; not all
    on the same); points are those of the same command on all cores (the kernel is the
    same)."""
    spec, patch = builtin_example()
    ws, p = tmp_path / "ws.json", tmp_path / "patch.point.json"
    ws.write_text(json.dumps(spec))
    p.write_text(json.dumps(patch))
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": ""}
    with affinity.widened():  # the command on the session's cores
        proc = subprocess.run([sys.executable, "-c", CORES, "exclusion", str(ws), str(p)], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "cores 1 True True"
    row = json.loads(proc.stdout)
    assert row["point"] == "point" and row["converged"]


COMPILING = """
import os, sys
import diffhep.cli as cli
cli._quick_exit = lambda code: None
import diffhep.cli.common as common
cores = len(os.sched_getaffinity(0))
seen, pre = [], {}
real_setup = common.setup

def tasks():
    out = {}
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/comm") as f:
            out[int(t)] = (f.read().startswith("tf_XLAEigen"), len(os.sched_getaffinity(int(t))))
    return out

def setup():  # JAX imported after the process is pinned, as by the command itself
    real_setup()
    import jax._src.compiler as compiler

    real = compiler.backend_compile_and_load

    def compile_and_load(*a, **k):
        seen.append(tasks())
        return real(*a, **k)

    compiler.backend_compile_and_load = compile_and_load
    pre.update(tasks())

common.setup = setup
from diffhep.cli import main
sys.argv = ["diffhep", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
during, after = seen[0], tasks()
widened = all(n == cores for t, (eigen, n) in during.items() if not eigen and t in pre)
one = all(n == 1 for eigen, n in during.values() if eigen)
back = all(after[t] == pre[t] for t in pre if t in after)
new = all(n == 1 for t, (_, n) in after.items() if t not in pre)
print("compiled", widened, one, back, new, file=sys.stderr)
import ctypes  # the threads of every OpenBLAS loaded (scipy's by the first call)
with open("/proc/self/maps") as f:
    libs = sorted({line.split()[-1] for line in f if "openblas" in line.split()[-1]})
counts = []
for lib in libs:
    dll = ctypes.CDLL(lib)
    for name in ("scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                 "openblas_get_num_threads", "openblas_get_num_threads64_"):
        if hasattr(dll, name):
            counts.append(getattr(dll, name)())
            break
print("blas", bool(counts) and all(n == 1 for n in counts), file=sys.stderr)
"""


@pytest.mark.skipif(
    len(affinity.session_cores()) < 2, reason="needs a process allowed on two or more cores"
)
def test_a_pinned_command_compiles_on_every_core(tmp_path):
    """XLA compiles a new kernel's LLVM modules on a pool of one thread per core its creator
    may run on (cli.common._compiling_on_all_cores): during the compilation every thread but
    the intra-op pool's may run on all of the process's cores, the intra-op pool on one;
    afterwards every thread is back on its core(s), those started meanwhile on one, and
    OpenBLAS on one thread (scipy's, loaded by the first call, started a second thread that
    spun on the Python thread's core: a warm exclusion 1.5x slower)."""
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": ""}
    with affinity.widened():  # the command on the session's cores
        proc = subprocess.run([sys.executable, "-c", COMPILING, "cls", str(ws)], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-2:] == ["compiled True True True True", "blas True"]
    assert json.loads(proc.stdout)["CLs_obs"] > 0


def test_diffheps_own_warnings_are_one_line_of_the_cli():
    """A new user's trial: a NetYieldWarning printed as Python shows warnings (file, line
    and the source line 'check_net_yields(' of the call); within a command it is formatted
    'diffhep: warning: ...', other packages' warnings as before, and a recorder of warnings
    (pytest's) still records them (a first version replaced the display: CI)."""
    import warnings

    import click

    from diffhep.weights.weighting import NetYieldWarning

    seen = {}

    @main.command("warn-for-test")
    def warn():
        fmt = warnings.formatwarning
        seen["own"] = fmt(NetYieldWarning("bin 3 net-negative"), NetYieldWarning, "f.py", 3)
        seen["other"] = fmt(UserWarning("foreign"), UserWarning, "f.py", 3)
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            warnings.warn(NetYieldWarning("recorded"), stacklevel=1)
        seen["recorded"] = [str(w.message) for w in recorded]
        click.echo("done")

    before = warnings.formatwarning
    try:
        result = CliRunner().invoke(main, ["warn-for-test"])
    finally:
        main.commands.pop("warn-for-test")
    assert result.exit_code == 0, result.output
    assert seen["own"] == "diffhep: warning: bin 3 net-negative\n"
    assert "UserWarning: foreign" in seen["other"] and "f.py:3" in seen["other"]
    assert seen["recorded"] == ["recorded"]
    assert warnings.formatwarning is before  # (put back after the command)
