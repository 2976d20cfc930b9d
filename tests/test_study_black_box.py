"""``diffhep study black-box`` with one seed and tiny budgets: every table row and plot."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_black_box_study_smoke(tmp_path):
    from diffhep.studies.black_box import black_box_study

    path = black_box_study(tmp_path / "doc", seeds=1, epochs=2, budget=6, dense=9,
                           runs_dir=tmp_path / "runs", lgso_iterations=2)  # fmt: skip
    text = path.read_text()
    doc = json.loads((tmp_path / "doc" / "black-box.json").read_text())
    assert set(doc["cuts"]["searches"]) == {"grid", "random", "bo"}
    assert len(doc["cuts"]["gradient"]["values"]) == 2
    assert set(doc["detector"]) == {"lgso", "lgso_scaled", "tpe", "random", "grid"}
    assert all(set(t) == {"1", "2", "4", "6"} for t in doc["detector"].values())
    assert len(doc["cuts"]["lgso"][0]["values"]) == 2  # the exact Z0 of each iterate
    rows = ("| grid |", "| random |", "| bo |", "| gradient", "| L-GSO (cuts", "| L-GSO | 1 |",
            "| TPE | 2 |", "| random | 2 |", "| grid | 1 |")  # fmt: skip
    for row in rows:
        assert row in text
    assert "Smoke" not in text and "## Findings" in text
    for png in ("black-box-cuts.png", "black-box-cuts-time.png", "black-box-detector.png"):
        assert (tmp_path / "doc" / png).stat().st_size > 0
