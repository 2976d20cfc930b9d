"""Safe expressions and the chunked readers (ROOT, parquet, HDF5, npz, CSV), checked against
numpy and plain Python on the same data; every kind of bad input gives a DataError that names
the file, the branch and the count."""

from __future__ import annotations

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

from diffhep.io.datasets import DataError
from diffhep.io.expressions import Expression, ExpressionError
from diffhep.io.sources import iterate, load_sample

N = 257  # not a multiple of the step sizes used below


def _table(seed=0, n=N):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, n)
    pt = [sorted(rng.exponential(50, c) + 20, reverse=True) for c in counts]
    btag = [rng.random(c).tolist() for c in counts]
    return {
        "met": rng.gamma(2.0, 30.0, n),
        "genWeight": np.where(rng.random(n) < 0.2, -1.0, 1.0),
        "sf": rng.uniform(0.9, 1.1, n),
        "nlep": rng.integers(0, 3, n).astype(np.int32),
        "Jet_pt": pt,
        "Jet_btag": btag,
    }


def _write(tmp_path, table, fmt, name="s"):
    flat = {k: np.asarray(v) for k, v in table.items() if not k.startswith("Jet")}
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "root":
        data = dict(flat)
        data["Jet"] = ak.zip({"pt": ak.Array(table["Jet_pt"]), "btag": ak.Array(table["Jet_btag"])})
        with uproot.recreate(path) as f:
            f.mktree("events", {k: (v.type if isinstance(v, ak.Array) else v.dtype)
                                for k, v in data.items()})  # fmt: skip
            f["events"].extend(data)
    elif fmt == "rntuple":  # what uproot >= 5.7 writes for f[name] = {...}: an RNTuple
        path = tmp_path / f"{name}.root"
        with uproot.recreate(path) as f:
            f["events"] = {**flat, "Jet_pt": ak.Array(table["Jet_pt"]),
                           "Jet_btag": ak.Array(table["Jet_btag"])}  # fmt: skip
        assert uproot.open(path).classnames() == {"events;1": "ROOT::RNTuple"}
    elif fmt == "parquet":
        cols = {**flat, "Jet_pt": table["Jet_pt"], "Jet_btag": table["Jet_btag"]}
        pq.write_table(pa.table(cols), path, row_group_size=100)
    elif fmt == "h5":
        with h5py.File(path, "w") as f:
            g = f.create_group("events")
            for k, v in flat.items():
                g[k] = v
    elif fmt == "npz":
        np.savez(path, **flat)
    elif fmt == "csv":
        header = ",".join(flat)
        np.savetxt(path, np.column_stack(list(flat.values())), delimiter=",", header=header,
                   comments="", fmt="%.17g")  # fmt: skip
    return path


# ---------------------------------------------------------------- expressions
def test_expressions_match_numpy():
    t = _table()
    cols = {k: v for k, v in t.items() if not k.startswith("Jet")} | {"lumi": 140.0}
    w = Expression("2.5 * lumi * genWeight / sf ** 2").evaluate(cols, N)
    np.testing.assert_allclose(w, 2.5 * 140.0 * t["genWeight"] / t["sf"] ** 2, rtol=1e-15)
    f = Expression("met > 40 && !(nlep == 0) || 0.95 < sf <= 1.0").evaluate(cols, N)
    ref = ((t["met"] > 40) & ~(t["nlep"] == 0)) | ((0.95 < t["sf"]) & (t["sf"] <= 1.0))
    assert f.dtype == bool and np.array_equal(f, ref)
    g = Expression("log(met) + abs(sf - 1) * maximum(nlep, 1)").evaluate(cols, N)
    np.testing.assert_allclose(
        g, np.log(t["met"]) + np.abs(t["sf"] - 1) * np.maximum(t["nlep"], 1), rtol=1e-15
    )
    assert Expression("3").evaluate(cols, 4).tolist() == [3, 3, 3, 3]


def test_jagged_expressions_match_python():
    t = _table()
    cols = {"Jet_pt": ak.Array(t["Jet_pt"]), "Jet_btag": ak.Array(t["Jet_btag"])}
    pt, bt = t["Jet_pt"], t["Jet_btag"]
    cases = {
        "Jet_pt[0]": [p[0] if len(p) > 0 else 0.0 for p in pt],
        "Jet_pt[2]": [p[2] if len(p) > 2 else 0.0 for p in pt],
        "num(Jet_pt) > 1": [len(p) > 1 for p in pt],
        "sum(Jet_pt * (Jet_btag > 0.5))": [
            sum(a for a, b in zip(p, q, strict=True) if b > 0.5)
            for p, q in zip(pt, bt, strict=True)
        ],
        "max(Jet_btag)": [max(q) if q else 0.0 for q in bt],
        "mean(Jet_pt)": [np.mean(p) if len(p) else 0.0 for p in pt],
        "num(Jet_pt)": [len(p) for p in pt],
    }
    for text, ref in cases.items():
        np.testing.assert_allclose(
            Expression(text).evaluate(cols, N), ref, rtol=1e-13, err_msg=text
        )
    with pytest.raises(ExpressionError, match="one value per object"):
        Expression("Jet_pt * 2").evaluate(cols, N)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "met.__class__",
        "(lambda: 1)()",
        "open('x')",
        "'a string'",
        "round(met, ndigits=2)",
        "Jet_pt[i]",
        "[met for met in x]",
        "met if met else 1",
        "met >",
    ],
)
def test_expressions_refuse_anything_else(text):
    with pytest.raises(ExpressionError):
        Expression(text)


# ---------------------------------------------------------------- readers
@pytest.mark.parametrize("fmt", ["root", "rntuple", "parquet", "h5", "npz", "csv"])
def test_every_format_reads_the_same_values_in_chunks(tmp_path, fmt):
    t = _table()
    path = _write(tmp_path, t, fmt)
    exprs = ["met", "genWeight * sf", "nlep >= 1"]
    chunks = list(iterate(path, tree="events" if fmt in ("root", "rntuple", "h5") else None,
                          expressions=exprs, step_size=100))  # fmt: skip
    assert all(len(c["met"]) <= 100 for c in chunks) and len(chunks) >= 3
    got = {e: np.concatenate([c[e] for c in chunks]) for e in exprs}
    np.testing.assert_allclose(got["met"], t["met"], rtol=1e-15)
    np.testing.assert_allclose(got["genWeight * sf"], t["genWeight"] * t["sf"], rtol=1e-15)
    assert np.array_equal(got["nlep >= 1"], t["nlep"] >= 1)


@pytest.mark.parametrize("fmt", ["root", "rntuple", "parquet"])
def test_jagged_collections_from_files(tmp_path, fmt):
    t = _table()
    path = _write(tmp_path, t, fmt)
    (c,) = iterate(path, expressions=["Jet_pt[1]", "num(Jet_btag)"], step_size=10_000)
    np.testing.assert_allclose(c["Jet_pt[1]"], [p[1] if len(p) > 1 else 0 for p in t["Jet_pt"]])
    np.testing.assert_array_equal(c["num(Jet_btag)"], [len(p) for p in t["Jet_pt"]])


def test_root_reads_only_the_needed_branches(tmp_path, monkeypatch):
    path = _write(tmp_path, _table(), "root")
    seen = []
    original = uproot.behaviors.TBranch.HasBranches.iterate

    def spy(self, expressions=None, *args, **kwargs):
        seen.append(sorted(expressions))
        return original(self, expressions, *args, **kwargs)

    monkeypatch.setattr(uproot.behaviors.TBranch.HasBranches, "iterate", spy)
    list(iterate(path, expressions=["met * sf", "Jet_pt[0]"], step_size=50))
    assert seen == [["Jet_pt", "met", "sf"]]


def test_load_sample_with_globs_filter_and_weights(tmp_path):
    a, b = _table(1), _table(2, n=100)
    _write(tmp_path, a, "root", "part_0")
    _write(tmp_path, b, "root", "part_1")
    x, w = load_sample(
        "part_*.root",
        features=["met", "Jet_pt[0]"],
        weights={"nominal": "genWeight * sf * lumi", "up": "genWeight * lumi"},
        filter="num(Jet_pt) >= 1 && met > 20",
        constants={"lumi": 2.0},
        base_dir=tmp_path,
    )
    keep, met, lead, gw, sf = [], [], [], [], []
    for t in (a, b):  # brute force, event by event
        for i in range(len(t["met"])):
            if len(t["Jet_pt"][i]) >= 1 and t["met"][i] > 20:
                keep.append(i)
                met.append(t["met"][i])
                lead.append(t["Jet_pt"][i][0])
                gw.append(t["genWeight"][i])
                sf.append(t["sf"][i])
    np.testing.assert_allclose(x, np.column_stack([met, lead]), rtol=1e-15)
    np.testing.assert_allclose(w["nominal"], np.array(gw) * np.array(sf) * 2.0, rtol=1e-15)
    np.testing.assert_allclose(w["up"], np.array(gw) * 2.0, rtol=1e-15)
    assert (w["nominal"] < 0).any()  # negative weights are kept


# ---------------------------------------------------------------- bad data
def _load(path, **kw):
    args = {"features": ["met"], "weights": {"w": "genWeight"}, "tree": "events"} | kw
    return load_sample(path, **args)


def test_missing_file_tree_and_branch(tmp_path):
    path = _write(tmp_path, _table(), "root")
    with pytest.raises(DataError, match="no such file") as e:
        _load(tmp_path / "nope.root")
    assert "nope.root" in str(e.value)
    with pytest.raises(DataError, match="matches no file"):
        _load(str(tmp_path / "x_*.root"))
    with pytest.raises(DataError, match="tree 'Events' not found") as e:
        _load(path, tree="Events")
    assert str(path) in str(e.value) and "events" in str(e.value)  # the available tree
    with pytest.raises(DataError, match="'mett' not found") as e:
        _load(path, features=["mett * 2"])
    assert str(path) in str(e.value) and "did you mean met" in str(e.value)
    h5 = _write(tmp_path, _table(), "h5")
    with pytest.raises(DataError, match="'sff' not found"):
        _load(h5, weights={"w": "sff"})


def test_rntuple_reads_as_the_ttree_and_errors_name_the_objects(tmp_path):
    """uproot 5.7 writes RNTuples for f[name] = {...}: load_sample reads them as TTrees (the
    same numbers); a file without events names the objects it holds, with their kinds."""
    t = _table()
    tree = _write(tmp_path, t, "root", name="tree")
    ntuple = _write(tmp_path, t, "rntuple", name="ntuple")
    args = {"features": ["met", "Jet_pt[0]"], "weights": {"w": "genWeight * sf"},
            "filter": "num(Jet_pt) >= 1"}  # fmt: skip
    x, w = load_sample(ntuple, **args, step_size=50)  # the only RNTuple of the file
    x_ref, w_ref = load_sample(tree, tree="events", **args)
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(w["w"], w_ref["w"])
    assert len(x) == sum(len(p) >= 1 for p in t["Jet_pt"])
    with pytest.raises(DataError, match=r"tree 'Events' not found") as e:
        load_sample(ntuple, **args, tree="Events")
    assert "events (RNTuple)" in str(e.value) and "did you mean events" in str(e.value)
    empty = tmp_path / "hists.root"
    with uproot.recreate(empty) as f:
        f["h"] = np.histogram([1.0, 2.0], bins=2)
        f["note"] = "no events here"
    for tree_arg in (None, "events"):
        with pytest.raises(DataError) as e:
            load_sample(empty, **args, tree=tree_arg)
        assert str(empty) in str(e.value)
        assert "h (TH1D)" in str(e.value) and "note (TObjString)" in str(e.value)
    strings = tmp_path / "strings.root"
    with uproot.recreate(strings) as f:
        f["events"] = {"met": np.arange(3.0), "label": ak.Array(["a", "b", "c"])}
    with pytest.raises(DataError, match="'label' has a non-numeric type"):
        load_sample(strings, features=["met", "label"], weights={"w": "1"})


def test_nan_and_inf_are_counted_per_file_and_branch(tmp_path):
    t = _table()
    t["met"][[3, 50, 51]] = np.nan
    t["genWeight"][7] = np.inf
    path = _write(tmp_path, t, "root")
    with pytest.raises(DataError) as e:
        _load(path, weights={"w": "genWeight * sf"})
    msg = str(e.value)
    assert str(path) in msg and "'met': 3" in msg and "'genWeight * sf': 1" in msg
    # events removed by the filter do not count
    x, _ = _load(path, filter="isfinite(met) && isfinite(genWeight)")
    assert len(x) == N - 4
    with pytest.raises(DataError, match=r"3 NaN/inf values of 'met'") as e:
        list(iterate(path, expressions=["met"], step_size=1000))


def test_empty_after_filter(tmp_path):
    path = _write(tmp_path, _table(), "root")
    with pytest.raises(DataError, match=f"0 of {N} events pass the filter 'met < 0'") as e:
        _load(path, filter="met < 0")
    assert str(path) in str(e.value)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_type_mismatch(tmp_path, fmt):
    path = tmp_path / f"bad.{fmt}"
    table = pa.table({"met": ["a", "b", "c"], "genWeight": [1.0, 1.0, 1.0]})
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        path.write_text("met,genWeight\na,1\nb,1\nc,1\n")
    with pytest.raises(DataError, match="'met' has a non-numeric type") as e:
        _load(path, tree=None)
    assert str(path) in str(e.value)


def test_unknown_format_and_bad_expression(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        _load(tmp_path / "a.txt")
    path = _write(tmp_path, _table(), "npz")
    with pytest.raises(DataError, match="not a jagged collection") as e:
        _load(path, features=["met[0]"], tree=None)
    assert e.value.where == "met[0]"
