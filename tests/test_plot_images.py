"""Image comparison of the main plots against stored baselines (``tests/data/plots/``).

The other plot tests check the artists (what is drawn and labelled); these catch what they
cannot: a change of layout, colours, axes or a panel that disappears. The baselines were drawn
by the plotting code when its output had been checked by eye; regenerate them deliberately,
after looking at the new images, with ``DIFFHEP_REGENERATE_BASELINES=1 pytest
tests/test_plot_images.py`` (the test then fails, to show that nothing was compared).

Inputs are fixed arrays (no random draws from the code under test); matplotlib's bundled
DejaVu fonts and a fixed dpi keep the rendering reproducible; ``compare_images`` allows a small
RMS difference for anti-aliasing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.testing.compare import compare_images  # noqa: E402

from diffhep.plotting import diagnostics as fit_plots  # noqa: E402
from diffhep.plotting import runs as plotting  # noqa: E402

BASELINES = Path(__file__).parent / "data" / "plots"
REGENERATE = os.environ.get("DIFFHEP_REGENERATE_BASELINES") == "1"
TOL = 2.0  # RMS over 0-255 pixel values; a moved legend or a lost panel is far above it

EDGES = np.linspace(0.0, 1.0, 6)
SAMPLES = {
    "ttbar": np.array([50.0, 40.0, 30.0, 20.0, 10.0]),
    "wjets": np.array([30.0, 20.0, 10.0, 5.0, 2.0]),
    "signal": np.array([1.0, 2.0, 4.0, 8.0, 12.0]),
}
DATA = np.array([82.0, 66.0, 41.0, 35.0, 25.0])


def _history():
    epochs = np.arange(1, 11)
    return [
        {
            "epoch": int(e),
            "loss": float(1.0 / e),
            "cls": float(10.0 ** (-e / 3)),
            "sigma_mu": 1.0 - e / 20,
        }
        for e in epochs
    ]


def _features():
    x = np.linspace(-2.0, 2.0, 400)
    feats = np.stack([x, np.sin(3 * x), np.full_like(x, 4.0)], axis=1)
    return (
        {"signal": 1 / (1 + np.exp(-2 * x)), "background": 1 / (1 + np.exp(2 * x - 1))},
        {"signal": feats, "background": feats[::-1].copy()},
    )


CASES = {
    "stacked": lambda p: plotting.plot_stacked(
        EDGES,
        SAMPLES,
        "signal",
        p,
        variations={"jes up": SAMPLES["ttbar"] * 1.1 + SAMPLES["wjets"] + SAMPLES["signal"]},
        data=DATA,
        band=(0.9 * sum(SAMPLES.values()), 1.1 * sum(SAMPLES.values())),
        xlabel="neural observable",
    ),
    "stacked_logy_no_data": lambda p: plotting.plot_stacked(
        EDGES, SAMPLES, "signal", p, logy=True, title="signal region"
    ),
    "training": lambda p: plotting.plot_training(
        _history(), p, metrics=("loss", "cls", "sigma_mu")
    ),
    "roc": lambda p: plotting.plot_roc(
        np.linspace(0.2, 1.0, 50), np.ones(50), np.linspace(0.0, 0.8, 50), np.ones(50), p
    ),
    "cutflow": lambda p: plotting.plot_cutflow(
        [
            {
                "cut": "all",
                "signal": {"events": 1000, "yield": 10.0},
                "bkg": {"events": 9000, "yield": 900.0},
            },
            {
                "cut": "nJet >= 4",
                "signal": {"events": 800, "yield": 8.0},
                "bkg": {"events": 3000, "yield": 300.0},
            },
            {
                "cut": "btag",
                "signal": {"events": 600, "yield": 6.0},
                "bkg": {"events": 500, "yield": 50.0},
            },
        ],
        p,
    ),
    "observable_vs_features": lambda p: plotting.plot_observable_vs_features(
        *_features(), ["x", "sin(3x)", "constant"], p, n_bins=10
    ),
}

_NPS = ["jes", "lumi", "mu_ttbar", "stat[0]", "stat[1]", "theory"]
_RANKING = [
    {"parameter": n, "prefit_up": 0.3 / (k + 1), "prefit_down": -0.25 / (k + 1),
     "postfit_up": 0.2 / (k + 1), "postfit_down": -0.22 / (k + 1)}
    for k, n in enumerate(_NPS)
]  # fmt: skip
_PULLS = {
    "parameters": [
        {"name": n, "pull": 0.4 * np.sin(k + 1), "constraint": 1.0 - 0.1 * k}
        for k, n in enumerate(_NPS)
        if n != "mu_ttbar"
    ],
    "normfactors": [{"name": "mu_ttbar", "bestfit": 1.1, "uncertainty": 0.2}],
}


def _yields(scale, data=DATA):
    def entry(values, sd):
        v = np.asarray(values) * scale
        return {"yields": v.tolist(), "stdev": (sd * v).tolist(), "sum": float(v.sum()),
                "sum_stdev": float(sd * v.sum())}  # fmt: skip

    return {
        "SR": {
            "samples": {n: entry(v, 0.1) for n, v in SAMPLES.items()},
            "total": entry(sum(SAMPLES.values()), 0.08 / scale),
            "data": np.asarray(data).tolist(),
            "data_sum": float(np.sum(data)),
        }
    }


#: Data outside the ratio panel's default 0.5-1.5 (bin 2: 14 on a model of 44, data/model 0.32
#: pre-fit; bin 3: 60 on 33, 1.82): the panels widen to show both points with their error
#: bars (0.18-2.10, one range for the pre- and post-fit panels)
_WIDE_DATA = np.array([82.0, 66.0, 14.0, 60.0, 25.0])
_CORR = np.array([[1.0, 0.5, -0.3], [0.5, 1.0, 0.1], [-0.3, 0.1, 1.0]])
CASES.update({
    "fit_ranking": lambda p: fit_plots.plot_ranking(_RANKING, _PULLS, p, poi="mu_SIG"),
    "fit_yields": lambda p: fit_plots.plot_yields(_yields(1.0), _yields(1.1), p),
    "fit_yields_wide_ratio": lambda p: fit_plots.plot_yields(
        _yields(1.0, _WIDE_DATA), _yields(1.1, _WIDE_DATA), p
    ),
    "fit_pulls": lambda p: fit_plots.plot_pulls(_PULLS, p),
    "fit_correlations": lambda p: fit_plots.plot_correlations(
        {"parameters": ["jes", "lumi", "mu"], "correlation": _CORR.tolist()}, p
    ),
})  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_matches_its_baseline(name, tmp_path):
    path = tmp_path / f"{name}.png"
    CASES[name](path)
    baseline = BASELINES / f"{name}.png"
    if REGENERATE:
        BASELINES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, baseline)
        pytest.fail(f"baseline {baseline} regenerated: look at it, then rerun without the variable")
    assert baseline.exists(), f"no baseline {baseline}: see the module docstring"
    diff = compare_images(str(baseline), str(path), tol=TOL)
    assert diff is None, diff


def test_the_comparison_can_fail(tmp_path):
    """A plot with one panel less (here: no data, so no data/total ratio) is caught."""
    path = tmp_path / "stacked.png"
    plotting.plot_stacked(
        EDGES,
        SAMPLES,
        "signal",
        path,
        band=(0.9 * sum(SAMPLES.values()), 1.1 * sum(SAMPLES.values())),
        xlabel="neural observable",
    )
    baseline = BASELINES / "stacked.png"
    if not baseline.exists():
        pytest.fail(f"no baseline {baseline}")
    assert compare_images(str(baseline), str(path), tol=TOL) is not None
