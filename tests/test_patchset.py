"""Patchsets are applied only to the workspace they were made for (issue 20 item 5): the
background-only workspace's digest must match the patchset's ``metadata.digests``, as pyhf's
``Patchset.verify`` checks; exit 2 with both digests, ``--no-digest-check`` to override.

The patchset is built from the published sbottom likelihoods (ATLAS ins1748602, RegionA) the
way HEPData's are, with pyhf's own digest (the reference), and checked by pyhf."""

from __future__ import annotations

import json

import pyhf
import pytest
from click.testing import CliRunner

import oracle
from diffhep.cli import main
from diffhep.stats.workspace import digest
from specs import make_sbottom_patchset

POINTS = ("sbottom_1300_850_60", "sbottom_1000_205_60")


def run(args):
    return CliRunner().invoke(main, args)


@pytest.fixture
def patchset_files(sbottom_dir, tmp_path):
    region = sbottom_dir / "RegionA"
    bkg, patchset = make_sbottom_patchset(region, POINTS)
    ws_path, ps_path = tmp_path / "BkgOnly.json", tmp_path / "patchset.json"
    ws_path.write_text(json.dumps(bkg))
    ps_path.write_text(json.dumps(patchset))
    tampered = json.loads(json.dumps(bkg))
    tampered["channels"][0]["samples"][0]["data"][0] *= 1.01
    bad_path = tmp_path / "BkgOnly_tampered.json"
    bad_path.write_text(json.dumps(tampered))
    with pytest.raises(pyhf.exceptions.PatchSetVerificationError):
        pyhf.PatchSet(patchset).verify(tampered)
    return ws_path, ps_path, bad_path, patchset


def test_digest_is_pyhfs(patchset_files):
    ws_path, _, bad_path, patchset = patchset_files
    for path in (ws_path, bad_path):
        spec = json.loads(path.read_text())
        assert digest(spec) == pyhf.utils.digest(spec)
        assert digest(spec, "md5") == pyhf.utils.digest(spec, "md5")
    assert digest(json.loads(ws_path.read_text())) == patchset["metadata"]["digests"]["sha256"]


def test_patchset_on_a_tampered_workspace_exits_2(patchset_files):
    """Before: applied silently."""
    _, ps_path, bad_path, patchset = patchset_files
    expected = patchset["metadata"]["digests"]["sha256"]
    got = digest(json.loads(bad_path.read_text()))
    for command in ("cls", "fit", "upper-limit"):
        result = run([command, str(bad_path), "-p", str(ps_path), "--patch-name", POINTS[0]])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert str(ps_path) in result.output and "metadata.digests.sha256" in result.output
        assert expected in result.output and got in result.output
        assert "--no-digest-check" in result.output


def test_tampered_digest_exits_2(patchset_files, tmp_path):
    ws_path, _, _, patchset = patchset_files
    patchset["metadata"]["digests"]["sha256"] = "0" * 64
    ps_path = tmp_path / "patchset_bad_digest.json"
    ps_path.write_text(json.dumps(patchset))
    result = run(["cls", str(ws_path), "-p", str(ps_path), "--patch-name", POINTS[1]])
    assert result.exit_code == 2 and "0" * 64 in result.output


def test_matching_digest_applies_the_patch(patchset_files):
    ws_path, ps_path, _, _ = patchset_files
    ok = run(["cls", str(ws_path), "-p", str(ps_path), "--patch-name", POINTS[0]])
    assert ok.exit_code == 0, ok.output


@pytest.mark.slow
def test_no_digest_check_applies_the_patch_to_another_workspace(patchset_files):
    _, ps_path, bad_path, _ = patchset_files
    forced = run(
        ["cls", str(bad_path), "-p", str(ps_path), "--patch-name", POINTS[0], "--no-digest-check"]
    )
    assert forced.exit_code == 0, forced.output
    # the patch is applied to the tampered workspace: pyhf (told the same) gives the same CLs
    ws = pyhf.Workspace(json.loads(bad_path.read_text()))
    ps = pyhf.PatchSet(json.loads(ps_path.read_text()))
    model = ws.model(patches=[ps[POINTS[0]]])
    obs = oracle.hypotest(1.0, ws.data(model), model)
    assert json.loads(forced.stdout)["CLs_obs"] == pytest.approx(float(obs), abs=1e-5)


def test_patchset_without_a_patch_name_names_the_cli_option(patchset_files):
    """The library's load_patch says name=NAME; the command line keeps --patch-name."""
    ws_path, ps_path, _, _ = patchset_files
    result = run(["cls", str(ws_path), "-p", str(ps_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"{ps_path}: at patches[*].metadata.name: the patchset has several" in result.output
    assert "fix: choose one with --patch-name; available: " + POINTS[1] in result.output
    assert "name=" not in result.output
