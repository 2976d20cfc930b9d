"""Figure helpers and experiment styles shared by the plots of :mod:`diffhep.plotting`.

Figures are built on :class:`matplotlib.figure.Figure` directly (:func:`new_figure`: no
``pyplot`` state, no backend switching: ``savefig`` renders with Agg), written by
:func:`save_figure` (parent directories are created, the format follows the suffix) and
cleared afterwards, so repeated calls do not leak. matplotlib is imported lazily.

A plot function decorated with :func:`styled` takes ``style=``: ``"plain"`` (default) or an
experiment's style (``"ATLAS"``, ``"CMS"``, ``"LHCb"``) from mplhep, applied as a context for
that one figure (matplotlib's global ``rcParams`` are left as they were);
:func:`experiment_label` adds the experiment's label.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from pathlib import Path

__all__ = [
    "STYLES",
    "experiment_label",
    "experiment_style",
    "new_figure",
    "plain",
    "save_figure",
    "styled",
]

#: Plot styles: plain matplotlib, or an experiment's mplhep style (name of the mplhep style).
STYLES = {"plain": None, "ATLAS": "ATLAS", "CMS": "CMS", "LHCb": "LHCb2"}
_STYLE = contextvars.ContextVar("diffhep_plot_style", default="plain")


@contextlib.contextmanager
def experiment_style(style: str | None):
    """Context in which figures take ``style`` (:data:`STYLES`); restores ``rcParams``."""
    style = style or "plain"
    if style not in STYLES:
        raise ValueError(f"unknown plot style {style!r}; use one of {', '.join(STYLES)}")
    token = _STYLE.set(style)
    try:
        if STYLES[style] is None:
            yield
        else:
            import matplotlib.style
            import mplhep

            with matplotlib.style.context(getattr(mplhep.style, STYLES[style])):
                yield
    finally:
        _STYLE.reset(token)


def plain() -> bool:
    """Whether the figure being drawn has the plain style (no experiment's)."""
    return STYLES[_STYLE.get()] is None


def styled(fn):
    """Run ``fn`` inside :func:`experiment_style` of its ``style`` keyword."""

    @functools.wraps(fn)
    def wrapper(*args, style=None, **kwargs):
        with experiment_style(style):
            return fn(*args, **kwargs)

    return wrapper


def experiment_label(ax) -> None:
    """The experiment's label ("ATLAS Simulation Internal", ...) in the current style."""
    style = _STYLE.get()
    if STYLES[style] is None:
        return
    import mplhep

    module = {"ATLAS": mplhep.atlas, "CMS": mplhep.cms, "LHCb": mplhep.lhcb}[style]
    module.label(ax=ax, data=False, text="Internal", com=None, rlabel="", loc=0)


#: Width (inches) an experiment's style is made for (mplhep's: 10 x 10): its fonts crowd a
#: smaller figure (a new user's CMS plots: the y label cut, the label over the axes)
STYLED_WIDTH = 10.0


def new_figure(figsize):
    """A matplotlib ``Figure`` (constrained layout) not tied to pyplot's global state; in an
    experiment's style at least :data:`STYLED_WIDTH` wide (the same aspect)."""
    from matplotlib.figure import Figure  # lazy: plotting is an optional extra

    if not plain():
        scale = max(1.0, STYLED_WIDTH / figsize[0])
        figsize = (figsize[0] * scale, figsize[1] * scale)
    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path) -> None:
    """Write ``fig`` to ``path`` (creating parent directories) and release its artists."""
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        fig.clear()
