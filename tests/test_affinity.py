"""The test session's own set-up: each xdist worker on a core of its own (tests/affinity.py)."""

from __future__ import annotations

import os

import pytest

import affinity


@pytest.mark.skipif(
    not os.environ.get("PYTEST_XDIST_WORKER") or len(affinity.session_cores()) < 2,
    reason="pins only pytest-xdist workers of a session on two or more cores",
)
def test_worker_and_its_threads_run_on_its_own_core():
    """Worker gwN and the threads it started (XLA's pool among them) on core N of the
    session's (pytest-xdist's own I/O threads start before the pinning)."""
    import jax.numpy as jnp

    jnp.ones(3).block_until_ready()  # JAX's CPU client and its threads
    cores = sorted(affinity.session_cores())
    mine = {cores[int(os.environ["PYTEST_XDIST_WORKER"][2:]) % len(cores)]}
    pool = []
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/comm") as f:
            if f.read().startswith("tf_XLAEigen"):
                pool.append(int(t))
    assert pool and all(os.sched_getaffinity(t) == mine for t in pool)
    assert os.sched_getaffinity(0) == mine
    with affinity.widened():
        assert os.sched_getaffinity(0) == set(cores)
    assert os.sched_getaffinity(0) == mine
