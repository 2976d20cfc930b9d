"""Toy-based hypothesis tests: CLs and discovery p-values from pseudo-experiments, as pyhf's
``hypotest(..., calctype="toybased")`` (``pyhf.infer.calculators.ToyCalculator``) defines them.

For a tested POI value ``mu`` and test statistic ``qtilde``/``q`` (``q0``: discovery):

- the toys of each hypothesis are drawn from the model's pdf at the parameters of a fit to
  the observed data with the POI fixed: at ``mu`` ("signal + background"; ``q0``: mu = 0) and
  at 0 ("background only"; ``q0``: mu = 1). A toy is the main data (Poisson at the expected
  yields) and the auxiliary data of every constraint term (Gaussian around the parameter
  with its width, Poisson with rate parameter x factor for shapesys), pyhf's ``make_pdf``;
- every toy's test statistic at ``mu`` comes from two fits (POI fixed, POI free), as for the
  observed data (:mod:`diffhep.stats.hypotest`). The fits start from the parameters the toys
  were generated with (pyhf starts from the suggested init; the minimum is the same, it is
  found in fewer steps);
- p-values count toys: ``CLsb = P(q_sb >= q_obs)``, ``CLb = P(q_b >= q_obs)``, ``CLs =
  CLsb / CLb``; the expected band takes the same three p-values at every background-only
  toy's test statistic and their percentiles at the normal quantiles of -2..2 sigma
  (2.275, 15.87, 50, 84.13, 97.72 %, linear interpolation: pyhf's ``expected_pvalues``).
  For ``q0`` the p-value is ``CLsb`` (p0), its band ``CLsb`` of the mu = 1 toys;
- toy ``i`` of a hypothesis uses the key ``fold_in(fold_in(PRNGKey(seed), hypothesis), i)``:
  results do not depend on how the toys are cut into chunks, and runs of one seed over
  disjoint toy ranges (``first``) merge into exactly the run over their union;
- toys run in chunks of ``chunk`` (one compiled shape, memory flat in the number of toys),
  ``batch`` of them at a time under ``vmap``.

Non-converged toy fits are kept (their test statistic is the one at the fit's last point,
clipped at 0) and counted (``ToyResult.nonconverged``): dropping them would bias the
distributions towards the easy toys. pyhf raises ``FailedMinimization`` on the first one.

Example (``toys(1.0, model, data, ntoys=10_000, seed=1)`` runs a test; its p-values count
toys as here):
    >>> from diffhep.stats import toys
    >>> float(toys.pvalue([0.0, 0.5, 1.0, 2.0], 1.0))
    0.5
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ..errors import DiffhepError, FitError
from .fit import DEFAULT_MAX_STEPS, DEFAULT_TOL, fit_defaults, poi_index
from .hypotest import _profile, _stat_from_fits
from .model import Model

__all__ = [
    "CHUNK",
    "FORMAT",
    "MAX_BATCH",
    "NORMAL_PERCENTILES",
    "ToyResult",
    "default_batch",
    "load",
    "merge",
    "model_digest",
    "pvalue",
    "sample",
    "toys",
]

#: Toys per compiled call (a smaller run uses the next power of two).
CHUNK = 256
#: Largest number of toys fitted at a time under ``vmap`` (see :func:`default_batch`).
MAX_BATCH = 64
#: Floats of Hessian work per vmapped batch (:func:`default_batch`).
_BATCH_WORK = 32768
#: pyhf's percentiles of the normal distribution at -2, -1, 0, 1, 2 sigma.
NORMAL_PERCENTILES = np.array([2.27501319, 15.86552539, 50.0, 84.13447461, 97.72498681])
#: The ``--save-toys`` file format (npz with a JSON ``meta`` entry).
FORMAT = "diffhep-toys/1"
TEST_STATS = ("qtilde", "q", "q0")
#: Test statistics this close (relative; absolute below 1) count as equal in p-values.
TIE_RTOL = 1e-9
_HYPOTHESES = ("sb", "b")


# --------------------------------------------------------------------------- sampling
def sample(model: Model, pars, key) -> jax.Array:
    """One toy: main data ~ Poisson(expected yields), auxiliary data ~ the constraint terms
    (Gaussian(parameter, width); Poisson(parameter x factor) for shapesys), at ``pars``."""
    pars = jnp.asarray(pars, dtype=model.nominal.dtype)
    kmain, kaux = jax.random.split(key)
    lam = jnp.clip(model.expected_actualdata(pars), 0.0)
    main = jax.random.poisson(kmain, lam, dtype=jnp.int64 if lam.dtype == jnp.float64 else None)
    if not model.config.nauxdata:
        return main.astype(lam.dtype)
    sigma, factor, _ = model._constraint_terms()
    theta = pars[model.tables.aux_par]
    kn, kp = jax.random.split(kaux)
    normal = theta + sigma * jax.random.normal(kn, theta.shape, dtype=lam.dtype)
    rate = jnp.clip(theta * factor, 0.0)
    poisson = jax.random.poisson(kp, rate, dtype=main.dtype).astype(lam.dtype)
    aux = jnp.where(model.tables.aux_poisson, poisson, normal)
    return jnp.concatenate([main.astype(lam.dtype), aux])


def toy_keys(seed: int, hypothesis: int, indices) -> jax.Array:
    """The keys of toys ``indices`` of one hypothesis (0: signal + background, 1: background
    only) of a seeded run."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), hypothesis)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def default_batch(model: Model) -> int:
    """Toys fitted at a time under ``vmap``: as many as keep a Newton step's Hessian work
    (directions x (histosys + normsys entries + samples) x bins) within ~32k floats.

    Measured (2 CPUs): on a 2-bin model 64 toys at a time are 5x faster than one by one; on
    sbottom RegionA (59 Hessian directions, 428 histosys entries) 8 at a time are 1.5x
    slower than one by one (memory-bound, and a batched Newton loop runs until its slowest
    toy converges), so it gets 1.
    """
    from .uncertainties import structure_of

    st = structure_of(model.config)
    gidx, table = st.arrays()
    ndirs = len(gidx) + table.shape[1]
    entries = model.histosys_lo.shape[0] + model.normsys_lo.shape[0] + model.nominal.shape[0]
    work = max(1, ndirs * entries * model.nominal.shape[1])
    return int(min(MAX_BATCH, 1 << max(0, (_BATCH_WORK // work).bit_length() - 1)))


@eqx.filter_jit
def _chunk(model, pars, keys, mu, lower, upper, fixed, tol, max_steps, test_stat, batch):
    """Test statistic and convergence of one toy per key, generated at ``pars``."""
    poi = poi_index(model)

    def one(key):
        data = sample(model, pars, key)
        fixed_fit, free_fit, _ = _profile(
            mu, model, data, pars, lower, upper, fixed, tol, max_steps
        )
        q = _stat_from_fits(test_stat, mu, fixed_fit, free_fit, poi)
        return q, fixed_fit.converged & free_fit.converged

    return jax.lax.map(one, keys, batch_size=batch)


@eqx.filter_jit
def _setup(model, data, mu, gen_b, init, lower, upper, fixed, tol, max_steps, test_stat):
    """The observed test statistic and the two generating fits in one compiled loop: the fit
    with the POI fixed at ``mu`` is both the test statistic's and the signal + background
    toys' (pyhf's ``fixed_poi_fit(poi_test, data)``)."""
    fixed_fit, free_fit, b_fit = _profile(
        mu, model, data, init, lower, upper, fixed, tol, max_steps, extra=gen_b
    )
    q = _stat_from_fits(test_stat, mu, fixed_fit, free_fit, poi_index(model))
    ok = fixed_fit.converged & free_fit.converged & b_fit.converged
    return q, ok, fixed_fit.bestfit, b_fit.bestfit


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


# --------------------------------------------------------------------------- running
def model_digest(model: Model, data) -> str:
    """SHA-256 of what the toys depend on: the templates, constraint constants and data, the
    parameters' names, inits, bounds and fixed flags, the POI and the interpolation codes."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_array)):
        h.update(np.ascontiguousarray(np.asarray(leaf, dtype=float)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(data, dtype=float)).tobytes())
    cfg = model.config
    h.update(json.dumps([list(cfg.par_names), [list(map(float, b)) for b in cfg.bounds],
                         list(map(float, cfg.init)), list(map(bool, cfg.fixed)),
                         cfg.poi_name, repr(cfg.modifier_settings)]).encode())  # fmt: skip
    return h.hexdigest()


def toys(
    poi_test,
    model: Model,
    data,
    *,
    ntoys: int = 1000,
    seed: int = 0,
    first: int = 0,
    test_stat: str = "qtilde",
    init=None,
    bounds=None,
    fixed=None,
    chunk: int = CHUNK,
    batch: int | None = None,
    progress: Callable[[int], object] | None = None,
    tol: float = DEFAULT_TOL,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> ToyResult:
    """Toy-based test of ``poi_test`` (pyhf's ``calctype="toybased"``).

    Args:
        poi_test: Tested POI value (``q0``: ignored, mu = 0 is tested).
        model, data: The model and its observed data (main + auxiliary).
        ntoys: Toys per hypothesis.
        seed, first: The run's seed and the index of its first toy (toys ``first`` ..
            ``first + ntoys - 1`` of that seed: disjoint ranges merge into one run).
        test_stat: ``qtilde`` (default), ``q`` or ``q0``.
        init, bounds, fixed: Override the suggested values.
        chunk: Toys per compiled call (memory is flat in ``ntoys``).
        batch: Toys fitted at a time under ``vmap`` (default: :func:`default_batch`).
        progress: Called with the number of toys done (both hypotheses) after each chunk.

    Raises:
        FitError: A fit to the observed data (the generating parameters, the observed test
            statistic) did not converge.
    """
    if test_stat not in TEST_STATS:
        raise DiffhepError(f"unknown test statistic {test_stat!r}", where="test_stat",
                           fix=f"use one of {', '.join(TEST_STATS)}")  # fmt: skip
    if ntoys < 1 or first < 0 or seed < 0:
        raise DiffhepError(f"need ntoys >= 1, first >= 0, seed >= 0 (got {ntoys}, {first}, "
                           f"{seed})", where="--toys", fix="give positive numbers")  # fmt: skip
    if first + ntoys > 2**32:
        raise DiffhepError("toy indices must stay below 2**32", where="--first-toy",
                           fix="use another --seed instead of large toy offsets")  # fmt: skip
    poi_index(model)  # a model without a POI: FitError
    dtype = model.nominal.dtype
    init, lower, upper, fixed = fit_defaults(model, init, bounds, fixed, dtype)
    data = jnp.asarray(data, dtype=dtype)
    is_q0 = test_stat == "q0"
    mu_value = 0.0 if is_q0 else float(poi_test)
    mu = jnp.asarray(mu_value, dtype)
    tol, max_steps = float(tol), int(max_steps)

    gen_b = jnp.asarray(1.0 if is_q0 else 0.0, dtype)
    q_obs, ok, gen_sb, gen_b = _setup(model, data, mu, gen_b, init, lower, upper, fixed, tol,
                                      max_steps, test_stat)  # fmt: skip
    gen = [gen_sb, gen_b]
    if not bool(ok):
        raise FitError("a fit to the observed data (the toys' generating parameters or the "
                       "observed test statistic) did not converge",
                       fix="check the model (e.g. with 'diffhep fit')")  # fmt: skip

    chunk = max(1, min(int(chunk), 1 << max(ntoys - 1, 0).bit_length()))
    batch = max(1, min(int(batch or default_batch(model)), chunk))
    out = {h: ([], []) for h in _HYPOTHESES}
    done = 0
    for h, (name, pars) in enumerate(zip(_HYPOTHESES, gen, strict=True)):
        for s in range(0, ntoys, chunk):
            n = min(chunk, ntoys - s)
            idx = first + s + np.arange(chunk)  # padded toys are real toys, dropped
            keys = toy_keys(seed, h, idx)
            q, conv = _chunk(model, pars, keys, mu, lower, upper, fixed, tol, max_steps,
                             test_stat, batch)  # fmt: skip
            out[name][0].append(np.asarray(q)[:n])
            out[name][1].append(np.asarray(conv)[:n])
            done += n
            if progress is not None:
                progress(done)
    return ToyResult(
        test_stat=test_stat,
        poi_test=mu_value,
        teststat=float(q_obs),
        ts_sb=np.concatenate(out["sb"][0]),
        ts_b=np.concatenate(out["b"][0]),
        ok_sb=np.concatenate(out["sb"][1]),
        ok_b=np.concatenate(out["b"][1]),
        runs=[{"seed": int(seed), "first": int(first), "ntoys": int(ntoys)}],
        meta={
            "digest": model_digest(model, data),
            "poi": model.config.poi_name,
            "generating_parameters": {
                n: [float(x) for x in p] for n, p in zip(_HYPOTHESES, gen, strict=True)
            },
        },
    )
