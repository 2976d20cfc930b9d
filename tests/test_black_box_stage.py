"""A black-box stage inside a training run (config ``black_box``; diffhep.runs.black_box).

The stage is ``diffhep.problems.black_box.focus``: both features of the 2-D cut toy smeared by
``|psi - 0.4|`` and digitised (NumPy; no derivative). References: the gradients of the same
loss on the black box's events as plain data (the rest of the chain), central finite
differences of the black box with common random numbers (psi), the function's own output (the
command on files), and the known best focus 0.4 (the training).
"""

from __future__ import annotations

import itertools
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhep.problems import black_box as bb
from diffhep.runs.config import ConfigError, load_config
from diffhep.surrogate.stage import BlackBox, BlackBoxError
from diffhep.types import Events

CONFIG = """
seed: 0
data: {generator: cuts_2d, n_per_blob: 2000}
analysis:
  samples:
    - {name: signal, role: signal, yield: 50}
    - {name: background, role: background, yield: 1000}
  shape_systematics: []
  channels: [{name: SR, bins: 1, observable: count}]
selection:
  cuts: [{feature: x1, direction: ">", init: 0.5}, {feature: x2, direction: ">", init: 0.5}]
  slope: 2.0
training: {loss: z0, epochs: 8, batch_size: 300, select_on: z0}
black_box:
  function: diffhep.problems.black_box:focus
  inputs: [x1, x2]
  outputs: [x1, x2]
  params: [{name: focus, init: 1.2, low: 0.0, high: 2.0, epsilon: 0.25}]
  learning_rate: 0.03
"""


def _config(*overrides):
    return load_config(text=CONFIG, overrides=list(overrides))


@pytest.fixture(scope="module")
def staged():
    """The prepared run, its stage after one L-GSO iteration, and the epoch's events."""
    from diffhep.runs.black_box import StageRun
    from diffhep.runs.prepare import prepare

    cfg = _config("black_box.cost=diffhep.problems.black_box:cost")
    pipe, parts, params = prepare(cfg)
    stage = StageRun(cfg, pipe.features, parts)
    events = stage.epoch_events(parts["train"], 1)
    return cfg, pipe, parts, params, stage, events


def _analysis_loss(pipe):
    from diffhep.runs.train import _loss_fn

    return _loss_fn(pipe, {"s_sqrt_sb": 1.0})


def test_rest_of_the_chain_keeps_its_exact_gradients(staged):
    """At psi0 the staged loss equals the analysis loss on the black box's events as plain
    data, and so do the gradients of the cuts; psi gets a finite gradient, plus the cost's."""
    _, pipe, parts, params, stage, events = staged
    loss = stage.loss(_analysis_loss(pipe))
    hyper = {"bandwidth": jnp.asarray(0.3), "slope": jnp.asarray(2.0)}
    batch = stage.batch({n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in events.items()})
    p = stage.create(params)
    (value, aux), g = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))(p, batch, hyper)
    nf = len(pipe.features)
    plain = {n: Events(jnp.asarray(np.asarray(e.x)[:, :nf]), jnp.asarray(e.w))
             for n, e in events.items()}  # fmt: skip
    # the outputs in the plain events are the black box's: not the inputs, and digitised
    x_in = np.asarray(parts["train"]["signal"].x)
    assert not np.allclose(np.asarray(plain["signal"].x), x_in)
    assert np.allclose(np.asarray(plain["signal"].x) / bb.DIGIT,
                       np.round(np.asarray(plain["signal"].x) / bb.DIGIT), atol=1e-3)  # fmt: skip
    (ref, _), g_ref = eqx.filter_jit(eqx.filter_value_and_grad(_analysis_loss(pipe), has_aux=True))(
        params, plain, hyper
    )
    cost = float(bb.cost(np.array([1.2])))
    assert float(value) == pytest.approx(float(ref) + cost, rel=1e-6)
    assert float(aux["black_box_cost"]) == pytest.approx(cost)
    got = [np.asarray(c.thresholds) for c in g.analysis.selection.cuts]
    want = [np.asarray(c.thresholds) for c in g_ref.selection.cuts]
    assert np.all(np.abs(np.concatenate(want)) > 0)
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=1e-5)
    assert np.isfinite(float(g.psi[0])) and float(g.psi[0]) != 0.0


def _fd_loss(stage, pipe, parts, params, psi, h=0.1):
    """Central finite difference in psi of the z0 loss on the black box's training events
    (the same random numbers at psi - h and psi + h), hard input to the relaxed cuts."""
    loss = _analysis_loss(pipe)
    hyper = {"bandwidth": jnp.asarray(0.3), "slope": jnp.asarray(2.0)}
    values = []
    loss = eqx.filter_jit(loss)
    for p in (psi - h, psi + h):
        ev = stage.simulate(parts["train"], [p], seed=5)
        ev = {n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in ev.items()}
        values.append(float(loss(params, ev, hyper)[0]))
    return (values[1] - values[0]) / (2 * h)


def test_psi_gradient_agrees_with_finite_differences(staged):
    """The surrogate's gradient of the analysis loss in psi (without the cost) agrees in sign
    and within 40% with central finite differences of the black box (common random numbers)."""
    _, pipe, parts, params, stage, events = staged
    fd = _fd_loss(stage, pipe, parts, params, 1.2)
    loss = stage.loss(_analysis_loss(pipe))
    hyper = {"bandwidth": jnp.asarray(0.3), "slope": jnp.asarray(2.0)}
    batch = stage.batch({n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in events.items()})
    g = eqx.filter_jit(eqx.filter_grad(lambda p: loss(p, batch, hyper)[0]))(stage.create(params))
    grad = float(g.psi[0]) - float(jax.grad(lambda q: bb.cost(q))(jnp.array([1.2]))[0])
    assert fd > 0  # a sharper detector (psi towards 0.4) is better: the loss grows with psi
    assert np.sign(grad) == np.sign(fd)
    assert grad == pytest.approx(fd, rel=0.4)


@pytest.mark.slow
def test_training_moves_psi_towards_the_best_focus(tmp_path):
    """8 epochs from psi = 1.2: the cuts train with exact gradients, psi with L-GSO's, and
    psi ends near the known best focus 0.4 (observed 0.34 when written, ~53 s under load)."""
    from diffhep.runs.results import read_history
    from diffhep.runs.train import train_run

    summary = train_run(_config(), tmp_path / "run", progress=False, plots=False)
    history = read_history(tmp_path / "run")
    psi = [r["psi_focus"] for r in history]
    assert abs(psi[-1] - bb.FOCUS) < 0.15, psi
    assert all(a > b for a, b in itertools.pairwise(psi[:5])), psi  # it walks down
    cuts = [r["cut0_x1"] for r in history]
    assert cuts[-1] != cuts[0]  # the cuts trained in the same run
    assert summary["black_box"]["psi"]["focus"] == pytest.approx(psi[summary["best_epoch"] - 1])
    # diffhep evaluate runs the black box at the saved psi: the same test events and metrics
    from diffhep.runs.evaluate import evaluate_run

    again = evaluate_run(tmp_path / "run", plots=False)
    assert again["z0"] == pytest.approx(summary["z0"], rel=1e-9)
    assert again["black_box"]["psi"] == summary["black_box"]["psi"]
    # the surrogate's own validation where it was used: pulls of held-out samples ~ N(0, 1)
    assert all(abs(r["bb_val_pull_mean"]) < 0.3 for r in history)
    assert all(0.6 < r["bb_val_pull_std"] < 1.6 for r in history)


SCRIPT = """
import sys
import numpy as np
from diffhep.problems.black_box import focus
with np.load(sys.argv[1]) as f:
    x, psi, seed = f["x"], f["psi"], int(f["seed"])
np.savez(sys.argv[2], y=focus(x, psi, np.random.default_rng(seed)))
"""


def test_command_on_files_equals_the_function(tmp_path):
    script = tmp_path / "focus.py"
    script.write_text(textwrap.dedent(SCRIPT))
    x = np.random.default_rng(0).normal(size=(50, 2))
    psi = np.linspace(0.0, 2.0, 50)[:, None]
    command = BlackBox(command=[sys.executable, str(script), "{input}", "{output}"])
    function = BlackBox(function="diffhep.problems.black_box:focus")
    np.testing.assert_array_equal(command(x, psi, seed=3), function(x, psi, seed=3))
    assert command.calls == 50
    failing = BlackBox(command=[sys.executable, "-c", "raise SystemExit('boom')", "{input}",
                                "{output}"])  # fmt: skip
    with pytest.raises(BlackBoxError, match="boom"):
        failing(x, psi, seed=0)
    one = BlackBox(function="diffhep.problems.black_box:focus", outputs=1)
    with pytest.raises(BlackBoxError, match="2 output column"):
        one(x, psi, seed=0)  # focus returns both columns, the config wants one


def test_config_errors():
    with pytest.raises(ConfigError, match="either 'function' or 'command'"):
        _config("black_box.command=[run, '{input}', '{output}']")
    with pytest.raises(ConfigError, match="outside"):
        _config("black_box.params.0.init=3.0")
    from diffhep.runs.black_box import StageRun

    cfg = _config("black_box.inputs=[x3]")
    with pytest.raises(ConfigError, match="not a feature"):
        StageRun(cfg, ("x1", "x2"), {"train": {"signal": None}})


def test_resume_starts_from_the_checkpoint_psi(staged, tmp_path):
    """A resumed run's stage starts from the psi of the checkpoint's last epoch."""
    import json

    from diffhep.runs.black_box import StageRun

    cfg, pipe, parts, *_ = staged
    meta = {"epoch": 3, "step": 18, "best_epoch": 2, "best_value": 2.9, "step_seconds": [],
            "history": [{"psi_focus": 0.9}, {"psi_focus": 0.7}], "status": "running"}  # fmt: skip
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    stage = StageRun(cfg, pipe.features, parts)
    stage.resume_from(tmp_path, resume=False)
    assert stage.psi.tolist() == [1.2]
    stage.resume_from(tmp_path, resume=True)
    assert stage.psi.tolist() == [0.7]
    assert float(stage.create(None).psi[0]) == pytest.approx(0.7)
