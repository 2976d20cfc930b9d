"""Scoring events with a run's ONNX export, one chunk at a time (local and Dask apply).

:func:`load_export` opens ``model.onnx`` and ``preprocess.json`` (checked: a damaged file is a
:class:`~diffhep.errors.DataError` naming it); :func:`score_chunk` turns one chunk of input
columns into the output columns (features, weight columns, ``diffhep_score``,
``diffhep_selected``, ``diffhep_bin_<channel>``, ``diffhep_weight``); :func:`open_writer`
opens the atomic output file with valid ROOT branch names (:func:`root_branch_names`).

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

from ..errors import DataError
from ..writers import AtomicWriter
from . import sources
from .onnx.export import ONNX_FORMAT
from .selection import PREFIX

__all__ = [
    "Writer",
    "check_finite",
    "empty_output",
    "expressions",
    "input_columns",
    "load_export",
    "open_writer",
    "output_tree",
    "root_branch_names",
    "score_chunk",
]


def check_finite(chunk: dict, columns) -> dict:
    """``{column: number of NaN/inf values}`` of the columns that have any."""
    out = {}
    for c in columns:
        n = int(np.count_nonzero(~np.isfinite(np.asarray(chunk[c], dtype=np.float64))))
        if n:
            out[c] = n
    return out


def _reexport(run_dir) -> str:
    return f"re-export the run: diffhep evaluate {run_dir}"


def _load_prep(run_dir: Path, prep_path: Path) -> dict:
    """``preprocess.json``, checked: the format and the feature names and dtype."""
    try:
        prep = json.loads(prep_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"cannot read the export description ({exc})",
            file=str(prep_path),
            fix=_reexport(run_dir),
        ) from None
    if not isinstance(prep, dict) or prep.get("format") != ONNX_FORMAT:
        got = prep.get("format") if isinstance(prep, dict) else type(prep).__name__
        raise DataError(
            f"unknown export format {got!r} (expected {ONNX_FORMAT!r})",
            file=str(prep_path),
            where="format",
            fix="re-export with this diffhep version: diffhep evaluate RUN_DIR",
        )
    try:
        features = prep["inputs"]["features"]
        ok = (
            isinstance(features["names"], list)
            and len(features["names"]) > 0
            and all(isinstance(n, str) for n in features["names"])
        )
        np.dtype(features["dtype"])
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(
            "the export description is damaged (no valid feature names and dtype)",
            file=str(prep_path),
            where="inputs.features",
            fix=_reexport(run_dir),
        )
    return prep


def load_export(run_dir: Path):
    if not Path(run_dir).is_dir():  # (not "the run has no ONNX export" of a missing run)
        raise DataError(
            "the run directory does not exist"
            if not Path(run_dir).exists()
            else "this is no run directory (a file)",
            file=str(run_dir),
            fix="give the directory that 'diffhep train CONFIG --out DIR' wrote",
        )
    prep_path, model_path = run_dir / "preprocess.json", run_dir / "model.onnx"
    for p in (prep_path, model_path):
        if not p.is_file():
            raise DataError(
                "the run has no ONNX export",
                file=str(p),
                fix=f"train the run, or write it with: diffhep evaluate {run_dir}",
            )
    prep = _load_prep(run_dir, prep_path)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = False  # the memory pattern adds a second block from chunk 2 on
    try:
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own errors (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load the ONNX model, the file is damaged or not an ONNX model ({first})",
            file=str(model_path),
            fix=_reexport(run_dir),
        ) from None
    inputs = sess.get_inputs()
    width = len(prep["inputs"]["features"]["names"])
    if [i.name for i in inputs] != ["features"] or inputs[0].shape[-1] not in (width, None):
        raise DataError(
            f"the ONNX model does not take the {width} features of preprocess.json",
            file=str(model_path),
            fix=_reexport(run_dir),
        )
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


class Writer(AtomicWriter):
    """:class:`~diffhep.writers.AtomicWriter` with valid ROOT branch names for the feature
    expressions (:func:`root_branch_names`)."""

    def write(self, columns) -> None:
        if self.kind == "root":
            names = root_branch_names(columns)
            columns = {names[k]: v for k, v in columns.items()}
        super().write(columns)


def input_columns(prep: dict, keep: Sequence[str], selection=None) -> list[str]:
    """The input columns read and copied to the output: the features, the weight columns
    of ``selection``, then ``keep``."""
    weights = selection.weight_columns if selection is not None else ()
    return list(dict.fromkeys([*prep["inputs"]["features"]["names"], *weights, *keep]))


def expressions(prep: dict, keep: Sequence[str], selection=None) -> list[str]:
    """What is read from the inputs: the copied columns, the filter and the weight."""
    extra = selection.expressions() if selection is not None else []
    return list(dict.fromkeys([*input_columns(prep, keep, selection), *extra]))


def score_chunk(file, chunk: dict, prep: dict, sess, keep: Sequence[str], selection=None):
    """The output columns of one chunk ``{column: values}`` (as :func:`sources.iterate`
    yields it): the input columns, then ``diffhep_<output>`` of every model output (the
    selection and bins with the sample filter of ``selection``) and ``diffhep_weight``."""
    names = prep["inputs"]["features"]["names"]
    weights = set(selection.weight_columns if selection is not None else ()) - {*names, *keep}
    columns = []
    for c in input_columns(prep, keep, selection):
        a = chunk[c]
        numeric = isinstance(a, np.ndarray) and (
            np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_  # masks: bool
        )
        if numeric and a.ndim == 1:
            columns.append(c)
        elif c not in weights:  # a jagged weight column (e.g. per-object factors): not copied
            kind = f"{a.dtype}, shape {a.shape}" if isinstance(a, np.ndarray) else str(a.type)
            raise DataError(
                f"column {c!r} is not a flat numeric column ({kind})",
                file=str(file),
                where=c,
                fix="keep and score only flat numeric columns",
            )
    dtype = np.dtype(prep["inputs"]["features"]["dtype"])
    outputs = [o.name for o in sess.get_outputs()]
    x = np.column_stack([np.asarray(chunk[c], dtype=dtype) for c in names])
    result = dict(zip(outputs, sess.run(outputs, {"features": x}), strict=True))
    if selection is not None and selection.filter:
        passes = np.asarray(chunk[selection.filter])
        passes = passes if passes.dtype == np.bool_ else passes != 0
        result["selected"] = np.logical_and(result["selected"], passes)
        for k in outputs:
            if k.startswith("bin_"):
                result[k] = np.where(passes, result[k], -1).astype(result[k].dtype)
    out = {c: np.asarray(chunk[c]) for c in columns}
    out |= {PREFIX + k: v for k, v in result.items()}
    if selection is not None and selection.weight:
        out[PREFIX + "weight"] = np.asarray(chunk[selection.weight], np.float64)
    return out


def empty_output(prep: dict, sess, keep: Sequence[str], selection=None) -> dict:
    """The output columns of no events (their dtypes as in the output of events)."""
    empty = {c: np.zeros(0, np.float64) for c in input_columns(prep, keep, selection)}
    kinds = {"score": np.float32, "selected": np.bool_}
    empty |= {PREFIX + o.name: np.zeros(0, kinds.get(o.name, np.int64)) for o in sess.get_outputs()}
    if selection is not None and selection.weight:
        empty[PREFIX + "weight"] = np.zeros(0, np.float64)
    return empty


def output_tree(file: Path, kind: str, tree: str | None) -> tuple[str, bool]:
    """``(tree name, RNTuple?)`` of the ROOT output of an input: a ROOT input's TTree or
    RNTuple is mirrored (name and kind); other inputs give the TTree ``tree`` or ``Events``."""
    if kind == "root":
        name, what = sources.tree_kind(file, tree)
        return name, what == "RNTuple"
    return tree or "Events", False


def open_writer(target: Path, kind: str, tree: tuple[str, bool], meta: dict) -> Writer:
    desc = meta["columns"].get(PREFIX + "selected", "")
    return Writer(
        target, kind, tree[0], rntuple=tree[1], metadata=json.dumps(meta), title=desc[:200]
    )
