"""Command line: JSON output shaped like pyhf's, equal numbers, clear errors (no tracebacks)."""

from __future__ import annotations

import json
from pathlib import Path

import pyhf
import pytest
from click.testing import CliRunner

import oracle
from diffhep.cli import main
from diffhep.stats.workspace import example_spec

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


@pytest.fixture
def ws_file(tmp_path):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(example_spec()))
    return path


def run(args, stdin=None):
    return CliRunner().invoke(main, args, input=stdin)


def test_cls_matches_pyhf_and_shape(ws_file):
    result = run(["cls", str(ws_file)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert sorted(out) == ["CLs_exp", "CLs_obs"] and len(out["CLs_exp"]) == 5
    ws = pyhf.Workspace(example_spec())
    model = ws.model()
    obs, exp = oracle.hypotest(1.0, ws.data(model), model, return_expected_set=True)
    assert out["CLs_obs"] == pytest.approx(float(obs), abs=1e-5)
    assert out["CLs_exp"] == pytest.approx([float(x) for x in exp], abs=1e-5)


def test_cls_reads_stdin(ws_file):
    result = run(["cls", "-", "--poi-value", "0.5"], stdin=ws_file.read_text())
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.output)["CLs_obs"] < 1


def test_fit_names_parameters(ws_file):
    result = run(["fit", str(ws_file)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out["bestfit"]) == ["mu", "uncorr_bkguncrt[0]", "uncorr_bkguncrt[1]"]
    assert out["converged"] is True and out["twice_nll"] > 0


def test_upper_limit(ws_file):
    result = run(["upper-limit", str(ws_file)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["expected"][0] < out["expected"][2] < out["expected"][4]


def test_patch_applied(ws_file, tmp_path):
    patch = tmp_path / "patch.json"
    patch.write_text(
        json.dumps([{"op": "replace", "path": "/channels/0/samples/0/data", "value": [30.0, 30.0]}])
    )
    base = json.loads(run(["cls", str(ws_file)]).output)["CLs_obs"]
    patched = run(["cls", str(ws_file), "-p", str(patch)])
    assert patched.exit_code == 0, patched.output
    assert json.loads(patched.output)["CLs_obs"] < base


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s.pop("observations"), "observations"),
        (
            lambda s: s["channels"][0]["samples"][0]["modifiers"][0].update(type="normfactr"),
            "channels[0].samples[0].modifiers[0]",
        ),
        (lambda s: s["measurements"][0]["config"].update(poi="nope"), "'nope'"),
    ],
)
def test_bad_workspace_errors(tmp_path, mutate, expected):
    spec = example_spec()
    mutate(spec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    result = run(["cls", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert str(path) in result.output and expected in result.output
    assert "fix:" in result.output


def test_unreadable_and_invalid_json(tmp_path):
    result = run(["fit", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "file not found" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"channels": [')
    result = run(["fit", str(bad)])
    assert result.exit_code == 2 and "line 1" in result.output


def test_patch_that_does_not_apply(ws_file, tmp_path):
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps([{"op": "remove", "path": "/channels/7"}]))
    result = run(["cls", str(ws_file), "-p", str(patch)])
    assert result.exit_code == 2 and "does not apply" in result.output


@pytest.mark.parametrize(
    "spec",
    ["example", "validation/2bin_2channel_coupledhistosys.json",
     "validation/multichan_coupledhistosys.json"],
)  # fmt: skip
def test_cls_at_mu_zero_is_one_not_above(tmp_path, spec):
    """At mu = 0, q_A = 0 and CLsb = CLb: every CLs is 1 (pyhf prints 1.0), never a
    probability above 1 (the compiled ratio printed CLs_exp 1.0000000000000004)."""
    if spec == "example":
        path = tmp_path / "ws.json"
        path.write_text(json.dumps(example_spec()))
    else:
        path = DATA / spec
    result = run(["cls", str(path), "--poi-value", "0"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    for value in [out["CLs_obs"], *out["CLs_exp"]]:
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(1.0, rel=0, abs=1e-12)


def test_study_writes_into_the_working_directory_not_its_docs(tmp_path, monkeypatch):
    """A new user's trial: ``diffhep study cuts`` in their own directory made
    ``./docs/studies`` there (the repository's layout). The default is ``./studies``; the
    repository's documented commands pass ``--out docs/studies``."""
    import diffhep.studies.cuts

    written = []

    def study(out, **kwargs):
        written.append(Path(out).resolve())
        return out

    monkeypatch.setattr(diffhep.studies.cuts, "cuts_study", study)
    monkeypatch.chdir(tmp_path)
    result = run(["study", "cuts"])
    assert result.exit_code == 0, result.output
    assert written == [tmp_path.resolve() / "studies"]
    assert run(["study", "--help"]).output.count("--out docs/studies") == 1
