"""The ``diffhep`` command line: a thin layer over :mod:`diffhep.stats.workflows`.

Commands print JSON on stdout (like ``pyhf``); bad input exits with status 2 and one message
naming the file, the JSON path and the fix; a fit that does not converge exits with status 1.

One module per command group (stats, diagnostics, runs, weights, studies); each lists its
``COMMANDS``.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import warnings

import click

from ..errors import EXIT_INTERRUPTED
from . import (
    common,
    diagnostics,
    generate,
    grid,
    optimize,
    runs,
    stats,
    studies,
    toys,
    weights,
    worker_control,
)
from . import worker as worker_commands

__all__ = ["main"]


class _Main(click.Group):
    def main(self, args=None, *rest, **kwargs):
        # The process's own command (not click's test runner, which passes args): start-up
        # (importing JAX and the statistics, ~10^5 objects, no garbage cycles) runs without
        # the cyclic garbage collector, which would traverse everything imported so far again
        # and again (~0.25 s of CPU of a `cls` command); common.run() switches it back on.
        common.OWN_PROCESS = args is None
        if args is None:
            # OpenBLAS (numpy's, and scipy's under JAX's LAPACK calls on CPU) starts a thread
            # per core it may run on when it loads, which spins between calls: the heavy work
            # is XLA's (its own threads), the BLAS calls small. scipy's loaded within
            # cli.common._compiling_on_all_cores, and its second thread spun on the Python
            # thread's core: warm 'diffhep exclusion' of the 217 sbottom RegionA patches
            # 20.6 s instead of 13.2-14.0 s (idle machine, the same rows as before b3e3794).
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            # a running worker (`diffhep worker start`) runs it, if there is one
            try:
                code = worker_commands.forward(sys.argv[1:])
            except KeyboardInterrupt:  # before the worker answered (or while it started)
                click.echo("\nAborted!", err=True)
                sys.exit(EXIT_INTERRUPTED)
            if code is not None:
                sys.exit(code)
        if args is None and gc.isenabled():
            gc.disable()
            common.GC_PAUSED = True
        try:
            return super().main(args, *rest, **kwargs)
        except SystemExit as done:
            if args is None and common.QUICK_EXIT:
                _quick_exit(done.code)
            raise
        finally:
            if common.GC_PAUSED:
                common.GC_PAUSED = False
                gc.enable()

    def invoke(self, ctx):
        before = warnings.formatwarning  # (the format only: a recorder, e.g. pytest's,
        warnings.formatwarning = functools.partial(_format_warning, before)  # still records)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # click's own handling exits 1, the status of a fit that
            click.echo("\nAborted!", err=True)  # did not converge
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        finally:
            warnings.formatwarning = before


def _format_warning(other, message, category, filename, lineno, line=None) -> str:
    """diffhep's own warnings (NetYieldWarning, ...) in one line, as the CLI's other
    messages ('diffhep: warning: ...'), not with the file, line and source Python adds
    (a new user's trial); other packages' warnings as ``other`` (the format before) has
    them."""
    if category.__module__.partition(".")[0] != "diffhep":
        return other(message, category, filename, lineno, line)
    return f"diffhep: warning: {message}\n"


def _quick_exit(code) -> None:
    """End the process now, its output flushed: the interpreter's finalisation of JAX and
    of ~10^5 objects takes 0.1-0.5 s of a command that has nothing left to do (commands whose
    last act is writing their result set common.QUICK_EXIT)."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # e.g. a closed pipe: let the interpreter report it
        return
    os._exit(code or 0)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffhep")
def main() -> None:
    """diffhep: differentiable HistFactory inference and analysis optimisation."""


_GROUPS = [stats, grid, diagnostics, toys, runs, optimize, weights, studies, generate]
for _group in [*_GROUPS, worker_commands]:
    for _command in _group.COMMANDS:
        main.add_command(_command)
for _command in worker_control.COMMANDS:  # worker status|stop
    worker_commands.worker.add_command(_command)
