"""The stacked histograms of a channel: samples stacked, the signal overlaid, data, an
uncertainty band (statistical and systematic shifts) and a ratio (or S/B) panel."""

from __future__ import annotations

import math

import numpy as np

from .style import experiment_label, new_figure, plain, save_figure, styled

__all__ = ["plot_stacked", "uncertainty_band"]


#: Above this many variations :func:`plot_stacked` draws them in one grey style with one
#: legend entry (a run of ttbar_resonance.yaml has 34: a legend over the whole histogram)
MAX_VARIATION_ENTRIES = 6


@styled
def plot_stacked(
    edges,
    samples,
    signal,
    path,
    variations=None,
    data=None,
    title=None,
    band=None,
    xlabel="observable",
    signal_overlay: float | str | None = "auto",
    logy: bool = False,
) -> None:
    """Stacked, step-filled histogram of the sample yields with the signal on top, an
    uncertainty band on the total, and a lower panel: data / total with data, S/B without
    (a ratio to the total would be 1 by construction).

    Args:
        edges: Bin edges, shape ``(n + 1,)``.
        samples: ``{name: per-bin yields}``; backgrounds are stacked in the given order.
        signal: Name of the signal sample in ``samples``, stacked last.
        path: Output file.
        variations: Optional ``{label: per-bin yields}`` drawn as step lines over the stack
            (e.g. the total yields of the up and down variations of a systematic), and with
            data their ratio to the total in the lower panel.
        data: Optional observed per-bin counts, drawn as points with ``sqrt(n)`` error bars.
        title: Optional axes title.
        band: Optional ``(low, high)`` per-bin totals (e.g. :func:`uncertainty_band`), drawn
            hatched around the stack (and, with data, relative to it in the lower panel).
        xlabel: Label of the x axis.
        signal_overlay: The signal also drawn unstacked, scaled by this factor (a line
            labelled ``signal xK``); ``"auto"``: a power of ten bringing its largest bin to
            the background's when it is below a fifth of it (none otherwise); None: no
            overlay.
        logy: A logarithmic y axis (for a small signal under a large background).

    Raises:
        ValueError: If ``signal`` is not a sample or a yield vector does not match ``edges``.
    """
    edges = np.asarray(edges, dtype=float)
    if signal not in samples:
        raise ValueError(f"signal sample {signal!r} not in samples {list(samples)}")

    def _yields(name, values):
        values = np.asarray(values, dtype=float)
        if values.shape != (len(edges) - 1,):
            raise ValueError(f"{name!r}: {values.shape} yields for {len(edges) - 1} bins")
        return values

    order = [name for name in samples if name != signal] + [signal]
    fig = new_figure((6.4, 6.4))
    ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    import mplhep

    yields = [_yields(name, samples[name]) for name in order]
    drawn_stack = mplhep.histplot(yields, edges, stack=True, histtype="fill", label=order,
                                  alpha=0.8, zorder=1, ax=ax)  # fmt: skip
    # mplhep returns the stack top first; bottom-up here: the backgrounds, then the signal
    stack = [a.stairs for a in reversed(drawn_stack)]
    total = np.sum(yields, axis=0)
    sig = _yields(signal, samples[signal])
    bkg = total - sig
    safe = np.where(total > 0, total, np.nan)  # no ratio where nothing is expected
    above = []  # drawn over the stack, in legend order after it
    drawn = [total]
    if band is not None:
        lo, hi = _yields("band low", band[0]), _yields("band high", band[1])
        hatch = {"fill": False, "hatch": "////", "color": "0.3", "lw": 0}
        above.append(ax.stairs(hi, edges, baseline=lo, label="uncertainty", zorder=4, **hatch))
        if data is not None:
            rax.stairs(hi / safe, edges, baseline=lo / safe, **hatch)
    many = len(variations or {}) > MAX_VARIATION_ENTRIES  # one legend entry for them all
    for i, (label, values) in enumerate((variations or {}).items()):
        values = _yields(label, values)
        kw = {"color": "0.45" if many else f"C{len(order) + i}", "ls": "--",
              "lw": 1.0 if many else 1.5}  # fmt: skip
        line = ax.stairs(values, edges, label=label, zorder=5, **kw)
        if not many or i == 0:
            above.append(line)
        if many and i == 0:
            line.set_label(f"systematic variations ({len(variations)})")
        drawn.append(values)
        if data is not None:
            rax.stairs(values / safe, edges, baseline=None, **kw)  # no edges down to 0
    k = _overlay_factor(signal_overlay, sig, bkg)
    if k is not None:
        kw = {"color": stack[-1].get_facecolor(), "lw": 2, "zorder": 6}
        label = f"{signal} x{k:g}" if k != 1 else f"{signal} (unstacked)"
        above.append(ax.stairs(k * sig, edges, label=label, **kw))
        drawn.append(k * sig)
    centres = 0.5 * (edges[1:] + edges[:-1])
    if data is not None:
        counts = _yields("data", data)
        err = np.sqrt(np.clip(counts, 0, None))
        above.append(ax.errorbar(centres, counts, yerr=err, fmt="ko", label="data", zorder=7))
        drawn.append(counts)
        rax.errorbar(centres, counts / safe, yerr=err / safe, fmt="ko")
        rax.axhline(1.0, color="grey", lw=1)
        rax.set_ylabel("data / total")
    else:
        sb = np.where(bkg > 0, sig / np.where(bkg > 0, bkg, 1.0), np.nan)
        rax.stairs(sb, edges, color=stack[-1].get_facecolor(), lw=1.5)
        rax.set_ylabel("S/B")
        rax.set_ylim(0, None)
    rax.set_xlabel(xlabel)
    ax.set_ylabel("events")
    ax.set_xlim(edges[0], edges[-1])
    if logy:
        positive = np.concatenate([np.ravel(v) for v in drawn])
        positive = positive[np.isfinite(positive) & (positive > 0)]
        ax.set_yscale("log")
        if positive.size:
            ax.set_ylim(positive.min() / 2, positive.max() * 20)
    else:
        ax.set_ylim(0, None)
    is_plain = plain()
    if title is not None and is_plain:
        ax.set_title(title)
    handles = [*reversed(stack), *above]  # the stack's top first, as it is drawn
    ax.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="upper right",
              ncols=1 if len(handles) <= 8 else 2,
              title=None if is_plain else title)  # fmt: skip  # the label takes the top
    if not logy:
        _above_the_bars(ax, edges, drawn)
    experiment_label(ax)
    save_figure(fig, path)


def _above_the_bars(ax, edges, drawn) -> None:
    """Raise the y axis where the legend would hide bars: those of the bins under the
    legend (an experiment's large fonts and many entries: a new user's CMS plots had the
    legend over the tallest bar) end just below it."""
    legend = ax.get_legend()
    ax.figure.draw_without_rendering()  # (the legend's place is known once drawn)
    box = legend.get_window_extent().transformed(ax.transAxes.inverted())
    (x0, _), (x1, _) = ax.transData.inverted().transform(
        ax.transAxes.transform([(box.x0, 0.0), (box.x1, 0.0)])
    )
    under = (edges[1:] > x0) & (edges[:-1] < x1)
    heights = np.stack([np.ravel(v) for v in drawn])[:, under]
    lo, hi = ax.get_ylim()
    top = float(np.nanmax(heights, initial=lo))
    room = box.y0 - 0.03  # (axes fraction left below the legend)
    if room > 0.2 and (top - lo) > room * (hi - lo):
        ax.set_ylim(lo, lo + (top - lo) / room)


def _overlay_factor(option, sig, bkg) -> float | None:
    """The scale of the unstacked signal overlay of :func:`plot_stacked` (None: no overlay)."""
    if option is None:
        return None
    if option != "auto":
        return float(option)
    s, b = float(np.max(sig, initial=0.0)), float(np.max(bkg, initial=0.0))
    if s <= 0 or b <= 0 or s >= 0.2 * b:
        return None
    return float(10 ** math.floor(math.log10(b / s)))


def uncertainty_band(total, shifts=(), stat=None):
    """Per-bin ``(low, high)`` of ``total`` from systematic shifts added in quadrature.

    Every shift is a pair of per-bin totals ``(up, down)`` of one systematic; per bin, its
    positive deviations from ``total`` enter ``high`` and its negative ones ``low`` (the
    largest of each sign, if up and down go the same way). ``stat`` (e.g. the MC statistical
    uncertainty ``sqrt(sum w^2)``) enters both sides.

    Example:
        >>> lo, hi = uncertainty_band([10.0], [([12.0], [9.0]), ([11.0], [11.5])], stat=[0.0])
        >>> float(lo[0]), round(float(hi[0]), 6)
        (9.0, 12.5)
    """
    total = np.asarray(total, dtype=float)
    up2 = np.zeros_like(total) if stat is None else np.asarray(stat, float) ** 2
    down2 = up2.copy()
    for a, b in shifts:
        d = np.stack([np.asarray(a, float) - total, np.asarray(b, float) - total])
        up2 += np.max(np.clip(d, 0, None), axis=0) ** 2
        down2 += np.min(np.clip(d, None, 0), axis=0) ** 2
    return total - np.sqrt(down2), total + np.sqrt(up2)
