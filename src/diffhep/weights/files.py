"""``diffhep reweight``: learned positive weights for a sample, written next to the original.

:func:`reweight_arrays` is the workflow on arrays (any reader plugs in: it takes features and
signed weights): learn ``E[w | x]`` (:func:`diffhep.weights.reweight.learn_positive_weights`,
cross-fitted, optionally resampled) and verify the new weights
(:func:`diffhep.weights.verify.verify`). :func:`reweight_file` does it for a file of any
format that diffhep reads (:mod:`diffhep.io.sources`): ROOT TTrees and RNTuples, parquet, HDF5,
CSV and ``.npz``. The signed weight is a column or an expression (``genWeight * xsec``), the
features of the report are columns or expressions (default: every flat numeric column but
the weight's), and the output is a file of the same format (default
``<stem>_reweighted.<ext>`` beside the input, which is never overwritten: an ``out`` that is
the input, also through a symbolic link or another relative path, is refused) holding every
original column unchanged plus the new weight column (:mod:`diffhep.io.columns` copies the
file; ``.npz`` files with ``x`` and ``w`` arrays are :func:`reweight_npz`).

The report (markdown, JSON, plots) goes to a directory beside the output. Bad input (missing
file, tree or column, NaN/inf weights or features, an existing output column, options out of
range, an output that is the input or cannot be written) raises
:class:`~diffhep.io.datasets.DataError` naming the file, the column or option and the fix
before anything is trained; nothing is written if anything fails (the output is written to a
temporary file and renamed).

Example:
    >>> import numpy as np
    >>> x = np.array([[15.0], [23.0], [15.0], [15.0], [90.0]])
    >>> w = np.array([1.0, 1.0, 1.0, -1.0, 1.0])
    >>> new, report = reweight_arrays(x, w, folds=1, hidden=(16,), epochs=300,
    ...                               learning_rate=0.05, bins=2, regions={})
    >>> [round(float(v), 1) for v in new], report["negative_fraction"]["after"]
    ([0.3, 1.0, 0.3, 0.3, 1.0], 0.0)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import sources
from ..io.columns import FORMATS, file_format, layout, write_with_column
from ..io.datasets import check_events
from ..io.readers import few
from ..types import Events
from ..writers import check_writable_dir, same_file
from .verify import _region_mask, verify, write_report

__all__ = ["FORMATS", "default_output", "reweight_arrays", "reweight_file", "reweight_npz"]


def reweight_arrays(
    x,
    w,
    *,
    names=None,
    inputs=None,
    regions=None,
    bins=20,
    method="regression",
    resampling=False,
    seed=0,
    **fit_options,
):
    """Learn positive weights for ``(x, w)`` and verify them.

    Args:
        x: Features ``(n, f)``.
        w: Signed weights ``(n,)``.
        names: Feature names.
        inputs: Columns used as inputs of the weight network (default: all).
        regions: ``{name: expression}`` for the per-region sums.
        bins: Bins per feature in the report.
        method: ``classifier`` or ``regression`` (:mod:`diffhep.weights.reweight`).
        resampling: Also resample (Nachman-Thaler); the new weights are then the resampled
            ones (0 for dropped events).
        seed: Seeds the network and the resampling.
        fit_options: Passed to :func:`diffhep.weights.reweight.fit_mean_weight`.

    Returns:
        ``(new_weights, report)``.
    """
    from .reweight import learn_positive_weights

    x = np.asarray(x)
    x = x[:, None] if x.ndim == 1 else x
    inputs = list(range(x.shape[1])) if inputs is None else [int(i) for i in inputs]
    res = learn_positive_weights(
        x, w, method=method, inputs=inputs, resampling=resampling, seed=seed, **fit_options
    )
    report = verify(x, w, res.weights, names=names, inputs=inputs, regions=regions, bins=bins)
    report["learning"] = {
        "method": method,
        "resampling": resampling,
        "negative_mean_weight_fraction": res.negative_fraction,
        "clipped_events": res.clipped,
    }
    if res.kept is not None:
        report["learning"]["kept_fraction"] = float(np.mean(res.kept))
    return res.weights, report


def _columns(spec, names, option, file=None):
    """Column indices from names or indices (``--inputs x0,2``)."""
    out = []
    for item in spec:
        item = str(item).strip()
        if item in names:
            out.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            out.append(int(item))
        else:
            raise DataError(
                f"{item!r} is not a feature",
                file=file,
                where=option,
                fix=f"use names or column numbers of: {', '.join(names)}",
            )
    return out


def default_output(path) -> Path:
    """``<stem>_reweighted<suffix>`` beside ``path``: the default output of a file."""
    path = Path(path)
    return path.with_name(f"{path.stem}_reweighted{path.suffix}")


#: Fit options of ``diffhep reweight`` that must be positive integers: option -> fix.
_POSITIVE = {
    "folds": "give --folds 2 (two-fold cross-fitting, the default) or 1 (one network)",
    "epochs": "give --epochs N >= 1, or leave it out (60, or enough for 800 steps)",
    "bins": "give --bins N >= 1 (bins per feature in the report, default 20)",
    "batch_size": "give a batch size >= 1",
}


def _check_options(file, options: dict) -> None:
    """Refuse options out of range (``--folds 0``, ``--epochs 0``, ``--bins 0``, a hidden
    width < 1) before anything is read or trained."""
    for key, fix in _POSITIVE.items():
        v = options.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise DataError(
                f"--{key.replace('_', '-')} must be an integer >= 1, got {v!r}",
                file=file,
                where=f"--{key.replace('_', '-')}",
                fix=fix,
            )
    hidden = options.get("hidden")
    if hidden is not None and any(int(h) < 1 for h in hidden):
        raise DataError(
            f"hidden layer widths must be >= 1, got {','.join(map(str, hidden))}",
            file=file,
            where="--hidden",
            fix="give positive widths, e.g. --hidden 32,32",
        )


def _check_folds(file, folds, n: int) -> None:
    if folds is not None and folds > n:
        raise DataError(
            f"--folds {folds} is more than the {n} events",
            file=file,
            where="--folds",
            fix=f"give --folds between 1 and {n}",
        )


def _check_output(path: Path, out: Path, report_dir) -> None:
    """The output is not the input (symbolic links and relative paths resolved) and it and
    the report can be written; nothing is created."""
    if same_file(out, path):
        raise DataError(
            f"the output {out} is the input file: diffhep reweight never overwrites its input",
            file=str(path),
            where="--out",
            fix=f"give another --out (default: {default_output(path)})",
        )
    if out.is_dir():
        raise DataError(
            f"the output {out} is a directory",
            file=str(path),
            where="--out",
            fix=f"give a file name, e.g. {out / default_output(path).name}",
        )
    check_writable_dir(out.parent, where="--out", create=False)
    report = Path(report_dir) if report_dir else out.with_name(out.stem + "_reweight")
    check_writable_dir(report, where="--report", create=False)


def _prepare(x, w, names, inputs, regions, file, weight_where):
    """Check names, inputs, regions and the sum of weights before the training; returns
    ``(names, input columns)``."""
    nf = x.shape[1]
    if len(names) != nf:
        raise DataError(
            f"--names gives {len(names)} names for {nf} features",
            file=file,
            where="names",
            fix=f"give {nf} comma-separated names",
        )
    cols = _columns(inputs, names, "--inputs", file) if inputs else list(range(nf))
    for expr in (regions or {}).values():  # fail before the (long) training
        try:
            _region_mask(x[:1], names, expr)
        except (DataError, ValueError) as exc:
            raise DataError(
                str(exc), file=file, where="--region", fix=f"e.g. --region 'low={names[0]} < 0'"
            ) from None
    if float(np.sum(w)) <= 0:
        raise DataError(
            f"the sum of weights is {np.sum(w):.4g} <= 0: no positive weights can reproduce it",
            file=file,
            where=weight_where,
        )
    return names, cols


def _publish(report, tmp: Path, out: Path, column, report_dir, plots) -> dict:
    """Write the report, then rename the complete temporary output ``tmp`` to ``out``."""
    report_dir = Path(report_dir) if report_dir else out.with_name(out.stem + "_reweight")
    try:
        md = write_report(report, report_dir, plots=plots)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return {
        "output": str(out),
        "report": str(md),
        "column": column,
        "summary": {k: report[k] for k in ("negative_fraction", "ess", "global")},
    }


def reweight_npz(
    path,
    out=None,
    *,
    weights_key: str = "w",
    column: str = "w_learned",
    names=None,
    inputs=None,
    regions=None,
    report_dir=None,
    plots: bool = True,
    **options,
) -> dict:
    """``diffhep reweight``: read ``x`` and ``w`` from an ``.npz`` file, learn positive weights,
    write every original array plus ``column`` to ``out`` (default
    :func:`default_output`) and the report to ``report_dir`` (default
    ``<out stem>_reweight/``). Nothing is written if anything fails.

    Returns:
        ``{"output", "report", "column", "summary"}``.
    """
    path = Path(path)
    file = str(path)
    _check_options(file, options)
    if not path.is_file():
        raise DataError("file not found", file=file, fix="give an existing .npz file")
    out = Path(out) if out is not None else default_output(path)
    _check_output(path, out, report_dir)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except Exception as exc:
        raise DataError(
            f"cannot read as .npz ({exc})", file=file, fix="store the events with numpy.savez"
        ) from None
    for key, what in (("x", "the features (n, f)"), (weights_key, "the signed weights (n,)")):
        if key not in arrays:
            raise DataError(
                f"no array {key!r} ({what}); the file has: {', '.join(arrays) or 'nothing'}",
                file=file,
                where=key,
                fix="store x and w arrays, name the weights with --weights-key, or read "
                "1-D arrays as columns with --weight",
            )
    if column in arrays:
        raise DataError(
            f"array {column!r} exists already",
            file=file,
            where=column,
            fix="choose another name with --column",
        )
    ev = check_events(Events(arrays["x"], arrays[weights_key]), path.stem, file)
    x, w = np.asarray(ev.x, np.float64), np.asarray(ev.w, np.float64)
    names = list(names) if names else [f"x{i}" for i in range(x.shape[1])]
    names, cols = _prepare(x, w, names, inputs, regions, file, weights_key)
    _check_folds(file, options.get("folds"), len(x))
    new, report = reweight_arrays(x, w, names=names, inputs=cols, regions=regions, **options)
    report["input_file"], report["output_file"], report["column"] = file, str(out), column
    arrays[column] = new
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return _publish(report, tmp, out, column, report_dir, plots)


# ------------------------------------------------------------------ columnar files


def reweight_file(
    path,
    out=None,
    *,
    weight: str | None = None,
    weights_key: str = "w",
    features=None,
    tree: str | None = None,
    column: str = "w_learned",
    names=None,
    inputs=None,
    regions=None,
    report_dir=None,
    plots: bool = True,
    step_size: int = sources.DEFAULT_STEP,
    **options,
) -> dict:
    """``diffhep reweight`` for a ROOT, parquet, HDF5, CSV or ``.npz`` file (see the module
    docstring): learn positive weights for the signed weight ``weight`` (a column or an
    expression) with the report histogramming ``features`` (columns or expressions; default
    every flat numeric column but the weight's), write every original column plus
    ``column`` to ``out`` (default :func:`default_output`, same format) and the report to
    ``report_dir`` (default ``<out stem>_reweight/``). An ``.npz`` file without ``weight``
    or ``features`` is read as ``x`` and ``weights_key`` arrays (:func:`reweight_npz`).

    Returns:
        ``{"output", "report", "column", "summary"}``.
    """
    path = Path(path)
    file = str(path)
    kind = file_format(path)
    _check_options(file, options)
    out = Path(out) if out is not None else default_output(path)
    if file_format(out, "--out") != kind:
        raise DataError(
            f"the output {out} is not a {kind} file like the input",
            file=file,
            where="--out",
            fix=f"give --out a {path.suffix} name",
        )
    if kind == "npz" and weight is None and features is None:
        return reweight_npz(
            path, out, weights_key=weights_key, column=column, names=names, inputs=inputs,
            regions=regions, report_dir=report_dir, plots=plots, **options,
        )  # fmt: skip
    if not path.is_file():
        raise DataError("file not found", file=file, fix="check the path")
    _check_output(path, out, report_dir)
    tree, flat, every, extra = layout(kind, path, tree)
    if weight is None:
        raise DataError(
            "which column is the signed event weight?",
            file=file,
            where="--weight",
            fix=f"give --weight COLUMN or an expression; the file has: {few(every)}",
        )
    if column in every:
        raise DataError(
            f"column {column!r} exists already",
            file=file,
            where=column,
            fix="choose another name with --column",
        )
    wcols = set(sources.columns_of([weight]))
    features = list(features) if features else [c for c in flat if c not in wcols]
    if not features:
        raise DataError(
            "no feature to histogram: the file has no flat numeric column but the weight's",
            file=file,
            where="--features",
        )
    x, ws = sources.load_sample(
        [str(path)],
        features=features,
        weights={"w": weight},
        tree=tree,
        step_size=step_size,
        name=path.stem,
    )
    w = ws["w"]
    names = list(names) if names else list(features)
    names, cols = _prepare(x, w, names, inputs, regions, file, weight)
    _check_folds(file, options.get("folds"), len(x))
    new, report = reweight_arrays(x, w, names=names, inputs=cols, regions=regions, **options)
    report["input_file"], report["output_file"], report["column"] = file, str(out), column
    report["weight"] = weight
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_with_column(kind, path, out, tree, extra, column, new, step_size)
    return _publish(report, tmp, out, column, report_dir, plots)
