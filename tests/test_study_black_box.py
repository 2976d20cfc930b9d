"""``diffhep study black-box`` in its smoke form: one seed, tiny budgets, every table row."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_black_box_study_smoke(tmp_path):
    from diffhep.studies.black_box import black_box_study

    path = black_box_study(tmp_path / "doc", seeds=1, epochs=2, budget=6, dense=9,
                           runs_dir=tmp_path / "runs")  # fmt: skip
    text = path.read_text()
    doc = json.loads((tmp_path / "doc" / "black-box.json").read_text())
    assert set(doc["cuts"]["searches"]) == {"grid", "random", "bo"}
    assert len(doc["cuts"]["gradient"]["values"]) == 2
    assert set(doc["detector"]["lgso"]) == {"1", "2"}
    rows = ("| grid |", "| random |", "| bo |", "| gradient", "| L-GSO | 1 |", "| TPE | 2 |")
    for row in rows:
        assert row in text
    assert (tmp_path / "doc" / "black-box-cuts.png").stat().st_size > 0
