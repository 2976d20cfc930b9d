"""Plots of fit diagnostics in cabinetry's style: pulls, the impact ranking, the correlation
matrix, pre-/post-fit stacked yields with data and a ratio panel, likelihood scans.

Every function takes the plain dictionaries of :mod:`diffhep.stats.diagnostics` and
:mod:`diffhep.stats.covariance` (the JSON the CLI prints), writes ``path`` (format from the
suffix) and takes ``style=`` as :mod:`diffhep.plotting.runs` does. matplotlib and mplhep are
imported when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .style import experiment_label as _experiment_label
from .style import new_figure, plain, save_figure
from .style import styled as _styled

__all__ = ["plot_correlations", "plot_pulls", "plot_ranking", "plot_scan", "plot_yields"]


@_styled
def plot_pulls(pulls: Mapping, path) -> None:
    """Pulls ``(bestfit - nominal) / prefit width`` with the constraints as error bars, the
    +-1 and +-2 sigma bands in green and yellow (cabinetry's ``pulls`` figure)."""
    rows = list(pulls["parameters"])
    n = max(len(rows), 1)
    fig = new_figure((6.0, 1.0 + 0.3 * n))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.axvspan(-2, 2, color="#ffdd55", zorder=0)
    ax.axvspan(-1, 1, color="#77dd77", zorder=0)
    ax.axvline(0, color="0.3", ls="--", lw=1)
    ax.errorbar([r["pull"] for r in rows], y, xerr=[r["constraint"] for r in rows],
                fmt="ko", ms=4)  # fmt: skip
    ax.set_yticks(y, [r["name"] for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    lim = max(3.0, *(abs(r["pull"]) + r["constraint"] + 0.2 for r in rows)) if rows else 3.0
    ax.set_xlim(-lim, lim)
    ax.set_xlabel(r"$(\hat{\theta} - \theta_0) / \Delta\theta$")
    _experiment_label(ax)
    save_figure(fig, path)


@_styled
def plot_ranking(
    ranking: Sequence[Mapping],
    pulls: Mapping,
    path,
    top: int = 20,
    poi: str | None = None,
    poi_at_bound: str | None = None,
    method: str = "refit",
) -> None:
    """The ``top`` parameters by post-fit impact: impacts on the POI (bars, top axis:
    pre-fit open, post-fit filled, up blue, down teal) and their pulls (points, bottom axis).

    Args:
        ranking: ``[{"parameter", "prefit_up", "prefit_down", "postfit_up",
            "postfit_down"}]``, largest impact first (``RankingResult.to_list``).
        pulls: :func:`diffhep.stats.diagnostics.pulls` of the same fit. Unconstrained
            parameters (``"normfactors"``) have no pull (no nominal value or pre-fit width):
            they get no point on the pull axis, their label says ``(free: best fit +-
            uncertainty)``.
        path: Output file.
        top: Number of parameters shown.
        poi: The POI's name for the impact axis (``"Delta mu_SIG"``; default ``"Delta POI"``).
        poi_at_bound: ``"lower"``/``"upper"`` when the POI's best fit is at that bound
            (``diffhep ranking``'s ``poi_at_bound``): said above the axes.
        method: How the impacts were computed (``"refit"`` or ``"covariance"``), for that note.

    Impacts all 0 (below 1e-6 of the POI's uncertainty, taken from ``pulls`` when given;
    every refit at the POI's bound) get an impact axis of +-1 POI uncertainty and a note
    instead of one scaled to nothing.
    """
    rows = list(ranking)[:top]
    info = {p["name"]: p for p in [*pulls["parameters"], *pulls["normfactors"]]}
    n = max(len(rows), 1)
    # an experiment's style has larger fonts: more width for the parameter names
    fig = new_figure((7.0 if plain() else 9.0, 1.6 + 0.35 * n))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    impacts = ax.twiny()
    open_bar = {"fill": False, "lw": 1.2, "zorder": 2}  # pre-fit outlines over post-fit bars
    for key, kw in (
        ("postfit_up", {"color": "C0", "alpha": 0.7, "label": r"post-fit impact, $+\sigma$"}),
        ("postfit_down", {"color": "C2", "alpha": 0.7, "label": r"post-fit impact, $-\sigma$"}),
        ("prefit_up", {"edgecolor": "C0", "label": r"pre-fit impact, $+\sigma$", **open_bar}),
        ("prefit_down", {"edgecolor": "C2", "label": r"pre-fit impact, $-\sigma$", **open_bar}),
    ):
        impacts.barh(y, [r[key] for r in rows], height=0.6, **{"zorder": 1, **kw})
    size = max([abs(r[k]) for r in rows for k in r if k != "parameter"], default=0.0)
    scale = info.get(poi, {}).get("uncertainty", 0.0) if poi else 0.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    flat = size <= 1e-6 * scale  # nothing to see on an axis scaled to the bars
    impacts.set_xlim(*((-scale, scale) if flat else (-1.2 * size, 1.2 * size)))
    note = _ranking_note(poi or "the POI", poi_at_bound, method, flat, bool(rows))
    if note:
        fig.suptitle(note, fontsize="small")
    impacts.set_xlabel(r"$\Delta$" + (f" {poi}" if poi else "POI"))
    # a free parameter's best fit drawn on the pull axis would read as a pull of that many
    # sigma (mu_ttbar = 1.1 as a 1.1 sigma pull): it is written in its label instead
    # (cabinetry 0.6.0 draws every parameter's best fit there, free ones too)
    free = {p["name"]: p for p in pulls["normfactors"]}
    centre, err, labels = [], [], []
    for r in rows:
        name = r["parameter"]
        p = info.get(name, {})
        centre.append(p.get("pull", np.nan))
        err.append(p.get("constraint", np.nan))
        labels.append(f"{name} (free: {free[name]['bestfit']:.3g} ± "
                      f"{free[name]['uncertainty']:.2g})" if name in free else name)  # fmt: skip
    ax.errorbar(centre, y, xerr=err, fmt="ko", ms=4, zorder=3, label="pull")
    ax.set_zorder(impacts.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlim(-2.0, 2.0)
    ax.set_xlabel(r"$(\hat{\theta} - \theta_0) / \Delta\theta$")
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    h1, l1 = impacts.get_legend_handles_labels()
    h2, l2 = ax.get_legend_handles_labels()
    # below the axes (constrained layout makes room): never over the bars or cut at the edge
    fig.legend(h1 + h2, l1 + l2, fontsize="x-small", ncol=3, loc="outside lower center",
               frameon=False)  # fmt: skip
    save_figure(fig, path)


def _ranking_note(poi: str, side: str | None, method: str, flat: bool, rows: bool) -> str:
    """What the ranking figure says above its axes (empty: nothing to say)."""
    if side is None:
        return "All impacts are 0" if flat and rows else ""
    where = f"best fit of {poi} is at its {side} bound"
    if method != "refit":
        return f"The {where}:\nthese linear impacts ignore the bound"
    if flat and rows:
        return (f"All impacts are 0: the {where},\nwhere every refit ends again; "
                "--method covariance gives the linear impacts")  # fmt: skip
    return (f"The {where}:\nrefit impacts are truncated there; "
            "--method covariance gives the linear ones")  # fmt: skip


@_styled
def plot_correlations(corr: Mapping, path) -> None:
    """The correlation matrix (``{"parameters", "correlation"}``) with the values written in
    the cells when there are few parameters."""
    names = list(corr["parameters"])
    c = np.asarray(corr["correlation"], dtype=float).reshape(len(names), len(names))
    size = 2.0 + 0.35 * len(names)
    fig = new_figure((size + 1.0, size))
    ax = fig.subplots()
    im = ax.imshow(c, vmin=-1, vmax=1, cmap="RdBu_r")
    fig.colorbar(im, ax=ax, label="correlation")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    if len(names) <= 25:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(c[i, j]) > 0.6 else "black")  # fmt: skip
    save_figure(fig, path)


def _stack(ax, rax, entry, edges, title, data_label="data") -> None:
    import mplhep

    names = list(entry["samples"])
    stack = [np.asarray(entry["samples"][s]["yields"]) for s in names]
    mplhep.histplot(stack, edges, stack=True, histtype="fill", label=names, ax=ax, alpha=0.8)
    total = np.asarray(entry["total"]["yields"])
    sd = np.asarray(entry["total"]["stdev"])
    hatch = {"fill": False, "hatch": "////", "color": "0.3", "lw": 0}
    ax.stairs(total + sd, edges, baseline=total - sd, label="uncertainty", **hatch)
    safe = np.where(total > 0, total, np.nan)
    rax.stairs((total + sd) / safe, edges, baseline=(total - sd) / safe, **hatch)
    centres = 0.5 * (edges[1:] + edges[:-1])
    data = np.asarray(entry["data"], dtype=float)
    err = np.sqrt(np.clip(data, 0, None))
    ax.errorbar(centres, data, yerr=err, fmt="ko", label=data_label)
    rax.errorbar(centres, data / safe, yerr=err / safe, fmt="ko")
    rax.axhline(1.0, color="grey", lw=1)
    top = np.nanmax(np.concatenate([total + sd, data + err]))
    ax.set_ylim(0, 1.4 * top if np.isfinite(top) and top > 0 else 1.0)
    # 0.5-1.5, widened (up to 0-3) to show every data point with its error bar and the band
    ratio, rerr = data / safe, err / safe
    ends = np.concatenate([ratio - rerr, ratio + rerr, (total - sd) / safe, (total + sd) / safe])
    ends = ends[np.isfinite(ends)]
    lo = min(0.5, max(0.0, ends.min() - 0.05)) if ends.size else 0.5
    hi = max(1.5, min(3.0, ends.max() + 0.05)) if ends.size else 1.5
    rax.set_ylim(lo, hi)
    rax.set_ylabel("data / model")
    rax.set_xlabel("bin")
    rax.set_xticks(np.arange(len(edges) - 1) + 0.5, [str(b) for b in range(len(edges) - 1)])
    ax.tick_params(labelbottom=False)
    ax.set_ylabel("events")
    if plain():
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="x-small", ncol=2)
    else:  # an experiment's label sits above the axes: the title goes in the legend
        ax.legend(fontsize="x-small", ncol=2, title=title, title_fontsize="small")


@_styled
def plot_yields(prefit: Mapping, postfit: Mapping, path, data_label: str = "data") -> None:
    """Pre-fit (left) and post-fit (right) stacked yields of every channel (rows) with data,
    the model's uncertainty band (from the full covariance post-fit) and a data/model panel.

    ``prefit``/``postfit``: :func:`diffhep.stats.covariance.yields` dictionaries;
    ``data_label``: the data's legend entry (e.g. ``"Asimov data"``)."""
    channels = list(postfit)
    fig = new_figure((11.0, 5.0 * len(channels)))
    grid = fig.add_gridspec(2 * len(channels), 2, height_ratios=[3, 1] * len(channels))
    for i, c in enumerate(channels):
        edges = np.arange(len(postfit[c]["data"]) + 1, dtype=float)
        axes = []
        for j, (label, res) in enumerate((("pre-fit", prefit), ("post-fit", postfit))):
            ax = fig.add_subplot(grid[2 * i, j])
            rax = fig.add_subplot(grid[2 * i + 1, j], sharex=ax)
            _stack(ax, rax, res[c], edges, f"{c} ({label})", data_label)
            ax.set_xlim(edges[0], edges[-1])
            axes += [ax, rax]
            if i == 0 and j == 0:
                _experiment_label(ax)
        # one y range for both (and one for both ratio panels): pre- and post-fit compare by eye
        top = max(a.get_ylim()[1] for a in axes[::2])
        lo = min(a.get_ylim()[0] for a in axes[1::2])
        hi = max(a.get_ylim()[1] for a in axes[1::2])
        for a in axes[::2]:
            a.set_ylim(0, top)
        for a in axes[1::2]:
            a.set_ylim(lo, hi)
    save_figure(fig, path)


@_styled
def plot_scan(scan: Mapping, path) -> None:
    """``-2 Delta log L`` against one parameter (with the 1 and 4 lines) or, for two, its
    contours at 2.30 and 5.99 (68 % and 95 % for two parameters)."""
    names = scan["parameters"]
    values = np.asarray(scan["values"], dtype=float)
    delta = np.asarray(scan["delta_twice_nll"], dtype=float)
    fig = new_figure((6.0, 4.5))
    ax = fig.subplots()
    from matplotlib.lines import Line2D

    if len(names) == 1:
        ax.plot(values[:, 0], delta, "k-", marker=".", label="profile likelihood")
        for level, ls, label in ((1.0, "--", r"$1\sigma$ (68 %)"), (4.0, ":", r"$2\sigma$ (95 %)")):
            ax.axhline(level, color="grey", ls=ls, lw=1, label=label)
        ax.set_xlabel(names[0])
        ax.set_ylabel(r"$-2\,\Delta\ln L$")
        ax.set_ylim(0, None)
        ax.legend(loc="best")
    else:
        xs, ys = np.unique(values[:, 0]), np.unique(values[:, 1])
        z = np.full((len(ys), len(xs)), np.nan)
        z[np.searchsorted(ys, values[:, 1]), np.searchsorted(xs, values[:, 0])] = delta
        ax.contour(xs, ys, z, levels=[2.30, 5.99], colors=["k", "grey"])
        ax.plot(*scan["bestfit"], "k+", ms=10, clip_on=False)  # (at an edge of the scan too)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.legend(handles=[Line2D([], [], color="k", label="68 % CL"),
                           Line2D([], [], color="grey", label="95 % CL"),
                           Line2D([], [], color="k", marker="+", ls="", ms=10,
                                  label="best fit")], loc="best")  # fmt: skip
    _experiment_label(ax)
    save_figure(fig, path)
