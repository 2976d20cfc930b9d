"""Inputs far outside the training distribution, found while ``diffhep apply`` scores them.

The run's ``preprocess.json`` holds the training mean and standard deviation of every
feature (``standardisation``: the network sees ``(x - mean) / std``). An event is *far out*
in a feature when ``|x - mean| > FAR_STD * std`` (:data:`FAR_STD` = 10), and a feature of a
file is reported when more than :data:`FAR_FRACTION` (1 %) of its events are far out in it.

Why these numbers: by Chebyshev's inequality at most ``1 / k**2`` of any distribution lies
more than ``k`` standard deviations from its mean, whatever its shape (tails, discrete
values, skew). With ``k = 10`` that is 1 %: more than 1 % of events beyond 10 standard
deviations cannot come from the training distribution itself, so the warning does not fire
on inputs like the training data (no false alarm for heavy-tailed kinematics such as MET or
HT), while a fill value (e.g. ``Jet_btagDeepFlavB = -3000``, training mean 0.25, std 0.31:
~9800 standard deviations out), a unit mistake (MeV for GeV) or a wrong branch is found. The
network's output there is an extrapolation (a saturated sigmoid, typically exactly 0 or 1).
Only the training mean and std are stored in ``preprocess.json`` (not the minimum and
maximum), so runs exported before this check are covered too.

Deep Sets columns of absent objects (mask <= 0.5; their values are padding the model
ignores) are not counted. Runs without a neural observable (cuts alone) have no
standardisation and are not checked.

The check is vectorised per chunk (one comparison per feature column) and its counts add
up over chunks and Dask partitions (:meth:`RangeCheck.state`, :meth:`RangeCheck.merge`), so
a file is reported once per feature whatever the chunking.

Example:
    >>> import numpy as np
    >>> prep = {"inputs": {"features": {"names": ["a", "b"]}},
    ...         "standardisation": {"mean": [0.0, 0.0], "scale": [1.0, 1.0]}}
    >>> check = RangeCheck(prep)
    >>> check.add({"a": np.array([0.5, -1.0, 2.0]), "b": np.array([-3000.0, 0.0, 1.0])})
    >>> [(f["feature"], f["events"], f["of"]) for f in check.findings()]
    [('b', 1, 3)]
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["FAR_FRACTION", "FAR_STD", "RangeCheck", "message", "report_ranges"]

log = logging.getLogger(__name__)

#: An event is far out in a feature beyond this many training standard deviations.
FAR_STD = 10.0
#: A feature of a file is reported when more than this fraction of its events is far out.
FAR_FRACTION = 0.01


def _masks(prep: dict, names: list[str]) -> dict[int, int]:
    """``{object column: its mask column}`` of Deep Sets collections (none for an MLP)."""
    out = {}
    for c in (prep.get("observable") or {}).get("collections") or []:
        start, n, k = int(c["start"]), int(c["objects"]), int(c["features"])
        for j in range(n):
            first = start + j * (k + 1)
            for i in range(k):
                if first + k < len(names):
                    out[first + i] = first + k
    return out


class RangeCheck:
    """Counts, per feature, the events far outside the training distribution of a run."""

    def __init__(self, prep: dict):
        self.names = list(prep["inputs"]["features"]["names"])
        std = prep.get("standardisation") or {}
        self.enabled = bool(std.get("mean")) and len(std["mean"]) == len(self.names)
        self.mean = np.asarray(std.get("mean") or [], np.float64)
        self.scale = np.asarray(std.get("scale") or [], np.float64)
        self.masks = _masks(prep, self.names) if self.enabled else {}
        self.events = 0
        #: ``{feature: [events far out, smallest, largest such value]}``
        self.far: dict[str, list] = {}

    def add(self, chunk: dict) -> None:
        """Count the far-out events of one chunk ``{column: values}``."""
        if not self.enabled or not self.names:
            return
        self.events += len(chunk[self.names[0]])
        for j, name in enumerate(self.names):
            x = np.asarray(chunk[name], np.float64)
            far = np.abs(x - self.mean[j]) > FAR_STD * self.scale[j]
            if j in self.masks:
                far &= np.asarray(chunk[self.names[self.masks[j]]], np.float64) > 0.5
            k = int(np.count_nonzero(far))
            if k:
                lo, hi = float(x[far].min()), float(x[far].max())
                self.merge_one(name, [k, lo, hi])

    def merge_one(self, name: str, entry) -> None:
        old = self.far.get(name)
        if old is None:
            self.far[name] = list(entry)
        else:
            self.far[name] = [old[0] + entry[0], min(old[1], entry[1]), max(old[2], entry[2])]

    def state(self) -> dict:
        """What :meth:`merge` adds up (picklable: from a Dask worker to the client)."""
        return {"events": self.events, "far": {k: list(v) for k, v in self.far.items()}}

    def merge(self, state: dict) -> None:
        self.events += state["events"]
        for name, entry in state["far"].items():
            self.merge_one(name, entry)

    def findings(self) -> list[dict]:
        """One dict per feature with more than :data:`FAR_FRACTION` of the events far out
        (in feature order): ``feature``, ``events`` (far out), ``of`` (all events),
        ``fraction``, ``training_mean``, ``training_std``, ``far_beyond`` (the interval
        ``mean -+ FAR_STD std``) and ``values`` (the smallest and largest far-out value)."""
        out = []
        for j, name in enumerate(self.names):
            entry = self.far.get(name)
            if entry is None or entry[0] <= FAR_FRACTION * self.events:
                continue
            m, s = float(self.mean[j]), float(self.scale[j])
            out.append(
                {
                    "feature": name,
                    "events": int(entry[0]),
                    "of": int(self.events),
                    "fraction": entry[0] / self.events,
                    "training_mean": m,
                    "training_std": s,
                    "far_beyond": [m - FAR_STD * s, m + FAR_STD * s],
                    "values": [entry[1], entry[2]],
                }
            )
        return out


def message(finding: dict, file) -> str:
    """The warning of one finding of ``file``."""
    f = finding
    lo, hi = f["values"]
    values = f"{lo:.6g}" if lo == hi else f"{lo:.6g} .. {hi:.6g}"
    return (
        f"{file}: input {f['feature']!r} is far outside the training distribution in "
        f"{f['events']} of {f['of']} events ({100 * f['fraction']:.3g} %; values {values}): "
        f"training mean {f['training_mean']:.4g}, std {f['training_std']:.4g}, "
        f"more than {FAR_STD:g} std away is outside "
        f"[{f['far_beyond'][0]:.4g}, {f['far_beyond'][1]:.4g}]; their scores are "
        "extrapolations (often exactly 0 or 1), written anyway (a fill value or a different "
        "unit or branch?)"
    )


def report_ranges(check: RangeCheck, file) -> list[dict]:
    """Warn (once per feature of ``file``, on the ``diffhep`` logger: stderr) of the inputs
    far outside the training distribution; returns the findings, each with its
    ``message``, for the output metadata (``input_warnings``)."""
    found = []
    for finding in check.findings():
        text = message(finding, file)
        log.warning(text)
        found.append(finding | {"message": text})
    return found
