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

Files are written atomically (a temporary file renamed at the end): an error (a missing
column, NaN/inf features) leaves no partial output.

This is local and single-process. With ``scheduler`` (an address) or ``workers`` (a local
cluster) the files are scored on a Dask cluster instead, by :mod:`diffhep.io.dask_apply` (an
optional dependency): the same columns and numbers, one output file per partition of
``step_size`` events, ``OUT/<input stem>/part-<k>.parquet`` (or ``.root``).

Example:
    >>> import numpy as np
    >>> check_finite({"x": np.array([0.0, np.nan, np.inf])}, ["x"])
    {'x': 2}
    >>> sel = AnalysisSelection(sample="ttbar", filter="njet >= 2", weight="w * sf")
    >>> sel.expressions(), sel.weight_columns
    (['njet >= 2', 'w * sf'], ('sf', 'w'))
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..writers import METADATA_KEY, AtomicWriter, check_writable_dir, same_file
from . import sources
from .onnx.export import ONNX_FORMAT

__all__ = [
    "PREFIX",
    "AnalysisSelection",
    "analysis_selection",
    "apply_run",
    "check_finite",
    "read_metadata",
    "root_branch_names",
]

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


def _load(run_dir: Path):
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


# ----------------------------------------------------------------- the analysis selection
@dataclass(frozen=True)
class AnalysisSelection:
    """What ``diffhep_selected`` and the weight columns of an output are, from the run's
    config: the sample whose filter applies (None: no sample chosen), its ``filter``
    expression (None: no filter), the ``weight`` expression written as ``diffhep_weight``
    (None: none applies) and the ``weight_expressions`` whose columns are copied."""

    sample: str | None = None
    filter: str | None = None
    weight: str | None = None
    weight_expressions: tuple[str, ...] = ()
    constants: dict = field(default_factory=dict)
    note: str = ""

    @property
    def weight_columns(self) -> tuple[str, ...]:
        """The file columns the weight expressions read (constants excluded), sorted."""
        exprs = [*self.weight_expressions, *([self.weight] if self.weight else [])]
        return tuple(c for c in sources.columns_of(exprs) if c not in self.constants)

    def expressions(self) -> list[str]:
        """The expressions evaluated besides the copied columns: filter, weight."""
        return [e for e in (self.filter, self.weight) if e]

    def describe(self, prep: dict) -> dict:
        """``{column: meaning}`` of the ``diffhep_*`` output columns."""
        cuts = (prep.get("selection") or {}).get("expression") or "none"
        if self.filter:
            who = f"of sample {self.sample!r}" if self.sample else "shared by every sample"
            sel = f"the analysis selection: the filter {who} ({self.filter}) AND the cuts"
        else:
            sel = "the analysis selection: the selection cuts"
        out = {
            PREFIX + "selected": f"{sel} ({cuts})" + (f"; {self.note}" if self.note else ""),
        }
        if prep.get("observable") is not None:
            out[PREFIX + "score"] = "the neural observable in [0, 1], for every event"
        for ch in prep.get("channels", []):
            out[PREFIX + ch["output"]] = (
                f"bin of channel {ch['name']!r} (0 .. {len(ch['edges']) - 2}) of events "
                f"passing {PREFIX}selected (and the channel's region), -1 otherwise"
            )
        if self.weight:
            who = f"of sample {self.sample!r}" if self.sample else "of every sample"
            out[PREFIX + "weight"] = (
                f"the event weight {who}: {self.weight} (before the config's yield/scale "
                "normalisation)"
            )
        return out


def _read_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the run's config ({exc})", file=str(path)) from None
    return cfg if isinstance(cfg, dict) else {}


def analysis_selection(run_dir, sample: str | None = None) -> AnalysisSelection:
    """The :class:`AnalysisSelection` of a run (its ``config.yaml``) for ``sample``.

    ``sample``: the sample whose filter (and weight) applies. By default: the filter all
    samples share (none if their filters differ, which the metadata note says); the weight
    expression all samples share, and the columns of every sample's weight expressions.
    Runs on generated or ``.npz`` data (no ntuple samples) have no filter and no weights.

    Raises:
        DataError: ``sample`` is not a sample of the run.
    """
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    samples = [s for s in (cfg.get("analysis") or {}).get("samples") or [] if isinstance(s, dict)]
    names = [s.get("name") for s in samples]
    if sample is not None and sample not in names:
        raise DataError(
            f"no sample {sample!r} in the run's config",
            file=str(run_dir / "config.yaml"),
            where="--sample",
            fix=f"give one of: {', '.join(map(str, names)) or '(the run has no samples)'}",
        )
    ntuples = any(s.get("files") for s in samples)
    if not ntuples:
        return AnalysisSelection(sample=sample, note="the run has no ntuple samples: no filter")
    data = cfg.get("data") or {}
    constants = dict(data.get("constants") or {})
    chosen = [s for s in samples if s.get("name") == sample] if sample else samples
    variations = {}
    for sys in (cfg.get("analysis") or {}).get("shape_systematics") or []:
        for v in (sys.get("up"), sys.get("down")):
            if isinstance(v, dict) and v.get("weight"):
                variations.setdefault(sys.get("sample"), []).append(v["weight"])
    exprs = []
    for s in chosen:
        exprs += [s.get("weight") or "1", *variations.get(s.get("name"), [])]
    filters = {s.get("filter") or None for s in chosen}
    weights = {s.get("weight") or "1" for s in chosen}
    note = ""
    if len(filters) > 1:
        note = (
            "the samples' filters differ, none is applied; choose the sample whose filter "
            "applies with --sample (" + ", ".join(map(str, names)) + ")"
        )
    return AnalysisSelection(
        sample=sample,
        filter=next(iter(filters)) if len(filters) == 1 else None,
        weight=next(iter(weights)) if len(weights) == 1 else None,
        weight_expressions=tuple(dict.fromkeys(exprs)),
        constants=constants,
        note=note,
    )


def metadata(run_dir, prep: dict, selection: AnalysisSelection) -> dict:
    """The description written into every output (:func:`read_metadata` reads it)."""
    return {
        "producer": "diffhep apply",
        "run": str(Path(run_dir).resolve()),
        "sample": selection.sample,
        "filter": selection.filter,
        "cuts": (prep.get("selection") or {}).get("expression"),
        "weight": selection.weight,
        "weight_columns": list(selection.weight_columns),
        "columns": selection.describe(prep),
    }


def read_metadata(path) -> dict | None:
    """The ``diffhep_metadata`` of an output of ``diffhep apply`` (parquet or ROOT), or None."""
    path = Path(path)
    if path.suffix.lower() == ".root":
        import uproot

        with uproot.open(path) as f:
            if METADATA_KEY not in f:
                return None
            return json.loads(str(f[METADATA_KEY]))
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY.encode())
    return json.loads(raw) if raw else None


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


def _columns(prep: dict, keep: Sequence[str], selection=None) -> list[str]:
    """The input columns read and copied to the output: the features, the weight columns
    of ``selection``, then ``keep``."""
    weights = selection.weight_columns if selection is not None else ()
    return list(dict.fromkeys([*prep["inputs"]["features"]["names"], *weights, *keep]))


def _expressions(prep: dict, keep: Sequence[str], selection=None) -> list[str]:
    """What is read from the inputs: the copied columns, the filter and the weight."""
    extra = selection.expressions() if selection is not None else []
    return list(dict.fromkeys([*_columns(prep, keep, selection), *extra]))


def _score_chunk(file, chunk: dict, prep: dict, sess, keep: Sequence[str], selection=None):
    """The output columns of one chunk ``{column: values}`` (as :func:`sources.iterate`
    yields it): the input columns, then ``diffhep_<output>`` of every model output (the
    selection and bins with the sample filter of ``selection``) and ``diffhep_weight``."""
    names = prep["inputs"]["features"]["names"]
    weights = set(selection.weight_columns if selection is not None else ()) - {*names, *keep}
    columns = []
    for c in _columns(prep, keep, selection):
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


def _empty(prep: dict, sess, keep: Sequence[str], selection=None) -> dict:
    """The output columns of no events (their dtypes as in the output of events)."""
    empty = {c: np.zeros(0, np.float64) for c in _columns(prep, keep, selection)}
    kinds = {"score": np.float32, "selected": np.bool_}
    empty |= {PREFIX + o.name: np.zeros(0, kinds.get(o.name, np.int64)) for o in sess.get_outputs()}
    if selection is not None and selection.weight:
        empty[PREFIX + "weight"] = np.zeros(0, np.float64)
    return empty


def _score_file(file, writer, prep, sess, tree, step_size, keep, selection=None) -> int:
    names = prep["inputs"]["features"]["names"]
    exprs = _expressions(prep, keep, selection)
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
        writer.write(_score_chunk(file, chunk, prep, sess, keep, selection))
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


def _output_tree(file: Path, kind: str, tree: str | None) -> tuple[str, bool]:
    """``(tree name, RNTuple?)`` of the ROOT output of an input: a ROOT input's TTree or
    RNTuple is mirrored (name and kind); other inputs give the TTree ``tree`` or ``Events``."""
    if kind == "root":
        name, what = sources.tree_kind(file, tree)
        return name, what == "RNTuple"
    return tree or "Events", False


def _writer(target: Path, kind: str, tree: tuple[str, bool], meta: dict) -> _Writer:
    desc = meta["columns"].get(PREFIX + "selected", "")
    return _Writer(
        target, kind, tree[0], rntuple=tree[1], metadata=json.dumps(meta), title=desc[:200]
    )


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
    prep, sess = _load(run_dir)
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
        plan.append((f, target, fmt or kind, _output_tree(f, kind, tree)))
    check_writable_dir(out, where="--out")
    summary = []
    for f, target, kind, out_tree in plan:
        writer = _writer(target, kind, out_tree, meta)
        try:
            n = _score_file(f, writer, prep, sess, tree, step_size, keep, selection)
            writer.commit(_empty(prep, sess, keep, selection))
        except BaseException:
            writer.abort()
            raise
        summary.append({"input": str(f), "output": str(target), "events": n})
    return summary
