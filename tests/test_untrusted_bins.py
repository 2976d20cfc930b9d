"""Metrics of histograms with a bin holding signal and a total background <= 0 (zero, or
net-negative from negative event weights) are artefacts: the background-only expectation
is clipped at ``POISSON_FLOOR``, so the expected CLs tends to 0 whatever the signal (a new
user's trial: val_expected_cls 0.0058 at an epoch whose validation bin 3 held signal 0.42
and ttbar -2.56, kept as the best epoch; the test CLs of that model was 0.88). Such metrics
are flagged (``bins_without_background``, ``trusted``), warned about once per split
(``NetYieldWarning``), never select an epoch while a trusted one exists, fail a search trial,
and the run's summary says when the best epoch or the test result rests on them."""

from __future__ import annotations

import json
import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffhep.analysis.histograms import Binning
from diffhep.analysis.pipeline import Params, Pipeline
from diffhep.analysis.spec import Analysis, Channel, NormSystematic
from diffhep.nn.training import train
from diffhep.types import Events
from diffhep.weights.weighting import NetYieldWarning


def _quadratic(params, batch, hyper):
    return jnp.sum((params - batch) ** 2), {}


def _select(values, trusted, maximize=False):
    records = iter(zip(values, trusted, strict=True))

    def validate(p):
        v, t = next(records)
        return {"val_m": v, "val_trusted": t}

    return train(jnp.zeros(1), _quadratic, optax.sgd(0.0), epochs=len(values),
                 batches=lambda e: [jnp.zeros(1)], validate=validate, select_on="val_m",
                 maximize=maximize, trusted="val_trusted", progress=False)  # fmt: skip


def test_an_untrusted_epoch_is_not_selected_while_a_trusted_one_exists():
    # epochs 2 and 4 have the best values but untrusted validation metrics
    state = _select([3.0, 0.01, 2.0, 0.001, 2.5], [True, False, True, False, True])
    assert state.best_epoch == 3
    # untrusted only while no trusted epoch exists: then the first trusted one wins
    state = _select([0.5, 0.1, 0.9, 0.7], [False, False, True, True])
    assert state.best_epoch == 4
    assert _select([0.5, 0.1], [False, False]).best_epoch == 2  # none trusted: the value
    state = _select([1.0, 9.0, 2.0], [True, False, True], maximize=True)  # z0
    assert state.best_epoch == 3


def _pipe_and_events(b_last):
    """One channel in x with bins [0, 1), [1, 2), [2, 3): signal in every bin, background
    100 per bin in the first two and ``b_last`` (one event's weight) in the last."""
    analysis = Analysis(
        ("sig", "bkg"),
        "sig",
        (Channel("SR", 3, observable="x", edges=(0.0, 1.0, 2.0, 3.0)),),
        norm_systematics=(NormSystematic("bkg_norm", ("bkg",), 0.95, 1.05),),
    )
    pipe = Pipeline(analysis, ("x",))
    events = {
        "sig": Events(jnp.array([[0.5], [1.5], [2.5]]), jnp.array([1.0, 1.0, 0.42])),
        "bkg": Events(jnp.array([[0.5], [1.5], [2.5]]), jnp.array([100.0, 100.0, b_last])),
    }
    params = Params(None, (Binning.from_edges([0.0, 1.0, 2.0, 3.0], trainable=False),))
    return pipe, params, events


@pytest.mark.parametrize("b_last", [-2.56, 0.0])
def test_metrics_flag_a_bin_with_signal_and_no_background(b_last):
    from diffhep.runs.evaluate import _metrics_fn

    pipe, params, events = _pipe_and_events(b_last)
    m = _metrics_fn(pipe)(params, events)
    assert m["trusted"] is False
    [bad] = m["bins_without_background"]
    assert (bad["channel"], bad["bin"], bad["background"]) == ("SR", 2, b_last)
    assert bad["signal"] == pytest.approx(0.42)
    pipe, params, events = _pipe_and_events(5.0)
    good = _metrics_fn(pipe)(params, events)
    assert good["trusted"] is True and good["bins_without_background"] == []
    # the artefact: 0.42 signal events over no background give the better "sensitivity"
    assert m["expected_cls"] < 0.5 * good["expected_cls"]


CONFIG = """
seed: 0
data: {files: FILES, features: [x1, x2], split: {train: 0.5, validation: 0.25, test: 0.25}}
analysis:
  samples:
    - {name: signal, role: signal}
    - {name: background, role: background}
  norm_systematics: [{name: bkg_norm, samples: [background], lo: 0.95, hi: 1.05}]
  channels: [{name: SR, bins: 3, observable: x2, edges: [-12, 0, EDGE, 12]}]
selection:
  cuts: [{feature: x1, direction: ">", init: -3.0}]
training:
  epochs: 2
  batch_size: 200
  optimizer: {name: adam, learning_rate: 1.0e-2}
  loss: {cls: 1.0}
report: {diagnostics: false}
"""


def _config(tmp_path, edge=2.0):
    """x2 of the background uniform in [0, 2), of the signal in [0, 3): with the edge at 2
    the last bin holds signal and no background in every split."""
    rng = np.random.default_rng(0)
    files = {}
    for name, top, w in (("signal", 3.0, 0.125), ("background", 2.0, 2.5)):
        x = np.column_stack([rng.normal(size=400), rng.uniform(0.0, top, 400)])
        files[name] = str(tmp_path / f"{name}.npz")
        np.savez(files[name], x=x, w=np.full(400, w))
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG.replace("FILES", json.dumps(files)).replace("EDGE", str(edge)))
    return path


def test_a_run_warns_once_and_its_summary_says_what_is_not_trusted(tmp_path):
    from diffhep.runs.config import load_config
    from diffhep.runs.train import train_run

    path = _config(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        summary = train_run(load_config(path), tmp_path / "run", progress=False, plots=False)
    texts = [str(w.message) for w in rec if issubclass(w.category, NetYieldWarning)]
    val = [t for t in texts if t.startswith("validation-split")]
    test = [t for t in texts if t.startswith("test-set")]
    assert len(val) == 1 and len(test) == 1, texts  # once per split, though every epoch is bad
    assert "channel 'SR' bin 2" in val[0] and "not trusted" in val[0]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["val_trusted"] for r in records] == [False, False]
    assert records[0]["val_bins_without_background"][0]["bin"] == 2
    assert summary["trusted"] is False and summary["best_epoch_trusted"] is False
    notes = " ".join(summary["untrusted"])
    assert "best epoch" in notes and "test metrics" in notes
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["untrusted"]


def test_a_search_does_not_rank_an_untrusted_trial(tmp_path):
    from diffhep.search.objective import Objective, TrialFailed
    from diffhep.search.space import load_search_config

    path = _config(tmp_path)
    text = path.read_text().split("selection:")[0]
    text += "search:\n  train: false\n  params: [{name: analysis.channels.0.edges.2, " \
            "low: 0.5, high: 2.5}]\n"  # fmt: skip
    path.write_text(text)
    objective = Objective(path, [], load_search_config(path), tmp_path)
    with pytest.raises(TrialFailed, match="SR bin 2"):
        objective({"analysis.channels.0.edges.2": 2.0})
    res = objective({"analysis.channels.0.edges.2": 1.5})
    assert np.isfinite(res["value"]) and res["test_trusted"] is True
