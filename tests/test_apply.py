"""``diffhep apply``: new ROOT/parquet files scored with a trained run, chunk by chunk, equal
to diffhep's own score (1e-6) and bins; clear errors and no partial outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from click.testing import CliRunner

from diffhep.cli import main
from diffhep.problems import blobs


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


@pytest.fixture(scope="module")
def saved(tiny_run):
    from diffhep.runs.prepare import restore_run

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
    # a run directory that does not exist (a new user's trial: "the run has no ONNX export")
    res = _apply([tmp_path / "nothere", d / "nan.parquet", "--out", tmp_path / "o2"])
    assert res.exit_code == 2 and "the run directory does not exist" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o2").exists()
    res = _apply([tiny_run, d / "nan.parquet", "--out", d])  # would overwrite the input
    assert res.exit_code == 2 and "overwrite" in res.output


# ------------------------------------------------------ RNTuple, the analysis selection
def test_rntuple_input_gives_an_rntuple_output_of_the_same_name(tmp_path, tiny_run, columns,
                                                                saved):  # fmt: skip
    """uproot 5.7 writes RNTuples for f[name] = {...}: apply reads them (with or without
    --tree) and mirrors them (an RNTuple of the same name), with the numbers of a TTree."""
    d = tmp_path / "in"
    d.mkdir()
    with uproot.recreate(d / "nt.root") as f:
        f["events"] = columns
    with uproot.recreate(d / "tt.root") as f:
        f.mktree("events", {k: v.dtype for k, v in columns.items()})
        f["events"].extend(columns)
    score, passes, _, _ = _reference(saved, columns)
    for args in ([], ["--tree", "events"]):
        out = tmp_path / f"out{len(args)}"
        res = _apply([tiny_run, d / "nt.root", d / "tt.root", "--out", out, "--step-size",
                      700, *args])  # fmt: skip
        assert res.exit_code == 0, res.output
        with uproot.open(out / "nt.root") as f:
            assert f.classnames()["events;1"] == "ROOT::RNTuple"
            nt = f["events"].arrays(library="np")
        with uproot.open(out / "tt.root") as f:
            assert f.classnames()["events;1"] == "TTree"  # the input's name, not "Events"
            tt = f["events"].arrays(library="np")
        assert set(nt) == set(tt)
        for k in tt:
            np.testing.assert_array_equal(nt[k], tt[k])
        np.testing.assert_allclose(nt["diffhep_score"], score, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(nt["diffhep_selected"], passes)
    res = _apply([tiny_run, d / "nt.root", "--out", tmp_path / "o", "--tree", "Events"])
    assert res.exit_code == 2 and "events (RNTuple)" in res.output


def _ntuple_run(tmp_path, tiny_run, samples, constants=None):
    """The tiny run's export with a config of ntuple samples (files, filters, weights):
    what apply reads of a run besides its model (no training needed)."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["analysis"]["samples"] = samples
    cfg["analysis"]["shape_systematics"] = [
        {"name": "sf", "sample": samples[-1]["name"], "up": {"weight": "w * sf_up"},
         "down": {"weight": "w"}},
    ]  # fmt: skip
    cfg["data"]["constants"] = constants or {}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


@pytest.fixture
def ntuple_columns(columns):
    rng = np.random.default_rng(5)
    n = len(columns["x0"])
    return columns | {"nj": rng.integers(0, 4, n), "sf": rng.uniform(0.9, 1.1, n),
                      "sf_up": rng.uniform(1.0, 1.2, n)}  # fmt: skip


def test_selected_is_the_analysis_selection_and_weights_are_carried(
    tmp_path, tiny_run, saved, ntuple_columns
):
    """diffhep_selected = the samples' filter AND the cuts (bins -1 outside it); the weight
    columns the config names and the weight expression come along without --keep; the
    input tree keeps its name; the output says what its columns mean."""
    cols = ntuple_columns
    filt = "nj >= 2 && x0 > -5"
    samples = [
        {"name": "sig", "role": "signal", "files": ["s.root"], "weight": "w * sf * lumi",
         "filter": filt},
        {"name": "bkg", "role": "background", "files": ["b.root"], "weight": "w * sf * lumi",
         "filter": filt},
    ]  # fmt: skip
    run = _ntuple_run(tmp_path, tiny_run, samples, {"lumi": 2.0})
    d = tmp_path / "in"
    d.mkdir()
    with uproot.recreate(d / "b.root") as f:
        f.mktree("events", {k: v.dtype for k, v in cols.items()})
        f["events"].extend(cols)
    pq.write_table(pa.table(cols), d / "b2.parquet", row_group_size=1000)
    out = tmp_path / "out"
    res = _apply([run, d / "b.root", d / "b2.parquet", "--out", out, "--step-size", 700])
    assert res.exit_code == 0, res.output
    _, passes, _, _ = _reference(saved, cols)
    analysis = passes & (cols["nj"] >= 2) & (cols["x0"] > -5)
    assert 0 < analysis.sum() < passes.sum()  # the filter removes events the cuts keep
    with uproot.open(out / "b.root") as f:
        got = f["events"].arrays(library="np")  # the input's tree name
        meta_root = json.loads(str(f["diffhep_metadata"]))
    got_pq = pq.read_table(out / "b2.parquet").to_pydict()
    for g in (got, got_pq):
        assert set(g) == {"x0", "x1", "w", "sf", "sf_up", "diffhep_score", "diffhep_selected",
                          "diffhep_bin_SR", "diffhep_weight"}  # fmt: skip
        np.testing.assert_array_equal(g["diffhep_selected"], analysis)
        np.testing.assert_array_equal(np.asarray(g["diffhep_bin_SR"])[~analysis], -1)
        np.testing.assert_array_equal(np.asarray(g["diffhep_bin_SR"]) >= 0, analysis)
        for k in ("w", "sf", "sf_up"):
            np.testing.assert_array_equal(g[k], cols[k])
        np.testing.assert_allclose(g["diffhep_weight"], cols["w"] * cols["sf"] * 2.0,
                                   rtol=1e-15)  # fmt: skip
    from diffhep.io.apply import read_metadata

    for meta in (meta_root, read_metadata(out / "b2.parquet"), read_metadata(out / "b.root")):
        assert meta["filter"] == filt and meta["sample"] is None
        assert filt in meta["columns"]["diffhep_selected"]
        assert "AND" in meta["columns"]["diffhep_selected"]
        assert meta["weight"] == "w * sf * lumi" and set(meta["weight_columns"]) == {
            "w", "sf", "sf_up"}  # fmt: skip
    # the samples' filters differ: --sample chooses; without it only the cuts (said so)
    samples[0]["filter"], samples[0]["weight"] = "nj >= 3", "w"
    run = _ntuple_run(tmp_path / "other", tiny_run, samples, {"lumi": 2.0})
    res = _apply([run, d / "b.root", "--out", tmp_path / "o1", "--sample", "sig"])
    assert res.exit_code == 0, res.output
    g = uproot.open(tmp_path / "o1" / "b.root")["events"].arrays(library="np")
    np.testing.assert_array_equal(g["diffhep_selected"], passes & (cols["nj"] >= 3))
    np.testing.assert_array_equal(g["diffhep_weight"], cols["w"])
    assert "sf" not in g  # the weight of sig reads w only
    res = _apply([run, d / "b.root", "--out", tmp_path / "o2"])
    assert res.exit_code == 0 and "--sample" in res.output  # a warning
    g = uproot.open(tmp_path / "o2" / "b.root")["events"].arrays(library="np")
    np.testing.assert_array_equal(g["diffhep_selected"], passes)
    assert "diffhep_weight" not in g and {"w", "sf", "sf_up"} <= set(g)
    assert "--sample" in read_metadata(tmp_path / "o2" / "b.root")["columns"]["diffhep_selected"]
    res = _apply([run, d / "b.root", "--out", tmp_path / "o3", "--sample", "nope"])
    assert res.exit_code == 2 and "--sample" in res.output and "sig, bkg" in res.output
    assert "Traceback" not in res.output


# ------------------------------------------------------------ inputs out of training, weight
def _far_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "diffhep.io.ranges"]


def _write_inputs(d, tables: dict) -> list[Path]:
    """``{file name: columns}`` written as ROOT (tree ``events``, baskets of 1000) or parquet
    (row groups of 1000)."""
    d.mkdir(parents=True, exist_ok=True)
    for name, cols in tables.items():
        if name.endswith(".root"):
            with uproot.recreate(d / name) as f:
                f.mktree("events", {k: v.dtype for k, v in cols.items()})
                for lo in range(0, len(cols["x0"]), 1000):
                    f["events"].extend({k: v[lo : lo + 1000] for k, v in cols.items()})
        else:
            pq.write_table(pa.table(cols), d / name, row_group_size=1000)
    return [d / name for name in tables]


def test_inputs_far_outside_training_are_warned_once_and_recorded(
    tmp_path, tiny_run, saved, columns, caplog
):
    """A feature at a fill value (-3000) in a quarter of the events: one warning per file
    (not per chunk) naming the file, the feature, the fraction and the training range, and
    the same in the output metadata; the scores are written unchanged. A file whose
    fill values are 1 % of its events (the threshold is "more than 1 %") and files like the
    training data give no warning and no ``input_warnings``."""
    from diffhep.io.apply import read_metadata

    n = len(columns["x0"])
    far = columns | {"x1": np.where(np.arange(n) % 4 == 0, -3000.0, columns["x1"])}
    edge = columns | {"x1": np.where(np.arange(n) % 100 == 0, -3000.0, columns["x1"])}
    files = _write_inputs(tmp_path / "in", {"far.root": far, "far.parquet": far,
                                            "edge.parquet": edge, "ok.root": columns})  # fmt: skip
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="diffhep"):
        res = _apply([tiny_run, *files, "--out", out, "--step-size", 700])
    assert res.exit_code == 0, res.output
    warnings = _far_warnings(caplog)
    assert len(warnings) == 2, warnings  # once per file, 5 chunks each
    std = json.loads((tiny_run / "preprocess.json").read_text())["standardisation"]
    mean, scale = std["mean"][1], std["scale"][1]
    for f, text in zip(files[:2], warnings, strict=True):
        assert text.startswith(f"{f}: input 'x1' is far outside the training distribution")
        assert f"{n // 4} of {n} events (25 %; values -3000)" in text
        assert f"training mean {mean:.4g}, std {scale:.4g}" in text
        assert f"[{mean - 10 * scale:.4g}, {mean + 10 * scale:.4g}]" in text  # 10 std
    score = _reference(saved, far)[0]
    for f in files[:2]:
        target = out / f.name
        meta = read_metadata(target)
        (w,) = meta["input_warnings"]
        got = (w["feature"], w["events"], w["of"], w["values"])
        assert got == ("x1", n // 4, n, [-3000.0, -3000.0])
        np.testing.assert_allclose(w["far_beyond"], [mean - 10 * scale, mean + 10 * scale])
        assert w["message"] in warnings
        got = pq.read_table(target).to_pydict() if f.suffix == ".parquet" else (
            uproot.open(target)["events"].arrays(library="np"))  # fmt: skip
        np.testing.assert_allclose(got["diffhep_score"], score, atol=1e-6)  # not changed
    for f in files[2:]:
        meta = read_metadata(out / f.name)
        assert "input_warnings" not in meta and meta["producer"] == "diffhep apply"


def test_missing_diffhep_weight_is_said(tmp_path, tiny_run, ntuple_columns):
    """The samples' weight expressions differ (data has none): no diffhep_weight without
    --sample, and a note on stderr says so; with --sample it is written, without the note."""
    filt = "nj >= 2"
    samples = [
        {"name": "bkg", "role": "background", "files": ["b.root"], "weight": "w * sf",
         "filter": filt},
        {"name": "data", "role": "data", "files": ["d.root"], "filter": filt},
    ]  # fmt: skip
    run = _ntuple_run(tmp_path, tiny_run, samples)
    (f,) = _write_inputs(tmp_path / "in", {"b.root": ntuple_columns})
    res = _apply([run, f, "--out", tmp_path / "o1"])
    assert res.exit_code == 0, res.output
    assert "no diffhep_weight column" in res.output and "--sample" in res.output
    assert "diffhep_weight" not in uproot.open(tmp_path / "o1" / "b.root")["events"].keys()
    res = _apply([run, f, "--out", tmp_path / "o2", "--sample", "bkg"])
    assert res.exit_code == 0 and "no diffhep_weight" not in res.output, res.output
    assert "diffhep_weight" in uproot.open(tmp_path / "o2" / "b.root")["events"].keys()


# ----------------------------------------------------------------- damaged runs, outputs
@pytest.fixture
def unwritable(tmp_path):
    """A directory that cannot be written (read-only for a user; /sys for root)."""
    import os

    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        yield d
        d.chmod(0o700)
        return
    d = Path("/sys/diffhep-test-out")
    try:
        d.mkdir()
    except OSError:
        yield d
        return
    d.rmdir()
    pytest.skip("no unwritable directory on this machine")


def test_damaged_export_and_unwritable_output_are_clear_errors(tmp_path, tiny_run, inputs,
                                                               unwritable):  # fmt: skip
    import shutil

    data = inputs / "sample_a.parquet"
    for name, content in [
        ("model.onnx", b"\x08\x07garbage, not an ONNX protobuf"),
        ("model.onnx", (tiny_run / "model.onnx").read_bytes()[:300]),  # truncated
        ("preprocess.json", b'{"format": "diffhep-onnx-1", "inputs": {'),  # truncated
        ("preprocess.json", b"\xff\xfe\x00 binary"),
        (
            "preprocess.json",
            json.dumps(
                {"format": json.loads((tiny_run / "preprocess.json").read_text())["format"]}
            ).encode(),
        ),  # no features
    ]:
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(tiny_run, run)
        (run / name).write_bytes(content)
        res = _apply([run, data, "--out", tmp_path / "o"])
        assert res.exit_code == 2, (name, res.output)
        assert name in res.output and "diffhep evaluate" in res.output, res.output
        assert "Traceback" not in res.output and not (tmp_path / "o").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker / "sub", blocker, unwritable / "sub"):
        res = _apply([tiny_run, data, "--out", out])
        assert res.exit_code == 2, res.output
        assert "--out" in res.output and str(out) in res.output and "Traceback" not in res.output
