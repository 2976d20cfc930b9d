"""The old import path of a run's life (``diffhep.runs.core``), kept working.

The code lives in :mod:`diffhep.runs.prepare` (config -> data -> parameters, restore a saved
run), :mod:`diffhep.runs.train` (the training loop of a run) and :mod:`diffhep.runs.evaluate`
(test metrics and artefacts, re-evaluate a saved run).
"""

from .evaluate import MODEL_FORMAT, evaluate_run, save_model
from .prepare import DEMO_CONFIG, load_events, prepare, restore_run
from .train import cut_values, phase_index, run_optimizer, train_run

__all__ = [
    "DEMO_CONFIG",
    "MODEL_FORMAT",
    "cut_values",
    "evaluate_run",
    "load_events",
    "phase_index",
    "prepare",
    "restore_run",
    "run_optimizer",
    "save_model",
    "train_run",
]
