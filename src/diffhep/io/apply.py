"""``diffhep apply``: score event files with a trained run, chunk by chunk.

The run directory's ``model.onnx`` (see :mod:`diffhep.io.onnx.export`) is evaluated with ONNX
Runtime on chunks of ``step_size`` events read by :func:`diffhep.io.sources.iterate`, so memory
is bounded by the chunk size whatever the file size, and the numbers are those a C++
analysis gets from the same model. For every input file one output file (parquet or ROOT,
by default the input's kind) is written to the output directory, row by row aligned with the
input (usable as a ROOT friend tree; a ROOT input's TTree or RNTuple is mirrored: same name
and kind), holding the features, the event weight columns the config names, the ``keep``
columns and

- ``diffhep_score``: the neural observable (float32; absent for cuts alone), for every event,
- ``diffhep_selected``: whether the event passes the analysis selection, the filter of the
  sample (``sample``; by default the filter all samples share, if they share one) AND the
  selection cuts,
- ``diffhep_bin_<channel>``: the bin of every channel for selected events, -1 otherwise,
- ``diffhep_weight``: the sample's weight expression (ntuple runs, when one applies: the
  sample's, or the one all samples share; before the config's yield/scale normalisation).

What these columns mean (and which filter and weight) is written into the output: the
parquet schema's metadata and, in ROOT files, a ``TObjString`` beside the tree, both under
the key ``diffhep_metadata`` (JSON; :func:`read_metadata`).

In ROOT outputs, feature expressions become valid branch names (``Jet_pt[0]`` ->
``Jet_pt_0``, ``num(Jet_pt) > 0`` -> ``num_Jet_pt_0``, see :func:`root_branch_names`);
parquet keeps them as they are.

Inputs far outside the training distribution (more than 10 training standard deviations
from the training mean in over 1 % of a file's events, :mod:`diffhep.io.ranges`) are warned
of, once per feature and file (the scores are written as they are: extrapolations), and
recorded in the output metadata under ``input_warnings``.

Files are written atomically (a temporary file renamed at the end): an error (a missing
column, NaN/inf features) leaves no partial output.

This is local and single-process. With ``scheduler`` (an address) or ``workers`` (a local
cluster) the files are scored on a Dask cluster instead, by :mod:`diffhep.io.dask_apply` (an
optional dependency): the same columns and numbers, one output file per partition of
``step_size`` events, ``OUT/<input stem>/part-<k>.parquet`` (or ``.root``).

The scoring of a chunk is :mod:`diffhep.io.scoring`, the meaning of the output columns
:mod:`diffhep.io.selection`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..writers import check_writable_dir, same_file
from . import sources
from .ranges import RangeCheck, report_ranges
from .scoring import (
    check_finite,
    empty_output,
    expressions,
    load_export,
    open_writer,
    output_tree,
    root_branch_names,
    score_chunk,
)
from .selection import PREFIX, AnalysisSelection, analysis_selection, metadata, read_metadata

__all__ = [
    "PREFIX",
    "AnalysisSelection",
    "analysis_selection",
    "apply_run",
    "check_finite",
    "read_metadata",
    "root_branch_names",
]


DEFAULT_STEP = 100_000


def _kind(path: Path) -> str:
    """``"root"`` or ``"parquet"`` by the suffix (only :func:`sources.iterate` is used from
    :mod:`diffhep.io.sources`, so that it can grow other readers)."""
    kind = {".root": "root", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"cannot score {path.suffix!r} files",
            file=str(path),
            fix="give ROOT (.root) or parquet (.parquet) files",
        )
    return kind


def _output_path(out: Path, file: Path, kind: str) -> Path:
    return out / f"{file.stem}{'.root' if kind == 'root' else '.parquet'}"


def _score_file(file, writer, prep, sess, tree, step_size, keep, selection=None, check=None):
    """Score ``file`` chunk by chunk into ``writer``; returns its number of events (``check``:
    a :class:`~diffhep.io.ranges.RangeCheck` counting the inputs far out of training)."""
    names = prep["inputs"]["features"]["names"]
    exprs = expressions(prep, keep, selection)
    constants = selection.constants if selection is not None else None
    bad: dict[str, int] = {}
    n = 0
    chunks = sources.iterate(
        [file], tree=tree, expressions=exprs, step_size=step_size, constants=constants
    )
    for chunk in chunks:
        for c, k in check_finite(chunk, names).items():
            bad[c] = bad.get(c, 0) + k
        n += len(chunk[names[0]])
        if bad:  # keep counting, write nothing more
            continue
        if check is not None:
            check.add(chunk)
        writer.write(score_chunk(file, chunk, prep, sess, keep, selection))
        del chunk  # one chunk in memory: free it before reading the next
    if bad:
        c, k = next(iter(bad.items()))
        raise DataError(
            f"{sum(bad.values())} NaN/inf feature values in {n} events "
            f"({', '.join(f'{c}: {k}' for c, k in bad.items())}); nothing written",
            file=str(file),
            where=c,
            fix="remove or repair these events before scoring",
        )
    return n


def _check_options(step_size: int, fmt: str | None) -> None:
    if step_size < 1:
        raise DataError(f"step size {step_size} < 1", where="--step-size")
    if fmt not in (None, "parquet", "root"):
        raise DataError(f"unknown output format {fmt!r}", where="--format", fix="parquet or root")


def _check_keep(keep: Sequence[str]) -> None:
    clash = [k for k in keep if k.startswith(PREFIX)]
    if clash:
        raise DataError(
            f"kept column(s) {', '.join(clash)} clash with the output columns ({PREFIX}*)",
            where="--keep",
        )


def _inputs(files: Sequence) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every input, which must exist."""
    out = []
    for f in map(Path, files):
        kind = _kind(f)
        if not f.is_file():
            raise DataError("file not found", file=str(f), fix="check the path")
        out.append((f, kind))
    return out


def apply_run(
    run_dir,
    files: Sequence,
    out,
    *,
    tree: str | None = None,
    step_size: int = DEFAULT_STEP,
    keep: Sequence[str] = (),
    fmt: str | None = None,
    sample: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
) -> list[dict]:
    """Score ``files`` with the run ``run_dir`` into the directory ``out``.

    Local and single-process by default; with ``scheduler`` or ``workers`` the partitions
    of the files are scored on a Dask cluster (:mod:`diffhep.io.dask_apply`, one output file
    per partition).

    Args:
        run_dir: A run directory with ``model.onnx`` and ``preprocess.json``.
        files: ROOT or parquet files holding the run's features as columns (branches).
        out: Output directory (created).
        tree: TTree or RNTuple of ROOT inputs (default: the only one). ROOT outputs of ROOT
            inputs mirror it (same name and kind); other outputs get a TTree ``tree`` or
            ``Events``.
        step_size: Events per chunk (per partition on Dask).
        keep: Extra flat columns copied to the output (e.g. event numbers); the weight
            columns of the config are copied anyway.
        fmt: ``"parquet"`` or ``"root"``; default: the kind of each input.
        sample: The sample of the run's config whose filter (and weight) applies (see
            :func:`analysis_selection`; default: the filter all samples share, if any).
        scheduler: Address of a Dask scheduler (e.g. ``"tcp://host:8786"``).
        workers: Number of worker processes of a local Dask cluster started (and closed)
            for this call.

    Returns:
        One ``{"input", "output", "events"}`` per file; on Dask one per partition, with its
        ``"partition"`` number and ``"first_entry"`` in the input.

    Raises:
        DataError: Missing or damaged run export, file, tree or column, NaN/inf features,
            an output that would overwrite its input, an output directory that cannot be
            written, an unknown sample, both ``scheduler`` and ``workers``.
        DiffhepError: Dask is asked for but not installed.
    """
    run_dir, out = Path(run_dir), Path(out)
    _check_options(step_size, fmt)
    if scheduler is not None and workers is not None:
        raise DataError(
            "give a scheduler address or a number of local workers, not both",
            where="--scheduler/--workers",
        )
    prep, sess = load_export(run_dir)
    _check_keep(keep)
    selection = analysis_selection(run_dir, sample)
    meta = metadata(run_dir, prep, selection)
    inputs = _inputs(files)
    if scheduler is not None or workers is not None:
        from .dask_apply import apply_dask

        return apply_dask(
            run_dir, inputs, out, prep=prep, tree=tree, step_size=step_size, keep=keep,
            fmt=fmt, scheduler=scheduler, workers=workers, selection=selection, meta=meta,
        )  # fmt: skip
    plan = []
    for f, kind in inputs:
        target = _output_path(out, f, fmt or kind)
        if same_file(target, f) or target in [t for _, t, _, _ in plan]:
            raise DataError(
                f"output {target} would overwrite an input or another output",
                file=str(f),
                fix="choose another --out directory or rename the inputs",
            )
        plan.append((f, target, fmt or kind, output_tree(f, kind, tree)))
    check_writable_dir(out, where="--out")
    summary = []
    for f, target, kind, out_tree in plan:
        writer = open_writer(target, kind, out_tree, meta)
        check = RangeCheck(prep)
        try:
            n = _score_file(f, writer, prep, sess, tree, step_size, keep, selection, check)
            found = report_ranges(check, f)
            if found:
                writer.set_metadata(json.dumps(meta | {"input_warnings": found}))
            writer.commit(empty_output(prep, sess, keep, selection))
        except BaseException:
            writer.abort()
            raise
        summary.append({"input": str(f), "output": str(target), "events": n})
    return summary
