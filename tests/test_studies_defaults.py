"""The studies' Python functions write where ``diffhep study`` does by default."""

from __future__ import annotations

import importlib
import inspect

import pytest

from diffhep.cli.studies import study

STUDIES = [
    ("realistic", "realistic_study"),
    ("inferno", "inferno_study"),
    ("negative_weights", "negative_weights_study"),
    ("black_box", "black_box_study"),
    ("negative_weights_ttbar", "ttbar_weights_check"),
    ("significance", "significance_study"),
    ("cuts", "cuts_study"),
    ("neos_blobs", "neos_blobs"),
]


@pytest.mark.parametrize(("module", "name"), STUDIES)
def test_study_function_default_out_is_the_cli_default(module, name):
    """A study called from Python wrote into ./docs/studies (the repository's layout) while
    ``diffhep study`` writes into ./studies (d0756e5): both write into the CLI's default."""
    fn = getattr(importlib.import_module(f"diffhep.studies.{module}"), name)
    cli_default = next(p for p in study.params if p.name == "out").default
    assert inspect.signature(fn).parameters["out"].default == cli_default


def test_ttbar_weights_check_reproduce_command_writes_where_the_report_is(tmp_path, monkeypatch):
    """The ttbar check's "Reproduce with" command, run as written (shell quoting included),
    names the directory its report is in: it relied on the function's default, once
    docs/studies (the repository's reports)."""
    import shlex

    import numpy as np

    import diffhep.studies.negative_weights_ttbar as T
    from diffhep.types import Events

    rng = np.random.default_rng(0)
    ev = {
        k: Events(rng.normal(size=(50, 6)), rng.normal(size=50)) for k in ("signal", "background")
    }
    per = {"sum_sigma": 0.0, "chi2_ndf": dict.fromkeys(T.FEATURES, 1.0),
           "p_value": dict.fromkeys(T.FEATURES, 0.5), "max_pull": 1.0}  # fmt: skip
    check = {"sum_ratio": 1.0, "mean_abs_error": 0.1, "signed": per, "reference": per}
    monkeypatch.setattr(T, "ttbar_events", lambda events, seed: (ev, np.ones(50)))
    monkeypatch.setattr(
        T, "learn_positive_weights", lambda x, w, seed: type("R", (), {"weights": w})
    )
    monkeypatch.setattr(T, "_joint", lambda ev, seed, epochs: None)
    monkeypatch.setattr(T, "_check", lambda *a: check)
    monkeypatch.chdir(tmp_path)
    path = T.ttbar_weights_check("docs/studies", seeds=2, events=1000, epochs=3)
    line = next(x for x in path.read_text().splitlines() if x.startswith("Reproduce with"))
    argv = shlex.split(line.split("`")[1])
    assert argv[:2] == ["python", "-c"]
    calls = []
    monkeypatch.setattr(T, "ttbar_weights_check", lambda *a, **k: calls.append((a, k)))
    exec(argv[2], {})
    ((args, kwargs),) = calls
    assert args, "the command writes into the function's default directory"
    assert (tmp_path / args[0]).resolve() == path.parent.resolve()
    assert kwargs == {"seeds": 2, "events": 1000, "epochs": 3}
