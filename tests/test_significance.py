"""Significance losses (Elwood & Kruecker) and their evaluation: closed forms, brute force,
finite differences, and the study in a smoke form."""

from __future__ import annotations

import json
from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhep.analysis import losses
from diffhep.studies.significance import best_threshold, significance_study


def _z_no_uncertainty(s, b):
    return np.sqrt(2.0 * ((s + b) * np.log1p(s / b) - s))


def test_asimov_significance_at_zero_uncertainty_is_the_limit():
    for s, b in ((14.0, 5.0), (0.3, 3.0), (20.0, 2000.0)):
        np.testing.assert_allclose(
            float(losses.asimov_significance(s, b, 0.0)), _z_no_uncertainty(s, b), rtol=1e-12
        )
        g = jax.grad(losses.asimov_significance, argnums=(0, 1))(s, b, 0.0)
        assert all(np.isfinite(float(x)) for x in g)
    np.testing.assert_allclose(float(losses.asimov_significance(14.0, 5.0, 1.5)), 3.6149635,
                               atol=1e-6)  # fmt: skip


def _z_decimal(s, b, sigma_b):
    """Z_A in 60-digit decimal arithmetic (the reference)."""
    getcontext().prec = 60
    s, b, sb2 = Decimal(s), Decimal(b), Decimal(sigma_b) ** 2
    t1 = (s + b) * ((s + b) * (b + sb2) / (b**2 + (s + b) * sb2)).ln()
    t2 = b**2 / sb2 * (1 + sb2 * s / (b * (b + sb2))).ln()
    return float((2 * (t1 - t2)).sqrt())


def test_asimov_significance_small_signal_over_large_background():
    """s << b with a background uncertainty: no catastrophic cancellation."""
    b, rel = 2e4, 0.3
    for s, rtol in ((1e-6, 1e-4), (1e-2, 1e-8), (1.0, 1e-10), (30.0, 1e-12)):
        z = float(losses.asimov_significance(s, b, rel * b))
        np.testing.assert_allclose(z, _z_decimal(s, b, rel * b), rtol=rtol)
    value, grad = jax.value_and_grad(losses.inverse_asimov_significance)(0.0, b, rel)
    np.testing.assert_allclose(float(value), np.sqrt(b + (rel * b) ** 2) / losses.YIELD_EPS,
                               rtol=1e-5)  # fmt: skip
    assert np.isfinite(float(grad)) and float(grad) < 0


@pytest.mark.parametrize(
    "loss",
    [
        losses.inverse_s_over_sqrt_s_plus_b,
        losses.b_over_s2,
        lambda s, b: losses.inverse_asimov_significance(s, b, 0.3),
        lambda s, b: losses.inverse_asimov_significance(s, b, 0.01),
    ],
)
@pytest.mark.parametrize("s, b", [(0.0, 0.0), (0.0, 5.0), (5.0, 0.0), (1e-12, 1e-12)])
def test_soft_yield_losses_finite_at_zero(loss, s, b):
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(b))
    assert np.isfinite(float(value))
    assert all(np.isfinite(float(g)) for g in grads)


def _brute_force(ss, ws, sb, wb, rel, min_bkg):
    best = None
    for t in np.unique(np.concatenate([ss, sb])):
        s, b = ws[ss >= t].sum(), wb[sb >= t].sum()
        if (sb >= t).sum() < min_bkg or b <= 0 or s <= 0:
            continue
        sb2 = (rel * b) ** 2
        z = np.sqrt(2 * ((s + b) * np.log((s + b) * (b + sb2) / (b**2 + (s + b) * sb2))
                         - b**2 / sb2 * np.log1p(sb2 * s / (b * (b + sb2)))))  # fmt: skip
        if best is None or z > best[0]:
            best = (z, t, s, b, (ws[ss >= t] ** 2).sum(), (wb[sb >= t] ** 2).sum())
    return best


@pytest.mark.parametrize("rel", [0.01, 0.3])
def test_best_threshold_matches_brute_force(rel):
    rng = np.random.default_rng(2)
    ss, sb = rng.beta(5, 2, 300), rng.beta(2, 5, 2000)
    ss[:10] = sb[:10]  # ties between signal and background scores
    ws, wb = rng.uniform(0.05, 0.15, 300), rng.uniform(5.0, 15.0, 2000)
    got = best_threshold(ss, ws, sb, wb, rel, min_background_events=5)
    z, t, s, b, s2, b2 = _brute_force(ss, ws, sb, wb, rel, 5)
    np.testing.assert_allclose([got["z"], got["threshold"], got["s"], got["b"]], [z, t, s, b],
                               rtol=1e-10)  # fmt: skip
    assert got["n_background"] == (sb >= t).sum() and got["n_signal"] == (ss >= t).sum()
    # statistical uncertainty: derivatives of Z_A by central differences, propagated
    h = 1e-6

    def za(s_, b_):
        return float(losses.asimov_significance(s_, b_, rel * b_))

    dzs = (za(s * (1 + h), b) - za(s * (1 - h), b)) / (2 * h * s)
    dzb = (za(s, b * (1 + h)) - za(s, b * (1 - h))) / (2 * h * b)
    np.testing.assert_allclose(got["z_unc"], np.sqrt(dzs**2 * s2 + dzb**2 * b2), rtol=1e-5)


def test_best_threshold_needs_enough_background():
    with pytest.raises(ValueError, match="background"):
        best_threshold([0.9], [1.0], [0.1, 0.2], [1.0, 1.0], 0.1, min_background_events=5)


def test_significance_study_smoke(tmp_path):
    path = significance_study(
        tmp_path / "docs",
        seeds=1,
        epochs=2,
        overrides=["data.n_per_blob=4000", "observable.hidden=[8]"],
        runs_dir=tmp_path / "runs",
        rels=(0.3,),
        batch_sizes=(4096,),
        pretrain_epochs=1,
    )
    r = json.loads((tmp_path / "docs" / "significance.json").read_text())
    assert set(r["runs"]) == {"truth", "bce", "s_sqrt_sb", "za_pre_0.3", "za_alone_0.3"}
    # the Z_A run switched objectives after one epoch of (s+b)/s^2
    hist = [json.loads(x) for x in (tmp_path / "runs" / "za_pre_0.3-seed0" / "metrics.jsonl")
            .read_text().splitlines()]  # fmt: skip
    assert "s_sqrt_sb" in hist[0] and "z_asimov" in hist[1]
    for rows in r["runs"].values():
        res = rows[0]["0.3"]
        assert res["n_background"] >= 10
        # Z_A reported is Z_A of the reported s and b
        np.testing.assert_allclose(
            res["z"],
            float(losses.asimov_significance(res["s"], res["b"], 0.3 * res["b"])),
            rtol=1e-12,
        )
    text = path.read_text()
    assert "| true likelihood ratio (reference) |" in text and "Z_A alone" in text
