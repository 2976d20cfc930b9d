"""Learned positive weights E[w|x] (diffhep.weights.reweight), the toys with a known E[w|x]
(diffhep.problems.weight_toys) and the verification report (diffhep.weights.verify).

References: closed forms of the toys, brute-force numpy group means, and the N(0, 1)
distribution of pulls with the true E[w|x]."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from diffhep.errors import DataError
from diffhep.problems import weight_toys as T
from diffhep.weights.reweight import (
    NegativeMeanWeightWarning,
    fit_mean_weight,
    learn_positive_weights,
    predict,
    predict_mean,
    resample,
)
from diffhep.weights.verify import verify
from test_apply import unwritable  # noqa: F401 (fixture)

NAMES = ["x", "z", "u"]


# ------------------------------------------------------------------ toys (closed forms)
def _binned_means(x, t, edges):
    idx = np.digitize(x, edges) - 1
    ok = (idx >= 0) & (idx < len(edges) - 1)
    n = np.bincount(idx[ok], minlength=len(edges) - 1)
    s = np.bincount(idx[ok], weights=t[ok], minlength=len(edges) - 1)
    s2 = np.bincount(idx[ok], weights=t[ok] ** 2, minlength=len(edges) - 1)
    mean = s / n
    return mean, np.sqrt((s2 / n - mean**2) / n), idx, ok


@pytest.mark.parametrize(
    "gen, truth, power",
    [
        (T.gaussian_toy, lambda x: T.gaussian_mean_weight(x[:, 0]), 1),
        (T.step_toy, lambda x: T.step_mean_weight(x[:, 0]), 1),
        (T.step_toy, lambda x: T.step_mean_weight(x[:, 0], 2), 2),
    ],
)
def test_toy_closed_forms_match_binned_sample_means(gen, truth, power):
    x, w = gen(200_000, seed=3)
    t = w**power
    edges = np.quantile(x[:, 0], np.linspace(0.01, 0.99, 31))
    mean, err, idx, ok = _binned_means(x[:, 0], t, edges)
    expect = np.bincount(idx[ok], weights=truth(x)[ok], minlength=30) / np.bincount(idx[ok])
    if power == 2:  # |w| is a function of x: no spread (x is stored as float32)
        np.testing.assert_allclose(mean, expect, rtol=1e-7)
        return
    pulls = (mean - expect) / err
    assert np.all(np.abs(pulls) < 4.5), pulls
    assert abs(np.mean(pulls**2) - 1) < 0.6


def test_negweight_2d_background_mean_weight_and_fractions():
    ev = T.negweight_2d(100_000, seed=1)
    xb, wb = ev["background"]
    assert np.mean(wb < 0) == pytest.approx(0.20, abs=1e-4)
    assert np.all(ev["signal"][1] == 1.0)
    # E[w|x] near the cancellation point and far from it, against sample means
    for centre, radius in ((T.NEG2D_REGION, 0.15), ((-3.0, -3.0), 1.0), ((1.6, 1.3), 0.2)):
        near = np.linalg.norm(xb - np.asarray(centre), axis=1) < radius
        m, e = wb[near].mean(), wb[near].std() / np.sqrt(near.sum())
        assert abs(m - T.negweight_2d_mean_weight(xb[near]).mean()) < 4 * e + 1e-6
    # positive everywhere (a physical net density); the region nearly cancels
    grid = np.random.default_rng(0).uniform(-12, 12, (200_000, 2))
    e = T.negweight_2d_mean_weight(grid)
    assert e.min() > 0.02 and e.max() <= 1.0
    assert T.negweight_2d_mean_weight(np.array([T.NEG2D_REGION]))[0] < 0.03
    d = T.negweight_2d_densities(grid)
    assert np.all((d["posterior"] > 0) & (d["posterior"] < 1))


# ------------------------------------------------------------------ the talk's example
@pytest.mark.parametrize("method", ["classifier", "regression"])
def test_talk_five_event_example(method):
    """x = 15 with weights 1, 1, -1 -> 1/3 each; x = 23 and 90 keep 1 (the talk's table)."""
    x = np.array([[15.0], [23.0], [15.0], [15.0], [90.0]])
    w = np.array([1.0, 1.0, 1.0, -1.0, 1.0])
    # brute force: the mean weight of the events with the same x
    exact = np.array([w[x[:, 0] == v].mean() for v in x[:, 0]])
    np.testing.assert_allclose(exact, [1 / 3, 1, 1 / 3, 1 / 3, 1])
    net = fit_mean_weight(x, w, method=method, hidden=(16,), epochs=300, learning_rate=0.05)
    np.testing.assert_allclose(predict(net, x), exact, atol=0.02)
    # the histogram of x is unchanged
    edges = np.array([0.0, 20.0, 50.0, 100.0])
    h = np.histogram(x[:, 0], edges, weights=w)[0]
    np.testing.assert_allclose(
        np.histogram(x[:, 0], edges, weights=predict(net, x))[0], h, atol=0.06
    )


# ------------------------------------------------------------------ Gaussian toy
@pytest.fixture(scope="module")
def gaussian():
    """20,000 events of the Gaussian toy reweighted on x alone (z and u are not inputs)."""
    x, w = T.gaussian_toy(20_000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NegativeMeanWeightWarning)
        res = learn_positive_weights(x, w, inputs=[0], seed=0)
    return x, w, res


def test_learned_mean_weight_matches_closed_form_over_the_bulk(gaussian):
    """Stated tolerances over the bulk |x| < 2 (95% of the events; E[w|x] runs from 0.2 to
    0.98 there): the mean of the two fold networks within 0.06 everywhere, each fold's
    network (10,000 events) within 0.1 and 0.025 on average, the cross-fitted per-event
    values within 0.03 on average. Measured over seeds 0-5: at most 0.040, 0.080, 0.019 and
    0.021."""
    x, _, res = gaussian
    grid = np.linspace(-2, 2, 81)
    g = np.column_stack([grid, grid, grid])
    truth = T.gaussian_mean_weight(grid)
    assert np.abs(predict_mean(res.models, g) - truth).max() < 0.06
    for net in res.models:  # each fold's network
        err = np.abs(predict(net, g) - truth)
        assert err.max() < 0.1 and err.mean() < 0.025, (err.max(), err.mean())
    # cross-fitted per-event values: every event's from the network that did not see it
    bulk = np.abs(x[:, 0]) < 2
    assert np.mean(np.abs(res.mean_weight - T.gaussian_mean_weight(x[:, 0]))[bulk]) < 0.03
    assert res.negative_fraction == 0.0 and np.all(res.weights >= 0)


def test_pulls_are_standard_normal_on_trained_and_non_trained_features(gaussian):
    x, w, res = gaussian
    report = verify(x, w, res.weights, names=NAMES, inputs=[0], bins=20)
    for name in ("x", "z"):  # x: the input; z = x + noise: not an input
        f = report["features"][name]
        pulls = np.asarray(f["pulls"])
        assert f["p_value"] > 1e-3, (name, f["chi2"], f["ndf"])
        assert abs(pulls.mean()) < 3 / np.sqrt(len(pulls)) + 0.2
        assert 0.5 < pulls.std() < 1.5
        assert f["input"] == (name == "x")
    # u carries information on the weight's sign that x does not: the check must see it
    assert report["features"]["u"]["chi2"] / report["features"]["u"]["ndf"] > 10
    # sum w preserved within its statistical error, globally and per region
    g = report["global"]
    assert abs(g["sum_w_new"] - g["sum_w_orig"]) < 3 * g["uncertainty_orig"]
    assert abs(g["pull"]) < 3
    assert len(report["regions"]) == 4
    for r in report["regions"].values():
        assert abs(r["pull"]) < 3.5
    assert report["negative_fraction"] == {"before": 0.25, "after": 0.0}
    assert report["ess"]["after"] > 2.5 * report["ess"]["before"]


def test_true_mean_weight_gives_standard_normal_pulls_and_wrong_weights_do_not():
    """The verification itself: the exact E[w|x] passes, |w| (the 'abs' work-around) fails."""
    x, w = T.gaussian_toy(50_000, seed=5)
    good = verify(x, w, T.gaussian_mean_weight(x[:, 0]), names=NAMES, bins=25)
    pulls = np.concatenate([good["features"][n]["pulls"] for n in ("x", "z")])
    assert abs(pulls.mean()) < 0.4 and 0.7 < pulls.std() < 1.3
    assert good["features"]["x"]["p_value"] > 1e-3 and good["features"]["z"]["p_value"] > 1e-3
    bad = verify(x, w, np.abs(w) * w.sum() / np.abs(w).sum(), names=NAMES, bins=25)
    assert bad["features"]["x"]["p_value"] < 1e-6
    # chi2 with the original's uncertainty alone is smaller than with the paired variance
    assert good["features"]["x"]["chi2_orig"] < good["features"]["x"]["chi2"]


def test_pull_variance_floor_where_no_negative_weight_fell():
    """A bin with only w = 1 events and new weights 0.999: the paired variance is ~0 but the
    pull stays finite and small (one event's worth of variance is added)."""
    x = np.concatenate([np.linspace(0, 1, 1000), np.linspace(2, 3, 1000)])[:, None]
    w = np.concatenate([np.where(np.arange(1000) % 4 == 0, -1.0, 1.0), np.ones(1000)])
    new = np.concatenate([np.full(1000, 0.5), np.full(1000, 0.999)])
    f = verify(x, w, new, bins=2, regions={})["features"]["x0"]
    assert np.all(np.isfinite(f["pulls"]))
    assert abs(f["pulls"][1]) < 1.0  # -1 event / sqrt(1000 * 1e-6 + 1.5^2)


def test_regions_are_column_expressions():
    """A region is an expression over the feature names (io.expressions' grammar): its events
    are counted by hand; a syntax error, an unknown feature and a non-selection are DataErrors
    naming the region."""
    x = np.stack([np.linspace(0, 1, 101), np.linspace(1, 0, 101)], axis=1)
    w = np.ones(101)
    r = verify(x, w, w, bins=2, regions={"r": "x0 > 0.25 && x1 >= 0.5"})["regions"]["r"]
    assert r["events"] == int(np.sum((x[:, 0] > 0.25) & (x[:, 1] >= 0.5)))
    for bad, message in [("x0 >> ", "cannot parse"), ("q > 1", "unknown feature 'q'"),
                         ("x0 + 1", "not a selection")]:  # fmt: skip
        with pytest.raises(DataError, match=message) as err:
            verify(x, w, w, bins=2, regions={"r": bad})
        assert err.value.where == "regions" and repr(bad) in str(err.value)


# ------------------------------------------------------------------ negative E and resampling
def test_negative_learned_mean_weight_is_reported_and_clipped():
    """A region with E[w|x] = -0.5 (x < 1, 25% of the events): the regression finds it,
    warns with the fraction, and the weights there are clipped to 0."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 4, 8000)
    w = np.where(rng.uniform(size=8000) < np.where(x < 1, 0.75, 0.1), -1.0, 1.0)
    with pytest.warns(NegativeMeanWeightWarning, match=r"learned E\[w\|x\] < 0 for .* events"):
        res = learn_positive_weights(x[:, None], w, folds=1, seed=1)
    true_frac = np.mean(x < 1)
    assert abs(res.negative_fraction - true_frac) < 0.03
    assert np.all(res.weights >= 0) and res.clipped >= 0.9 * true_frac * len(x)
    assert np.all(res.weights[x < 0.8] == 0)
    np.testing.assert_allclose(res.mean_weight[x > 1.2].mean(), 0.8, atol=0.05)


def test_resampling_preserves_sum_w_and_sum_w2_in_expectation():
    rng = np.random.default_rng(7)
    m = rng.uniform(0.05, 1.0, 400_000)
    m2 = m**2 / rng.uniform(0.1, 1.0, m.size)  # E[w^2] >= E[w]^2
    new, kept = resample(m, m2, seed=3)
    p = m**2 / m2
    assert abs(kept.mean() - p.mean()) < 5 * np.sqrt(p.mean() / m.size)
    idx = np.minimum((m * 10).astype(int), 9)
    for target, got in ((m, new), (m2, new**2)):
        want = np.bincount(idx, target, 10)
        have = np.bincount(idx, got, 10)
        err = np.sqrt(np.bincount(idx, got**2, 10))  # Poisson-like spread of the kept events
        assert np.all(np.abs(have - want) < 5 * err), (have - want) / err
    with pytest.raises(ValueError, match="non-negative"):
        resample(np.array([-0.1]), np.array([1.0]))


def test_step_toy_mean_weight_and_resampled_sums():
    """Steps and ramps in E[w|x], weights of several magnitudes: E[w|x] learned within 0.1
    away from the jumps; resampled histograms keep sum w and sum w^2 within their errors."""
    x, w = T.step_toy(20_000, seed=2)
    res = learn_positive_weights(x, w, folds=1, resampling=True, seed=2)
    assert len(res.models_w2) == 1  # |w| varies: E[w^2|x] is learned
    grid = np.array([0.5, 1.5, 2.5, 4.0, 5.0, 6.0, 8.0, 9.0])
    err = np.abs(predict(res.models[0], grid[:, None]) - T.step_mean_weight(grid))
    assert err.max() < 0.1, err
    edges = np.linspace(0, 10, 11)
    h, _ = np.histogram(x[:, 0], edges, weights=w)
    h2, _ = np.histogram(x[:, 0], edges, weights=w**2)
    hn, _ = np.histogram(x[:, 0], edges, weights=res.weights)
    hn2, _ = np.histogram(x[:, 0], edges, weights=res.weights**2)
    dw = np.histogram(x[:, 0], edges, weights=(res.weights - w) ** 2)[0]
    assert np.all(np.abs(hn - h) < 4 * np.sqrt(dw)), (hn - h) / np.sqrt(dw)
    assert abs(hn.sum() - h.sum()) < 3 * np.sqrt(dw.sum())
    assert abs(hn2.sum() / h2.sum() - 1) < 0.05
    assert 0.2 < res.kept.mean() < 1.0 and np.all(res.weights[~res.kept] == 0)


# ------------------------------------------------------------------ diffhep reweight on files
def _toy_columns(n=600, seed=1):
    x, w = T.gaussian_toy(n, seed=seed)
    cols = {"x": x[:, 0], "z": x[:, 1], "u": x[:, 2], "genWeight": w}
    return cols | {"xsec": np.full(n, 2.0), "run": np.arange(n, dtype=np.int64)}


def _write_toy(path, cols, rntuple=False):
    """ROOT (one TTree with a jagged Jet collection, or with ``rntuple`` an RNTuple with a
    jagged record and a string field) or parquet (a list and a string column) holding the
    toy's flat columns."""
    import awkward as ak

    n = len(cols["x"])
    pt = [[10.0 + i % 7] * (i % 3) for i in range(n)]
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            for k, v in cols.items():
                f.create_dataset(k, data=v)
        return
    if path.suffix == ".csv":
        import pyarrow as pa
        import pyarrow.csv as pcsv

        pcsv.write_csv(pa.table(cols), path)
        return
    if path.suffix == ".npz":
        np.savez(path, **cols)
        return
    if path.suffix == ".root":
        import uproot

        data = cols | {"Jet": ak.zip({"pt": ak.Array(pt), "eta": ak.Array(pt) / 10})}
        if rntuple:  # what uproot >= 5.7 writes for f[name] = {...}
            with uproot.recreate(path) as f:
                f["Events"] = data | {"tag": ak.Array([f"e{i}" for i in range(n)])}
            return
        with uproot.recreate(path) as f:
            f.mktree("Events", {k: getattr(v, "type", None) or v.dtype for k, v in data.items()})
            f["Events"].extend(data)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(cols | {"Jet_pt": pt, "tag": [f"e{i}" for i in range(n)]})
        pq.write_table(table, path, row_group_size=250)


def _read_back(path):
    """Every column of the file: numpy for flat ones, Python lists for the others."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in f}
    if path.suffix == ".csv":
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
        return {k: table[k].to_numpy() for k in table.column_names}
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if path.suffix == ".root":
        import awkward as ak
        import uproot

        with uproot.open(path) as f:
            arrays = f["Events"].arrays(library="ak")
        return {k: (ak.to_numpy(arrays[k]) if arrays[k].ndim == 1 else arrays[k].to_list())
                for k in arrays.fields}  # fmt: skip
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {k: table[k].to_numpy() if table[k].type.num_fields == 0 and str(table[k].type)
            != "string" else table[k].to_pylist() for k in table.column_names}  # fmt: skip


OPTS = "--method classifier --hidden 4 --epochs 3 --folds 2 --seed 3 --bins 10".split()


@pytest.mark.parametrize("ext", ["root", "rntuple", "parquet", "h5", "csv", "npz"])
def test_reweight_cli_adds_the_column_next_to_the_original(tmp_path, ext):
    """Every original column unchanged (jagged and string ones too, for ROOT and parquet),
    the new column equal to reweight_arrays on the same arrays and seed, the input untouched,
    the report written; an RNTuple gives an RNTuple."""
    from click.testing import CliRunner

    from diffhep.cli import main
    from diffhep.weights.files import reweight_arrays

    cols = _toy_columns()
    rntuple, ext = ext == "rntuple", "root" if ext == "rntuple" else ext
    path = tmp_path / f"toy.{ext}"
    _write_toy(path, cols, rntuple=rntuple)
    before = path.read_bytes()
    args = ["reweight", str(path), "--weight", "genWeight * xsec", "--features", "x,z,u"]
    res = CliRunner().invoke(main, [*args, "--inputs", "x", *OPTS])
    assert res.exit_code == 0, res.output
    out = tmp_path / f"toy_reweighted.{ext}"
    assert path.read_bytes() == before  # FILE is not overwritten by default
    if ext == "root":
        import uproot

        kind = "ROOT::RNTuple" if rntuple else "TTree"
        assert uproot.open(out).classnames() == {"Events;1": kind}
    original, written = _read_back(path), _read_back(out)
    if ext == "h5":  # h5py lists a group's members by name
        assert sorted(written) == sorted([*original, "w_learned"])
    else:
        assert list(written) == [*original, "w_learned"]
    for k, v in original.items():
        if isinstance(v, np.ndarray):
            assert written[k].dtype == v.dtype, k
            np.testing.assert_array_equal(written[k], v, err_msg=k)
        else:
            assert written[k] == v, k
    x = np.column_stack([cols["x"], cols["z"], cols["u"]]).astype(np.float64)
    expect, _ = reweight_arrays(x, cols["genWeight"] * 2.0, names=["x", "z", "u"], inputs=[0],
                                bins=10, seed=3, folds=2, hidden=(4,), epochs=3,
                                method="classifier")  # fmt: skip
    assert written["w_learned"].dtype == np.float64
    np.testing.assert_allclose(written["w_learned"], expect, rtol=0, atol=1e-12)
    assert np.all(written["w_learned"] >= 0) and np.any(cols["genWeight"] < 0)
    report_dir = tmp_path / "toy_reweighted_reweight"
    assert (report_dir / "reweight_report.md").is_file()
    assert (report_dir / "plots" / "z.png").is_file()
    import json

    report = json.loads((report_dir / "reweight_report.json").read_text())
    assert set(report["features"]) == {"x", "z", "u"} and report["inputs"] == ["x"]
    assert report["weight"] == "genWeight * xsec"


def test_reweight_cli_missing_weight_column_names_it_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from diffhep.cli import main

    path = tmp_path / "toy.parquet"
    _write_toy(path, _toy_columns(50))
    res = CliRunner().invoke(main, ["reweight", str(path), "--weight", "genWeigth * xsec", *OPTS])
    assert res.exit_code == 2, res.output
    assert "'genWeigth'" in res.output and str(path) in res.output, res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.parquet"]


def test_reweight_refuses_bad_options_and_outputs_before_training(
    tmp_path,
    monkeypatch,
    unwritable,  # noqa: F811
):
    """--folds/--epochs/--bins 0, a zero hidden width, more folds than events, the input as
    --out (also through a relative path, a symbolic or a hard link), an output or report
    under a file or in an unwritable directory: exit 2 naming the option, nothing written."""
    import os

    from click.testing import CliRunner

    from diffhep.cli import main

    d = tmp_path / "data"
    d.mkdir()
    path = d / "toy.parquet"
    _write_toy(path, _toy_columns(50))
    before = path.read_bytes()
    (d / "link.parquet").symlink_to(path)
    os.link(path, d / "hard.parquet")
    (d / "a_file").write_text("x")
    monkeypatch.chdir(d)
    base = ["reweight", str(path), "--weight", "genWeight * xsec"]
    cases = [
        (["--folds", "0"], "--folds"),
        (["--epochs", "0"], "--epochs"),
        (["--bins", "0"], "--bins"),
        (["--bins", "-3"], "--bins"),
        (["--hidden", "8,0"], "--hidden"),
        (["--folds", "51"], "--folds"),  # 50 events
        (["--out", str(path)], "--out"),
        (["--out", "toy.parquet"], "--out"),  # relative to the working directory
        (["--out", "../data/./toy.parquet"], "--out"),
        (["--out", "link.parquet"], "--out"),
        (["--out", "hard.parquet"], "--out"),
        (["--out", "a_file/out.parquet"], "--out"),
        (["--out", str(unwritable / "out.parquet")], "--out"),
        (["--report", "a_file/report"], "--report"),
        (["--report", str(unwritable / "report")], "--report"),
    ]
    listing = sorted(p.name for p in d.iterdir())
    for extra, option in cases:
        res = CliRunner().invoke(main, [*base, *OPTS, *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert option in res.output and "Traceback" not in res.output, (extra, res.output)
        assert "fix:" in res.output, (extra, res.output)
        assert sorted(p.name for p in d.iterdir()) == listing, extra  # nothing written
        assert path.read_bytes() == before
    res = CliRunner().invoke(main, [*base, *OPTS, "--out", "link.parquet"])
    assert "is the input file" in res.output and "never overwrites" in res.output
    npz = d / "toy.npz"
    np.savez(npz, x=np.zeros((10, 1)), w=np.ones(10))
    res = CliRunner().invoke(main, ["reweight", str(npz), "--out", "toy.npz", *OPTS])
    assert res.exit_code == 2 and "--out" in res.output, res.output
