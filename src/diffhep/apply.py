"""``diffhep apply``: score event files with a trained run, chunk by chunk.

The run directory's ``model.onnx`` (see :mod:`diffhep.onnx_export`) is evaluated with ONNX
Runtime on chunks of ``step_size`` events read by :func:`diffhep.sources.iterate`, so memory
is bounded by the chunk size whatever the file size, and the numbers are those a C++
analysis gets from the same model. For every input file one output file (parquet or ROOT,
by default the input's kind) is written to the output directory, row by row aligned with the
input (usable as a ROOT friend tree), holding the features, the ``keep`` columns and

- ``diffhep_score``: the neural observable (float32; absent for cuts alone),
- ``diffhep_selected``: whether the event passes the selection cuts,
- ``diffhep_bin_<channel>``: the bin of every channel, -1 outside it.

In ROOT outputs, feature expressions become valid branch names (``Jet_pt[0]`` ->
``Jet_pt_0``, ``num(Jet_pt) > 0`` -> ``num_Jet_pt_0``, see :func:`root_branch_names`);
parquet keeps them as they are.

Files are written atomically (a temporary file renamed at the end): an error (a missing
column, NaN/inf features) leaves no partial output.

This is local and single-process. With ``scheduler`` (an address) or ``workers`` (a local
cluster) the files are scored on a Dask cluster instead, by :mod:`diffhep.dask_apply` (an
optional dependency): the same columns and numbers, one output file per partition of
``step_size`` events, ``OUT/<input stem>/part-<k>.parquet`` (or ``.root``).

Example:
    >>> import numpy as np
    >>> check_finite({"x": np.array([0.0, np.nan, np.inf])}, ["x"])
    {'x': 2}
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import sources
from .datasets import DataError
from .onnx_export import ONNX_FORMAT
from .writers import AtomicWriter

__all__ = ["PREFIX", "apply_run", "check_finite", "root_branch_names"]

PREFIX = "diffhep_"
DEFAULT_STEP = 100_000


def check_finite(chunk: dict, columns) -> dict:
    """``{column: number of NaN/inf values}`` of the columns that have any."""
    out = {}
    for c in columns:
        n = int(np.count_nonzero(~np.isfinite(np.asarray(chunk[c], dtype=np.float64))))
        if n:
            out[c] = n
    return out


def _load(run_dir: Path):
    prep_path, model_path = run_dir / "preprocess.json", run_dir / "model.onnx"
    for p in (prep_path, model_path):
        if not p.is_file():
            raise DataError(
                "the run has no ONNX export",
                file=str(p),
                fix=f"train the run, or write it with: diffhep evaluate {run_dir}",
            )
    prep = json.loads(prep_path.read_text())
    if prep.get("format") != ONNX_FORMAT:
        raise DataError(
            f"unknown export format {prep.get('format')!r} (expected {ONNX_FORMAT!r})",
            file=str(prep_path),
            where="format",
            fix="re-export with this diffhep version: diffhep evaluate RUN_DIR",
        )
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = False  # the memory pattern adds a second block from chunk 2 on
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return prep, sess


def root_branch_names(columns) -> dict:
    """``{column: ROOT branch name}``: expressions such as ``Jet_pt[0]`` or
    ``num(Jet_pt) > 0`` are no valid branch names (``[0]`` declares a fixed-size array to
    ROOT), so every run of other characters than letters, digits and ``_`` becomes one ``_``
    (``Jet_pt_0``, ``num_Jet_pt_0``). Names already valid are kept.

    Raises:
        DataError: If two columns get the same branch name.

    Example:
        >>> root_branch_names(["met", "Jet_pt[0]", "num(Jet_pt) > 0"])
        {'met': 'met', 'Jet_pt[0]': 'Jet_pt_0', 'num(Jet_pt) > 0': 'num_Jet_pt_0'}
    """
    out, seen = {}, {}
    for c in columns:
        b = c if re.fullmatch(r"[A-Za-z_]\w*", c) else re.sub(r"\W+", "_", c).strip("_") or "_"
        if b in seen:
            raise DataError(
                f"columns {seen[b]!r} and {c!r} would both be the ROOT branch {b!r}",
                where=c,
                fix="write parquet (--format parquet)",
            )
        out[c], seen[b] = b, c
    return out


class _Writer(AtomicWriter):
    """:class:`~diffhep.writers.AtomicWriter` with valid ROOT branch names for the feature
    expressions (:func:`root_branch_names`)."""

    def write(self, columns) -> None:
        if self.kind == "root":
            names = root_branch_names(columns)
            columns = {names[k]: v for k, v in columns.items()}
        super().write(columns)


def _kind(path: Path) -> str:
    """``"root"`` or ``"parquet"`` by the suffix (only :func:`sources.iterate` is used from
    :mod:`diffhep.sources`, so that it can grow other readers)."""
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


def _columns(prep: dict, keep: Sequence[str]) -> list[str]:
    """The input columns read and copied to the output: the features, then ``keep``."""
    return list(dict.fromkeys([*prep["inputs"]["features"]["names"], *keep]))


def _score_chunk(file, chunk: dict, prep: dict, sess, keep: Sequence[str]) -> dict:
    """The output columns of one chunk ``{column: values}`` (as :func:`sources.iterate`
    yields it): the input columns, then ``diffhep_<output>`` of every model output."""
    names = prep["inputs"]["features"]["names"]
    columns = _columns(prep, keep)
    for c in columns:
        a = np.asarray(chunk[c])
        numeric = np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_  # masks: bool
        if a.ndim != 1 or a.dtype == object or not numeric:
            raise DataError(
                f"column {c!r} is not a flat numeric column ({a.dtype}, shape {a.shape})",
                file=str(file),
                where=c,
                fix="keep and score only flat numeric columns",
            )
    dtype = np.dtype(prep["inputs"]["features"]["dtype"])
    outputs = [o.name for o in sess.get_outputs()]
    x = np.column_stack([np.asarray(chunk[c], dtype=dtype) for c in names])
    result = dict(zip(outputs, sess.run(outputs, {"features": x}), strict=True))
    out = {c: np.asarray(chunk[c]) for c in columns}
    return out | {PREFIX + k: v for k, v in result.items()}


def _empty(prep: dict, sess, keep: Sequence[str]) -> dict:
    """The output columns of no events (their dtypes as in the output of events)."""
    empty = {c: np.zeros(0, np.float64) for c in _columns(prep, keep)}
    kinds = {"score": np.float32, "selected": np.bool_}
    return empty | {
        PREFIX + o.name: np.zeros(0, kinds.get(o.name, np.int64)) for o in sess.get_outputs()
    }


def _score_file(file, writer, prep, sess, tree, step_size, keep) -> int:
    names = prep["inputs"]["features"]["names"]
    columns = _columns(prep, keep)
    bad: dict[str, int] = {}
    n = 0
    for chunk in sources.iterate([file], tree=tree, expressions=columns, step_size=step_size):
        for c, k in check_finite(chunk, names).items():
            bad[c] = bad.get(c, 0) + k
        n += len(chunk[names[0]])
        if bad:  # keep counting, write nothing more
            continue
        writer.write(_score_chunk(file, chunk, prep, sess, keep))
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
    scheduler: str | None = None,
    workers: int | None = None,
) -> list[dict]:
    """Score ``files`` with the run ``run_dir`` into the directory ``out``.

    Local and single-process by default; with ``scheduler`` or ``workers`` the partitions
    of the files are scored on a Dask cluster (:mod:`diffhep.dask_apply`, one output file
    per partition).

    Args:
        run_dir: A run directory with ``model.onnx`` and ``preprocess.json``.
        files: ROOT or parquet files holding the run's features as columns (branches).
        out: Output directory (created).
        tree: TTree of ROOT inputs (default: the only one); also the output tree's name
            (default ``Events``).
        step_size: Events per chunk (per partition on Dask).
        keep: Extra flat columns copied to the output (e.g. event numbers, weights).
        fmt: ``"parquet"`` or ``"root"``; default: the kind of each input.
        scheduler: Address of a Dask scheduler (e.g. ``"tcp://host:8786"``).
        workers: Number of worker processes of a local Dask cluster started (and closed)
            for this call.

    Returns:
        One ``{"input", "output", "events"}`` per file; on Dask one per partition, with its
        ``"partition"`` number and ``"first_entry"`` in the input.

    Raises:
        DataError: Missing run export, file, tree or column, NaN/inf features, an output
            that would overwrite its input, both ``scheduler`` and ``workers``.
        DiffhepError: Dask is asked for but not installed.
    """
    run_dir, out = Path(run_dir), Path(out)
    _check_options(step_size, fmt)
    if scheduler is not None and workers is not None:
        raise DataError(
            "give a scheduler address or a number of local workers, not both",
            where="--scheduler/--workers",
        )
    prep, sess = _load(run_dir)
    _check_keep(keep)
    inputs = _inputs(files)
    if scheduler is not None or workers is not None:
        from .dask_apply import apply_dask

        return apply_dask(
            run_dir, inputs, out, prep=prep, tree=tree, step_size=step_size, keep=keep,
            fmt=fmt, scheduler=scheduler, workers=workers,
        )  # fmt: skip
    plan = []
    for f, kind in inputs:
        target = _output_path(out, f, fmt or kind)
        if target.resolve() == f.resolve() or target in [t for _, t, _ in plan]:
            raise DataError(
                f"output {target} would overwrite an input or another output",
                file=str(f),
                fix="choose another --out directory or rename the inputs",
            )
        plan.append((f, target, fmt or kind))
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for f, target, kind in plan:
        writer = _Writer(target, kind, tree or "Events")
        try:
            n = _score_file(f, writer, prep, sess, tree, step_size, keep)
            writer.commit(_empty(prep, sess, keep))
        except BaseException:
            writer.abort()
            raise
        summary.append({"input": str(f), "output": str(target), "events": n})
    return summary
