"""The persistent cache's bound: DIFFHEP_CACHE_MAX_SIZE, least recently used entries first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffhep import cache
from diffhep.cli import main
from diffhep.errors import DiffhepError
from diffhep.stats.workspace import example_spec

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _file(path: Path, size: int, when: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (when, when))
    return path


def test_prune_removes_the_least_recently_used_first(tmp_path):
    old = _file(tmp_path / "jit_a-cache", 300, 1_000_000)
    mid = _file(tmp_path / "exported" / "k.bin", 300, 2_000_000)
    new = _file(tmp_path / "jit_b-cache", 300, 3_000_000)
    os.utime(mid, (3_500_000, 2_000_000))  # read after ``new`` was written: it stays longer
    other = _file(tmp_path / "notes.txt", 5000, 0)  # not the cache's: never counted, never deleted
    assert cache.prune(tmp_path, 900) == []
    assert cache.prune(tmp_path, 650) == [old]
    assert cache.prune(tmp_path, 299) == [new, mid]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [other]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500M", 500 * 2**20),
        ("1.5g", int(1.5 * 2**30)),
        ("2GiB", 2 * 2**30),
        ("4096", 4096),
        ("none", None),
        (None, 2 * 2**30),
    ],
)
def test_size_from_the_environment(monkeypatch, text, size):
    if text is None:
        monkeypatch.delenv("DIFFHEP_CACHE_MAX_SIZE", raising=False)
    else:
        monkeypatch.setenv("DIFFHEP_CACHE_MAX_SIZE", text)
    assert cache.max_size() == size


@pytest.mark.parametrize("text", ["lots", "0", "-1G", "2X"])
def test_a_bad_size_names_the_variable_and_exits_2(monkeypatch, tmp_path, text):
    monkeypatch.setenv("DIFFHEP_CACHE_MAX_SIZE", text)
    with pytest.raises(DiffhepError, match="not a cache size") as err:
        cache.max_size()
    assert err.value.where == "DIFFHEP_CACHE_MAX_SIZE"
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    result = CliRunner().invoke(main, ["cls", str(ws)])
    assert result.exit_code == 2 and result.exception is not None  # SystemExit, no traceback
    assert "DIFFHEP_CACHE_MAX_SIZE" in result.output and "500M or 2G" in result.output
    assert repr(text) in result.output  # the value as the user wrote it


def test_a_command_prunes_the_cache_before_it_adds_to_it(tmp_path):
    """Old entries beyond the bound go before the command's kernels are stored."""
    cache = tmp_path / "cache"
    stale = _file(cache / "jit_stale-cache", 3 * 2**20, 1_000_000)
    kept = _file(cache / "exported" / "recent.bin", 2**10, 2_000_000_000)
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": str(cache),
           "DIFFHEP_CACHE_MAX_SIZE": "2M", "DIFFHEP_WORKER_START": "never"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "diffhep", "cls", str(ws)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not stale.exists() and kept.exists()
    assert any((cache / "exported").glob("*.exe")) and any((cache / "exported").glob("*.bin"))
    assert 0 < json.loads(proc.stdout)["CLs_obs"] < 1


def test_enable_cache_in_python_stores_the_kernels_for_a_new_session(tmp_path):
    """``diffhep.enable_cache()`` in Python: the first session compiles and stores its
    kernel, a second one (a new process) on another signal point loads it and traces
    nothing, and gives that point's CLs; without it nothing is written."""
    script = tmp_path / "session.py"
    script.write_text(
        "import json, sys, jax, diffhep\n"
        "from diffhep.stats.workspace import example_spec\n"
        "traced = []\n"
        "jax.monitoring.register_event_duration_secs_listener(\n"
        "    lambda e, d, **k: traced.append(k.get('fun_name')) if e.endswith('trace_duration')"
        " else None)\n"
        "diffhep.enable_x64()\n"
        "if sys.argv[1] == 'on':\n"
        "    print(diffhep.enable_cache(), file=sys.stderr)\n"
        "spec = example_spec()\n"
        "spec['channels'][0]['samples'][0]['data'] = [float(sys.argv[2]) * x for x in "
        "spec['channels'][0]['samples'][0]['data']]\n"
        "ws = diffhep.Workspace(spec); m = ws.model()\n"
        "traced.clear()\n"
        "r = diffhep.stats.hypotest.hypotest(1.0, m, ws.data(m))\n"
        "print(json.dumps({'cls': float(r.cls_obs), 'traced': traced}))\n"
    )
    store = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": str(store)}

    def session(*args):
        out = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    off = session("off", "0.5")
    assert not store.exists()  # the library writes nothing unless asked
    assert "flat" in off["traced"]
    first = session("on", "1.0")
    # ("flat": the kernel as exported.call traces it; a new process also traces JAX's own
    # small wrappers, the dtype conversions and the call of the loaded kernel)
    assert "flat" in first["traced"] and list((store / "exported").glob("*.bin"))
    second = session("on", "0.5")
    assert "flat" not in second["traced"], "the second session traced its kernel again"
    assert second["cls"] == pytest.approx(off["cls"], rel=1e-12)
    assert second["cls"] != pytest.approx(first["cls"], rel=1e-3)  # not a stale result


def test_an_empty_directory_is_no_cache(tmp_path, monkeypatch):
    """``enable_cache("")`` as ``DIFFHEP_CACHE_DIR=""``: no cache, not the current directory
    (whose files would be pruned as the cache's)."""
    monkeypatch.chdir(tmp_path)
    kept = _file(tmp_path / "jit_a-cache", 300, 1_000_000)
    assert cache.enable("", limit=0) is None
    assert kept.exists()
