"""``diffhep apply`` on a Dask ``LocalCluster`` of 2 worker processes: the per-partition
outputs of a multi-file sample (ROOT and parquet, several partitions per file) equal the
single-process outputs exactly; bad inputs are clear errors that leave no output."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from click.testing import CliRunner

from diffhep.cli import main
from diffhep.io.apply import apply_run
from diffhep.io.datasets import DataError
from test_apply import _ntuple_run, columns, ntuple_columns  # noqa: F401 (fixtures)

STEP = 700  # partitions of 700 events: 3 + 2 (ROOT, baskets of 1000) + 5 (row groups of 1000)


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 worker processes, closed at the end even after a failure."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",  # a free port (8787 may be taken)
        silence_logs=logging.CRITICAL,
    ) as c:
        yield c


@pytest.fixture
def sample(tmp_path, columns):  # noqa: F811
    """One sample in three files: two ROOT files (its first 1700 and last 1300 events, in
    baskets of at most 1000) and the whole of it again as parquet (row groups of 1000)."""
    d = tmp_path / "in"
    d.mkdir()
    for name, rows in (("a", slice(0, 1700)), ("b", slice(1700, None))):
        part = {k: v[rows] for k, v in columns.items()}
        with uproot.recreate(d / f"{name}.root") as f:
            f.mktree("events", {k: v.dtype for k, v in part.items()})
            for lo in range(0, len(part["x0"]), 1000):
                f["events"].extend({k: v[lo : lo + 1000] for k, v in part.items()})
    pq.write_table(pa.table(columns), d / "c.parquet", row_group_size=1000)
    return [d / "a.root", d / "b.root", d / "c.parquet"]


def _read(path):
    if path.suffix == ".root":
        with uproot.open(path) as f:
            (t,) = [v for v in f.values() if v.classname != "TObjString"]  # the only tree
            return {k: t[k].array(library="np") for k in t.keys()}
    table = pq.read_table(path)
    return {k: table[k].to_numpy() for k in table.column_names}


def _check_equal(parts, reference):
    """The concatenated partitions equal the single-process output: columns, their order
    and dtypes, every value."""
    assert all(list(p) == list(reference) for p in parts)
    for k, ref in reference.items():
        got = np.concatenate([p[k] for p in parts])
        assert got.dtype == ref.dtype, k
        np.testing.assert_array_equal(got, ref, err_msg=k)


def test_cluster_matches_single_process(tmp_path, tiny_run, sample, cluster):
    single = apply_run(tiny_run, sample, tmp_path / "single", tree="events", step_size=STEP,
                       keep=["evt", "w"])  # fmt: skip
    out = tmp_path / "dask"
    summary = apply_run(tiny_run, sample, out, tree="events", step_size=STEP, keep=["evt", "w"],
                        scheduler=cluster.scheduler_address)  # fmt: skip
    assert [(s["input"], s["partition"], s["first_entry"], s["events"]) for s in summary] == [
        (str(f), k, STEP * k, min(STEP, n - STEP * k))
        for f, n in zip(sample, (1700, 1300, 3000), strict=True)
        for k in range(-(-n // STEP))
    ]
    written = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    outputs = [Path(s["output"]).relative_to(out).as_posix() for s in summary]
    assert sorted(written) == sorted([f.stem for f in sample] + outputs)  # no temporary files
    for f, s in zip(sample, single, strict=True):
        reference = _read(tmp_path / "single" / f"{f.stem}{f.suffix}")
        score, bins = reference["diffhep_score"], reference["diffhep_bin_SR"]
        assert score.std() > 0.01 and len(np.unique(bins)) >= 3 and len(score) == s["events"]
        outputs = [s2["output"] for s2 in summary if s2["input"] == str(f)]
        assert outputs == sorted(str(p) for p in (out / f.stem).iterdir())
        _check_equal([_read(Path(o)) for o in outputs], reference)


def test_cli_local_workers_and_root_output(tmp_path, tiny_run, sample):
    parquet = sample[2]
    res = CliRunner().invoke(main, ["apply", str(tiny_run), str(parquet), "--out",
                                    str(tmp_path / "single"), "--format", "root",
                                    "--step-size", str(STEP), "--keep", "evt"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["apply", str(tiny_run), str(parquet), "--out",
                                    str(tmp_path / "dask"), "--format", "root",
                                    "--step-size", str(STEP), "--keep", "evt",
                                    "--workers", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert [s["events"] for s in summary] == [700, 700, 700, 700, 200]
    reference = _read(tmp_path / "single" / "c.root")
    _check_equal([_read(tmp_path / "dask" / "c" / f"part-{k:05d}.root") for k in range(5)],
                 reference)  # fmt: skip
    res = CliRunner().invoke(main, ["apply", str(tiny_run), str(parquet), "--out",
                                    str(tmp_path / "x"), "--workers", "2",
                                    "--scheduler", "tcp://127.0.0.1:8786"])  # fmt: skip
    assert res.exit_code == 2 and "mutually exclusive" in res.output
    assert not (tmp_path / "x").exists()


def test_bad_inputs_are_errors_and_leave_no_output(tmp_path, tiny_run, sample, columns, cluster):  # noqa: F811
    address = cluster.scheduler_address
    no_x1 = tmp_path / "no_x1.parquet"
    pq.write_table(pa.table({k: v for k, v in columns.items() if k != "x1"}), no_x1)
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:  # found on the client, before any work
        apply_run(tiny_run, [*sample, no_x1], out, tree="events", scheduler=address)
    assert err.value.where == "x1" and err.value.file == str(no_x1)
    assert not out.exists()
    # NaN in the 4th partition of the last file: the other 9 partitions are written, then
    # removed; the error names the file, the column and the entries
    bad = dict(columns)
    bad["x0"] = columns["x0"].copy()
    bad["x0"][2200] = np.nan
    nan = tmp_path / "nan.parquet"
    pq.write_table(pa.table(bad), nan, row_group_size=1000)
    with pytest.raises(DataError, match=r"NaN/inf values of 'x0' in entries 2100-2799") as err:
        apply_run(tiny_run, [*sample[:2], nan], out, tree="events", step_size=STEP,
                  scheduler=address)  # fmt: skip
    assert err.value.where == "x0" and err.value.file == str(nan)
    assert list(out.iterdir()) == []


def test_without_dask_a_clear_error(tmp_path, tiny_run, sample, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_awkward", None)  # as if not installed
    res = CliRunner().invoke(main, ["apply", str(tiny_run), str(sample[0]), "--out",
                                    str(tmp_path / "out"), "--workers", "2"])  # fmt: skip
    assert res.exit_code == 2 and "pip install 'diffhep[dask]'" in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_rntuple_and_analysis_selection_match_single_process(
    tmp_path,
    tiny_run,
    cluster,
    ntuple_columns,  # noqa: F811
):
    """An RNTuple input and a run with a sample filter and weights (constants included):
    the partitions are RNTuples of the input's name, equal to the single-process output."""
    samples = [{"name": "s", "role": "signal", "files": ["s.root"], "weight": "w * lumi",
                "filter": "nj >= 2"}]  # fmt: skip
    run = _ntuple_run(tmp_path, tiny_run, samples, {"lumi": 3.0})
    d = tmp_path / "in"
    d.mkdir()
    with uproot.recreate(d / "nt.root") as f:
        f["ntuple"] = ntuple_columns
    single = apply_run(run, [d / "nt.root"], tmp_path / "single", step_size=STEP)
    summary = apply_run(run, [d / "nt.root"], tmp_path / "dask", step_size=STEP,
                        scheduler=cluster.scheduler_address)  # fmt: skip
    reference = _read(tmp_path / "single" / "nt.root")
    assert single[0]["events"] == len(ntuple_columns["x0"]) == sum(s["events"] for s in summary)
    np.testing.assert_array_equal(reference["diffhep_weight"], ntuple_columns["w"] * 3.0)
    assert not reference["diffhep_selected"][ntuple_columns["nj"] < 2].any()
    parts = [Path(s["output"]) for s in summary]
    for p in parts:
        with uproot.open(p) as f:
            assert f.classnames()["ntuple;1"] == "ROOT::RNTuple"
            assert "nj >= 2" in json.loads(str(f["diffhep_metadata"]))["filter"]
    _check_equal([_read(p) for p in parts], reference)


def test_inputs_far_outside_training_are_warned_once_per_file(tmp_path, tiny_run, columns,  # noqa: F811
                                                              cluster, caplog):  # fmt: skip
    """A fill value in a quarter of the events of one feature, over 5 partitions: the
    client adds up the workers' counts and warns once for the file (the workers' logs are
    not shown); every partition's metadata records its own share."""
    from diffhep.io.apply import read_metadata

    n = len(columns["x0"])
    far = columns | {"x1": np.where(np.arange(n) % 4 == 0, -3000.0, columns["x1"])}
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table(far), d / "far.parquet", row_group_size=1000)
    pq.write_table(pa.table(columns), d / "ok.parquet", row_group_size=1000)
    with caplog.at_level(logging.WARNING, logger="diffhep"):
        summary = apply_run(tiny_run, [d / "far.parquet", d / "ok.parquet"], tmp_path / "o",
                            step_size=STEP, scheduler=cluster.scheduler_address)  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.name == "diffhep.io.ranges"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{d / 'far.parquet'}: input 'x1'")
    assert f"{n // 4} of {n} events (25 %" in warnings[0]
    shares = []
    for s in summary:
        meta = read_metadata(s["output"])
        if s["input"].endswith("ok.parquet"):
            assert "input_warnings" not in meta
            continue
        (w,) = meta["input_warnings"]
        assert w["feature"] == "x1" and w["of"] == s["events"]
        shares.append(w["events"])
    assert len(shares) == 5 and sum(shares) == n // 4
