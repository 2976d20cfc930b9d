"""``diffhep apply``: new ROOT/parquet files scored with a trained run, chunk by chunk, equal
to diffhep's own score (1e-6) and bins; clear errors and no partial outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from click.testing import CliRunner

from diffhep import blobs
from diffhep.cli import main


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


@pytest.fixture(scope="module")
def saved(tiny_run):
    from diffhep.runs import restore_run

    return restore_run(tiny_run)


@pytest.fixture(scope="module")
def columns():
    raw = blobs.generate(1500, seed=11)
    x = np.concatenate([raw["signal"][0], raw["background"][0]])
    return {
        "x0": x[:, 0],
        "x1": x[:, 1],
        "evt": np.arange(len(x), dtype=np.int64) * 7,
        "w": np.linspace(0.5, 1.5, len(x)),
    }


@pytest.fixture
def inputs(tmp_path, columns):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table(columns), d / "sample_a.parquet", row_group_size=1000)
    with uproot.recreate(d / "sample_b.root") as f:
        f.mktree("events", {k: v.dtype for k, v in columns.items()})
        f["events"].extend(columns)
    return d


def _apply(args):
    return CliRunner().invoke(main, ["apply", *map(str, args)])


def _reference(saved, columns):
    """diffhep itself: the saved model's score, hard cuts, numpy bins (overflow folded)."""
    _, _, _, params = saved
    x = np.column_stack([columns["x0"], columns["x1"]]).astype(np.float32)
    score = np.asarray(params.observable(x))
    passes = np.asarray(params.selection.passes(x))
    edges = np.asarray(params.binnings[0].edges(), dtype=np.float64)
    idx = np.clip(np.searchsorted(edges, score.astype(np.float64), side="right") - 1, 0, 3)
    return score, passes, np.where(passes, idx, -1), edges


def test_run_writes_its_export(tiny_run):
    prep = json.loads((tiny_run / "preprocess.json").read_text())
    model = json.loads((tiny_run / "model.json").read_text())
    selection = json.loads((tiny_run / "selection.json").read_text())
    assert prep["inputs"]["features"] == {"names": ["x0", "x1"], "dtype": "float32",
                                          "shape": ["N", 2]}  # fmt: skip
    assert prep["channels"][0]["edges"] == model["edges"]["SR"]
    assert prep["standardisation"]["mean"] == model["standardisation"]["mean"]
    assert [c["thresholds"] for c in prep["selection"]["cuts"]] == [
        c["thresholds"] for c in selection["cuts"]
    ]
    assert json.loads((tiny_run / "summary.json").read_text())["onnx"] == "model.onnx"


def test_apply_parquet_and_root_in_chunks(tmp_path, tiny_run, inputs, saved, columns):
    out = tmp_path / "out"
    files = [inputs / "sample_a.parquet", inputs / "sample_b.root"]
    res = _apply([tiny_run, *files, "--out", out, "--step-size", 700, "--keep", "evt",
                  "--tree", "events"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert [s["events"] for s in summary] == [3000, 3000]
    a = pq.read_table(out / "sample_a.parquet").to_pydict()
    with uproot.open(out / "sample_b.root") as f:
        b = f["events"].arrays(library="np")
    score, passes, bins, edges = _reference(saved, columns)
    assert score.std() > 0.01 and 0.2 < passes.mean() < 0.99 and len(np.unique(bins)) >= 3
    for got in (a, b):
        assert set(got) == {"x0", "x1", "evt", "diffhep_score", "diffhep_selected",
                            "diffhep_bin_SR"}  # fmt: skip
        np.testing.assert_array_equal(got["evt"], columns["evt"])  # rows aligned with input
        np.testing.assert_allclose(got["diffhep_score"], score, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got["diffhep_selected"], passes)
        differ = np.asarray(got["diffhep_bin_SR"]) != bins
        near = np.min(np.abs(score[:, None] - edges[None]), axis=1) < 1e-6
        assert not (differ & ~near).any()
    for k in ("diffhep_score", "diffhep_bin_SR"):  # the same model on both files
        np.testing.assert_array_equal(a[k], b[k])
    # one chunk gives the same output
    one = tmp_path / "one"
    res = _apply([tiny_run, files[0], "--out", one, "--step-size", 10**6, "--keep", "evt"])
    assert res.exit_code == 0, res.output
    assert pq.read_table(one / "sample_a.parquet").to_pydict() == a
    # format conversion: ROOT in, parquet out
    conv = tmp_path / "conv"
    res = _apply([tiny_run, files[1], "--out", conv, "--format", "parquet"])
    assert res.exit_code == 0, res.output
    c = pq.read_table(conv / "sample_b.parquet").to_pydict()
    np.testing.assert_array_equal(c["diffhep_score"], a["diffhep_score"])


def test_bad_inputs_are_clear_errors_and_leave_no_output(tmp_path, tiny_run, columns):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"x0": columns["x0"]}), d / "no_x1.parquet")
    bad = dict(columns)
    bad["x0"] = columns["x0"].copy()
    bad["x0"][[5, 1200, 2999]] = [np.nan, np.inf, np.nan]
    pq.write_table(pa.table(bad), d / "nan.parquet")
    out = tmp_path / "out"
    res = _apply([tiny_run, d / "no_x1.parquet", "--out", out])
    assert res.exit_code == 2
    assert "no_x1.parquet" in res.output and "x1" in res.output and "Traceback" not in res.output
    res = _apply([tiny_run, d / "nan.parquet", "--out", out, "--step-size", 500])
    assert res.exit_code == 2
    assert "nan.parquet" in res.output and "NaN/inf values of 'x0'" in res.output
    assert list(out.iterdir()) == []  # nothing written, no temporary files left
    res = _apply([tiny_run, d / "missing.root", "--out", out])
    assert res.exit_code == 2 and "missing.root" in res.output and "not found" in res.output
    res = _apply([tmp_path, d / "nan.parquet", "--out", tmp_path / "o2"])
    assert res.exit_code == 2 and "no ONNX export" in res.output
    assert not (tmp_path / "o2").exists()
    res = _apply([tiny_run, d / "nan.parquet", "--out", d])  # would overwrite the input
    assert res.exit_code == 2 and "overwrite" in res.output
