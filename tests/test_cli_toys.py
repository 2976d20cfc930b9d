"""``diffhep cls --toys``, ``significance --toys`` and ``merge-toys`` through click: the
library's numbers (validated in tests/test_toys.py against closed forms and pyhf), saved
files that merge into the single run, bad input exits 2, non-converged toys exit 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import affinity
import diffhep
from diffhep.cli import main
from diffhep.stats import toys
from diffhep.stats.workflows import load_workspace

CHUNK = ["--chunk-size", 32]  # one compiled shape for every run here


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


@pytest.fixture(scope="module")
def ws_file(tmp_path_factory):
    spec = {
        "version": "1.0.0",
        "channels": [{"name": "SR", "samples": [
            {"name": "signal", "data": [5.0],
             "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
            {"name": "bkg", "data": [10.0], "modifiers": []},
        ]}],
        "observations": [{"name": "SR", "data": [16.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
    }  # fmt: skip
    path = tmp_path_factory.mktemp("toys") / "ws.json"
    path.write_text(json.dumps(spec))
    return path


def run(args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def _json(args):
    return json.loads(run(args).stdout)


def test_cls_toys_save_and_merge(ws_file, tmp_path):
    whole = _json(["cls", ws_file, "--toys", 64, "--seed", 7, *CHUNK, "--save-toys",
                   tmp_path / "whole.npz"])  # fmt: skip
    assert set(whole) == {"CLs_obs", "CLs_exp", "toys"} and len(whole["CLs_exp"]) == 5
    assert set(_json(["cls", ws_file])) <= set(whole)  # the asymptotic fields
    # the library's result on the same workspace and seed
    diffhep.enable_x64()
    ws = load_workspace(str(ws_file))
    model = ws.model()
    ref = toys.toys(1.0, model, ws.data(model), ntoys=64, seed=7, chunk=32).cls_json()
    assert whole["CLs_obs"] == pytest.approx(ref["CLs_obs"], rel=1e-12)
    assert whole["CLs_exp"] == pytest.approx(ref["CLs_exp"], rel=1e-12)
    assert whole["toys"]["ntoys"] == {"sb": 64, "b": 64}
    assert whole["toys"]["nonconverged"] == {"sb": 0, "b": 0}
    # two machines, one seed, disjoint ranges: merged == the single run
    for first, name in ((0, "a.npz"), (40, "b.npz")):
        n = 40 if first == 0 else 24
        run(["cls", ws_file, "--toys", n, "--seed", 7, "--first-toy", first, *CHUNK,
             "--save-toys", tmp_path / name])  # fmt: skip
    merged = _json(["merge-toys", tmp_path / "a.npz", tmp_path / "b.npz",
                    "--save-toys", tmp_path / "ab.npz"])  # fmt: skip
    assert merged["CLs_obs"] == whole["CLs_obs"] and merged["CLs_exp"] == whole["CLs_exp"]
    assert merged["toys"]["runs"] == [{"seed": 7, "first": 0, "ntoys": 40},
                                      {"seed": 7, "first": 40, "ntoys": 24}]  # fmt: skip
    assert _json(["merge-toys", tmp_path / "ab.npz"]) == merged
    # refused: the same toys twice, another test statistic / POI value, not a toy file
    r = run(["merge-toys", tmp_path / "a.npz", tmp_path / "whole.npz"], code=2)
    assert "in both" in r.output and "fix:" in r.output
    run(["cls", ws_file, "--toys", 32, "--poi-value", 2.0, *CHUNK, "--save-toys",
         tmp_path / "mu2.npz"])  # fmt: skip
    r = run(["merge-toys", tmp_path / "a.npz", tmp_path / "mu2.npz"], code=2)
    assert "poi_test" in r.output and "mu2.npz" in r.output
    (tmp_path / "junk.npz").write_text("{}")
    r = run(["merge-toys", tmp_path / "a.npz", tmp_path / "junk.npz"], code=2)
    assert "junk.npz" in r.output and "cannot read toys" in r.output


def test_significance_toys(ws_file, tmp_path):
    r = run(["significance", ws_file, "--toys", 64, *CHUNK])
    out = json.loads(r.stdout)
    asym = _json(["significance", ws_file])
    assert set(asym) <= set(out)
    assert out["q0"] == pytest.approx(asym["q0"], rel=1e-8)
    assert out["toys"]["test_stat"] == "q0" and out["toys"]["ntoys"] == {"sb": 64, "b": 64}
    from scipy import stats

    if out["p0_obs"] > 0:
        assert out["Z_obs"] == pytest.approx(stats.norm.isf(out["p0_obs"]))
    else:  # no toy as extreme as the data (p0 ~ 0.05 here): Z is null, said on stderr
        assert out["Z_obs"] is None and "p0_obs < 1/64" in r.stderr
    assert out["p0_exp"] == out["p0_exp_band"][2]


def test_bad_toy_options_exit_2_and_nonconverged_toys_exit_1(ws_file, tmp_path):
    r = run(["cls", ws_file, "--seed", 3], code=2)
    assert "--toys" in r.output
    r = run(["cls", ws_file, "--toys", 10, "--save-toys", tmp_path / "no" / "t.npz"], code=2)
    assert "does not exist" in r.output
    r = run(["cls", ws_file, "--toys", 10, "--poi-value", 99], code=2)
    assert "outside the bounds" in r.output
    r = run(["merge-toys", tmp_path / "missing.npz"], code=2)
    assert "missing.npz" in r.output
    # a run with non-converged toys: kept, counted, reported; above the threshold: exit 1
    n = 100
    ok = np.ones(n, bool)
    runs = [{"seed": 0, "first": 0, "ntoys": n}]
    three_bad = np.where(np.arange(n) < 3, False, ok)
    bad = toys.ToyResult("qtilde", 1.0, 0.5, np.linspace(0, 3, n), np.linspace(0, 2, n), ok,
                         three_bad, runs=runs, meta={"poi": "mu"})  # fmt: skip
    bad.save(tmp_path / "bad.npz")
    r = run(["merge-toys", tmp_path / "bad.npz"], code=1)
    assert json.loads(r.stdout)["toys"]["nonconverged"] == {"sb": 0, "b": 3}
    assert "did not converge" in r.stderr and "--max-nonconverged" in r.stderr
    r = run(["merge-toys", tmp_path / "bad.npz", "--max-nonconverged", 0.05])
    assert "3 of 200 toys" in r.stderr


def test_toys_spread_over_workers_equal_the_single_run(ws_file, tmp_path, monkeypatch):
    """``--workers 2``: the toy ranges of the seed run in two local Dask worker processes
    (each on its own core where there are two) and merge into the single run's output,
    byte for byte (the ranges listed as the one run); ``--workers`` needs ``--toys`` and
    excludes ``--scheduler``; bad input raised on a worker exits 2 as it does here."""
    pytest.importorskip("distributed")
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", str(tmp_path / "cache"))  # the workers load it
    args = ["cls", ws_file, "--toys", 40, "--seed", 7, "--chunk-size", 16]  # ranges of 14
    single = run(args).stdout
    spread = run([*args, "--workers", 2]).stdout
    assert spread == single
    assert json.loads(spread)["toys"]["runs"] == [{"seed": 7, "first": 0, "ntoys": 40}]
    assert "--toys" in run(["cls", ws_file, "--workers", 2], code=2).output
    r = run([*args, "--workers", 2, "--scheduler", "tcp://127.0.0.1:1"], code=2)
    assert "mutually exclusive" in r.output
    r = run(["cls", ws_file, "--toys", 10, "--poi-value", 99, "--workers", 1], code=2)
    assert "outside the bounds" in r.output


def test_local_toy_workers_are_pinned_one_per_core():
    """A local cluster's workers each run on one core, a different one per worker (XLA's
    threads of one process on two cores wait on each other: cli.spread_toys)."""
    import os

    pytest.importorskip("distributed")
    from diffhep.cli.spread_toys import coalesce, pin_workers
    from diffhep.io.dask_apply import dask_client

    cores = sorted(affinity.session_cores())
    with affinity.widened(), dask_client(None, 2) as client:  # its workers on the session's cores
        pinned = pin_workers(client)
        seen = client.run(lambda: sorted(os.sched_getaffinity(0)))
    assert sorted(pinned) == sorted(seen)
    assert all(seen[a] == [pinned[a]] for a in seen)
    assert sorted(pinned.values()) == sorted(cores[i % len(cores)] for i in range(2))
    runs = [{"seed": 1, "first": 0, "ntoys": 16}, {"seed": 1, "first": 16, "ntoys": 8},
            {"seed": 1, "first": 30, "ntoys": 2}, {"seed": 2, "first": 32, "ntoys": 4}]  # fmt: skip
    assert coalesce(runs) == [{"seed": 1, "first": 0, "ntoys": 24},
                              {"seed": 1, "first": 30, "ntoys": 2},
                              {"seed": 2, "first": 32, "ntoys": 4}]  # fmt: skip
