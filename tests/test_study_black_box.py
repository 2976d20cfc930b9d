"""``diffhep study black-box`` with one seed and tiny budgets: every table row and plot."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_black_box_study_smoke(tmp_path):
    from diffhep.studies.black_box import black_box_study

    path = black_box_study(tmp_path / "doc", seeds=1, epochs=2, budget=6, dense=9,
                           runs_dir=tmp_path / "runs", lgso_iterations=2, blobs_budget=4,
                           blobs_dense=9)  # fmt: skip
    text = path.read_text()
    doc = json.loads((tmp_path / "doc" / "black-box.json").read_text())
    assert set(doc["cuts"]["searches"]) == {"grid", "random", "bo"}
    assert len(doc["cuts"]["gradient"]["values"]) == 2
    assert set(doc["detector"]) == {"lgso", "lgso_scaled", "tpe", "random", "grid"}
    assert all(set(t) == {"1", "2", "4", "6"} for t in doc["detector"].values())
    assert len(doc["cuts"]["lgso"][0]["values"]) == 2  # the exact Z0 of each iterate
    assert set(doc["blobs"]) == {"2", "4", "6"}
    for d, t in doc["blobs"].items():
        assert set(t["methods"]) == {"gradient", "tpe", "random", "grid"}
        assert len(t["methods"]["gradient"][0]["values"]) == 4
        # the optimum starts from the best point found, so no method beats it
        found = min(r["value"] for rows in t["methods"].values() for r in rows if r["value"] > 0)
        assert t["optimum"]["value"] <= found * (1 + 1e-9), d
    assert "dense_grid" in doc["blobs"]["2"]["optimum"]
    rows = ("| grid |", "| random |", "| bo |", "| gradient", "| L-GSO (cuts", "| L-GSO | 1 |",
            "| TPE | 2 |", "| random | 2 |", "| grid | 1 |", "| gradient (soft histogram) | 6 |",
            "Findings on the blobs")  # fmt: skip
    for row in rows:
        assert row in text
    assert "Smoke" not in text and "## Findings" in text
    for png in (
        "black-box-cuts.png",
        "black-box-cuts-time.png",
        "black-box-detector.png",
        "black-box-blobs.png",
    ):
        assert (tmp_path / "doc" / png).stat().st_size > 0


def test_blobs_exact_yields_match_grid_integration():
    """Problem 1b's exact yields in bins of u equal the likelihood-ratio bins of
    ``blobs.lr_yields`` (midpoint integration of the 2-D densities): u is monotone in s/(s+b)."""
    import numpy as np

    from diffhep.problems import blobs
    from diffhep.studies.black_box_blobs import projected_yields

    u_edges = np.array([-0.7, 0.3, 1.2])
    points = np.stack([-u_edges / np.sqrt(2), u_edges / np.sqrt(2)], axis=1)
    lr_edges = np.concatenate([[0.0], blobs.likelihood_ratio(points), [1.0]])
    ref = blobs.lr_yields(lr_edges, n_grid=400)
    got = projected_yields(u_edges[::-1])  # the edges are sorted
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=1e-3)
    np.testing.assert_allclose(got.sum(axis=1), [blobs.YIELDS[s] for s in blobs.SAMPLES])


def test_blobs_exact_cls_matches_pyhf():
    """The exact objective against pyhf's expected CLs of the same model spec (4 bins, the
    hypothesis test that tests/test_blobs.py compiles: shared within one pytest process)."""
    import numpy as np
    import pyhf

    import diffhep
    import oracle
    from diffhep.problems import blobs
    from diffhep.studies.black_box_blobs import exact_cls, projected_yields

    diffhep.enable_x64()
    edges = [-0.3, 0.5, 1.4]
    y = projected_yields(edges)
    with oracle.pyhf_numpy():
        model = pyhf.Model(blobs.model_spec(y), poi_name="mu")
        data = list(y[1]) + model.config.auxdata
    _, ref = oracle.hypotest(1.0, data, model, test_stat="qtilde", return_expected=True)
    np.testing.assert_allclose(exact_cls(edges), float(ref), rtol=2e-3)
