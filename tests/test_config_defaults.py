"""A user's config starts from neutral defaults, not from the demo (issue 18 item 4), and
``--set`` overrides index lists and name the option of a value that is not YAML (item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffhep.cli import main
from diffhep.runs.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = """
data: {generator: cuts_1d}
analysis:
  samples:
    - {name: sig, role: signal}
    - {name: bkg, role: background}
  channels: [{name: SR, bins: 2}]
"""


def test_a_minimal_config_gets_no_demo_values():
    cfg = load_config(text=MINIMAL)
    assert cfg.analysis.shape_systematics == []  # no 'bkg_shape' on a 'background' sample
    assert cfg.analysis.norm_systematics == []
    assert cfg.observable.hidden == [64, 64]  # not the neos paper's 1024-1024


def test_a_config_without_a_generator_gets_none():
    text = MINIMAL.replace("data: {generator: cuts_1d}", "data: {files: {sig: a.npz, bkg: b.npz}}")
    cfg = load_config(text=text)
    assert cfg.data.generator is None and cfg.data.n_per_blob is None
    dumped = cfg.to_yaml()
    assert "blobs" not in dumped and "1024" not in dumped and "bkg_shape" not in dumped


def test_generator_events_default_only_with_a_generator():
    assert load_config(text=MINIMAL).data.n_per_blob == 10_000


def test_no_source_and_no_samples_are_errors_not_demo_values():
    with pytest.raises(ConfigError, match="give a data 'generator'"):
        load_config(text=MINIMAL.replace("data: {generator: cuts_1d}", ""))
    with pytest.raises(ConfigError, match=r"analysis\.samples: required field is missing"):
        load_config(text="data: {generator: blobs}\nanalysis: {channels: [{name: SR, bins: 2}]}")


def test_ntuple_config_without_shape_systematics(tmp_path):
    """The issue's case: an ntuple config naming no systematics validated with 'bkg_shape:
    unknown sample background' (the demo's systematic)."""
    text = """
data: {features: [x]}
analysis:
  samples:
    - {name: ttbar, role: signal, files: [s.root], tree: events}
    - {name: wjets, role: background, files: [b.root], tree: events}
  channels: [{name: SR, bins: 2}]
"""
    cfg = load_config(text=text)
    assert cfg.analysis.shape_systematics == [] and cfg.data.generator is None


@pytest.mark.parametrize(
    "path",
    [
        *sorted((ROOT / "examples").glob("*.yaml")),
        ROOT / "examples" / "ntuples" / "analysis.yaml",
        *sorted((ROOT / "src" / "diffhep" / "data").glob("*.yaml")),
    ],
    ids=lambda p: p.name,
)
def test_shipped_configs_state_what_they_use(path):
    """Every shipped config (the demo's among them) writes its generator, event count, samples,
    systematics and network explicitly, so a default never decides its numbers."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    assert "samples" in doc["analysis"] and "shape_systematics" in doc["analysis"]
    if "files" not in doc["analysis"]["samples"][0]:
        assert {"generator", "n_per_blob"} <= set(doc["data"]) or "files" in doc["data"]
    cfg = load_config(path)
    if any(ch.observable == "nn" for ch in cfg.analysis.channels):
        assert "hidden" in doc.get("observable", {}), path


# ---------------------------------------------------------------- --set (item 5)
def test_set_indexes_lists():
    cfg = load_config(
        text=MINIMAL,
        overrides=["analysis.samples.1.scale=2.5", "analysis.channels.0.bins=3"],
    )
    assert cfg.analysis.samples[1].scale == 2.5 and cfg.analysis.channels[0].bins == 3
    # a negative index counts from the end, like Python
    cfg = load_config(text=MINIMAL, overrides=["analysis.samples.-1.name=other"])
    assert [s.name for s in cfg.analysis.samples] == ["sig", "other"]


def test_set_on_the_ntuple_example_filter():
    path = ROOT / "examples" / "ntuples" / "analysis.yaml"
    cfg = load_config(path, ["analysis.samples.0.filter=num(Jet_pt) >= 3"])
    assert cfg.analysis.samples[0].filter == "num(Jet_pt) >= 3"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("analysis.samples.5.scale=2", "index 5 is out of range (analysis.samples has 2 items)"),
        ("analysis.samples.x.scale=2", "'x' is not an index of analysis.samples"),
        ("analysis.channels.0.bins.1=2", "analysis.channels.0.bins is not a section or list"),
        ("training.epochs=[1, 2", "is not valid YAML"),
        ("training.loss={a: 1", "is not valid YAML"),
        ("=3", "empty key"),
        ("training..epochs=3", "empty key"),
    ],
)
def test_bad_set_names_the_option(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(text=MINIMAL, overrides=[override])
    text = str(err.value)
    assert message in text and f"--set {override}" in text, text


def test_cli_bad_set_value_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL)
    proc = subprocess.run(
        [sys.executable, "-m", "diffhep.cli", "train", str(cfg), "--out", str(tmp_path / "run"),
         "--set", "training.epochs=[3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--set training.epochs=[3" in proc.stderr and "not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("training.epochz=3", "training.epochz", "unknown key"),
        ("analysis.samples.0.filtr=x > 1", "analysis.samples.0.filtr", "unknown key"),
        ("training.optimizer.lr.x=1", "training.optimizer.lr", "unknown key"),
        ("training.epochs=-1", "training.epochs", "greater than or equal to 1"),
        ("analysis.samples.-1.scale=abc", "analysis.samples.1.scale", "a valid number"),
    ],
)
def test_set_of_a_key_that_does_not_exist_names_the_option(override, key, message):
    """A key the config has no place for (or a bad value) given by --set names the option,
    not only the file (which does not contain it)."""
    with pytest.raises(ConfigError) as err:
        load_config(text=MINIMAL, overrides=[override])
    text = str(err.value)
    assert f"{key}: {message}" in text.replace("Input should be ", ""), text
    assert f"(from --set {override})" in text, text


def test_cli_set_of_an_unknown_key_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL)
    res = CliRunner().invoke(
        main, ["train", str(cfg), "--out", str(tmp_path / "run"), "--set", "training.epochz=3"]
    )
    assert res.exit_code == 2, res.output
    assert "training.epochz" in res.output and "--set training.epochz=3" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_a_config_dump_names_no_generator_it_does_not_use():
    """The resolved config (config.yaml, the report's dump) of a config without a generator
    has no generator keys at all (not even null), and reads back to the same config."""
    for cfg in (
        load_config(ROOT / "examples" / "ntuples" / "analysis.yaml"),
        load_config(text=MINIMAL.replace("{generator: cuts_1d}", "{files: {sig: a.npz}}")),
    ):
        dumped = cfg.to_yaml()
        assert "generator" not in dumped and "n_per_blob" not in dumped, dumped
        assert load_config(text=dumped) == cfg
    blobs = load_config(text=MINIMAL.replace("cuts_1d", "blobs")).to_yaml()
    assert "generator: blobs" in blobs and "n_per_blob: 10000" in blobs


def test_an_error_of_the_file_is_not_blamed_on_an_unrelated_set(tmp_path):
    """A bad field of the file is reported with its line, not as coming from a --set of
    another key (a new user's trial); a --set of the field itself is still named."""
    cfg = tmp_path / "c.yaml"
    data = "data:\n  generator: cuts_1d\n  features: ['log(x1']"
    cfg.write_text(MINIMAL.replace("data: {generator: cuts_1d}", data))
    with pytest.raises(ConfigError) as err:
        load_config(cfg, ["training.epochs=1"])
    text = str(err.value)
    assert "data.features[0]: cannot parse expression 'log(x1'" in text, text
    assert "(line 4)" in text and "--set" not in text, text
    assert f"fix: correct the field(s) above in {cfg}" in text, text
    with pytest.raises(ConfigError) as err:
        load_config(cfg, ["data.features=['log(x2']"])
    assert "(from --set data.features=['log(x2'])" in str(err.value), str(err.value)


def test_cli_signal_errors_name_the_signal_option(tmp_path):
    """``train --signal NAME`` of no such signal names --signal, not a --set the user did
    not give."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL)
    res = CliRunner().invoke(
        main, ["train", str(cfg), "--out", str(tmp_path / "run"), "--signal", "zprime"]
    )
    assert res.exit_code == 2, res.output
    assert "analysis.signal: 'zprime' is not a signal sample" in res.output, res.output
    assert "(from --signal zprime)" in res.output and "--set" not in res.output, res.output
