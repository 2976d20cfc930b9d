"""What the command groups share: the JAX set-up (run when a command runs, so ``--help`` and
argument errors import no JAX), errors to exit codes, JSON output, workspace options."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
from pathlib import Path

import click

from .. import cache
from ..errors import DiffhepError, FitError

log = logging.getLogger("diffhep")

#: Whether the cyclic garbage collector is paused for the start-up of the process's command
#: (set by :class:`diffhep.cli._Main`, ended by :func:`run`).
GC_PAUSED = False

#: Whether the process may end without the interpreter's finalisation once the command is
#: done (set by commands that hold no resources needing it; see ``diffhep.cli._quick_exit``).
QUICK_EXIT = False

#: Whether :func:`setup` keeps XLA's threads on one CPU core, and the Python thread on another
#: where there is one (:func:`_python_beside`) (set by the commands whose work is small
#: statistical kernels: cls, fit, upper-limit, a local exclusion one point at a time).
#: XLA's CPU runtime spreads the operations of a kernel over a pool of threads, one per core,
#: that wait on each other (one spins) at each of the thousands of small operations of a
#: hypothesis test: on the shared 2-core machine (load 7-9) a warm sbottom RegionA hypotest
#: took 130-680 ms of CPU time on two cores, 13-22 ms on one, with the same numbers.
#: Single-threaded XLA without the affinity does not replace it (A/B at 21:42-21:50 UTC, load
#: 5-8, warm cache, three runs each): 'diffhep exclusion' over 16 sbottom RegionA patches took
#: 1.5-1.6 s of CPU (2.2-2.4 s wall) pinned, 3.7-8.7 s (4-26 s) without the affinity, 6.9-9.1 s
#: (11-18 s) with XLA_FLAGS=--xla_cpu_multi_thread_eigen=false, 6.7-7.7 s (two runs) with
#: JAX_CPU_ENABLE_ASYNC_DISPATCH=false, 4.4-8.5 s with
#: --xla_cpu_enable_concurrency_optimized_scheduler=false, 4.3-6.9 s when only the start of
#: JAX's CPU client is pinned (every thread back on both cores after jax.devices()); one
#: 'diffhep cls' 1.2 s pinned vs 1.5-1.6 s otherwise. The same rows in every case.
ONE_CORE = False

#: Whether the command is the process's own (set by :class:`diffhep.cli._Main`; not click's
#: test runner in another program, whose process is left on its cores).
OWN_PROCESS = False


#: The cores the process was allowed on and the one XLA's threads run on, once
#: :func:`_one_core` has pinned them (for :func:`_compiling_on_all_cores`)
_PINNED: tuple[set[int], int] | None = None


def _one_core() -> int | None:
    """Run this process (and the threads JAX starts later) on the core it is running on;
    returns another core it was allowed on (None: there is none, or not Linux)."""
    global _PINNED
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) <= 1:
            return None
        with open("/proc/self/stat") as f:  # field 39: the core the process last ran on
            here = int(f.read().rsplit(")", 1)[1].split()[36])
        here = here if here in cores else cores[0]
        os.sched_setaffinity(0, {here})
        _PINNED = (set(cores), here)
        return cores[(cores.index(here) + 1) % len(cores)]
    except (AttributeError, OSError, ValueError, IndexError):  # not Linux: leave it
        return None


def _python_beside(core: int) -> None:
    """Once JAX's CPU client has started its threads (on the one core of :func:`_one_core`),
    move this (the Python) thread to ``core``: it builds the next points' models while XLA
    runs a kernel (JAX dispatches asynchronously). A warm 'diffhep exclusion' of the 217
    sbottom RegionA patches (idle machine, alternating A/B, 22:45 UTC): 6.75-7.67 s -> 4.67-4.73
    s wall, byte-identical output; a warm 'diffhep cls' 1.00-1.03 s either way. Threads
    started later by this thread run on ``core`` too."""
    import jax

    try:
        jax.devices()
        os.sched_setaffinity(0, {core})  # the calling thread only (Linux)
    except (AttributeError, OSError, RuntimeError):
        pass


def _threads_but_kernels() -> list[int]:
    """The ids of this process's threads but XLA's intra-op pool (``tf_XLAEigen*``, the
    threads that run the kernels' operations)."""
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if not f.read().startswith("tf_XLAEigen"):
                    out.append(int(tid))
        except OSError:  # the thread ended
            pass
    return out


@contextlib.contextmanager
def _compiling_on_all_cores():
    """XLA's compilation of a new kernel on every core the process was allowed on, its
    execution (the intra-op pool) still on one (:func:`_one_core`).

    XLA compiles a program's LLVM modules on a thread pool that a thread of its CPU client
    starts at the first compilation, one thread per core that thread may run on: on one
    pinned core, one. Every other thread is let onto all cores for the compilation and put
    back after it. Threads started meanwhile go where the calling (Python) thread was, as
    they would have without the context: on XLA's core they competed with the intra-op pool
    (scipy's OpenBLAS, loaded by the first call, started its pool there: a warm 'diffhep
    exclusion' of the 217 sbottom RegionA patches took 120 s; since :class:`diffhep.cli._Main`
    keeps OpenBLAS on one thread, 12.6-12.8 s). The compiled code is the same
    (byte-identical results: sbottom RegionA's 217 points of 'diffhep exclusion'); the cold
    'diffhep cls' of sbottom RegionA compiled its modules on two threads (5.4 + 5.2 CPU-s
    instead of 11.2 on one) with the same warm time."""
    cores, _ = _PINNED
    here = os.sched_getaffinity(0)  # the calling thread's
    saved = {}
    for tid in _threads_but_kernels():
        with contextlib.suppress(OSError):  # a thread that ended
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        for tid in _threads_but_kernels():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, saved.get(tid, here))


def setup() -> None:
    """Float64 for the statistics, quiet logs, and a persistent compilation cache so that
    repeated commands on models of the same structure skip XLA compilation (and, with
    :data:`ONE_CORE`, XLA's threads on one CPU core, pinned before JAX starts them, and the
    Python thread beside them)."""
    limit = cache.max_size()  # first (before the pinning), and also with the cache off
    beside = _one_core() if ONE_CORE and OWN_PROCESS else None
    import jax

    jax.config.update("jax_enable_x64", True)
    cache.enable(limit=limit)
    logging.basicConfig(level=logging.WARNING, format="diffhep: %(levelname)s: %(message)s")
    if beside is not None:
        _python_beside(beside)
        from ..stats import executables

        executables.set_compile_context(_compiling_on_all_cores)


def _cores() -> int:
    """The cores this process may run on (before :func:`_one_core` pinned it)."""
    if _PINNED is not None:
        return len(_PINNED[0])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def prefetching(kind: str, workspace, options: dict):
    """Within: the compiled kernels that the last command ``kind`` with ``options`` on a
    workspace of the same bytes called load on a thread
    (:func:`diffhep.stats.executables.prefetch`; on XLA's core where the process is pinned,
    idle until the first kernel runs) while the command imports the statistics: a warm
    'diffhep cls' of sbottom RegionA loads its 3 MB executable meanwhile. After a success,
    what the command called is recorded for the next. Only where the statistics are still to
    be imported (a command's own process, the worker's first command: later ones have their
    kernels in memory), with a second core (on one, the thread's load would only delay the
    imports, and a wrong guess cost its whole load: a warm sbottom RegionA 'cls' 0.9 -> 1.25 s)
    and for a workspace file (not standard input)."""
    from ..stats import executables

    if (
        "diffhep.stats.workflows" not in sys.modules
        and _cores() > 1
        and workspace not in (None, "-")
        and os.path.isfile(workspace)
    ):
        executables.prefetch(kind, workspace, options, core=_PINNED[1] if _PINNED else None)
    try:
        yield
    except BaseException:
        executables.forget()
        raise
    executables.remember()


def run(fn, *args, **kwargs):
    try:
        setup()
    except DiffhepError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    global GC_PAUSED
    if GC_PAUSED:  # start-up without the cyclic collector (cli._Main) is over: what exists
        GC_PAUSED = False  # now (modules, functions, the command's imports) lives to the end
        gc.freeze()  # of the process; later collections do not traverse it again
        gc.enable()
    try:
        return fn(*args, **kwargs)
    except FitError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except DiffhepError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


def emit(obj) -> None:
    click.echo(json.dumps(obj, indent=4, sort_keys=True))


def output(obj, output_file) -> None:
    """The JSON on standard output, or written atomically to ``--output-file`` (its directory
    made if missing, as for ``--plot``)."""
    if output_file is None:
        emit(obj)
        return
    from ..writers import write_atomic

    try:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(output_file), json.dumps(obj, indent=4, sort_keys=True) + "\n")
    except OSError as exc:
        click.echo(f"error: cannot write {output_file}: {exc.strerror or exc}", err=True)
        click.echo("  fix: choose a writable --output-file", err=True)
        sys.exit(2)


overrides = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set training.epochs=3 (repeatable).",
)

#: The test statistic of ``cls``, ``upper-limit`` and ``exclusion`` (pyhf 0.7's spelling, and
#: older pyhf's --teststat).
with_test_stat = click.option(
    "--test-stat",
    "--teststat",
    type=click.Choice(["qtilde", "q"]),
    default="qtilde",
    show_default=True,
    help="Test statistic: q~_mu (qtilde, bounded POI) or q_mu (as pyhf's --test-stat; "
    "--teststat as in pyhf before 0.7).",
)


def figure_path(ctx, param, value):
    """Click callback of a ``--plot FILE`` option: a file whose suffix names a format
    matplotlib writes, checked before the command's work (a bad suffix failed in
    ``savefig`` after it, with a traceback)."""
    if value is None:
        return value
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:  # plotting is optional: the figure's own error comes later
        return value
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(value).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise click.BadParameter(
            f"{value!r}: no figure format for the suffix '.{suffix}'; use .png, .pdf or .svg "
            f"(also: {', '.join(sorted(f for f in formats if f not in ('png', 'pdf', 'svg')))})",
            ctx=ctx,
            param=param,
        )
    return value
