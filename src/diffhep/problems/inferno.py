"""The INFERNO benchmark: its likelihoods, its loss and its evaluation protocol.

de Castro & Dorigo, arXiv:1806.04743, section 5. Events (:func:`inferno_3d`): background
x0, x1 ~ N((2 + r, 0), diag(5, 9)), x2 ~ Exp(rate lambda); signal x0, x1 ~ N(0, 1),
x2 ~ Exp(rate 2). The nuisances act on background events generated at the nominal point as
the differentiable input transform :func:`inferno_shift`; the generator also returns the
background moved to r = +-0.2 and lambda = 3 +- 0.5 (the same events, transformed) as
``background_r_up`` ... ``background_lambda_down``.

The parameter of interest is the signal yield ``s`` (expected 50); the nuisances are the
background shift ``r`` (0), the background x2 rate ``lambda`` (3) and the background yield
``b`` (1000). Parameters are ordered ``THETA = (s, r, lambda, b)``.

- :data:`BENCHMARKS` 0-4: which nuisances float and how they are constrained.
- :func:`counts_information`: the Fisher information of Poisson counts ``n(theta)`` plus the
  constraints, and :func:`sigma_s` from it: INFERNO's loss when ``n`` are softmax-binned
  counts whose Jacobian flows through the input transform of the background events.
- :func:`analytic_information`: the unbinned Fisher information of the true densities by
  Gauss-Legendre quadrature (the bound no summary statistic can beat).
- :func:`workspace` / :func:`expected_uncertainty`: the shared evaluation protocol. Hard
  templates, background variations at r +- 0.2 and lambda +- 0.5 as HistFactory ``histosys``
  (code 4p), ``b`` as a Gaussian-constrained normalisation of the background (HistFactory's
  ``lumi`` modifier, exactly linear: the parameter ``lumi`` is b / 1000); the expected
  uncertainty on ``s`` from the Hessian of the Asimov likelihood and from the width of its
  profile likelihood (q = 1 crossings). The histosys constraints carry ``sigmas`` (the
  benchmarks' widths in units of the variation), which diffhep honours and pyhf 0.7 does not
  accept on histosys: this workspace is for diffhep.

Free (unconstrained) nuisances of benchmarks 1 and 2 get a constraint of width
``FREE_SIGMA = 1e4`` in units of their variation (HistFactory has no unconstrained
histosys); its information is 1e-8 of the data's.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> info = analytic_information(n=100)
    >>> round(float(sigma_s(info, 0)), 3), round(float(sigma_s(info, 2)), 3)
    (14.705, 15.634)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from ..stats.channels import symmetric_parameters
from ..stats.fit import fixed_poi_fit, twice_nll
from ..stats.model import Model
from ..stats.uncertainties import covariance, fisher_information

__all__ = [
    "BENCHMARKS",
    "INFERNO_SHIFTS",
    "NOMINAL",
    "THETA",
    "Benchmark",
    "analytic_information",
    "analytic_sigma_s",
    "constraint_information",
    "counts_information",
    "expected_uncertainty",
    "inferno_3d",
    "inferno_shift",
    "log_likelihood_ratio",
    "optimal_score",
    "sigma_s",
    "template_sigma",
    "workspace",
]

INFERNO_LAMBDA0 = 3.0
#: Background variations of :func:`inferno_3d`: name -> (r, lambda).
INFERNO_SHIFTS = {
    "r_up": (0.2, 3.0),
    "r_down": (-0.2, 3.0),
    "lambda_up": (0.0, 3.5),
    "lambda_down": (0.0, 2.5),
}


def inferno_shift(x, r=0.0, lam=INFERNO_LAMBDA0):
    """Background events generated at the nominal (r = 0, lambda = 3) moved to ``(r, lam)``:
    ``x0 -> x0 + r``, ``x2 -> x2 * 3 / lam``. Differentiable in ``r`` and ``lam`` (NumPy in,
    NumPy out; JAX otherwise)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.stack([x[:, 0] + r, x[:, 1], x[:, 2] * (INFERNO_LAMBDA0 / lam)], axis=1)


def inferno_3d(n: int = 10_000, seed: int = 0) -> dict:
    """``n`` signal and ``n`` nominal background events of the INFERNO benchmark, and the
    background shifted to each of :data:`INFERNO_SHIFTS` (``background_<shift>``)."""
    rng = np.random.default_rng(seed)
    sig = np.column_stack([rng.normal(0.0, 1.0, (n, 2)), rng.exponential(1.0 / 2.0, n)])
    bkg = np.column_stack(
        [
            rng.normal(2.0, np.sqrt(5.0), n),
            rng.normal(0.0, 3.0, n),
            rng.exponential(1.0 / INFERNO_LAMBDA0, n),
        ]
    )
    sets = {"signal": sig, "background": bkg}
    sets |= {
        f"background_{k}": inferno_shift(bkg, r, lam) for k, (r, lam) in INFERNO_SHIFTS.items()
    }
    return {k: (x.astype(np.float32), np.ones(n)) for k, x in sets.items()}


THETA = ("s", "r", "lambda", "b")
NOMINAL = (50.0, 0.0, INFERNO_LAMBDA0, 1000.0)
FREE_SIGMA = 1e4
#: Size of the template variations (r +- 0.2, lambda +- 0.5), from the generator.
STEP = {"r": INFERNO_SHIFTS["r_up"][0], "lambda": INFERNO_SHIFTS["lambda_up"][1] - INFERNO_LAMBDA0}


@dataclass(frozen=True)
class Benchmark:
    """Nuisances that float (with ``s``), and the Gaussian widths of the constrained ones."""

    free: tuple = ()
    constraints: dict = field(default_factory=dict, hash=False)  # hashable: a cache key

    def index(self) -> list[int]:
        """Indices into :data:`THETA` of the floating parameters (``s`` first)."""
        return [0] + [THETA.index(n) for n in self.free]


BENCHMARKS = {
    0: Benchmark(),
    1: Benchmark(("r",)),
    2: Benchmark(("r", "lambda")),
    3: Benchmark(("r", "lambda"), {"r": 0.4, "lambda": 1.0}),
    4: Benchmark(("r", "lambda", "b"), {"r": 0.4, "lambda": 1.0, "b": 100.0}),
}


def _benchmark(k) -> Benchmark:
    return k if isinstance(k, Benchmark) else BENCHMARKS[k]


def counts_information(jacobian, counts, benchmark) -> jax.Array:
    """Fisher information on :data:`THETA` of Poisson counts with expectation ``counts`` and
    Jacobian ``d counts / d theta`` (``(bins, 4)``), plus the benchmark's constraints."""
    jac, n = jnp.asarray(jacobian), jnp.asarray(counts)
    n = jnp.maximum(n, 1e-300)  # an empty bin (its Jacobian is 0 too) adds nothing, not NaN
    info = jac.T @ (jac / n[:, None])
    return info + constraint_information(benchmark).astype(info.dtype)


def constraint_information(benchmark) -> np.ndarray:
    """The information of the benchmark's Gaussian constraints (diagonal, on :data:`THETA`)."""
    bm = _benchmark(benchmark)
    return np.diag([1.0 / bm.constraints[t] ** 2 if t in bm.constraints else 0.0 for t in THETA])


def sigma_s(information, benchmark) -> jax.Array:
    """Expected uncertainty on ``s``: ``sqrt(inverse information[s, s])`` over the parameters
    that float in the benchmark (the others are known)."""
    idx = np.asarray(_benchmark(benchmark).index())
    sub = jnp.asarray(information)[np.ix_(idx, idx)]
    return jnp.sqrt(jnp.linalg.inv(sub)[0, 0])


# ---------------------------------------------------------------- the true densities
def _gauss_legendre(lo, hi, n):
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


def analytic_information(n: int = 120, theta=NOMINAL) -> np.ndarray:
    """Unbinned Fisher information ``int grad(nu) grad(nu)^T / nu dx`` of the intensity
    ``nu(x) = s p_s(x) + b p_b(x | r, lambda)`` (extended likelihood, true densities), by a
    Gauss-Legendre product rule with ``n`` nodes per dimension on x0 in [-18, 22],
    x1 in [-27, 27], x2 in [0, 20] (tails beyond are below 1e-12 of every entry).

    Constraints are not included: add them with :func:`counts_information`'s convention
    (``analytic_sigma_s`` below does)."""
    s, r, lam, b = map(float, theta)
    x0, w0 = _gauss_legendre(-18.0, 22.0, n)
    x1, w1 = _gauss_legendre(-27.0, 27.0, n)
    x2, w2 = _gauss_legendre(0.0, 20.0, n)
    # factorised densities of each feature
    ps0, pb0 = (
        np.exp(-0.5 * x0**2) / np.sqrt(2 * np.pi),
        np.exp(-0.5 * (x0 - 2 - r) ** 2 / 5) / np.sqrt(2 * np.pi * 5),
    )
    ps1, pb1 = (
        np.exp(-0.5 * x1**2) / np.sqrt(2 * np.pi),
        np.exp(-0.5 * x1**2 / 9) / np.sqrt(2 * np.pi * 9),
    )
    ps2, pb2 = 2 * np.exp(-2 * x2), lam * np.exp(-lam * x2)
    info = np.zeros((4, 4))
    for i in range(n):  # one x0 slice at a time: (n, n) arrays over (x1, x2)
        p_s = ps0[i] * ps1[:, None] * ps2[None, :]
        p_b = pb0[i] * pb1[:, None] * pb2[None, :]
        nu = s * p_s + b * p_b
        grads = (
            p_s,
            b * p_b * (x0[i] - 2 - r) / 5,
            b * p_b * (1 / lam - x2)[None, :],
            p_b,
        )
        wt = w0[i] * w1[:, None] * w2[None, :] / nu
        for a in range(4):
            for c in range(a, 4):
                info[a, c] = info[c, a] = info[a, c] + np.sum(wt * grads[a] * grads[c])
    return info


def analytic_sigma_s(benchmark, n: int = 120) -> float:
    """Expected uncertainty on ``s`` of the analytic (unbinned, true-density) likelihood."""
    return float(sigma_s(analytic_information(n) + constraint_information(benchmark), benchmark))


def log_likelihood_ratio(x) -> np.ndarray:
    """``log p_s(x) / p_b(x)`` of the true densities at the nominal point."""
    x = np.asarray(x, dtype=np.float64)
    log_ps = -0.5 * (x[:, 0] ** 2 + x[:, 1] ** 2) - np.log(2 * np.pi) + np.log(2.0) - 2 * x[:, 2]
    log_pb = (
        -0.5 * ((x[:, 0] - 2.0) ** 2 / 5.0 + x[:, 1] ** 2 / 9.0)
        - np.log(2 * np.pi * np.sqrt(45.0))
        + np.log(INFERNO_LAMBDA0)
        - INFERNO_LAMBDA0 * x[:, 2]
    )
    return log_ps - log_pb


def optimal_score(x, s=NOMINAL[0], b=NOMINAL[3]) -> np.ndarray:
    """The optimal classifier ``s p_s / (s p_s + b p_b)`` (true densities, nominal point)."""
    return 1.0 / (1.0 + b / s * np.exp(-log_likelihood_ratio(x)))


# ---------------------------------------------------------------- evaluation protocol
TEMPLATES = ("signal", "background", *(f"background_{k}" for k in INFERNO_SHIFTS))


def workspace(templates, benchmark) -> dict:
    """The HistFactory model spec of the protocol for ``templates`` (expected counts per bin
    at the nominal yields, keyed by :data:`TEMPLATES`). POI ``mu`` = s / 50."""
    bm = _benchmark(benchmark)
    t = {k: templates[k] for k in TEMPLATES}

    def histosys(name):
        return {"name": name, "type": "histosys",
                "data": {"hi_data": t[f"background_{name}_up"],
                         "lo_data": t[f"background_{name}_down"]}}  # fmt: skip

    channels = [
        {
            "name": "bins",
            "samples": [
                {
                    "name": "signal",
                    "data": t["signal"],
                    "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                },
                {
                    "name": "background",
                    "data": t["background"],
                    "modifiers": [
                        histosys("r"),
                        histosys("lambda"),
                        {"name": "lumi", "type": "lumi", "data": None},
                    ],
                },
            ],
        }
    ]
    parameters = [{"name": "mu", "bounds": [[-5.0, 10.0]], "inits": [1.0]}]
    for name in ("r", "lambda"):  # alpha = (value - nominal) / STEP
        sigma = bm.constraints[name] / STEP[name] if name in bm.constraints else FREE_SIGMA
        parameters.append({"name": name, "sigmas": [sigma], "fixed": name not in bm.free})
    sb = bm.constraints.get("b", 100.0) / NOMINAL[3]
    parameters.append({"name": "lumi", "auxdata": [1.0], "sigmas": [sb], "inits": [1.0],
                       "bounds": [[0.5, 1.5]], "fixed": "b" not in bm.free})  # fmt: skip
    return {"channels": channels, "parameters": parameters}


def template_sigma(t, benchmark) -> float:
    """The protocol's Hessian uncertainty on ``s`` from templates, without a fit: the
    Fisher information of the counts with central-difference derivatives (what the
    histosys model's Hessian is at the nominal point; bins without events are dropped)."""
    n = t["signal"] + t["background"]
    jac = np.stack(
        [
            t["signal"] / NOMINAL[0],
            (t["background_r_up"] - t["background_r_down"]) / (2 * STEP["r"]),
            (t["background_lambda_up"] - t["background_lambda_down"]) / (2 * STEP["lambda"]),
            t["background"] / NOMINAL[3],
        ],
        axis=1,
    )
    keep = n > 0
    return float(sigma_s(counts_information(jac[keep], n[keep], benchmark), benchmark))


@cache
def _template_model(benchmark, nbins) -> Model:
    ones = {k: [1.0] * nbins for k in TEMPLATES}
    # concrete arrays also when the first call is inside a trace (a training step): the
    # cached model must not hold tracers
    with jax.ensure_compile_time_eval():
        return Model.from_spec(workspace(ones, benchmark), poi_name="mu")


def protocol_model(templates, benchmark) -> Model:
    """The protocol's model with these templates (JAX arrays allowed: differentiable, and one
    compiled function per benchmark and number of bins).

    The templates go straight into the model's arrays (rows fixed by the model's structure),
    so a training step builds no pyhf dict; concrete templates also set the model's
    symmetrised variations, as :meth:`Model.from_spec` of :func:`workspace` would.
    """
    model = _template_model(benchmark, len(templates["signal"]))
    cfg = model.config
    dtype = model.nominal.dtype

    def rows(names):
        return jnp.stack([jnp.asarray(templates[n], dtype) for n in names])

    model = model.with_yields(
        nominal=rows(cfg.samples),
        histosys_lo=rows(f"{s}_{name}_down" for name, s in cfg.histosys_keys),
        histosys_hi=rows(f"{s}_{name}_up" for name, s in cfg.histosys_keys),
    )
    if isinstance(model.nominal, jax.core.Tracer):
        return model  # a training step: the structure (and its symmetrised set) is static
    symmetric = symmetric_parameters(workspace(templates, benchmark))
    return dataclasses.replace(model, config=dataclasses.replace(cfg, symmetric=symmetric))


@eqx.filter_jit
def _hessian_sigma(model):
    pars = jnp.asarray(model.config.init, dtype=model.nominal.dtype)
    cov = covariance(fisher_information(model, pars), jnp.asarray(model.config.fixed))
    poi = model.config.poi_index
    return NOMINAL[0] * jnp.sqrt(cov[poi, poi])


@eqx.filter_jit
def _q(model, mu):
    pars = jnp.asarray(model.config.init, dtype=model.nominal.dtype)
    data = model.expected_data(pars)
    res = fixed_poi_fit(mu, model, data)
    return res.twice_nll - twice_nll(pars, model, data), res.converged


def expected_uncertainty(templates, benchmark) -> dict:
    """Expected uncertainty on ``s`` of the protocol for hard ``templates``: ``hessian``
    (inverse Fisher information of the Asimov likelihood) and ``profile`` (half the distance
    between the q(mu) = 1 crossings of the profile likelihood on the Asimov data, x 50)."""
    model = protocol_model({n: np.asarray(v, float).tolist() for n, v in templates.items()},
                           benchmark)  # fmt: skip
    hess = float(_hessian_sigma(model))
    mu_h = hess / NOMINAL[0]

    def f(mu):
        q, ok = _q(model, jnp.asarray(mu, dtype=model.nominal.dtype))
        if not bool(ok):
            raise RuntimeError(f"profile fit at mu = {mu} did not converge")
        return float(q) - 1.0

    crossings = []
    for sign in (-1.0, 1.0):
        step = 1.5 * mu_h
        while f(1.0 + sign * step) < 0:
            step *= 1.5
        ends = sorted((1.0, 1.0 + sign * step))
        crossings.append(brentq(f, *ends, xtol=1e-6 * mu_h))
    return {"hessian": hess, "profile": NOMINAL[0] * (crossings[1] - crossings[0]) / 2}
