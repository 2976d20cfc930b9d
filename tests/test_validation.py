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
                        f"{BKG}.modifiers[0].data", "1 numbers"),
    "staterror length": (_add_modifier({"name": "st", "type": "staterror", "data": [1.0] * 3}),
                         f"{BKG}.modifiers[1].data", "3 numbers"),
    "histosys length": (_add_modifier({**HISTOSYS, "data": {"hi_data": [55.0],
                                                            "lo_data": [45.0, 47.0]}}),
                        f"{BKG}.modifiers[1].data.hi_data", "1 numbers"),
    "yield NaN": (_set(_bkg(0), float("nan")), f"{BKG}.data[0]", "NaN"),
    "yield inf": (_set(_bkg(1), float("inf")), f"{BKG}.data[1]", "infinite"),
    "yield 1e300": (_set(_bkg(0), 1e300), f"{BKG}.data[0]", "absurdly large"),
    "yield -inf": (_set(_bkg(0), float("-inf")), f"{BKG}.data[0]", "infinite"),
    "negative total": (_set(_bkg(0), -80.0), "channels[0].samples[*].data[0]", "negative"),
    "observation NaN": (_set(["observations", 0, "data", 1], float("nan")),
                        "observations[0].data[1]", "NaN"),
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
