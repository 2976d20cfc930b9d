"""The samples of a toy-based test and what follows from them: p-values (ties up to a relative
tolerance), the expected band at pyhf's normal percentiles, Monte-Carlo errors, the JSON
``diffhep cls``/``significance`` print; the ``--save-toys`` file (save, load) and merging runs
of several machines. The toys themselves are run by :mod:`diffhep.stats.toys`.

Example:
    >>> import numpy as np
    >>> from diffhep.stats.toy_results import ToyResult
    >>> ok = np.ones(4, bool)
    >>> r = ToyResult("qtilde", 1.0, 1.0, np.array([0.0, 0.5, 1.0, 2.0]), np.full(4, 2.0), ok, ok)
    >>> [float(p) for p in r.pvalues()]  # CLsb = 2/4, CLb = 4/4, CLs = their ratio
    [0.5, 1.0, 0.5]
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import DiffhepError

__all__ = [
    "FORMAT",
    "MERGE_KEYS",
    "NORMAL_PERCENTILES",
    "TIE_RTOL",
    "ToyResult",
    "load",
    "merge",
    "pvalue",
]

#: pyhf's percentiles of the normal distribution at -2, -1, 0, 1, 2 sigma.
NORMAL_PERCENTILES = np.array([2.27501319, 15.86552539, 50.0, 84.13447461, 97.72498681])
#: The ``--save-toys`` file format (npz with a JSON ``meta`` entry).
FORMAT = "diffhep-toys/1"
#: Test statistics this close (relative; absolute below 1) count as equal in p-values.
TIE_RTOL = 1e-9


# --------------------------------------------------------------------------- p-values
def pvalue(samples, values) -> np.ndarray:
    """Fraction of ``samples`` >= each of ``values`` (pyhf's ``EmpiricalDistribution.pvalue``),
    by sorting: linear in the number of samples and values.

    Ties count as ">=" up to :data:`TIE_RTOL` (relative, absolute below 1): toys of discrete
    models often repeat the observed data exactly, and their test statistic, from other
    compiled fits starting elsewhere, then equals the observed one only to the fits'
    precision (pyhf's fits of equal data are bit-identical)."""
    s = np.sort(np.asarray(samples, dtype=float))
    values = np.asarray(values, dtype=float)
    cut = values - TIE_RTOL * np.maximum(1.0, np.abs(values))
    return (s.size - np.searchsorted(s, cut, side="left")) / s.size


def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(a, dtype=float) / np.asarray(b, dtype=float)


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class ToyResult:
    """Test-statistic samples of a toy-based test and the p-values computed from them.

    Attributes:
        test_stat: ``qtilde``, ``q`` or ``q0``.
        poi_test: The tested POI value (0 for ``q0``).
        teststat: The observed test statistic.
        ts_sb, ts_b: Test statistics of the signal + background (``q0``: mu = 0) and the
            background-only (``q0``: mu = 1) toys.
        ok_sb, ok_b: Whether both fits of each toy converged.
        runs: ``[{"seed", "first", "ntoys"}]``: the seeded toy ranges the samples hold.
        meta: What must agree for runs to merge (``digest`` of the model and data, the POI
            name, the settings).
    """

    test_stat: str
    poi_test: float
    teststat: float
    ts_sb: np.ndarray
    ts_b: np.ndarray
    ok_sb: np.ndarray
    ok_b: np.ndarray
    runs: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def ntoys(self) -> int:
        return int(self.ts_b.size)

    @property
    def nonconverged(self) -> dict:
        """Toys with a fit that did not converge, per hypothesis."""
        return {"sb": int(np.sum(~self.ok_sb)), "b": int(np.sum(~self.ok_b))}

    # p-values ----------------------------------------------------------------------
    def pvalues(self, values=None):
        """(CLsb, CLb, CLs) at ``values`` (default: the observed test statistic)."""
        v = self.teststat if values is None else values
        clsb, clb = pvalue(self.ts_sb, v), pvalue(self.ts_b, v)
        return clsb, clb, _ratio(clsb, clb)

    def expected_pvalues(self):
        """(CLsb, CLb, CLs) bands: the five percentiles (-2..2 sigma of the background-only
        toys' p-values, pyhf's order: increasing) of each."""
        per_toy = np.stack(self.pvalues(self.ts_b), axis=1)  # (ntoys, 3)
        band = np.percentile(per_toy, NORMAL_PERCENTILES, axis=0)  # (5, 3), linear
        return tuple(band[:, k] for k in range(3))

    def errors(self) -> dict:
        """Binomial Monte-Carlo errors of the observed p-values."""
        clsb, clb, cls = (float(x) for x in self.pvalues())
        e_sb = math.sqrt(clsb * (1 - clsb) / self.ts_sb.size)
        e_b = math.sqrt(clb * (1 - clb) / self.ts_b.size)
        rel = math.hypot(e_sb / clsb, e_b / clb) if clsb > 0 and clb > 0 else float("nan")
        return {"CLsb_obs": e_sb, "CLb_obs": e_b, "CLs_obs": cls * rel}

    def _toys_json(self) -> dict:
        clsb, clb, _ = (float(x) for x in self.pvalues())
        return {
            "ntoys": {"sb": int(self.ts_sb.size), "b": int(self.ts_b.size)},
            "nonconverged": self.nonconverged,
            "runs": self.runs,
            "test_stat": self.test_stat,
            "poi_test": self.poi_test,
            "teststat_obs": self.teststat,
            "CLsb_obs": clsb,
            "CLb_obs": clb,
            "mc_error": (
                {"p0_obs": _finite(self.errors()["CLsb_obs"])}
                if self.test_stat == "q0"
                else {k: _finite(v) for k, v in self.errors().items()}
            ),
        }

    def cls_json(self) -> dict:
        """``{"CLs_obs", "CLs_exp"}`` as ``diffhep cls`` prints them (CLs_exp in pyhf's
        order), plus ``"toys"``: counts, non-converged fits, CLsb/CLb, Monte-Carlo errors.
        A CLs of 0/0 (no background-only toy above the observed value) is null."""
        _, _, cls = self.pvalues()
        _, _, cls_exp = self.expected_pvalues()
        return {
            "CLs_obs": _finite(cls),
            "CLs_exp": [_finite(x) for x in cls_exp],
            "toys": self._toys_json(),
        }

    def significance_json(self, poi: str | None = None) -> dict:
        """``diffhep significance``'s fields from toys: ``p0_obs`` (CLsb of the mu = 0 toys),
        ``p0_exp`` (the median of its band over the mu = 1 toys) and the band, Z = the
        normal quantile (null when p0 = 0: no toy as extreme; the bound is 1/ntoys)."""
        clsb, _, _ = self.pvalues()
        band, _, _ = self.expected_pvalues()
        z = lambda p: _finite(stats.norm.isf(p)) if p > 0 else None  # noqa: E731
        return {
            "q0": self.teststat,
            "p0_obs": float(clsb),
            "Z_obs": z(float(clsb)),
            "p0_exp": float(band[2]),
            "Z_exp": z(float(band[2])),
            "p0_exp_band": [float(x) for x in band],
            "poi": poi if poi is not None else self.meta.get("poi"),
            "toys": self._toys_json(),
        }

    # files -------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the samples and what merging needs to ``path`` (npz), atomically."""
        from ..writers import write_atomic

        meta = dict(self.meta, format=FORMAT, test_stat=self.test_stat, poi_test=self.poi_test,
                    teststat=self.teststat, runs=self.runs)  # fmt: skip
        buf = io.BytesIO()
        np.savez_compressed(buf, ts_sb=self.ts_sb, ts_b=self.ts_b, ok_sb=self.ok_sb,
                            ok_b=self.ok_b, meta=np.array(json.dumps(meta)))  # fmt: skip
        return write_atomic(Path(path), buf.getvalue())


def load(path) -> ToyResult:
    """A :class:`ToyResult` saved by :meth:`ToyResult.save` (bad files: DiffhepError)."""
    fix = "give a file written by --save-toys"
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            arrays = {k: np.asarray(f[k]) for k in ("ts_sb", "ts_b", "ok_sb", "ok_b")}
    except (OSError, ValueError, KeyError) as exc:
        raise DiffhepError(f"cannot read toys: {exc}", file=str(path), fix=fix) from None
    if meta.get("format") != FORMAT:
        raise DiffhepError(
            f"unknown toy file format {meta.get('format')!r} (expected {FORMAT!r})",
            file=str(path), where="meta.format", fix=fix,
        )  # fmt: skip
    core = {k: meta.pop(k) for k in ("test_stat", "poi_test", "teststat", "runs")}
    meta.pop("format")
    return ToyResult(meta=meta, **core, **arrays)


#: The settings that must agree for toy runs to merge.
MERGE_KEYS = ("digest", "poi", "test_stat", "poi_test")


def merge(results: Sequence[ToyResult], names: Sequence[str] | None = None) -> ToyResult:
    """One result from toy runs of the same model, data and settings (several machines).

    Runs must agree on the model and data (``digest``), the POI, the test statistic and the
    tested value; two runs of one seed must not share a toy index (the same toys twice).
    """
    if not results:
        raise DiffhepError("no toy files to merge", fix="give at least one --save-toys file")
    names = list(names) if names is not None else [f"run {i}" for i in range(len(results))]
    first = results[0]

    def setting(r, k):
        return getattr(r, k) if k in ("test_stat", "poi_test") else r.meta.get(k)

    for r, name in zip(results[1:], names[1:], strict=True):
        for k in MERGE_KEYS:
            a, b = setting(first, k), setting(r, k)
            if a != b:
                what = "model and data" if k == "digest" else k
                raise DiffhepError(
                    f"cannot merge: the toys were made with a different {what} ({names[0]}: "
                    f"{a!r}, {name}: {b!r})", file=name, where=f"meta.{k}",
                    fix="merge only files of the same workspace, patches, measurement, "
                    "interpolation codes, --test-stat and --poi-value",
                )  # fmt: skip
    seen: dict = {}
    for r, name in zip(results, names, strict=True):
        for run in r.runs:
            lo, hi = run["first"], run["first"] + run["ntoys"]
            for other_lo, other_hi, other in seen.get(run["seed"], []):
                if lo < other_hi and other_lo < hi:
                    raise DiffhepError(
                        f"cannot merge: toys {max(lo, other_lo)}..{min(hi, other_hi) - 1} of "
                        f"seed {run['seed']} are in both {other} and {name}",
                        file=name, where="meta.runs",
                        fix="give each machine its own --seed (or disjoint --first-toy ranges)",
                    )  # fmt: skip
            seen.setdefault(run["seed"], []).append((lo, hi, name))
    cat = lambda k: np.concatenate([getattr(r, k) for r in results])  # noqa: E731
    runs = sorted((run for r in results for run in r.runs), key=lambda x: (x["seed"], x["first"]))
    return ToyResult(
        test_stat=first.test_stat,
        poi_test=first.poi_test,
        teststat=first.teststat,
        ts_sb=cat("ts_sb"),
        ts_b=cat("ts_b"),
        ok_sb=cat("ok_sb"),
        ok_b=cat("ok_b"),
        runs=runs,
        meta=dict(first.meta),
    )
