"""Event sets for training: loading, validation, train/validation/test split and batches.

An *event set* is a named array of features ``x (n, f)`` with weights ``w (n,)`` scaled to the
expected yield: a nominal sample or a systematic variation. Splits rescale the weights by
the inverse of their fraction, so every split (and every batch) estimates the full yields.

Sources: the built-in neos Gaussian blobs (:mod:`diffhep.problems.blobs`) or ``.npz`` files with an
array ``x`` and optionally ``w`` (one file per event set). Bad inputs (missing file, event
set or array, NaN/inf, empty set, wrong shape) raise :class:`DataError` naming the file and
the array.

Example:
    >>> import numpy as np
    >>> ev = {"s": Events(np.zeros((10, 2), "f4"), np.full(10, 0.5))}
    >>> parts = split(ev, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0)
    >>> len(parts["train"]["s"].w), float(parts["train"]["s"].w.sum())
    (6, 5.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..types import Events

__all__ = ["DataError", "batches", "check_events", "load_npz", "split", "steps_per_epoch"]


def load_npz(path: str | Path, name: str) -> Events:
    """An event set from a ``.npz`` file with ``x`` (n, f) and optional ``w`` (n,)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"event set {name!r}: file not found",
            file=str(path),
            fix="check data.files in the config",
        )
    try:
        with np.load(path) as f:
            if "x" not in f:
                raise DataError(
                    f"event set {name!r}: no array 'x' (has: {', '.join(f.files)})",
                    file=str(path),
                    where="x",
                    fix="store the features as an (n, features) array named 'x'",
                )
            x = np.asarray(f["x"])
            w = np.asarray(f["w"]) if "w" in f else np.ones(len(x))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"event set {name!r}: cannot read ({exc})", file=str(path)) from None
    return check_events(Events(x, w), name, str(path))


def check_events(ev: Events, name: str, file: str | None = None, nfeatures=None) -> Events:
    """Validate one event set and return it as float32 features / float64 weights."""
    x, w = np.asarray(ev.x), np.asarray(ev.w)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(
            f"event set {name!r}: features have shape {x.shape}, expected (n, f)",
            file=file,
            where="x",
        )
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(w.dtype, np.number)):
        raise DataError(
            f"event set {name!r}: features and weights must be numeric (got {x.dtype}, {w.dtype})",
            file=file,
        )
    if len(x) == 0:
        raise DataError(
            f"event set {name!r} is empty", file=file, fix="check the input file or the selection"
        )
    if w.shape != (len(x),):
        raise DataError(
            f"event set {name!r}: weights have shape {w.shape}, expected ({len(x)},)",
            file=file,
            where="w",
        )
    if nfeatures is not None and x.shape[1] != nfeatures:
        raise DataError(
            f"event set {name!r} has {x.shape[1]} features, expected {nfeatures}",
            file=file,
            where="x",
        )
    for arr, label in ((x, "x"), (w, "w")):
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise DataError(
                f"event set {name!r}: {int(bad.sum())} NaN/inf values in "
                f"'{label}' ({len(rows)} events, first at index {rows[0]})",
                file=file,
                where=label,
                fix="remove or repair these events before training",
            )
    return Events(x.astype(np.float32), w.astype(np.float64))


def _stream(events, same_as) -> dict:
    """Random-stream index of each event set: its rank in sorted order, or that of the set
    it shares its events with (``same_as``: e.g. a weight variation -> its nominal sample)."""
    rank = {name: i for i, name in enumerate(sorted(events))}
    return {name: rank[(same_as or {}).get(name, name)] for name in events}


def split(
    events: Mapping[str, Events], fractions: Mapping[str, float], seed: int, same_as=None
) -> dict:
    """Random split of every event set; weights are divided by the split's fraction. Sets in
    ``same_as`` (``{set: other set of the same events}``) are split like the other set."""
    out = {k: {} for k in fractions}
    stream = _stream(events, same_as)
    for name, ev in sorted(events.items()):
        i = stream[name]
        n = len(ev.w)
        perm = np.random.default_rng([seed, 7919, i]).permutation(n)
        start = 0
        keys = list(fractions)
        for j, k in enumerate(keys):
            stop = n if j == len(keys) - 1 else start + round(fractions[k] * n)
            idx = np.sort(perm[start:stop])
            if len(idx) == 0:
                raise DataError(
                    f"event set {name!r}: the {k} split is empty ({n} events)",
                    where=f"data.split.{k}",
                    fix=f"use more events or a larger data.split.{k} (the fractions sum to 1)",
                )
            frac = len(idx) / n
            out[k][name] = Events(ev.x[idx], ev.w[idx] / frac)
            start = stop
    return out


def steps_per_epoch(events: Mapping[str, Events], batch_size: int) -> int:
    """Steps that show the largest event set once (at least one)."""
    return max(1, max(len(ev.w) for ev in events.values()) // batch_size)


def batches(
    events: Mapping[str, Events], batch_size: int, seed: int, epoch: int, same_as=None
) -> Iterator:
    """The batches of one epoch: ``min(batch_size, n)`` events of every set per step,
    weights scaled so each batch estimates the full yield. Deterministic in (seed, epoch).
    Sets in ``same_as`` get the same events per batch as the set they name."""
    n_steps = steps_per_epoch(events, batch_size)
    perms = {}
    stream = _stream(events, same_as)
    for name, ev in sorted(events.items()):
        i = stream[name]
        rng = np.random.default_rng([seed, epoch, i])
        n = len(ev.w)
        reps = -(-n_steps * min(batch_size, n) // n)
        perms[name] = np.concatenate([rng.permutation(n) for _ in range(reps)])
    for step in range(n_steps):
        batch = {}
        for name, ev in events.items():
            n = len(ev.w)
            b = min(batch_size, n)
            idx = perms[name][step * b : (step + 1) * b]
            batch[name] = Events(ev.x[idx], ev.w[idx] * (n / b))
        yield batch
