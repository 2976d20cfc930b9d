"""What the stacked-histogram plot draws (issue 18 item 8), checked on the figure's artists,
not its pixels: legend order as the stack, variations over the stack, a scaled signal
overlay, a log y axis, and S/B (not a ratio to the total) when there are no data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffhep.plotting import histograms
from diffhep.plotting import runs as plotting

EDGES = np.linspace(0.0, 1.0, 5)
SAMPLES = {"signal": [0.1, 0.2, 0.5, 0.9], "ttbar": [200, 100, 40, 10], "wjets": [50, 30, 20, 10]}
VARIATIONS = {"jes up": [270, 140, 70, 25], "jes down": [230, 120, 50, 15]}


@pytest.fixture
def figure(monkeypatch):
    """The figure plot_stacked draws, captured before it is saved and cleared."""
    drawn = {}

    def capture(fig, path):
        ax, rax = fig.axes
        drawn.update(
            ax=ax,
            rax=rax,
            legend=[t.get_text() for t in ax.get_legend().get_texts()],
            artists={a.get_label(): a for a in ax.patches + ax.lines},
            ratio_label=rax.get_ylabel(),
            ratio_lines=[np.asarray(p.get_data()[0]) for p in rax.patches],
            yscale=ax.get_yscale(),
        )

    monkeypatch.setattr(histograms, "save_figure", capture)
    return drawn


def test_legend_lists_the_stack_from_the_top(figure, tmp_path):
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png", signal_overlay=None)
    stack = [x for x in figure["legend"] if x in SAMPLES]
    assert stack == ["signal", "wjets", "ttbar"]  # drawn bottom-up: ttbar, wjets, signal


def test_variations_drawn_over_the_stack(figure, tmp_path):
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png", VARIATIONS)
    a = figure["artists"]
    assert a["jes up"].get_zorder() > max(a[n].get_zorder() for n in SAMPLES)
    assert a["jes down"].get_zorder() > max(a[n].get_zorder() for n in SAMPLES)


def test_small_signal_gets_a_scaled_overlay(figure, tmp_path):
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png")
    (label,) = [x for x in figure["legend"] if x.startswith("signal x")]
    k = float(label.removeprefix("signal x"))
    assert k == 100  # a power of ten: max background 250 / max signal 0.9
    overlay = figure["artists"][label]
    np.testing.assert_allclose(overlay.get_data()[0], k * np.asarray(SAMPLES["signal"]))
    # an explicit factor, and none
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png", signal_overlay=20)
    assert "signal x20" in figure["legend"]
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png", signal_overlay=None)
    assert not [x for x in figure["legend"] if x.startswith("signal x")]


def test_visible_signal_gets_no_overlay(figure, tmp_path):
    big = {**SAMPLES, "signal": [100.0, 50.0, 20.0, 5.0]}
    plotting.plot_stacked(EDGES, big, "signal", tmp_path / "x.png")
    assert not [x for x in figure["legend"] if x.startswith("signal x")]


def test_log_y(figure, tmp_path):
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png", logy=True)
    assert figure["yscale"] == "log"
    assert figure["ax"].get_ylim()[0] > 0


def test_lower_panel_without_data_is_s_over_b(figure, tmp_path):
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png", VARIATIONS)
    assert figure["ratio_label"] == "S/B"
    b = np.asarray(SAMPLES["ttbar"]) + np.asarray(SAMPLES["wjets"])
    (line,) = figure["ratio_lines"]
    np.testing.assert_allclose(line, np.asarray(SAMPLES["signal"]) / b)


def test_lower_panel_with_data_is_data_over_total(figure, tmp_path):
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "x.png", data=[250, 130, 60, 21])
    assert figure["ratio_label"] == "data / total"


def test_report_options_reach_the_histograms(tiny_run, tmp_path, monkeypatch):
    """``report.log_y`` and ``report.signal_overlay`` of a run's config are what its
    histograms are drawn with (``diffhep evaluate`` redraws them). The test metrics are the
    run's own summary here (computing them compiles the hypotest, ~15 s, and is not what is
    tested; tests/test_training.py's test_evaluate_recomputes_the_summary does)."""
    import json
    import shutil

    import yaml

    from diffhep.runs import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["report"] |= {"log_y": True, "signal_overlay": 5.0}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = json.loads((run / "summary.json").read_text())
    keys = {"expected_cls", "z0", "sigma_mu", "fits_converged", "selected_fraction", "yields"}
    stored = {k: v for k, v in summary.items() if k in keys or k.startswith("sigma_")}
    monkeypatch.setattr(evaluate, "_metrics_fn", lambda pipe: lambda params, events: stored)
    calls = []
    monkeypatch.setattr(plotting, "plot_stacked", lambda *a, **kw: calls.append(kw))
    evaluate.evaluate_run(run)
    assert calls and all(kw["logy"] is True and kw["signal_overlay"] == 5.0 for kw in calls)


# ---------------------------------------------------------------- labels inside the figure
def _outside(fig) -> list:
    """Texts (axis labels, titles, experiment labels, texts) reaching outside the figure
    once it is laid out as saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.dpi = 100
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    out = []
    for ax in fig.axes:
        for t in [*ax.texts, ax.xaxis.label, ax.yaxis.label, ax.title]:
            if not t.get_visible() or not t.get_text():
                continue
            e = t.get_window_extent(renderer)
            if e.x0 < -1 or e.y0 < -1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
                out.append((t.get_text(), [round(v) for v in e.extents]))
    return out


@pytest.mark.parametrize("style", list(plotting.STYLES))
def test_labels_are_not_cut_off(style, monkeypatch, tmp_path):
    found = {}

    def capture(fig, path):
        found[path.name] = _outside(fig)
        fig.clear()

    for module in (plotting, histograms):  # plot_training and plot_cutflow, plot_stacked
        monkeypatch.setattr(module, "save_figure", lambda fig, path: capture(fig, Path(path)))
    history = [{"epoch": e, "loss": 1.0 / e, "val_expected_cls": 0.1 / e, "val_sigma_mu": 0.5,
                "val_z0": 2.0 + e, "cut0_threshold": 0.1 * e, "val_selected_fraction": 0.5}
               for e in range(1, 6)]  # fmt: skip
    plotting.plot_training(history, tmp_path / "training.png", style=style)
    plotting.plot_training(history, tmp_path / "cuts.png", style=style,
                           metrics=["cut0_threshold", "val_selected_fraction"])  # fmt: skip
    plotting.plot_stacked(EDGES, SAMPLES, "signal", tmp_path / "stack.png", VARIATIONS,
                          title="SR", style=style)  # fmt: skip
    rows = [{"cut": c, "s": {"events": 10, "yield": y}, "b": {"events": 10, "yield": 10 * y}}
            for c, y in (("none", 10.0), ("x0 > 1.5", 5.0), ("x1 in [0, 1]", 2.0))]  # fmt: skip
    plotting.plot_cutflow(rows, tmp_path / "cutflow.png", style=style)
    assert found and not any(found.values()), found


def test_an_unscaled_overlay_is_labelled_unstacked(figure, tmp_path):
    """A signal between a tenth and a fifth of the background gets the overlay at x1: the
    legend says "unstacked", not "x1"."""
    samples = {"signal": [12.0, 5.0, 2.0, 0.5], "background": [0.5, 4.0, 18.0, 78.0]}
    plotting.plot_stacked(EDGES, samples, "signal", tmp_path / "x.png")
    assert "signal (unstacked)" in figure["legend"]
    assert not any(x.startswith("signal x") for x in figure["legend"])


@pytest.mark.parametrize("style", list(plotting.STYLES))
def test_fit_yields_titles_clear_of_the_experiment_label(style, monkeypatch, tmp_path):
    """The pre-/post-fit yields figure (``diffhep yields --plot``, a run's report): each
    panel's title ("SR (pre-fit)": above the axes in the plain style, the legend's title in
    an experiment's) overlaps no experiment label; the data's legend entry is
    ``data_label``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from diffhep.plotting import diagnostics as fit_plots

    def entry(v):
        return {"yields": v, "stdev": [0.1 * x for x in v], "sum": sum(v), "sum_stdev": 1.0}

    res = {"SR": {"samples": {n: entry(v) for n, v in SAMPLES.items()},
                  "total": entry([sum(x) for x in zip(*SAMPLES.values(), strict=True)]),
                  "data": [250.0, 130.0, 60.0, 21.0], "data_sum": 461.0}}  # fmt: skip
    titles, labels, entries = [], [], []

    def capture(fig, path):
        canvas = FigureCanvasAgg(fig)
        fig.dpi = 100
        canvas.draw()
        r = canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            shown = [ax.title] + ([legend.get_title()] if legend is not None else [])
            titles.extend((t.get_text(), t.get_window_extent(r)) for t in shown if t.get_text())
            labels.extend(t.get_window_extent(r) for t in ax.texts if t.get_text())
            if legend is not None:
                entries.append([t.get_text() for t in legend.texts])
        fig.clear()

    monkeypatch.setattr(fit_plots, "save_figure", capture)
    fit_plots.plot_yields(res, res, tmp_path / "y.png", style=style, data_label="Asimov data")
    assert sorted(t for t, _ in titles) == ["SR (post-fit)", "SR (pre-fit)"]
    assert len(entries) == 2 and all("Asimov data" in e for e in entries)
    assert bool(labels) == (style != "plain")
    for text, box in titles:
        assert not any(box.overlaps(label) for label in labels), (style, text)


def test_many_variations_and_an_experiments_style_stay_readable(monkeypatch, tmp_path):
    """A new user's trial (ttbar_resonance.yaml in the CMS style): 34 variation entries made
    a legend over the whole histogram, the style's fonts crowded a 6.4-inch figure (the y
    label cut, the label over the axes). Now many variations share one legend entry, a
    styled figure is at least 10 inches wide, and the bars under the legend end below it."""
    seen = {}

    def capture(fig, path):
        ax = fig.axes[0]
        fig.draw_without_rendering()
        box = ax.get_legend().get_window_extent().transformed(ax.transData.inverted())
        seen.update(width=fig.get_figwidth(), legend_bottom=box.y0,
                    legend=[t.get_text() for t in ax.get_legend().get_texts()])  # fmt: skip

    monkeypatch.setattr(histograms, "save_figure", capture)
    tall = {**SAMPLES, "ttbar": [200, 100, 40, 900]}  # the tallest bin under the legend
    many = {f"sys{k} {d}": np.multiply(tall["ttbar"], 1.05 if d == "up" else 0.95)
            for k in range(17) for d in ("up", "down")}  # fmt: skip
    plotting.plot_stacked(EDGES, tall, "signal", tmp_path / "x.png", many, style="CMS",
                          signal_overlay=None)  # fmt: skip
    assert seen["legend"] == ["signal", "wjets", "ttbar", "systematic variations (34)"]
    assert seen["width"] >= 10.0
    top = 1.05 * 900 + 10 + 0.9
    assert seen["legend_bottom"] > top
