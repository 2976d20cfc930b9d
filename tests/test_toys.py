"""Toy-based tests (diffhep.stats.toys) against references: the exact Poisson sums of a
counting model, pyhf's ``ToyCalculator`` (its test-statistic distributions; the expected band
computed here because pyhf 0.7.6's ``np.percentile(..., interpolation=)`` fails under numpy 2)
and pyhf's ``make_pdf(...).sample`` for the toy generation; seeded determinism, chunking and
merging."""

from __future__ import annotations

import numpy as np
import pyhf
import pytest
from scipy import stats

import diffhep
from diagnostics_refs import counting
from diffhep.errors import DiffhepError
from diffhep.stats import toys
from diffhep.stats.fit import fit_defaults
from diffhep.stats.workspace import Workspace, example_spec
from oracle import DEFAULT_OPTIMIZERS, pyhf_numpy, reseat

CHUNK, BATCH = 64, 8  # one compiled shape for every run of a model here
S, B = 5.0, 10.0  # the counting model: signal x mu + known background, one bin
GAUSS_SPEC = {  # Gaussian constraints of every kind
    "channels": [{"name": "SR", "samples": [
        {"name": "sig", "data": [3.0, 4.0], "modifiers": [
            {"name": "mu", "type": "normfactor", "data": None},
            {"name": "lumi", "type": "lumi", "data": None}]},
        {"name": "bkg", "data": [20.0, 30.0], "modifiers": [
            {"name": "ns", "type": "normsys", "data": {"lo": 0.9, "hi": 1.2}},
            {"name": "hs", "type": "histosys",
             "data": {"lo_data": [18.0, 31.0], "hi_data": [23.0, 28.0]}},
            {"name": "staterror_SR", "type": "staterror", "data": [2.0, 3.0]},
            {"name": "lumi", "type": "lumi", "data": None}]}]}],
    "observations": [{"name": "SR", "data": [22.0, 33.0]}],
    "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": [
        {"name": "lumi", "auxdata": [1.0], "sigmas": [0.05], "bounds": [[0.5, 1.5]],
         "inits": [1.0]}]}}],
    "version": "1.0.0",
}  # fmt: skip


# =========================================================================== references
def _twice_nll(lam, k):
    return 2.0 * (lam - np.where(k > 0, k * np.log(lam), 0.0))


def exact_q(k, mu, test_stat, s=S, b=B, hi=10.0):
    """The test statistic of the counting model for n = k, in closed form."""
    k = np.asarray(k, dtype=float)
    muhat = np.clip((k - b) / s, 0.0, hi)  # the POI's bounds [0, 10]
    lam_hat = b + muhat * s
    if test_stat == "q0":
        return np.where(muhat < 0, 0.0, np.clip(_twice_nll(b, k) - _twice_nll(lam_hat, k), 0, None))
    t = np.clip(_twice_nll(b + mu * s, k) - _twice_nll(lam_hat, k), 0.0, None)
    return np.where(muhat > mu, 0.0, t)


def exact_tail(q_value, mu_true, mu, test_stat, kmax=200):
    """P(q >= q_value) for n ~ Poisson(b + mu_true s), summed over n."""
    k = np.arange(kmax)
    q = exact_q(k, mu, test_stat)
    return min(1.0, float(np.sum(stats.poisson.pmf(k, B + mu_true * S)[q >= q_value - 1e-9])))


def reference_pvalues(ts_sb, ts_b, q_obs):
    """pyhf's ToyCalculator.pvalues / expected_pvalues written out (loops, np.percentile with
    method="linear"): the observed (CLsb, CLb, CLs) and the CLsb/CLb/CLs bands."""

    def p(samples, v):  # ties up to toys.TIE_RTOL (pyhf's equal fits are bit-identical)
        return np.mean(np.asarray(samples) >= v - toys.TIE_RTOL * max(1.0, abs(v)))

    obs = (p(ts_sb, q_obs), p(ts_b, q_obs))
    obs = (*obs, obs[0] / obs[1])
    per_toy = np.array([[p(ts_sb, v), p(ts_b, v), p(ts_sb, v) / p(ts_b, v)] for v in ts_b])
    band = np.percentile(per_toy, toys.NORMAL_PERCENTILES, axis=0, method="linear").T
    return np.array(obs), band


def _bootstrap_sd(ts_sb, ts_b, q_obs, n=200, seed=1):
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        a = rng.choice(ts_sb, ts_sb.size)
        b = rng.choice(ts_b, ts_b.size)
        draws.append(_compared(*reference_pvalues(a, b, q_obs)))
    return np.std(draws, axis=0)


def _compared(obs, band):
    """CLsb, CLb, CLs observed, the median expected CLs and CLsb."""
    return np.array([*obs, band[2][2], band[0][2]])


# =========================================================================== fixtures
@pytest.fixture(scope="module")
def count_model():
    diffhep.enable_x64()
    return counting([S], [B], [12.0])


@pytest.fixture(scope="module")
def count_toys(count_model):
    model, data = count_model
    return toys.toys(1.0, model, data, ntoys=256, seed=3, chunk=CHUNK, batch=BATCH)


# =========================================================================== generation
def _pyhf_moments_check(spec, pars_shift, n=4000):
    diffhep.enable_x64()
    import jax

    ws = Workspace(spec)
    model = ws.model()
    pars = np.asarray(model.config.init, dtype=float) + pars_shift(model)
    keys = toys.toy_keys(0, 0, np.arange(n))
    ours = np.asarray(jax.jit(jax.vmap(lambda k: toys.sample(model, pars, k)))(keys))
    with pyhf_numpy():
        pmodel = pyhf.Workspace(spec).model()
        np.random.seed(0)  # noqa: NPY002 (pyhf samples from numpy's global state)
        ref = np.asarray(pmodel.make_pdf(pyhf.tensorlib.astensor(pars)).sample((n,)))
    assert ours.shape == ref.shape
    mean_a, mean_b = ours.mean(0), ref.mean(0)
    var_a, var_b = ours.var(0), ref.var(0)
    err = np.sqrt((var_a + var_b) / n) + 1e-12
    assert np.all(np.abs(mean_a - mean_b) < 4.5 * err), np.abs(mean_a - mean_b) / err
    # variances: the normal approximation of their error (4.5 sigma, many components)
    verr = np.sqrt(2.0 / n) * np.maximum(var_a, var_b) * 2.0 + 1e-12
    assert np.all(np.abs(var_a - var_b) < 4.5 * verr)
    # Poisson components are integers, Gaussian ones are not
    return model, ours


def test_toy_generation_matches_pyhf_pdf_shapesys():
    """Main Poisson + Poisson (shapesys) auxiliary data at shifted parameters."""
    _, ours = _pyhf_moments_check(example_spec(), lambda m: 0.05 * np.arange(m.config.npars))
    assert np.all(ours == np.round(ours))


def test_toy_generation_matches_pyhf_pdf_gaussian_constraints():
    """Gaussian constraints (normsys, histosys, staterror, lumi) around shifted parameters."""
    model, ours = _pyhf_moments_check(GAUSS_SPEC, lambda m: 0.1 * np.ones(m.config.npars))
    aux = ours[:, model.config.nmaindata :]
    assert not np.all(aux == np.round(aux))


# =========================================================================== closed form
def test_counting_model_qtilde_matches_the_poisson_sums(count_toys):
    r = count_toys
    assert r.nonconverged == {"sb": 0, "b": 0}
    q_obs = float(exact_q(12, 1.0, "qtilde"))
    np.testing.assert_allclose(r.teststat, q_obs, rtol=1e-8, atol=1e-10)
    # every toy's test statistic is the closed form at some count
    atoms = exact_q(np.arange(80), 1.0, "qtilde")
    for ts in (r.ts_sb, r.ts_b):
        assert np.all(np.min(np.abs(ts[:, None] - atoms[None, :]), axis=1) < 1e-7)
    # the tail distributions at every atom, and the observed p-values (3 sigma)
    n = r.ntoys
    for ts, mu_true in ((r.ts_sb, 1.0), (r.ts_b, 0.0)):
        for v in np.unique(atoms):
            p = exact_tail(v, mu_true, 1.0, "qtilde")
            got = toys.pvalue(ts, v)
            assert abs(got - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1.0 / n, (v, got, p)
    clsb, clb, cls = (float(x) for x in r.pvalues())
    p_sb, p_b = exact_tail(q_obs, 1.0, 1.0, "qtilde"), exact_tail(q_obs, 0.0, 1.0, "qtilde")
    assert abs(clsb - p_sb) <= 3 * np.sqrt(p_sb * (1 - p_sb) / n)
    assert abs(clb - p_b) <= 3 * np.sqrt(p_b * (1 - p_b) / n)
    err = r.errors()["CLs_obs"]
    assert abs(cls - p_sb / p_b) <= 3 * err
    out = r.cls_json()
    assert out["CLs_obs"] == pytest.approx(cls)
    assert out["toys"]["ntoys"] == {"sb": n, "b": n}
    np.testing.assert_allclose(out["CLs_exp"], reference_pvalues(r.ts_sb, r.ts_b, q_obs)[1][2])


def test_counting_model_discovery_matches_the_poisson_tail():
    diffhep.enable_x64()
    model, data = counting([S], [B], [16.0])
    r = toys.toys(0.0, model, data, ntoys=256, seed=5, test_stat="q0", chunk=CHUNK, batch=BATCH)
    p0 = stats.poisson.sf(15, B)  # P(n >= 16 | b): q0 increases with n above b
    np.testing.assert_allclose(r.teststat, exact_q(16, 0.0, "q0"), rtol=1e-8)
    out = r.significance_json()
    assert abs(out["p0_obs"] - p0) <= 3 * np.sqrt(p0 * (1 - p0) / r.ntoys)
    assert out["Z_obs"] == pytest.approx(stats.norm.isf(out["p0_obs"]))
    # the b-only ("mu = 1") toys: median expected p0 = P(n >= median count under s + b)
    k = np.arange(80)
    p_of_k = np.array([exact_tail(exact_q(x, 0.0, "q0"), 0.0, 0.0, "q0") for x in k])
    lo, hi = stats.poisson.ppf([0.4, 0.6], B + S)  # the median count, +- MC spread
    assert p_of_k[int(hi)] <= out["p0_exp"] <= p_of_k[int(lo)]


# =========================================================================== pyhf
def _pyhf_distributions(spec, mu, ntoys, seed, test_stat="qtilde"):
    def run(opt):
        def go():
            with pyhf_numpy(opt):
                model = pyhf.Workspace(spec).model()
                data = pyhf.Workspace(spec).data(model)
                np.random.seed(seed)  # noqa: NPY002 (pyhf's global state)
                calc = pyhf.infer.calculators.ToyCalculator(
                    data, model, ntoys=ntoys, test_stat=test_stat, track_progress=False
                )
                q = float(calc.teststatistic(mu))
                sb, b = calc.distributions(mu)
                obs = [float(x) for x in calc.pvalues(q, sb, b)]
                return q, np.asarray(sb.samples), np.asarray(b.samples), obs

        return go

    return reseat(
        "ToyCalculator", [(f"ToyCalculator with {o}", run(o)) for o in DEFAULT_OPTIMIZERS]
    )


def _check_against_pyhf(spec, mu, ntoys, test_stat="qtilde"):
    """Same model, same number of toys: observed CLsb, CLb, CLs and the median expected CLs
    (q0: CLsb) within 3 Monte-Carlo sigma (bootstrap of both runs)."""
    diffhep.enable_x64()
    q_ref, sb_ref, b_ref, obs_ref = _pyhf_distributions(spec, mu, ntoys, 0, test_stat)
    ws = Workspace(spec)
    model = ws.model()
    r = toys.toys(mu, model, ws.data(model), ntoys=ntoys, seed=11, test_stat=test_stat,
                  chunk=CHUNK, batch=BATCH)  # fmt: skip
    assert r.nonconverged == {"sb": 0, "b": 0}
    np.testing.assert_allclose(r.teststat, q_ref, rtol=1e-5, atol=1e-8)
    # pyhf's own observed p-values equal the written-out convention on its samples
    ref_obs, ref_band = reference_pvalues(sb_ref, b_ref, q_ref)
    np.testing.assert_allclose(obs_ref, ref_obs, rtol=1e-12)
    # diffhep's p-value code on pyhf's samples: the same numbers
    ok = np.ones(ntoys, bool)
    same = toys.ToyResult(test_stat, mu, q_ref, sb_ref, b_ref, ok, ok)
    np.testing.assert_allclose(np.ravel(same.pvalues()), ref_obs, rtol=1e-12)
    np.testing.assert_allclose(np.array(same.expected_pvalues()), ref_band, rtol=1e-12)
    # diffhep's toys against pyhf's, within the Monte-Carlo error
    got_obs, got_band = reference_pvalues(r.ts_sb, r.ts_b, r.teststat)
    np.testing.assert_allclose(np.ravel(r.pvalues()), got_obs, rtol=1e-12)
    sd = np.hypot(_bootstrap_sd(r.ts_sb, r.ts_b, r.teststat), _bootstrap_sd(sb_ref, b_ref, q_ref))
    diff = np.abs(_compared(got_obs, got_band) - _compared(ref_obs, ref_band))
    keep = [0, 1, 4] if test_stat == "q0" else [0, 1, 2, 3]
    assert np.all(diff[keep] <= 3 * sd[keep] + 1e-12), (diff, sd)

    # the test-statistic distributions themselves (pyhf's fits at a bound leave ~1e-9 where
    # the statistic is 0: rounded, or the atom at 0 would count as a difference)
    def atom(ts):
        return np.where(np.asarray(ts) < 1e-6, 0.0, ts)

    assert stats.ks_2samp(atom(r.ts_sb), atom(sb_ref)).pvalue > 1e-3
    assert stats.ks_2samp(atom(r.ts_b), atom(b_ref)).pvalue > 1e-3
    return r


def test_toy_based_cls_agrees_with_pyhf_toycalculator():
    """pyhf's own example model (shapesys: Poisson constraints), qtilde, 200 toys."""
    _check_against_pyhf(example_spec(), 1.0, 200)


@pytest.mark.slow
@pytest.mark.parametrize("test_stat", ["q", "q0"])
def test_toys_agree_with_pyhf_gaussian_constraints(test_stat):
    """normsys, histosys, staterror and lumi (Gaussian constraints), q and q0, 500 toys."""
    _check_against_pyhf(GAUSS_SPEC, 0.0 if test_stat == "q0" else 1.5, 500, test_stat)


# =========================================================================== seeds, merging
def test_seeded_runs_are_reproducible_and_independent_of_chunking(count_model, count_toys):
    model, data = count_model
    again = toys.toys(1.0, model, data, ntoys=256, seed=3, chunk=CHUNK, batch=BATCH)
    np.testing.assert_array_equal(again.ts_sb, count_toys.ts_sb)
    np.testing.assert_array_equal(again.ts_b, count_toys.ts_b)
    seed4 = toys.toys(1.0, model, data, ntoys=256, seed=4, chunk=CHUNK, batch=BATCH)
    assert not np.array_equal(seed4.ts_b, count_toys.ts_b)


@pytest.mark.slow
def test_results_do_not_depend_on_the_chunk_size(count_model, count_toys):
    """Other chunk and batch sizes (other compiled shapes): the same toys."""
    model, data = count_model
    other = toys.toys(1.0, model, data, ntoys=256, seed=3, chunk=32, batch=4)
    np.testing.assert_allclose(other.ts_sb, count_toys.ts_sb, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(other.ts_b, count_toys.ts_b, rtol=1e-9, atol=1e-12)
    assert other.cls_json()["CLs_exp"] == count_toys.cls_json()["CLs_exp"]
    # batch 1: a plain loop (no vmap), the path of large models
    loop = toys.toys(1.0, model, data, ntoys=256, seed=3, chunk=32, batch=1)
    np.testing.assert_allclose(loop.ts_sb, count_toys.ts_sb, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loop.ts_b, count_toys.ts_b, rtol=1e-9, atol=1e-12)


def test_two_halves_merge_into_the_whole_run(count_model, count_toys, tmp_path):
    model, data = count_model
    kw = dict(seed=3, chunk=CHUNK, batch=BATCH)
    a = toys.toys(1.0, model, data, ntoys=100, first=0, **kw)
    b = toys.toys(1.0, model, data, ntoys=156, first=100, **kw)
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    merged = toys.merge([toys.load(tmp_path / "b.npz"), toys.load(tmp_path / "a.npz")])
    whole = count_toys
    np.testing.assert_array_equal(np.sort(merged.ts_sb), np.sort(whole.ts_sb))
    np.testing.assert_array_equal(np.sort(merged.ts_b), np.sort(whole.ts_b))
    one, two = merged.cls_json(), whole.cls_json()
    assert one["CLs_obs"] == two["CLs_obs"] and one["CLs_exp"] == two["CLs_exp"]
    assert merged.runs == [{"seed": 3, "first": 0, "ntoys": 100},
                           {"seed": 3, "first": 100, "ntoys": 156}]  # fmt: skip
    # the same toys twice, another model, another setting: refused
    with pytest.raises(DiffhepError, match="in both"):
        toys.merge([a, toys.load(tmp_path / "a.npz")], ["a.npz", "again.npz"])
    other_model, other_data = counting([S], [B], [13.0])
    c = toys.toys(1.0, other_model, other_data, ntoys=64, **{**kw, "seed": 9})
    with pytest.raises(DiffhepError, match="model and data"):
        toys.merge([a, c])
    d = toys.toys(2.0, model, data, ntoys=64, seed=9, chunk=CHUNK, batch=BATCH)
    with pytest.raises(DiffhepError, match="poi_test"):
        toys.merge([a, d])
    (tmp_path / "bad.npz").write_bytes(b"not a toy file")
    with pytest.raises(DiffhepError, match="cannot read toys"):
        toys.load(tmp_path / "bad.npz")


def test_aux_centre_puts_constrained_parameters_at_their_auxiliary_data():
    """Gaussian terms at the datum, lumi too; unconstrained (the POI) and fixed ones keep the
    generating value; clipped to the bounds. A toy's restart search is judged from there."""
    diffhep.enable_x64()
    model = Workspace(GAUSS_SPEC).model()
    cfg = model.config
    init, lower, upper, fixed = fit_defaults(model, None, None, None, model.nominal.dtype)
    pars = init + 0.1
    aux = np.array([-0.4, 1.7, 2.5, 1.3, 0.6])  # hs, lumi, ns, gammas: auxdata order
    data = np.concatenate([[22.0, 33.0], aux])
    names = [cfg.par_names[i] for i in np.asarray(model.tables.aux_par)]
    got = np.asarray(toys.aux_centre(model, pars, data, lower, upper, fixed))
    want = np.asarray(pars).copy()
    for name, a in zip(names, aux, strict=True):
        i = cfg.par_names.index(name)
        want[i] = np.clip(a, lower[i], upper[i])
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    poi = cfg.par_names.index("mu")
    assert got[poi] == pars[poi]
    assert got[cfg.par_names.index("lumi")] == 1.5  # clipped to its bound
    frozen = np.asarray(fixed).copy()
    frozen[cfg.par_names.index(names[1])] = True
    held = np.asarray(toys.aux_centre(model, pars, data, lower, upper, frozen))
    assert held[cfg.par_names.index(names[1])] == pars[cfg.par_names.index(names[1])]
