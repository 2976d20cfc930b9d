"""The exact metrics of a config's cuts and bin edges as given, without training.

:class:`ExactEvaluator` prepares a base config once (data, splits, pipeline, compiled
metrics) and evaluates configs that differ from it only in cut thresholds
(``selection.cuts.<i>.init``) and inner bin edges (``analysis.channels.<i>.edges.<k>``,
``0 < k < bins``): those values are leaves of the parameters, so every evaluation reuses
the compiled function (hard cuts, hard histograms, exact fits: the metrics of
:func:`diffhep.runs.evaluate.finish`). The black-box objective of ``diffhep optimize`` with
``search.train: false``.
"""

from __future__ import annotations

import re

import equinox as eqx
import numpy as np

from ..analysis.cuts import Selection
from ..analysis.histograms import Binning
from .config import Config, ConfigError
from .evaluate import _as_jax, _metrics_fn
from .prepare import prepare

__all__ = ["LEAF_PATHS", "ExactEvaluator", "is_leaf_path"]

#: Config paths whose values are parameter leaves (searchable without training).
LEAF_PATHS = (r"selection\.cuts\.\d+\.init(\.[01])?", r"analysis\.channels\.(\d+)\.edges\.(\d+)")


def is_leaf_path(path: str, cfg: Config) -> bool:
    """Whether ``path`` is a cut threshold or an inner bin edge of ``cfg``."""
    if re.fullmatch(LEAF_PATHS[0], path):
        return True
    m = re.fullmatch(LEAF_PATHS[1], path)
    if m is None:
        return False
    channel, k = int(m.group(1)), int(m.group(2))
    channels = cfg.analysis.channels
    return channel < len(channels) and 0 < k < channels[channel].bins


class ExactEvaluator:
    """Exact validation and test metrics of configs differing from ``base`` in leaf values.

    Args:
        base: The config prepared once (its data, splits and structure are shared).
        file: The config's file, for error messages.
    """

    def __init__(self, base: Config, file: str | None = None):
        self.base, self.file = base, file
        self.pipe, parts, self.params = prepare(base, file)
        self.splits = {k: _as_jax(parts[k]) for k in ("validation", "test")}
        names = self.pipe.analysis.samples
        self._x = np.concatenate([np.asarray(parts["train"][n].x) for n in names])
        self._metrics = _metrics_fn(self.pipe)

    def parameters(self, cfg: Config):
        """The base parameters with the cut thresholds and bin edges of ``cfg``."""
        if self._structure(cfg) != self._structure(self.base):
            raise ConfigError(
                "the config differs from the base in more than cut thresholds and inner bin edges",
                file=self.file,
                where="search.params",
                fix="set search.train: true to train every trial",
            )
        params = self.params
        if params.selection is not None:
            selection = Selection.create(cfg.selection.specs(), self.pipe.features, self._x)
            params = eqx.tree_at(lambda p: p.selection, params, selection)
        binnings = tuple(
            Binning.from_edges(c.edges, trainable=b.trainable) if c.edges else b
            for c, b in zip(cfg.analysis.channels, params.binnings, strict=True)
        )
        return eqx.tree_at(lambda p: p.binnings, params, binnings)

    @staticmethod
    def _structure(cfg: Config) -> dict:
        """``cfg`` without cut inits, inner edges and the search section."""
        doc = cfg.model_dump(mode="json", by_alias=True)
        doc.pop("search")
        for c in doc["selection"]["cuts"]:
            c["init"] = None
        for c in doc["analysis"]["channels"]:
            if c["edges"]:
                c["edges"] = [c["edges"][0], c["edges"][-1]]
        return doc

    def evaluate(self, cfg: Config) -> dict:
        """``{"validation": metrics, "test": metrics}`` of ``cfg`` (hard cuts, exact fits)."""
        params = self.parameters(cfg)
        return {k: self._metrics(params, ev) for k, ev in self.splits.items()}
