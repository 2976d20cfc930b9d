"""The neos-blobs study's bookkeeping: a run read off the first epochs of a longer run of the
same config is the shorter run (the convergence study's table at 15 epochs and the
objectives study's baselines rely on it). Reference: the shorter run trained on its own."""

from __future__ import annotations

import pytest

from diffhep.runs.config import load_config
from diffhep.runs.results import read_history
from diffhep.runs.train import train_run
from diffhep.studies import neos_blobs as nb
from diffhep.studies.common import shipped_config

TINY = [  # the study's config, shrunk: a small network, few events
    "observable.hidden=[16, 16]",
    "data.n_per_blob=400",
    "training.batch_size=60",
    "training.loss=sigma_mu",
    "seed=3",
]


def _cfg(*more):
    return load_config(shipped_config("neos_blobs"), [*TINY, *more])


@pytest.mark.slow
def test_the_first_epochs_of_a_longer_run_are_the_shorter_run(tmp_path):
    short_cfg = _cfg("training.epochs=2")
    short = train_run(short_cfg, tmp_path / "short", progress=False, track_test=True, plots=False)
    long_cfg = _cfg("training.epochs=5", "training.patience=4")
    train_run(long_cfg, tmp_path / "long", progress=False, track_test=True, plots=False)

    history, summary = nb._from_longer(tmp_path / "long", short_cfg)
    assert len(history) == 2
    for key in ("expected_cls", "sigma_mu", "sigma_bkg_shape", "best_epoch"):
        assert summary[key] == pytest.approx(short[key], rel=1e-12), key
    short_history = read_history(tmp_path / "short")
    assert [h["val_expected_cls"] for h in history] == [
        h["val_expected_cls"] for h in short_history
    ]
    # not the same config: another seed, another bandwidth setting
    assert nb._from_longer(tmp_path / "long", _cfg("training.epochs=2", "seed=4")) is None
    annealed = _cfg("training.epochs=2", "histogram.bandwidth_final=0.1")
    assert nb._from_longer(tmp_path / "long", annealed) is None
    # a shorter run cannot stand for a longer one
    assert nb._from_longer(tmp_path / "short", _cfg("training.epochs=5")) is None
