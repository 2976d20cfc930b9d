"""``diffhep reweight``: learned positive weights for a sample, written next to the original.

:func:`reweight_arrays` is the workflow on arrays (any reader plugs in: it takes features and
signed weights): learn ``E[w | x]`` (:func:`diffhep.reweight.learn_positive_weights`,
cross-fitted, optionally resampled) and verify the new weights
(:func:`diffhep.weight_report.verify`). :func:`reweight_npz` reads and writes the ``.npz``
event files that diffhep reads (``x`` and ``w``): every original array is kept, the new
weights are added as a new array next to ``w``, and the report (markdown, JSON, plots) goes
to a directory beside the output. Bad input raises :class:`~diffhep.datasets.DataError`
naming the file and the array or option before anything is trained; nothing is written if
anything fails (the output file is replaced atomically).

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

from .datasets import DataError, check_events
from .pipeline import Events
from .weight_report import _region_mask, verify, write_report

__all__ = ["reweight_arrays", "reweight_npz"]


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
        method: ``classifier`` or ``regression`` (:mod:`diffhep.reweight`).
        resampling: Also resample (Nachman-Thaler); the new weights are then the resampled
            ones (0 for dropped events).
        seed: Seeds the network and the resampling.
        fit_options: Passed to :func:`diffhep.reweight.fit_mean_weight`.

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
    write every original array plus ``column`` to ``out`` (default: in place) and the report
    to ``report_dir`` (default ``<out stem>_reweight/``). Nothing is written if anything fails.

    Returns:
        ``{"output", "report", "column", "summary"}``.
    """
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise DataError("file not found", file=file, fix="give an existing .npz file")
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
                fix="store x and w arrays, or name the weights with --weights-key",
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
    nf = x.shape[1]
    names = list(names) if names else [f"x{i}" for i in range(nf)]
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
            where=weights_key,
        )
    new, report = reweight_arrays(x, w, names=names, inputs=cols, regions=regions, **options)
    out = Path(out) if out is not None else path
    report["input_file"], report["output_file"], report["column"] = file, str(out), column
    report_dir = Path(report_dir) if report_dir else out.with_name(out.stem + "_reweight")
    arrays[column] = new
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
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
