"""Workspace content checked at load time (issue 18 items 11, 12, 13): exit 2 naming the file,
the JSON path and the fix, instead of a traceback, a silent misreading or "a fit did not
converge". Every case failed before src/diffhep/validation.py."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from diffhep.cli import main
from diffhep.stats.workspace import example_spec

BKG = "channels[0].samples[1]"


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


def run(args):
    return CliRunner().invoke(main, args)


def _set(path, value):
    def mutate(spec):
        *head, last = path
        obj = spec
        for key in head:
            obj = obj[key]
        obj[last] = value

    return mutate


def _add_modifier(mod):
    return lambda s: s["channels"][0]["samples"][1]["modifiers"].append(mod)


def _bkg(i):
    return ["channels", 0, "samples", 1, "data", i]


def _dup_channel(s):
    s["channels"].append(copy.deepcopy(s["channels"][0]))


def _dup_sample(s):
    s["channels"][0]["samples"].append(copy.deepcopy(s["channels"][0]["samples"][0]))


def _dup_observation(s):
    s["observations"].append({"name": "singlechannel", "data": [10.0, 10.0]})


def _dup_measurement(s):
    s["measurements"].append(copy.deepcopy(s["measurements"][0]))


def _param_config(cfg):
    return lambda s: s["measurements"][0]["config"]["parameters"].append(cfg)


NORMSYS = {"name": "n", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}
HISTOSYS = {"name": "h", "type": "histosys", "data": {"hi_data": [55.0, 57.0],
                                                      "lo_data": [45.0, 47.0]}}  # fmt: skip

CASES = {
    # (mutation, JSON path named in the message, words of the message)
    "shapesys length": (_set(["channels", 0, "samples", 1, "modifiers", 0, "data"], [3.0]),
                        f"{BKG}.modifiers[0].data", "has 1 number, the channel has 2 bins"),
    "staterror length": (_add_modifier({"name": "st", "type": "staterror", "data": [1.0] * 3}),
                         f"{BKG}.modifiers[1].data", "3 numbers"),
    "histosys length": (_add_modifier({**HISTOSYS, "data": {"hi_data": [55.0],
                                                            "lo_data": [45.0, 47.0]}}),
                        f"{BKG}.modifiers[1].data.hi_data", "has 1 number,"),
    "yield NaN": (_set(_bkg(0), float("nan")), f"{BKG}.data[0]", "NaN"),
    "yield inf": (_set(_bkg(1), float("inf")), f"{BKG}.data[1]", "infinite"),
    "yield 1e300": (_set(_bkg(0), 1e300), f"{BKG}.data[0]", "absurdly large"),
    "yield -inf": (_set(_bkg(0), float("-inf")), f"{BKG}.data[0]", "infinite"),
    "negative total": (_set(_bkg(0), -80.0), "channels[0].samples[*].data[0]", "negative"),
    "observation NaN": (_set(["observations", 0, "data", 1], float("nan")),
                        "observations[0].data[1]", "NaN"),
    "observation length": (_set(["observations", 0, "data"], [10.0] * 3),
                           "observations[0].data", "has 3 bins, the channel has 2"),
    "observation negative": (_set(["observations", 0, "data", 0], -3.0),
                             "observations[0].data[0]", "must not be negative"),
    "staterror NaN": (_add_modifier({"name": "st", "type": "staterror",
                                     "data": [1.0, float("nan")]}),
                      f"{BKG}.modifiers[1].data[1]", "NaN"),
    "shapesys NaN": (_set(["channels", 0, "samples", 1, "modifiers", 0, "data", 0],
                          float("nan")), f"{BKG}.modifiers[0].data[0]", "NaN"),
    "shapesys negative": (_set(["channels", 0, "samples", 1, "modifiers", 0, "data", 0], -3.0),
                          f"{BKG}.modifiers[0].data[0]", "must not be negative"),
    "histosys NaN": (_add_modifier({**HISTOSYS, "data": {"hi_data": [55.0, float("nan")],
                                                         "lo_data": [45.0, 47.0]}}),
                     f"{BKG}.modifiers[1].data.hi_data[1]", "NaN"),
    "normsys hi -1": (_add_modifier({**NORMSYS, "data": {"hi": -1.0, "lo": 0.9}}),
                      f"{BKG}.modifiers[1].data.hi", "must be positive"),
    "normsys lo 0": (_add_modifier({**NORMSYS, "data": {"hi": 1.1, "lo": 0.0}}),
                     f"{BKG}.modifiers[1].data.lo", "must be positive"),
    "normsys NaN": (_add_modifier({**NORMSYS, "data": {"hi": float("nan"), "lo": 0.9}}),
                    f"{BKG}.modifiers[1].data.hi", "NaN"),
    "duplicate channel": (_dup_channel, "channels[1].name", "two channels"),
    "duplicate sample": (_dup_sample, "channels[0].samples[2].name", "two samples"),
    "duplicate observation": (_dup_observation, "observations[1].name", "two observations"),
    "duplicate measurement": (_dup_measurement, "measurements[1].name", "two measurements"),
    "unknown parameter config": (_param_config({"name": "lumi_typo", "bounds": [[0, 2]]}),
                                 "measurements[0].config.parameters[0].name", "lumi_typo"),
    "fixed POI": (_param_config({"name": "mu", "fixed": True}),
                  "measurements[0].config.parameters[0].fixed", "fixed"),
}  # fmt: skip


@pytest.mark.parametrize("command", ["cls", "fit"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_workspace_content_exits_2(tmp_path, case, command):
    mutate, where, words = CASES[case]
    spec = example_spec()
    mutate(spec)
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(spec))
    result = run([command, str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(path) in result.output and where in result.output, result.output
    assert words in result.output and "fix:" in result.output


def test_yield_1e400_overflows_to_inf_and_exits_2(tmp_path):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(example_spec()).replace("50.0", "1e400"))
    result = run(["cls", str(path)])
    assert result.exit_code == 2 and f"{BKG}.data[0]" in result.output
    assert "infinite" in result.output


def test_negative_yield_of_one_sample_is_accepted(tmp_path):
    """Published likelihoods have small negative bins in single samples (pyhf accepts them):
    only a negative total per bin is refused."""
    spec = example_spec()
    spec["channels"][0]["samples"][0]["data"][0] = -1.0
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(spec))
    result = run(["cls", str(path)])
    assert result.exit_code == 0, result.output


def test_errors_after_a_patch_name_the_patched_workspace(tmp_path):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(example_spec()))
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps([{"op": "replace", "path": "/channels/0/samples/1/data/0",
                                  "value": -100.0}]))  # fmt: skip
    result = run(["cls", str(path), "-p", str(patch)])
    assert result.exit_code == 2 and "channels[0].samples[*].data[0]" in result.output


@pytest.mark.parametrize("depth", [100_000, 900])
def test_deeply_nested_json_exits_2(tmp_path, depth):
    """Before: RecursionError traceback (json.loads, or the schema validator)."""
    path = tmp_path / "deep.json"
    path.write_text('{"channels": ' + "[" * depth + "]" * depth + "}")
    for command in ("cls", "fit"):
        result = run([command, str(path)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and str(path) in result.output
    patch = tmp_path / "ws.json"
    patch.write_text(json.dumps(example_spec()))
    result = run(["cls", str(patch), "-p", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_patch_name_without_a_patchset_exits_2(tmp_path):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(example_spec()))
    result = run(["cls", str(path), "--patch-name", "sbottom_1300_850_60"])
    assert result.exit_code == 2 and "--patch-name" in result.output
    assert "without a patchset" in result.output and "fix:" in result.output
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps([{"op": "replace", "path": "/channels/0/samples/0/data",
                                  "value": [30.0, 30.0]}]))  # fmt: skip
    result = run(["cls", str(path), "-p", str(patch), "--patch-name", "x"])
    assert result.exit_code == 2 and "not a patchset" in result.output
    assert "--patch-name 'x' given" in result.output and "drop --patch-name" in result.output


def _clean_exit_2(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "\n  fix: " in result.output, result.output
    for word in words:
        assert word in result.output, (word, result.output)


def test_background_only_workspace_without_its_signal_patch(sbottom_dir, tmp_path):
    """Before: only "use the name of a normfactor, e.g. one of: mu_ttbar" when the user
    forgot -p (the POI is the signal sample's normfactor)."""
    bkg = sbottom_dir / "RegionA" / "BkgOnly.json"
    result = run(["cls", str(bkg)])
    _clean_exit_2(result, f"{bkg}: at measurements[].config.poi", "'mu_SIG' is not a parameter",
                  "background-only workspace: apply a signal patch, -p PATCH", "--patch-name",
                  "mu_ttbar")  # fmt: skip
    # with a patch applied that adds no sample with the POI (RegionB's published
    # patch.sbottom_1500_1495_60 only removes a channel), the patch is named instead
    spec = example_spec()
    signal = spec["channels"][0]["samples"].pop(0)
    path, patch = tmp_path / "bkg.json", tmp_path / "patch.json"
    path.write_text(json.dumps(spec))
    patch.write_text(json.dumps([{"op": "replace", "path": "/channels/0/samples/0/data",
                                  "value": [40.0, 50.0]}]))  # fmt: skip
    result = run(["fit", str(path), "-p", str(patch)])
    _clean_exit_2(result, "the patch applied adds no sample with a modifier 'mu' (no signal)")
    assert "background-only" not in result.output
    signal["modifiers"] = []  # (a sample added, without the POI)
    patch.write_text(json.dumps([{"op": "add", "path": "/channels/0/samples/0", "value": signal}]))
    result = run(["cls", str(path), "-p", str(patch)])
    _clean_exit_2(result, "'mu' is not a parameter", "adds no sample with a modifier 'mu'")
    assert "background-only" not in result.output


def test_workspace_given_as_a_patch(sbottom_dir):
    """Before: "does not follow the pyhf patchset.json schema: Additional properties are not
    allowed ('channels', 'measurements', 'observations' were unexpected)"."""
    bkg = sbottom_dir / "RegionA" / "BkgOnly.json"
    result = run(["cls", str(bkg), "-p", str(bkg)])
    _clean_exit_2(result, f"{bkg}: this is a HistFactory workspace, not a patch", "WORKSPACE",
                  "with -p a signal patch")  # fmt: skip
    assert "schema" not in result.output


def test_patch_of_another_region(sbottom_dir):
    """Before: "at channels[0].samples[1].data: ... sample 'diboson' has 1 numbers, the
    channel has 3 bins": a sample of the workspace blamed for the patch's, which belongs to
    RegionA (3 bins) and not RegionB (1 bin)."""
    bkg = sbottom_dir / "RegionB" / "BkgOnly.json"
    patch = sbottom_dir / "RegionA" / "patch.sbottom_1300_850_60.json"
    wrong = "at channels[0].samples[0].data"
    lengths = "sample 'sbottom_1300_850_60' has 3 numbers, the channel has 1 bin"
    result = run(["cls", str(bkg), "-p", str(patch)])
    _clean_exit_2(result, f"{bkg}: {wrong}: after applying the patch {patch}: {lengths}\n",
                  "the patch may belong to another workspace")  # fmt: skip
    # exclusion names the point (its row and the summary), with the same hint
    result = run(["exclusion", str(bkg), str(patch)])
    _clean_exit_2(result, f"sbottom_1300_850_60: {wrong}: after applying the patch of this "
                  f"point: {lengths}\n", "the patch may belong to another workspace")  # fmt: skip


def test_directory_given_as_a_file(sbottom_dir):
    """Before: "cannot read the file ([Errno 21] Is a directory: ...)", no fix."""
    region = sbottom_dir / "RegionA"
    result = run(["cls", str(region)])
    _clean_exit_2(result, f"{region}: this is a directory, not a JSON file",
                  "fix: give the path of a JSON file in it (it has BkgOnly.json, ")  # fmt: skip
    result = run(["cls", str(region / "BkgOnly.json"), "-p", str(region)])
    _clean_exit_2(result, f"{region}: this is a directory")
