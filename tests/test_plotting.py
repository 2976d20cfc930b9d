"""Tests of diffhep.plotting.runs: files written, documented input variants, ROC/AUC correctness."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from diffhep.plotting.runs import (
    plot_observable_2d,
    plot_roc,
    plot_stacked,
    plot_training,
    roc_curve,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > len(PNG_MAGIC)
    assert data[: len(PNG_MAGIC)] == PNG_MAGIC


def _history(n=6, offset=0.0, with_std=False):
    out = []
    for epoch in range(n):
        entry = {
            "epoch": epoch,
            "loss": 1.0 / (epoch + 1) + offset,
            "val_expected_cls": 0.5 * 0.7**epoch,
            "val_sigma_mu": None if epoch == 2 else 0.3 + 0.01 * epoch,
        }
        if epoch != 4:  # a missing key
            entry["val_z0"] = 0.5 + 0.2 * epoch
        if with_std:
            entry["loss_std"] = 0.05
            entry["val_expected_cls_std"] = 0.4 * entry["val_expected_cls"] if epoch else None
        out.append(entry)
    return out


@pytest.mark.parametrize(
    "history",
    [
        _history(),
        _history(with_std=True),
        {"bce": _history(), "cls": _history(offset=0.2, with_std=True)},
        [{"epoch": 0, "loss": None}, {"epoch": 1, "loss": 0.3}, {"epoch": 2, "loss": float("nan")}],
    ],
    ids=["list", "std-bands", "dict-of-runs", "sparse"],
)
def test_plot_training_writes_png(tmp_path, history):
    path = tmp_path / "nested" / "dir" / "training.png"
    assert plot_training(history, path) is None
    assert_png(path)


def test_plot_training_custom_metrics_and_no_metric(tmp_path):
    plot_training(_history(), tmp_path / "a.png", metrics=("loss",))
    assert_png(tmp_path / "a.png")
    with pytest.raises(ValueError, match="none of the metrics"):
        plot_training([{"epoch": 0, "loss": None}], tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


def test_plot_stacked_writes_png(tmp_path):
    edges = np.linspace(0.0, 1.0, 5)
    samples = {"signal": [1.0, 2.0, 5.0, 9.0], "ttbar": [20, 10, 4, 1], "wjets": [5, 3, 2, 1]}
    variations = {"background up": [27, 14, 7, 2.5], "background down": [23, 12, 5, 1.5]}
    path = tmp_path / "sub" / "stacked.png"
    plot_stacked(edges, samples, "signal", path, variations, data=[27, 15, 11, 10], title="t")
    assert_png(path)
    plot_stacked(edges, {"s": np.ones(4), "b": np.ones(4)}, "s", tmp_path / "min.png")
    assert_png(tmp_path / "min.png")


def test_plot_stacked_rejects_bad_input(tmp_path):
    edges = np.linspace(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="signal sample"):
        plot_stacked(edges, {"b": np.ones(4)}, "s", tmp_path / "x.png")
    with pytest.raises(ValueError, match="bins"):
        plot_stacked(edges, {"s": np.ones(4), "b": np.ones(3)}, "s", tmp_path / "x.png")


def _mann_whitney(s, b):
    diff = s[:, None] - b[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_roc_identical_distributions():
    rng = np.random.default_rng(1)
    s, b = rng.normal(size=20000), rng.normal(size=20000)
    _, _, auc = roc_curve(s, np.ones_like(s), b, np.ones_like(b))
    assert abs(auc - 0.5) < 0.02


def test_roc_perfect_separation():
    s, b = np.array([2.0, 3.0, 5.0]), np.array([-1.0, 0.0, 1.5, 1.9])
    _, _, auc = roc_curve(s, None, b, np.full(4, 0.5))
    assert auc == 1.0
    _, _, auc_rev = roc_curve(b, None, s, None)
    assert auc_rev == 0.0


def test_roc_endpoints_and_monotonicity():
    rng = np.random.default_rng(2)
    s, b = rng.normal(1.0, size=50), rng.normal(size=70)
    eff_b, eff_s, _ = roc_curve(s, rng.uniform(0.5, 2, 50), b, rng.uniform(0.5, 2, 70))
    n_thresholds = len(np.unique(np.concatenate([s, b])))
    assert eff_b.shape == eff_s.shape == (n_thresholds + 1,)
    assert (eff_b[0], eff_s[0]) == (0.0, 0.0)
    assert (eff_b[-1], eff_s[-1]) == (1.0, 1.0)
    assert np.all(np.diff(eff_b) >= 0) and np.all(np.diff(eff_s) >= 0)


def test_roc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 6, size=37).astype(float)  # many ties, within and across samples
    b = rng.integers(0, 5, size=41).astype(float)
    _, _, auc = roc_curve(s, np.ones_like(s), b, np.ones_like(b))
    assert abs(auc - _mann_whitney(s, b)) < 1e-12
    assert 0.5 < auc < 1.0  # non-trivial case


def test_roc_integer_weights_equal_repeated_events():
    rng = np.random.default_rng(4)
    s, b = np.round(rng.normal(0.5, size=30), 1), np.round(rng.normal(size=25), 1)
    ws, wb = rng.integers(1, 5, size=30), rng.integers(1, 5, size=25)
    _, _, auc_w = roc_curve(s, ws, b, wb)
    _, _, auc_rep = roc_curve(np.repeat(s, ws), None, np.repeat(b, wb), None)
    assert abs(auc_w - auc_rep) < 1e-12
    assert abs(auc_w - _mann_whitney(np.repeat(s, ws), np.repeat(b, wb))) < 1e-12
    _, _, auc_unw = roc_curve(s, None, b, None)
    assert abs(auc_w - auc_unw) > 1e-6  # the weights matter


def test_roc_signed_weights_and_errors():
    s, b = np.array([0.2, 0.6, 0.9]), np.array([0.1, 0.5])
    _, eff_s, auc = roc_curve(s, np.array([1.0, -0.5, 1.5]), b, None)
    assert eff_s[-1] == 1.0 and np.any(np.diff(eff_s) < 0)  # negative weight lowers efficiency
    # Mann-Whitney with signed weights: sum_ij w_i w_j [s_i > b_j] / (W_s W_b).
    expected = (1.0 * 1 + (-0.5) * 2 + 1.5 * 2) / (2.0 * 2)
    assert abs(auc - expected) < 1e-12
    with pytest.raises(ValueError, match="total weight"):
        roc_curve(s, np.array([1.0, -1.0, 0.0]), b, None)
    with pytest.raises(ValueError, match="finite"):
        roc_curve(np.array([np.nan]), None, b, None)
    with pytest.raises(ValueError, match="matching"):
        roc_curve(s, np.ones(2), b, None)


def test_plot_roc_writes_png_and_returns_auc(tmp_path):
    rng = np.random.default_rng(5)
    s, b = rng.normal(1.0, size=200), rng.normal(size=300)
    path = tmp_path / "roc" / "roc.png"
    auc = plot_roc(s, None, b, np.full(300, 2.0), path)
    assert auc == pytest.approx(roc_curve(s, None, b, None)[2], abs=1e-12)
    assert_png(path)


def test_roc_of_an_observable_with_the_signal_at_low_scores(tmp_path, monkeypatch):
    """A new user's trial: a CLs-trained observable put the signal at low scores and its ROC
    read AUC = 0.0199, below the diagonal. The curve now selects low scores there, says so,
    and the AUC is the other side's (1 - 0.0199)."""
    from diffhep.plotting import runs as plotting

    legends = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: legends.append(
        [t.get_text() for t in fig.axes[0].get_legend().get_texts()]))  # fmt: skip
    rng = np.random.default_rng(7)
    s, b = rng.normal(-2.0, size=200), rng.normal(size=300)
    high = roc_curve(s, None, b, None)[2]
    assert high < 0.1
    auc = plot_roc(s, None, b, None, tmp_path / "roc.png")
    assert auc == pytest.approx(1.0 - high, abs=1e-12)
    assert legends[0][0] == f"AUC = {auc:.4f} (signal at low scores)"


def test_plot_observable_2d_writes_png(tmp_path):
    rng = np.random.default_rng(6)
    seen = []

    def fn(x):
        seen.append(x.shape)
        return np.tanh(x[:, 0] + 0.5 * x[:, 1])

    samples = {"signal": rng.normal(1.0, size=(1000, 2)), "background": rng.normal(size=(50, 2))}
    path = tmp_path / "obs" / "obs2d.png"
    plot_observable_2d(fn, path, samples, xlim=(-3, 3), feature_names=("a", "b"), n_grid=40)
    assert seen == [(1600, 2)]
    assert_png(path)
    plot_observable_2d(fn, tmp_path / "plain.png", n_grid=20)
    assert_png(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="fn returned"):
        plot_observable_2d(lambda x: x, tmp_path / "bad.png", n_grid=10)
    with pytest.raises(ValueError, match="expected"):
        plot_observable_2d(fn, tmp_path / "bad.png", {"s": np.zeros((5, 3))}, n_grid=10)


def test_figures_are_released(tmp_path):
    from matplotlib.figure import Figure

    def n_figures():
        for _ in range(3):  # figures in cycles with finalizers may need more than one pass
            gc.collect()
        return sum(isinstance(o, Figure) for o in gc.get_objects())

    plot_roc([1.0, 2.0], None, [0.0, 1.5], None, tmp_path / "warm.png")
    before = n_figures()
    for i in range(2):
        plot_training(_history(), tmp_path / f"t{i}.png")
        plot_stacked([0, 1, 2], {"s": [1, 2], "b": [3, 1]}, "s", tmp_path / f"s{i}.png")
        plot_roc([1.0, 2.0], None, [0.0, 1.5], None, tmp_path / f"r{i}.png")
        plot_observable_2d(lambda x: x[:, 0], tmp_path / f"o{i}.png", n_grid=10)
    assert n_figures() <= before


def test_observable_vs_features_with_a_constant_feature(tmp_path):
    """A feature with one value (``num(Jet_pt) > 0`` after a >= 2-jet preselection) crashed
    the plot (issue 18 item 2); it gets no panel, nor do mask features, and padded objects
    are left out of their panel."""
    from diffhep.plotting.runs import feature_profiles, plot_observable_vs_features

    rng = np.random.default_rng(0)
    n = 200
    njet = rng.integers(2, 5, n)
    x = np.column_stack([rng.normal(size=n), np.ones(n), (njet > 2).astype(float),
                         np.where(njet > 2, rng.uniform(30, 90, n), 0.0)])  # fmt: skip
    names = ["met", "num(Jet_pt) > 0", "num(Jet_pt) > 2", "Jet_pt[2]"]
    score = {"s": rng.uniform(size=n)}
    masks = {"Jet_pt[2]": "num(Jet_pt) > 2"}
    path = tmp_path / "obs.png"
    assert plot_observable_vs_features(score, {"s": x}, names, path, masks=masks)
    assert path.stat().st_size > 0
    panels, skipped = feature_profiles(score, {"s": x}, names, masks=masks)
    assert skipped == {"num(Jet_pt) > 0": "constant", "num(Jet_pt) > 2": "mask"}
    assert sorted(panels) == ["Jet_pt[2]", "met"]
    assert panels["Jet_pt[2]"][0][0] >= 30  # the padded zeros are not in the panel


def test_scan_figures_say_what_their_lines_are(monkeypatch, tmp_path):
    """A new user's trial: the 1-D scan's dashed lines and the 2-D scan's contours had no
    legend, and the best-fit marker at the edge of a 2-D scan was clipped."""
    from diffhep.plotting import diagnostics

    drawn = []

    def capture(fig, path):
        (ax,) = fig.axes
        drawn.append(([t.get_text() for t in ax.get_legend().get_texts()], ax.lines))

    monkeypatch.setattr(diagnostics, "save_figure", capture)
    one = {"parameters": ["mu"], "values": [[0.0], [1.0], [2.0]], "delta_twice_nll": [0, 1, 4]}
    diagnostics.plot_scan(one, tmp_path / "a.png")
    two = {"parameters": ["mu", "k"], "bestfit": [0.0, 1.0],
           "values": [[m, k] for m in (0.0, 1.0, 2.0) for k in (0.5, 1.0, 1.5)],
           "delta_twice_nll": [(m**2 + 4 * (k - 1) ** 2) * 3 for m in (0.0, 1.0, 2.0)
                               for k in (0.5, 1.0, 1.5)]}  # fmt: skip
    diagnostics.plot_scan(two, tmp_path / "b.png")
    (legend1, _), (legend2, lines2) = drawn
    assert legend1 == ["profile likelihood", r"$1\sigma$ (68 %)", r"$2\sigma$ (95 %)"]
    assert legend2 == ["68 % CL", "95 % CL", "best fit"]
    (marker,) = [line for line in lines2 if line.get_marker() == "+"]
    assert marker.get_clip_on() is False


def test_ranking_draws_no_pull_for_a_free_parameter(monkeypatch, tmp_path):
    """A new user's trial: the ranking drew a free normfactor's best fit (1.1) on the pull
    axis, where it read as a 1.1 sigma pull. A pull (theta_hat - theta_0) / Delta theta is
    defined for constrained parameters only: those are drawn at their pulls, the free one gets
    no point and its label says it is free, with its best fit and uncertainty."""
    from diffhep.plotting import diagnostics

    drawn = {}

    def capture(fig, path):
        (ax,) = [a for a in fig.axes if a.get_xlabel().startswith(r"$(\hat")]
        (bars,) = [c for c in ax.containers if c.get_label() == "pull"]
        line = bars.lines[0]
        labels = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
        drawn.update(x=line.get_xdata(), y=line.get_ydata(), labels=labels)

    monkeypatch.setattr(diagnostics, "save_figure", capture)
    ranking = [{"parameter": n, "prefit_up": 0.3, "prefit_down": -0.3, "postfit_up": 0.2,
                "postfit_down": -0.2} for n in ("jes", "mu_ttbar", "lumi")]  # fmt: skip
    pulls = {
        "parameters": [{"name": "jes", "pull": 0.4, "constraint": 0.8},
                       {"name": "lumi", "pull": -0.3, "constraint": 0.9}],
        "normfactors": [{"name": "mu_ttbar", "bestfit": 1.1, "uncertainty": 0.2}],
    }  # fmt: skip
    diagnostics.plot_ranking(ranking, pulls, tmp_path / "rank.png", poi="mu")
    x = dict(zip(drawn["y"], drawn["x"], strict=True))
    names = {drawn["labels"][y]: value for y, value in x.items()}
    assert names["jes"] == 0.4 and names["lumi"] == -0.3
    (free,) = [k for k in names if k.startswith("mu_ttbar")]
    assert np.isnan(names[free])
    assert free == "mu_ttbar (free: 1.1 ± 0.2)"
