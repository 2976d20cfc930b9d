"""The exact objective of one trial: a config's validation and test metrics.

- ``search.train: true``: the trial's config is trained (:func:`diffhep.runs.train.train_run`,
  into ``OUT/trials/<key>``, resumable); the objective is the validation metric of the
  selected epoch (``metrics.jsonl``), the test metric is the run's ``summary.json``.
- ``search.train: false``: the config's cuts and inner edges are evaluated as given, hard
  cuts and exact fits on the validation and test splits
  (:class:`~diffhep.runs.exact.ExactEvaluator`).

The validation split chooses, the test split reports (an independent sample).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import FitError
from ..nn.training import TrainingError
from ..runs.config import Config, ConfigError, SearchConfig, load_config
from ..runs.results import read_history
from .space import trial_overrides

__all__ = ["DIRECTIONS", "Objective", "TrialFailed", "exact_evaluator", "objective_name"]

#: Whether each metric is minimised or maximised.
DIRECTIONS = {"expected_cls": "minimize", "sigma_mu": "minimize", "z0": "maximize"}


class TrialFailed(FitError):
    """A trial whose config is invalid, whose training failed, whose fits did not converge or
    whose validation metrics rest on a bin with signal and no background (``trusted``
    false: at every epoch of a trained trial); a search where no trial succeeds exits 1."""


def objective_name(cfg: Config) -> str:
    """``search.objective``, else ``training.select_on`` (``expected_cls`` for ``loss``)."""
    if cfg.search.objective is not None:
        return cfg.search.objective
    s = cfg.training.select_on
    return "expected_cls" if s == "loss" else s


def trial_key(values: dict) -> str:
    """A short stable name of a point (its run directory): same values, same directory."""
    text = json.dumps(values, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_EVALUATORS: dict = {}  # a few prepared and compiled evaluators, reused within a process


def exact_evaluator(cfg: Config, file: str):
    """The :class:`~diffhep.runs.exact.ExactEvaluator` of ``cfg`` (prepared and compiled once
    per config within a process)."""
    from ..runs.exact import ExactEvaluator

    key = (file, cfg.model_copy(update={"search": SearchConfig()}).to_yaml())
    if key not in _EVALUATORS:
        while len(_EVALUATORS) >= 4:
            _EVALUATORS.pop(next(iter(_EVALUATORS)))
        _EVALUATORS[key] = ExactEvaluator(cfg, file)
    return _EVALUATORS[key]


class Objective:
    """``values -> {"value", "test", "converged", "run"}`` of the config at ``values``.

    Args:
        path: The config file.
        overrides: Its ``--set`` overrides.
        cfg: The loaded config (its ``search`` section says what to do).
        out: The search's output directory (trial runs go to ``out/trials``).
    """

    def __init__(self, path, overrides, cfg: Config, out: Path):
        self.path, self.overrides, self.out = path, list(overrides), Path(out)
        self.name = objective_name(cfg)
        self.train = cfg.search.train
        self._exact = None if self.train else exact_evaluator(cfg, str(path))

    def config(self, values: dict) -> Config:
        """The config at ``values`` (without its search section)."""
        try:
            cfg = load_config(self.path, [*self.overrides, *trial_overrides(values)])
        except ConfigError as exc:
            raise TrialFailed(f"invalid config: {exc.message}", where=exc.where) from None
        return cfg.model_copy(update={"search": SearchConfig()})

    def __call__(self, values: dict) -> dict:
        cfg = self.config(values)
        if self._exact is not None:
            m = self._exact.evaluate(cfg)
            val, test, run = m["validation"], m["test"], None
        else:
            val, test, run = self._train(cfg, values)
        if not val["fits_converged"]:
            raise TrialFailed("the validation fits did not converge")
        if val.get("trusted") is False:  # not ranked: its value is an artefact
            bad = val.get("bins_without_background") or []
            where = ", ".join(f"{b['channel']} bin {b['bin']}" for b in bad)
            raise TrialFailed(
                "the validation histograms have bins with signal and a total background <= 0 "
                f"({where}; at every epoch if trained): its {self.name} is not trusted"
            )
        return {
            "value": float(val[self.name]),
            "test": float(test[self.name]),
            "test_converged": bool(test["fits_converged"]),
            "test_trusted": test.get("trusted"),
            "run": run,
        }

    def _train(self, cfg: Config, values: dict):
        from ..runs.train import train_run

        run = self.out / "trials" / trial_key(values)
        try:
            summary = train_run(cfg, run, progress=False, plots=False)
        except (TrainingError, ConfigError) as exc:
            raise TrialFailed(f"training failed: {exc.message}") from None
        records = read_history(run)
        best = next(r for r in records if r["epoch"] == summary["best_epoch"])
        val = {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")}
        return val, summary, str(run)
