"""L-GSO on problem 1 of ``diffhep study black-box``: the two cut thresholds as a black box.

The black box is the hard selection ``pass = (x1 > psi_1) & (x2 > psi_2)`` of the training
split's events of ``data/black_box_cuts.yaml`` (NumPy, never differentiated). Its surrogate is
:class:`~diffhep.surrogate.bernoulli.BernoulliSurrogate`, ``p(pass | x1, x2, psi)``: the output
is 0/1 and the risk is the discovery significance of summed yields, where only the expected
pass count matters (``E[s] = S sum_sig w p / sum_sig w``, the same for b), so a Bernoulli model
of pass/fail is the right family and its mean enters the yields without noise. (The Gaussian
surrogate of a 0/1 output scattered the Z0 estimate from 6 to 31 where the exact one is 3.2:
``docs/lgso.md``.) The risk is ``-Z0(s, b)``, the Asimov discovery significance of one counting
bin without systematics (what the config's exact Z0 is). The answer is judged as every other
method's: the exact validation Z0 at the final thresholds (hard cuts, exact fit).
"""

from __future__ import annotations

import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..runs.config import load_config
from .common import shipped_config

__all__ = ["CountingRisk", "cuts_lgso", "z0_counting"]


def z0_counting(s, b):
    """Asimov discovery significance of one counting bin (JAX)."""
    return jnp.sqrt(2 * ((s + b) * jnp.log1p(s / b) - s))


def _pool():
    """Training-split rows ``(x1, x2, is_signal, w)`` and the total yields S, B."""
    from ..runs.prepare import prepare

    cfg = load_config(shipped_config("black_box_cuts"))
    _, parts, _ = prepare(cfg)
    per_evaluation = sum(len(e.w) for e in parts["validation"].values())
    rows = []
    for name, label in (("signal", 1.0), ("background", 0.0)):
        ev = parts["train"][name]
        x, w = np.asarray(ev.x, dtype=float), np.asarray(ev.w, dtype=float)
        rows.append(np.column_stack([x[:, :2], np.full(len(w), label), w]))
    pool = np.concatenate(rows)
    sig = pool[:, 2] > 0.5
    return pool, float(pool[sig, 3].sum()), float(pool[~sig, 3].sum()), per_evaluation


def _exact(psi_list) -> list[float]:
    """The exact validation Z0 of the config at each pair of thresholds."""
    from ..search.objective import exact_evaluator

    path = shipped_config("black_box_cuts")
    ev = exact_evaluator(load_config(path), str(path))
    out = []
    for a, b in psi_list:
        c = load_config(path, [f"selection.cuts.0.init={a}", f"selection.cuts.1.init={b}"])
        out.append(float(ev.evaluate(c)["validation"]["z0"]))
    return out


class CountingRisk(eqx.Module):
    """L-GSO's risk on the cuts: ``-Z0`` of one counting bin whose signal and background
    yields are the totals ``s_tot``, ``b_tot`` times the weighted pass fractions of the batch
    (rows ``(x1, x2, is_signal, w)``, ``y`` the pass probability). Static fields: equal for
    equal totals, so every seed's run reuses lgso's compiled code."""

    s_tot: float = eqx.field(static=True)
    b_tot: float = eqx.field(static=True)

    def __call__(self, y, x):
        p, sig, w = y[:, 0], x[:, 2], x[:, 3]
        s = self.s_tot * jnp.sum(w * sig * p) / jnp.sum(w * sig)
        b = self.b_tot * jnp.sum(w * (1 - sig) * p) / jnp.sum(w * (1 - sig))
        return -z0_counting(s, jnp.maximum(b, 1e-3))


def cuts_lgso(seed: int, start=(0.0, 0.0), settings=None, iterations: int = 40) -> dict:
    """L-GSO from the config's cuts (0, 0); the exact validation Z0 of every iterate (for
    the curves; L-GSO never sees it), the black-box events and seconds after each iteration,
    and the events of one exact evaluation (the validation split's) to compare counts."""
    from ..surrogate.lgso import Settings, lgso

    pool, s_tot, b_tot, per_evaluation = _pool()

    def simulate(x, psi, rng):
        return ((x[:, 0] > psi[0]) & (x[:, 1] > psi[1])).astype(float)[:, None]

    def sample_x(rng, n):
        return pool[rng.integers(0, len(pool), size=n)]

    risk = CountingRisk(s_tot, b_tot)
    settings = settings or Settings(seed=seed, surrogate="bernoulli", columns=(0, 1),
                                    hidden=(16, 16), n_psi=16, m_x=256, k_x=len(pool),
                                    epsilon=0.3, learning_rate=0.1,
                                    max_iterations=iterations)  # fmt: skip
    t0, stamps = time.perf_counter(), []

    def stamp(record):
        stamps.append(time.perf_counter() - t0)

    res = lgso(simulate, sample_x, risk, list(start), bounds=[(-1.0, 3.0)] * 2,
               settings=settings, callback=stamp)  # fmt: skip
    seconds = time.perf_counter() - t0
    values = _exact([tuple(p) for p in res.path[1:]])
    final = _exact([tuple(res.psi)])[0]
    calls = [r["calls"] for r in res.records]
    return {"seed": seed, "psi": res.psi.tolist(), "value": final, "values": values,
            "calls": calls, "stamps": stamps, "seconds": seconds,
            "events_per_evaluation": per_evaluation, "converged": res.converged,
            "iterations": len(res.records),
            "val_risk_error": res.records[-1].get("val_risk_error"),
            "val_nll": res.records[-1].get("val_nll")}  # fmt: skip
