"""Toy-based tests spread over Dask: ``cls --toys N --workers K`` (a local cluster, one
worker process per CPU core) or ``--scheduler ADDRESS`` (any cluster).

The toys ``first .. first + N - 1`` of the seed are cut into ranges of equal size, at most
``chunk`` toys (one compiled shape), each a task running
:func:`diffhep.stats.workflows.toys` on the loaded workspace; the ranges merge
(:func:`diffhep.stats.toy_results.merge`, in toy order) into the single run's result, the
same numbers to the bit (toy ``i`` of a seed has its own key).

Why processes, one per core: XLA's CPU runtime spreads a kernel's thousands of small
operations over a pool of threads that wait on each other, so one process on two cores runs
a toy no faster than on one, at twice the CPU time (sbottom RegionA, warm, 64 toys of both
hypotheses: 74-78 ms wall and 147-152 CPU-ms per toy on two cores, 61-62 ms and 61-62 CPU-ms
pinned to one; 2026-12-05, idle machine). A local cluster's workers are therefore each
pinned to one core (Linux) before JAX starts in them.
"""

from __future__ import annotations

import os

from .common import setup


def _pin_process(core: int) -> int:
    """Every thread of this (worker) process on ``core``: threads started later (XLA's, at
    JAX's first use) inherit it. Returns the core, or -1 where affinity is not supported."""
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), {core})
            except OSError:  # the thread ended
                pass
        return core
    except (AttributeError, OSError):  # not Linux
        return -1


def pin_workers(client) -> dict[str, int]:
    """Pin the workers of a local cluster to the cores this process may run on, one each
    (round robin where there are more workers than cores). Returns ``{address: core}``."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return {}
    addresses = sorted(client.scheduler_info()["workers"])
    return {
        a: client.run(_pin_process, cores[i % len(cores)], workers=[a])[a]
        for i, a in enumerate(addresses)
    }


def _toy_task(ws, kwargs: dict):
    """One range of toys on a worker (or here): the JAX set-up, then the library."""
    from ..stats import workflows

    setup()
    return workflows.toys(ws, (), **kwargs)


def coalesce(runs: list[dict]) -> list[dict]:
    """Toy ranges of one seed that follow each other as one range (``runs`` sorted)."""
    out: list[dict] = []
    for r in runs:
        last = out[-1] if out else None
        if last and last["seed"] == r["seed"] and last["first"] + last["ntoys"] == r["first"]:
            last["ntoys"] += r["ntoys"]
        else:
            out.append(dict(r))
    return out


def spread_toys(
    workspace,
    patches=(),
    *,
    patch_name=None,
    digest_check=True,
    ntoys: int,
    seed: int = 0,
    first: int = 0,
    progress=None,
    workers: int | None = None,
    scheduler: str | None = None,
    chunk: int | None = None,
    **options,
):
    """:func:`diffhep.stats.workflows.toys` over a Dask cluster (arguments as there, the
    measurement, codes and test in ``options``; ``workers`` / ``scheduler`` as ``diffhep
    exclusion``'s); the same :class:`~diffhep.stats.toys.ToyResult` as the single run."""
    from ..io.dask_apply import dask_client
    from ..stats import toys, workflows
    from ..stats.toy_results import merge

    ws = workflows.load_workspace(workspace, patches, patch_name, digest_check)
    # ranges of equal size (at most the chunk): a fixed-shape chunk pads its last toys with
    # real toys that are computed and dropped (10,000 toys in ranges of 256: 240 padded
    # toys on one worker at the end, ~4% of the command on sbottom RegionA)
    ntasks = -(-ntoys // max(1, int(chunk or toys.CHUNK)))
    size = -(-ntoys // ntasks)
    common = {"seed": seed, "chunk": size, "fixed_chunk": True, **options}
    starts = list(range(first, first + ntoys, size))
    with dask_client(scheduler, workers) as client:  # (DiffhepError without dask)
        from distributed import as_completed

        if scheduler is None:
            pin_workers(client)
        ws_f = client.scatter(ws, broadcast=True)
        futures = {
            client.submit(_toy_task, ws_f, {**common, "first": a,
                          "ntoys": min(size, first + ntoys - a)}, pure=False): k
            for k, a in enumerate(starts)
        }  # fmt: skip
        parts, done = [None] * len(starts), 0
        for fut in as_completed(futures):
            parts[futures[fut]] = res = fut.result()
            done += res.ts_sb.size + res.ts_b.size
            if progress is not None:
                progress(done)
    merged = merge(parts)
    merged.runs = coalesce(merged.runs)
    return merged
