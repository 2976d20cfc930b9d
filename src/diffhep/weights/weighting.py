"""Signed event weights in training: per-sample weight strategies and net-yield checks.

diffhep carries signed weights everywhere: histograms (hard and soft) hold ``sum w`` and
``sum w^2`` per bin, the staterror width is ``sqrt(sum w^2) / sum w`` of the bin, every loss,
metric and the cut flow sums signed weights. What a negative weight can break is made
explicit here:

- **Training weight strategies** (``analysis.samples[].weights`` in the config), applied to
  the *training split only* (validation and test keep the signed weights, so the selection of
  the best epoch and the evaluation stay unbiased), to the sample and its systematic
  variations, each event set separately:

  ``signed``         the weights as they are (default);
  ``abs``            ``|w|``;
  ``drop-negative``  events with ``w < 0`` removed;
  ``ignore``         unit weights;
  ``learned``        ``E[w | x]`` learned by :func:`diffhep.weights.reweight.learn_positive_weights`
                     (regression, 2-fold cross-fit, inputs: all features), clipped at 0.

  Every strategy is then rescaled so that the split's ``sum w`` is unchanged (the yields of
  the likelihood losses stay right; ``abs``, ``drop-negative`` and ``ignore`` still bias the
  *shapes*). :func:`apply_strategies` returns a report (negative fraction and effective
  sample size before and after) that the run records in ``summary.json``.
- **Bins with a net yield <= 0**: :func:`check_net_yields` warns
  (:class:`NetYieldWarning`), naming the channel, the sample and the bin, for every bin whose
  sum of weights is <= 0 although events fill it (``sum w^2 > 0``; empty bins are not
  reported). The likelihood stays finite: an expected yield <= ``model.POISSON_FLOOR`` is
  clipped to it inside the Poisson term, and a bin whose total nominal yield is <= 0 gets a
  staterror width of 1 (100%) instead of ``sqrt(sum w^2) / sum w``. Runs check the hard
  histograms of the training data when it is prepared (per bin for feature observables, per
  channel region for the network) and the hard test histograms written to
  ``workspace.json``.
- **Bins with signal and no background**: :func:`bins_without_background` lists the bins of
  a split's hard histograms whose signal is > 0 and whose total nominal background (summed
  over the background samples) is <= ``model.POISSON_FLOOR`` (zero or net-negative): there
  the background-only expectation is clipped to the floor, so the expected CLs tends to 0
  and Z0 to infinity whatever the signal (an artefact, not a sensitivity). The runs record
  them with every validation and test metric (``bins_without_background``, ``trusted``),
  warn once per split and run (:func:`warn_bins_without_background`,
  :class:`NetYieldWarning`), and never select such an epoch as best while a trusted one
  exists (:func:`diffhep.nn.training.train`'s ``trusted``).

Example:
    >>> ev = Events(np.zeros((4, 1)), np.array([2.0, -1.0, 1.0, 2.0]))
    >>> new, info = apply_strategy(ev, "abs")
    >>> [round(float(v), 4) for v in new.w], info["negative_fraction_before"]
    ([1.3333, 0.6667, 0.6667, 1.3333], 0.25)
"""

from __future__ import annotations

import warnings

import numpy as np

from ..types import Events

__all__ = [
    "STRATEGIES",
    "NetYieldWarning",
    "apply_strategies",
    "apply_strategy",
    "bins_without_background",
    "check_net_yields",
    "effective_sample_size",
    "negative_fraction",
    "region_yields",
    "warn_bins_without_background",
]

STRATEGIES = ("signed", "abs", "drop-negative", "ignore", "learned")


class NetYieldWarning(UserWarning):
    """A histogram bin filled by events has a net yield (sum of weights) <= 0."""


def negative_fraction(w) -> float:
    """Fraction of events with a negative weight."""
    w = np.asarray(w)
    return float(np.mean(w < 0)) if w.size else 0.0


def effective_sample_size(w) -> float:
    """``(sum w)^2 / sum w^2``: the number of unit-weight events with the same relative
    statistical uncertainty of the total (0 for no events)."""
    w = np.asarray(w, dtype=np.float64)
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def apply_strategy(ev: Events, strategy: str, *, seed: int = 0, **learn_options):
    """One event set's training weights under ``strategy`` (see the module docstring).

    Returns:
        ``(events, info)``: the new events (``drop-negative`` removes events) and a dict with
        the strategy, event counts, negative fractions, effective sample sizes and sums of
        weights before and after.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown weight strategy {strategy!r}; use one of {STRATEGIES}")
    x, w = np.asarray(ev.x), np.asarray(ev.w, dtype=np.float64)
    total = float(np.sum(w))
    info = {"strategy": strategy}
    if strategy == "signed":
        new_x, new_w = x, w
    elif strategy == "abs":
        new_x, new_w = x, np.abs(w)
    elif strategy == "drop-negative":
        keep = w >= 0
        new_x, new_w = x[keep], w[keep]
    elif strategy == "ignore":
        new_x, new_w = x, np.ones_like(w)
    else:
        from .reweight import learn_positive_weights

        res = learn_positive_weights(x, w, seed=seed, **learn_options)
        new_x, new_w = x, res.weights
        info["learned_sum_ratio"] = float(np.sum(new_w) / total) if total else None
        info["learned_negative_fraction"] = res.negative_fraction
    if strategy != "signed":
        norm = float(np.sum(new_w))
        if len(new_w) == 0 or norm <= 0 or total <= 0:
            raise ValueError(
                f"weight strategy {strategy!r}: cannot keep the sum of weights "
                f"({total:.4g} before, {norm:.4g} after, {len(new_w)} events)"
            )
        new_w = new_w * (total / norm)
    info.update(
        events_before=len(w),
        events_after=len(new_w),
        negative_fraction_before=negative_fraction(w),
        negative_fraction_after=negative_fraction(new_w),
        ess_before=effective_sample_size(w),
        ess_after=effective_sample_size(new_w),
        sum_w=total,
    )
    return Events(new_x.astype(x.dtype), new_w), info


def apply_strategies(events: dict, strategies: dict, groups: dict, *, seed: int = 0):
    """Apply per-sample strategies to a split.

    Args:
        events: ``{event set: Events}`` (one split, e.g. the training split).
        strategies: ``{sample: strategy}``.
        groups: ``{sample: event sets}``: the sample and its systematic variations.
        seed: Seeds ``learned`` (each event set gets its own offset).

    Returns:
        ``(events, report)``: the new split and ``{event set: info}`` for every event set with
        negative weights, or whose strategy is ``ignore`` (the other strategies leave an event
        set without negative weights unchanged).
    """
    out, report = dict(events), {}
    for i, (sample, strategy) in enumerate(sorted(strategies.items())):
        for j, name in enumerate(groups.get(sample, (sample,))):
            if strategy != "ignore" and not np.any(np.asarray(events[name].w) < 0):
                continue
            out[name], report[name] = apply_strategy(
                events[name], strategy, seed=seed + 1000 * i + j
            )
    return out, report


def check_net_yields(
    histograms: dict, *, what: str = "histograms", samples=None, whole_regions=()
) -> list:
    """Warn about bins filled by events whose sum of weights is <= 0.

    Args:
        histograms: ``{(channel, event set): (sumw, sumw2)}`` (hard histograms).
        what: Which histograms these are, for the message (e.g. "test set").
        samples: The nominal samples, whose sum is a bin's total (default: every event set;
            give them when the histograms include systematic variations).
        whole_regions: Channels whose one "bin" is the whole region (a network's channel
            before training, see :func:`region_yields`).

    Returns:
        One ``{"channel", "sample", "bin", "sumw", "sumw2"}`` per offending bin (after the
        per-sample bins, a ``sample`` ``"(total)"`` row for a bin whose sum over all samples
        is <= 0: there the likelihood clips the expected yield at the Poisson floor).
    """
    bad = []
    totals: dict = {}
    for (channel, name), (sumw, sumw2) in histograms.items():
        sumw, sumw2 = np.atleast_1d(np.asarray(sumw)), np.atleast_1d(np.asarray(sumw2))
        if samples is None or name in samples:
            t = totals.setdefault(channel, [0.0, 0.0])
            t[0], t[1] = t[0] + sumw, t[1] + sumw2
        for k in np.flatnonzero((sumw <= 0) & (sumw2 > 0)):
            bad.append(
                {
                    "channel": channel,
                    "sample": name,
                    "bin": int(k),
                    "sumw": float(sumw[k]),
                    "sumw2": float(sumw2[k]),
                }
            )
    for channel, (sumw, sumw2) in totals.items():
        for k in np.flatnonzero((np.atleast_1d(sumw) <= 0) & (np.atleast_1d(sumw2) > 0)):
            bad.append(
                {
                    "channel": channel,
                    "sample": "(total)",
                    "bin": int(k),
                    "sumw": float(sumw[k]),
                    "sumw2": float(sumw2[k]),
                }
            )
    if bad:
        lines = [
            f"channel {b['channel']!r} sample {b['sample']!r}"
            + (" (whole region)" if b["channel"] in whole_regions else f" bin {b['bin']}")
            + f": sum w = {b['sumw']:.4g} (sqrt(sum w^2) = {np.sqrt(b['sumw2']):.3g})"
            for b in bad
        ]
        warnings.warn(
            f"{what}: {len(bad)} bin(s) with a net yield <= 0 (negative event weights):"
            + _listed(lines)
            + "\n  the likelihood clips expected yields at model.POISSON_FLOOR (1e-10) and "
            "uses a 100% staterror width where a bin's total is <= 0; fix: merge bins, use "
            "more events, or learned positive weights (diffhep reweight)",
            NetYieldWarning,
            stacklevel=2,
        )
    return bad


def bins_without_background(bin_yields: dict) -> list:
    """The bins with signal > 0 and a total nominal background <= ``POISSON_FLOOR``.

    Args:
        bin_yields: ``{channel: (signal, background)}``, per-bin sums of weights of the
            signal sample and of all nominal background samples (hard histograms).

    Returns:
        One ``{"channel", "bin", "signal", "background"}`` per such bin (empty: every
        metric of these histograms can be trusted).

    Example:
        >>> bins_without_background({"SR": ([1.0, 0.42], [5.0, -2.56])})
        [{'channel': 'SR', 'bin': 1, 'signal': 0.42, 'background': -2.56}]
    """
    from ..stats.poisson import POISSON_FLOOR

    out = []
    for channel, (sig, bkg) in bin_yields.items():
        sig, bkg = np.atleast_1d(np.asarray(sig)), np.atleast_1d(np.asarray(bkg))
        for k in np.flatnonzero((sig > 0) & (bkg <= POISSON_FLOOR)):
            out.append(
                {
                    "channel": channel,
                    "bin": int(k),
                    "signal": float(sig[k]),
                    "background": float(bkg[k]),
                }
            )
    return out


def _listed(lines: list[str], most: int = 10) -> str:
    """``lines`` as indented lines of a warning, the first ``most`` and how many more."""
    shown = lines[:most] + ([f"... and {len(lines) - most} more"] if len(lines) > most else [])
    return "".join(f"\n  {line}" for line in shown)


def warn_bins_without_background(bad: list, what: str, consequence: str = "") -> None:
    """Warn (:class:`NetYieldWarning`) about the bins of :func:`bins_without_background`
    (nothing if there are none), naming the histograms (``what``: the split) and each bin."""
    if not bad:
        return
    lines = [
        f"channel {b['channel']!r} bin {b['bin']}: signal {b['signal']:.4g}, total "
        f"background {b['background']:.4g}"
        for b in bad
    ]
    warnings.warn(
        f"{what}: {len(bad)} bin(s) with signal and a total background <= 0:"
        + _listed(lines)
        + "\n  the background-only expectation is clipped at model.POISSON_FLOOR (1e-10) "
        "there, so the expected CLs tends to 0 and Z0 to infinity whatever the signal: "
        "these metrics are not trusted"
        + (f" ({consequence})" if consequence else "")
        + "; fix: fewer or merged bins, more events, histogram.min_background, or learned "
        "positive weights (diffhep reweight)",
        NetYieldWarning,
        stacklevel=2,
    )


def region_yields(analysis, features, events: dict) -> dict:
    """Hard histograms that exist before training: per bin for channels binned in a feature
    (or ``count``), the whole region (one "bin") for channels of the network.

    Returns ``({(channel, event set): (sumw, sumw2)}, whole-region channels)`` (numpy) for
    :func:`check_net_yields`.
    """
    from ..analysis.histograms import hard_histogram

    out, whole = {}, []
    for ch in analysis.channels:
        if ch.observable in ("nn", "count"):
            whole.append(ch.name)
        for name in analysis.event_sets:
            x, w = np.asarray(events[name].x), np.asarray(events[name].w, dtype=np.float64)
            mask = np.ones(len(w), dtype=bool)
            for f, lo, hi in ch.region:
                v = x[:, list(features).index(f)]
                mask &= (v >= lo) & (v < hi)
            wm = np.where(mask, w, 0.0)
            if ch.observable in ("nn", "count"):
                out[(ch.name, name)] = (np.array([wm.sum()]), np.array([np.sum(wm * wm)]))
            else:
                v = x[:, list(features).index(ch.observable)].astype(np.float64)
                edges = np.asarray(ch.edges, dtype=np.float64)
                sumw, sumw2 = hard_histogram(v, edges, wm)
                out[(ch.name, name)] = (np.asarray(sumw), np.asarray(sumw2))
    return out, tuple(whole)
