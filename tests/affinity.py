"""The CPU cores of the test session, and each pytest-xdist worker on one of them.

XLA's CPU runtime runs a kernel's operations on a pool of one thread per core the process may
use, and the threads wait on each other (one spins) at each of the thousands of small
operations of a fit (``diffhep.cli.common.ONE_CORE`` says what that costs a command). Two
test workers, each with such a pool on both cores of the CI machine, take each other's
cores. Measured on this 2-core machine (2026-12-06, alternating runs of the same commit):
tests/test_fit.py, test_solver.py, test_convergence.py and test_likelihood.py on two workers
84/97 s wall and 137/150 CPU-s unpinned, 76/82 s and 121/131 CPU-s pinned (10-15%); the
whole suite's time was not measurably shorter (clean-clone CI 667 s unpinned at 13:36 UTC,
720 s pinned at 15:57: the machine's speed drifts by more than that). :func:`pin_worker`
pins; a test that needs the session's cores (a command that pins its own threads, a local
Dask cluster that puts one worker per core) widens itself again while it starts them
(:func:`widened`: a child process inherits the mask of the thread that starts it).
"""

from __future__ import annotations

import contextlib
import os

ENV = "DIFFHEP_TEST_CORES"
_AFFINITY = hasattr(os, "sched_getaffinity")


def session_cores() -> set[int]:
    """The cores the test session was started on (before any worker was pinned)."""
    if not _AFFINITY:
        return set()
    listed = os.environ.get(ENV, "")
    return {int(c) for c in listed.split(",") if c} or os.sched_getaffinity(0)


def remember() -> None:
    """Record the session's cores for its workers (the controller, before it starts them)."""
    if _AFFINITY and not os.environ.get(ENV):
        os.environ[ENV] = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def pin_worker() -> None:
    """Put this xdist worker (``gwN``) and every thread it starts on core ``N`` modulo the
    session's cores. Run before JAX starts its CPU client (its threads inherit the mask)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    cores = sorted(session_cores())
    if worker.startswith("gw") and len(cores) > 1:
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


@contextlib.contextmanager
def widened():
    """This thread (and the processes and threads it starts meanwhile) on all of the
    session's cores, then back on its own."""
    if not _AFFINITY:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, session_cores())
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)
