"""``diffhep apply`` on a Dask cluster: the partitions of the inputs scored on the workers.

Partitions are those of ``uproot.dask`` for ROOT TTrees (``step_size`` entries each;
RNTuples are read in ranges of ``step_size`` entries by delayed tasks, as uproot's RNTuple
graphs do not pickle) and of dask-awkward's parquet reader repartitioned to ``step_size``
rows: partition ``k`` of a file
holds its entries ``[k * step_size, (k + 1) * step_size)``, the chunk ``k`` of the
single-process :func:`diffhep.io.apply.apply_run`. Every partition becomes a ``dask.delayed``
object (``to_delayed``) and a delayed task scores it on a worker and writes
``OUT/<input stem>/part-<k>.parquet`` (or ``.root``; ``k`` zero-padded to 5 digits, so the
sorted names are in entry order), atomically, with the columns of the single-process output
(``part-*`` files left there by an earlier call are removed). A partition's output depends
only on its entries, so the outputs do not depend on the order in which the tasks run.

Why delayed tasks rather than dask-awkward's ``map_partitions``: dask-awkward calls a mapped
function on typetracers (arrays of types without data) to infer its output and, at compute
time, the columns it reads; ONNX Runtime needs the numbers, and a partition's result is a
file written on the worker (and its event count), not an array. The readers' partitions, as
delayed objects, keep the reading (only the needed columns, entry ranges, repartitioning)
with ``uproot.dask`` and dask-awkward, and the scoring with :mod:`diffhep.io.apply`.

On a worker the ONNX session is loaded once per process (cached by the path and time stamp
of the run's export); a partition gets the conversions and checks of
:func:`diffhep.io.sources.iterate` (:func:`diffhep.io.sources.evaluate_chunk`).

Errors: missing files, trees and columns and non-numeric columns are found on the client,
before any work is submitted, by reading the first event of every input (the messages of
the single-process run; nothing is written). A task that fails (e.g. NaN/inf features):
all tasks are waited for, every output of the call is removed, and the error of the first
failing partition in input order is raised, whatever the order the tasks ran in.

Inputs far outside the training distribution (:mod:`diffhep.io.ranges`): every partition's
metadata records its own (``input_warnings``), and the task returns its counts, which the
client adds up per input and warns of once per feature and file (the workers' logs are
silenced).

The workers must see the run directory, the inputs and ``OUT`` at the same paths (a shared
file system) and have diffhep installed.

Example:
    >>> _part_name(3, "root")
    'part-00003.root'
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError, DiffhepError
from ..writers import check_writable_dir
from . import scoring, sources
from .ranges import RangeCheck, message, report_ranges
from .selection import AnalysisSelection, metadata

__all__ = ["apply_dask", "dask_client"]

INSTALL = "pip install 'diffhep[dask]'"


def _part_name(k: int, kind: str) -> str:
    """Output file of partition ``k`` (zero-padded: sorted names are in entry order)."""
    return f"part-{k:05d}.{'root' if kind == 'root' else 'parquet'}"


def _require() -> None:
    try:
        import dask  # noqa: F401
        import dask_awkward  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        raise DiffhepError(
            f"scoring on a Dask cluster needs dask, distributed and dask-awkward ({exc})",
            where="--scheduler/--workers",
            fix=f"install them: {INSTALL}",
        ) from None


@functools.lru_cache(maxsize=4)
def _session(run_dir: str, stamp: tuple):
    """``(preprocess, ONNX session)`` of a run, loaded once per worker process (``stamp``:
    the export's modification times, so that a re-exported run is loaded again)."""
    return scoring.load_export(Path(run_dir))


def _stamp(run_dir: Path) -> tuple:
    return tuple((run_dir / n).stat().st_mtime_ns for n in ("model.onnx", "preprocess.json"))


def _partitions(file: Path, kind: str, tree: str | None, columns: list[str], step: int,
                constants=()):  # fmt: skip
    """The partitions of ``file`` as delayed awkward arrays, and their first entries."""
    # what the columns (maybe expressions) read
    names = [n for n in sources.columns_of(columns) if n not in constants]
    if kind == "root":
        import uproot

        path = str(file.resolve())  # workers may run in other directories
        name, what = sources.tree_kind(file, tree)
        if what == "RNTuple":  # uproot.dask's RNTuple graphs do not pickle (uproot 5.7)
            return _entry_ranges(path, name, names, step)
        arr = uproot.dask({path: name}, filter_name=names, step_size=step)
    else:
        import dask_awkward as dak

        arr = dak.from_parquet(str(file.resolve()), columns=names, split_row_groups=True)
        arr = arr.repartition(rows_per_partition=step)
    return arr.to_delayed(optimize_graph=False), list(arr.divisions[:-1])


def _read_entries(path: str, tree: str, names: list[str], start: int, stop: int):
    """The columns ``names`` of the entries ``[start, stop)`` of an RNTuple (on a worker)."""
    import uproot

    with uproot.open(path) as f:
        return f[tree].arrays(names, entry_start=start, entry_stop=stop)


def _entry_ranges(path: str, tree: str, names: list[str], step: int):
    """Delayed reads of ``step`` entries each of an RNTuple, and their first entries."""
    import dask
    import uproot

    with uproot.open(path) as f:
        n = f[tree].num_entries
    read = dask.delayed(_read_entries, pure=True)
    firsts = list(range(0, n, step))
    return [read(path, tree, names, a, min(a + step, n)) for a in firsts], firsts


def _score_partition(
    part, *, file, start, target, fmt, tree, out_tree, run_dir, stamp, keep, selection, meta
) -> int:
    """Score one partition (on a worker) into ``target``; returns its number of events
    and the state of its :class:`~diffhep.io.ranges.RangeCheck` (``file``, as the user gave
    it, names the input in error messages; ``out_tree``: the output's ``(tree name,
    RNTuple?)``). Inputs far out of training are recorded in the partition's metadata; the
    client adds up the partitions of a file and warns (workers' logs are not shown)."""
    prep, sess = _session(run_dir, stamp)
    check = RangeCheck(prep)
    writer = scoring.open_writer(Path(target), fmt, out_tree, meta)
    try:
        n = len(part)
        if n:
            exprs = scoring.expressions(prep, keep, selection)
            chunk = sources.evaluate_chunk(
                file, part, exprs, start=start, tree=tree, constants=selection.constants
            )
            check.add(chunk)
            writer.write(scoring.score_chunk(file, chunk, prep, sess, keep, selection))
        found = [f | {"message": message(f, file)} for f in check.findings()]
        if found:  # this partition's; the client warns of the whole file's
            writer.set_metadata(json.dumps(meta | {"input_warnings": found}))
        writer.commit(scoring.empty_output(prep, sess, keep, selection))
    except BaseException:
        writer.abort()
        raise
    return n, check.state()


@contextlib.contextmanager
def _quiet(level=logging.ERROR):
    """Only errors from the ``distributed`` loggers of this process (the scheduler of a local
    cluster logs every start, connection and close): a failed task is reported anyway."""
    logger = logging.getLogger("distributed")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None):
    """A client of the scheduler, or of a local cluster of ``workers`` processes (one thread
    each) started here; both closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=30)
        except (OSError, ValueError) as exc:  # unreachable, timeout, bad address
            raise DiffhepError(
                f"cannot connect to the Dask scheduler {scheduler!r} ({exc})",
                where="--scheduler",
                fix="check the address (e.g. tcp://host:8786) and that the scheduler runs",
            ) from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",  # a free port (8787 may be taken)
            silence_logs=logging.CRITICAL,  # the workers' logs (a failed task is reported)
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None):
    """A quiet Dask client of ``scheduler`` or of a local cluster of ``workers`` processes,
    as ``apply`` uses it (for other commands that spread tasks: ``diffhep exclusion``)."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise DiffhepError(
            f"spreading work over Dask needs dask and distributed ({exc})",
            where="--scheduler/--workers",
            fix=f"install them: {INSTALL}",
        ) from None
    with _quiet(), _client(scheduler, workers) as client:
        yield client


def apply_dask(
    run_dir,
    inputs: Sequence[tuple[Path, str]],
    out,
    *,
    prep: dict,
    tree: str | None,
    step_size: int,
    keep: Sequence[str],
    fmt: str | None,
    scheduler: str | None = None,
    workers: int | None = None,
    selection: AnalysisSelection | None = None,
    meta: dict | None = None,
) -> list[dict]:
    """Score ``inputs`` on a Dask cluster into ``OUT/<input stem>/part-<k>.<format>``.

    Called by :func:`diffhep.io.apply.apply_run` (which checks the options and the run) with
    ``scheduler`` or ``workers``; the arguments are those of ``apply_run``.

    Returns:
        One ``{"input", "output", "partition", "first_entry", "events"}`` per partition,
        in input and entry order. Older ``part-*`` files of these inputs are removed.

    Raises:
        DataError: As ``apply_run``; the outputs of the call are removed.
        DiffhepError: Dask is not installed.
    """
    _require()
    import dask

    if scheduler is None and workers < 1:
        raise DataError(f"{workers} workers < 1", where="--workers")
    run_dir, out = Path(run_dir).resolve(), Path(out)
    selection = selection if selection is not None else AnalysisSelection()
    meta = meta if meta is not None else metadata(run_dir, prep, selection)
    columns = scoring.expressions(prep, keep, selection)
    constants = selection.constants
    dirs: dict[Path, Path] = {}
    for f, _ in inputs:
        d = out / f.stem
        if d in dirs.values():
            raise DataError(
                f"output directory {d} would hold the partitions of two inputs",
                file=str(f),
                fix="rename the inputs (their stems name the output directories)",
            )
        dirs[f] = d
        next(sources.iterate([f], tree=tree, expressions=columns, step_size=1,
                             constants=constants), None)  # fmt: skip
    plan, tasks = [], []
    score = dask.delayed(_score_partition)  # not pure: it writes a file
    stamp = _stamp(run_dir)
    for f, kind in inputs:
        parts, firsts = _partitions(f, kind, tree, columns, step_size, constants)
        out_tree = scoring.output_tree(f, kind, tree)
        if not parts:  # an empty input: one empty output, as the single-process run
            parts, firsts = [[]], [0]
        for k, (part, first) in enumerate(zip(parts, firsts, strict=True)):
            target = dirs[f] / _part_name(k, fmt or kind)
            plan.append({"input": str(f), "output": str(target), "partition": k,
                         "first_entry": int(first)})  # fmt: skip
            tasks.append(
                score(part, file=str(f), start=int(first), fmt=fmt or kind,
                      target=str(target.resolve()), tree=tree, out_tree=out_tree,
                      run_dir=str(run_dir), stamp=stamp, keep=list(keep),
                      selection=selection, meta=meta)
            )  # fmt: skip
    created = [d for d in dict.fromkeys(dirs.values()) if not d.exists()]
    check_writable_dir(out, where="--out")
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    try:
        counts = _compute(tasks, scheduler, workers)
    except BaseException:
        for p in plan:
            target = Path(p["output"])
            target.unlink(missing_ok=True)
            target.with_name(f".{target.name}.part").unlink(missing_ok=True)
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    checks: dict[str, RangeCheck] = {}
    for p, (_, state) in zip(plan, counts, strict=True):
        checks.setdefault(p["input"], RangeCheck(prep)).merge(state)
    for f, check in checks.items():
        report_ranges(check, f)
    written = {p["output"] for p in plan}
    for d in dict.fromkeys(dirs.values()):
        for old in (*d.glob("part-*.parquet"), *d.glob("part-*.root")):
            if str(old) not in written:
                old.unlink()
    return [p | {"events": n} for p, (n, _) in zip(plan, counts, strict=True)]


def _compute(tasks: list, scheduler: str | None, workers: int | None) -> list:
    """The results of the tasks, in order; after all have finished, the first error."""
    from distributed import wait

    with _quiet(), _client(scheduler, workers) as client:
        futures = client.compute(tasks)
        wait(futures)
        for fut in futures:
            if fut.status == "error":
                raise fut.exception()
        return client.gather(futures)
