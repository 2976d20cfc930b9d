"""The training loop (generic) and training runs: compile once, NaN guard, checkpoint and
resume after kill -9, determinism, configs and bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

import oracle
from diffhep.io.datasets import DataError
from diffhep.nn.training import TrainingError, TrainState, load_checkpoint, train
from diffhep.runs.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CLS_EXAMPLE = ROOT / "examples" / "blobs_cls.yaml"

# A small but complete blob run: 2,000 events per blob, a 16-16 MLP, 12 epochs, CLs loss.
SMALL = [
    "data.n_per_blob=2000",
    "observable.hidden=[16,16]",
    "training.batch_size=400",
    "training.epochs=12",
]


def quadratic(params, batch, hyper):
    return jnp.sum((params - batch) ** 2) * hyper.get("scale", 1.0), {"norm": jnp.sum(params**2)}


# ---------------------------------------------------------------- generic loop
def test_step_compiles_once_over_epochs_and_annealed_hyperparameters():
    traced = eqx.debug.assert_max_traces(quadratic, max_traces=1)
    state = train(
        jnp.zeros(3),
        traced,
        optax.adam(0.1),
        epochs=4,
        batches=lambda e: [jnp.ones(3) * k for k in range(3)],
        hyper=lambda e: {"scale": 1.0 / e},  # changes every epoch: must not retrace
        progress=False,
    )
    assert state.step == 12 and state.epoch == 4 and state.status == "finished"


def test_nan_guard_stops_with_last_good_state(tmp_path):
    def loss(params, batch, hyper):
        # finite for the first batches, NaN from batch value 3 on
        val = jnp.sum((params - batch) ** 2)
        return jnp.where(batch[0] >= 3, jnp.nan, val), {}

    seen = []

    def batches(epoch):
        seen.append(epoch)
        return [jnp.full(2, float(k)) for k in range(5)]

    def run():
        return train(
            jnp.zeros(2),
            loss,
            optax.sgd(0.1),
            epochs=3,
            batches=batches,
            run_dir=tmp_path,
            progress=False,
        )

    with pytest.raises(TrainingError, match="non-finite loss") as err:
        run()
    assert "last good state" in str(err.value)
    # reference: the same three good steps by hand
    p = jnp.zeros(2)
    for k in range(3):
        p = p - 0.1 * 2 * (p - k)
    like = TrainState(jnp.zeros(2), optax.sgd(0.1).init(jnp.zeros(2)), jnp.zeros(2))
    saved = load_checkpoint(tmp_path, like)
    assert saved.status == "nan" and saved.step == 3
    np.testing.assert_allclose(saved.params, p, rtol=1e-12)
    # a stopped run is not resumed silently
    with pytest.raises(TrainingError, match="non-finite"):
        run()


@pytest.mark.parametrize("cut", ["before the state", "before the rename"])
def test_a_checkpoint_cut_short_resumes_one_whole_state(tmp_path, monkeypatch, cut):
    """A process killed while writing epoch 2's checkpoint leaves epoch 1's or epoch 2's
    whole state, never epoch 2's parameters with epoch 1's record (the parameters were
    renamed into place before the record: a resumed run trained epoch 2 twice, and
    test_resume_after_kill_gives_the_same_result failed on a loaded machine). The kill is a
    write that fails: of checkpoint.json (epoch 1 stays), or the rename after it (epoch 2's
    record names the parameters still under their pending name, which the resume takes)."""
    from diffhep.nn import training

    opt = optax.sgd(0.1)

    def state(value, epoch):
        p = jnp.full(2, value)
        return TrainState(p, opt.init(p), p, epoch=epoch, step=epoch)

    training.save_checkpoint(tmp_path, state(1.0, 1))
    if cut == "before the state":
        real = training.write_atomic

        def write(path, content):
            if path.name == training.STATE:
                raise KeyboardInterrupt  # killed here
            return real(path, content)

        monkeypatch.setattr(training, "write_atomic", write)
        expected = (1.0, 1)
    else:
        real_replace = Path.replace

        def replace(self, target):
            if self.name == training.PENDING:
                raise KeyboardInterrupt
            return real_replace(self, target)

        monkeypatch.setattr(Path, "replace", replace)
        expected = (2.0, 2)
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(tmp_path, state(2.0, 2))
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path, state(0.0, 0))
    assert (float(loaded.params[0]), loaded.epoch) == expected
    np.testing.assert_array_equal(loaded.best_params, loaded.params)


def test_best_epoch_selection_and_early_stopping():
    # validation metric decreases for 2 epochs then rises: best = 2, stop after patience 2
    values = iter([3.0, 1.0, 2.0, 4.0, 5.0, 6.0])
    state = train(
        jnp.zeros(1),
        quadratic,
        optax.sgd(0.0),
        epochs=6,
        batches=lambda e: [jnp.zeros(1)],
        validate=lambda p: {"val_m": next(values)},
        select_on="val_m",
        patience=2,
        progress=False,
    )
    assert state.best_epoch == 2 and state.epoch == 4 and state.status == "early-stopped"
    assert [h["val_m"] for h in state.history] == [3.0, 1.0, 2.0, 4.0]


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    cfg = load_config(path)
    assert cfg.analysis.channels


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "analysis: {channels: [{name: SR, bins: 4, bogus: 1}]}",
            "analysis.channels.0.bogus",
            "unknown key",
        ),
        (
            "analysis: {channels: [{name: SR, bins: four}]}",
            "analysis.channels.0.bins",
            "valid integer",
        ),
        ("analysis: {channels: []}", "analysis.channels", "at least 1"),
        (
            "analysis: {channels: [{name: SR, bins: 4}]}\ntraining: {loss: mse}",
            "training.loss",
            "unknown loss term 'mse'",
        ),
        (
            "data: {generator: blobs}\nanalysis: {channels: [{name: SR, bins: 4}], "
            "samples: [{name: s, role: signal}, {name: b, role: background}], "
            "shape_systematics: [{name: s, sample: nope, up: a, down: b}]}",
            "analysis",
            "unknown sample 'nope'",
        ),
        ("training: {epochs: 3}", "analysis", "required field is missing"),
    ],
)
def test_bad_config_errors_name_the_field(tmp_path, text, where, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and where in text and message in text


def test_overrides_are_typed_and_checked():
    cfg = load_config(EXAMPLES[0], ["training.epochs=3", "observable.hidden=[8, 8]"])
    assert cfg.training.epochs == 3 and cfg.observable.hidden == [8, 8]
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        load_config(EXAMPLES[0], ["training.epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(EXAMPLES[0], ["training.epochs"])


# ---------------------------------------------------------------- bad data
def _npz_config(tmp_path, arrays: dict, extra=()):
    files = {}
    for name, (x, w) in arrays.items():
        p = tmp_path / f"{name}.npz"
        np.savez(p, **({"x": x} if x is not None else {}), w=w)
        files[name] = str(p)
    samples = [{"name": "signal", "role": "signal"}, {"name": "background", "role": "background"}]
    systematics = [
        {"name": "bkg_shape", "sample": "background", "up": "background_up",
         "down": "background_down"}
    ]  # fmt: skip
    doc = {
        "data": {"files": files},
        "analysis": {
            "samples": samples,
            "shape_systematics": systematics,
            "channels": [{"name": "SR", "bins": 2}],
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, list(extra)), files


def _good(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)), np.full(n, 0.1)


def test_bad_inputs_give_clear_errors(tmp_path):
    from diffhep.runs.prepare import prepare

    sets = ("signal", "background", "background_up", "background_down")
    arrays = {n: _good(seed=i) for i, n in enumerate(sets)}
    # NaN in the features: names the file, the array and the count
    x, w = _good()
    x[[3, 7], 1] = np.nan
    cfg, files = _npz_config(tmp_path, {**arrays, "background": (x, w)})
    with pytest.raises(DataError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert files["background"] in msg and "'x'" in msg and "2 NaN/inf" in msg
    # inf in the weights
    x, w = _good()
    w[0] = np.inf
    cfg, files = _npz_config(tmp_path, {**arrays, "signal": (x, w)})
    with pytest.raises(DataError, match=r"1 NaN/inf values in 'w'"):
        prepare(cfg)
    # empty sample
    cfg, files = _npz_config(tmp_path, {**arrays, "signal": (np.zeros((0, 2)), np.zeros(0))})
    with pytest.raises(DataError, match="'signal' is empty"):
        prepare(cfg)
    # missing sample (no file for an event set the analysis needs)
    cfg, _ = _npz_config(tmp_path, {n: arrays[n] for n in sets[:3]})
    with pytest.raises(DataError, match=r"no data for event set.*background_down") as err:
        prepare(cfg)
    assert "data.files" in str(err.value)
    # missing array
    cfg, files = _npz_config(tmp_path, {**arrays, "signal": (None, np.ones(5))})
    with pytest.raises(DataError, match="no array 'x'"):
        prepare(cfg)
    # file not found
    cfg, files = _npz_config(tmp_path, arrays)
    os.remove(files["background_up"])
    with pytest.raises(DataError, match="file not found"):
        prepare(cfg)


def test_cli_bad_config_exit_code(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("analysis: {channels: [{name: SR, bins: 4, colour: red}]}")
    proc = subprocess.run(
        [sys.executable, "-m", "diffhep.cli", "train", str(path), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "analysis.channels.0.colour" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- runs: kill -9 and resume
def _train_cmd(config, out, *extra):
    return [
        sys.executable,
        "-m",
        "diffhep.cli",
        "train",
        str(config),
        "--out",
        str(out),
        "--no-progress",
        *(a for s in SMALL for a in ("--set", s)),
        *extra,
    ]


@pytest.fixture(scope="module")
def run_env():
    """The environment of this module's ``diffhep train`` processes: the CLI's persistent
    compilation cache (its default) in the test session's cache (tests/conftest.py; same XLA
    flags), so that the killed and the resumed run load what the uninterrupted run compiled
    (37 -> 14 s CPU each), and the in-process tests here (the run's step, its evaluation)
    load what the runs compiled, or the runs what they compiled."""
    return {**os.environ, "DIFFHEP_CACHE_DIR": os.environ["DIFFHEP_TEST_COMPILATION_CACHE"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, run_env):
    out = tmp_path_factory.mktemp("runs") / "full"
    subprocess.run(
        _train_cmd(CLS_EXAMPLE, out), env=run_env, check=True, capture_output=True, timeout=600
    )
    return out


def test_resume_after_kill_gives_the_same_result(tmp_path, uninterrupted, run_env):
    """kill -9 once epoch 2 is checkpointed, then resume: the same final numbers as the
    uninterrupted run."""
    env = run_env
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(CLS_EXAMPLE, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = out / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text() or "{}").get("epoch", 0) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["epoch"] < 12
    subprocess.run(
        _train_cmd(CLS_EXAMPLE, out), env=env, check=True, capture_output=True, timeout=600
    )
    a = json.loads((uninterrupted / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    for key in ("expected_cls", "z0", "sigma_mu", "best_epoch", "epochs_run"):
        assert a[key] == b[key], key
    ha = (uninterrupted / "metrics.jsonl").read_text().splitlines()
    hb = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in ha] == [json.loads(x)["loss"] for x in hb]
    assert (uninterrupted / "model.eqx").read_bytes() == (out / "model.eqx").read_bytes()


def test_run_artefacts_and_pyhf_round_trip(uninterrupted):
    """The run directory has every artefact; pyhf gives the CLs diffhep reports."""
    pyhf = pytest.importorskip("pyhf")
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "model.eqx",
        "model.json",
        "workspace.json",
        "summary.json",
        "plots/training.png",
        "plots/roc.png",
        "plots/histograms_SR.png",
        "plots/observable_2d.png",
    ):
        assert (uninterrupted / name).is_file(), name
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert len((uninterrupted / "metrics.jsonl").read_text().splitlines()) == 12
    ws = pyhf.Workspace(json.loads((uninterrupted / "workspace.json").read_text()))
    model = ws.model()
    data = ws.data(model)
    _, exp = oracle.hypotest(1.0, data, model, test_stat="qtilde", return_expected=True)
    assert float(exp) == pytest.approx(summary["expected_cls"], rel=1e-5)
    # and pyhf's own command line on the file (observations = background-only Asimov data)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "pyhf"), "cls", str(uninterrupted / "workspace.json")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    out = json.loads(proc.stdout)
    assert out["CLs_obs"] == pytest.approx(summary["expected_cls"], rel=1e-5)
    assert out["CLs_exp"][2] == pytest.approx(summary["expected_cls"], rel=1e-5)
    assert summary["median_step_seconds"] > 0


def test_metrics_pad_both_splits_to_one_shape():
    """The test metrics pad every event set with zero-weight events to a bucket of its size,
    so that a run's validation and test splits (a few events apart) compile one metrics
    program, not two; the events themselves are kept (that the metrics are unchanged: the
    summary's CLs equals pyhf's on the unpadded histograms, test_run_artefacts_and_pyhf_...)."""
    from diffhep.runs.evaluate import _bucket, _padded
    from diffhep.types import Events

    rng = np.random.default_rng(0)
    sizes = {"a": 1000, "b": 1003, "c": 16, "d": 0, "e": 1}

    def events(extra):
        return {n: Events(rng.normal(size=(k + extra, 3)), rng.uniform(1, 2, k + extra))
                for n, k in sizes.items()}  # fmt: skip

    valid, test = events(0), events(7)
    pv, pt = _padded(valid), _padded(test)
    for n, k in sizes.items():
        for ev, p in ((valid, pv[n]), (test, pt[n])):
            m = len(ev[n].w)
            assert m <= len(p.w) <= m + m // 8 and p.x.shape == (len(p.w), 3)
            np.testing.assert_array_equal(np.asarray(p.x[:m]), ev[n].x)
            np.testing.assert_array_equal(np.asarray(p.w[:m]), ev[n].w)
            assert not np.asarray(p.w[m:]).any()
        if k >= 1000:
            assert pv[n].w.shape == pt[n].w.shape, n  # a few events apart: one shape
    assert [_bucket(n) for n in (1, 15, 16, 17, 1000, 1024, 1025)] == [1, 15, 16, 18, 1024,
                                                                      1024, 1152]  # fmt: skip


def test_metrics_of_both_splits_run_one_program():
    """A split already of its bucket's size is passed as it is (uncommitted, as a run's
    arrays are), and another padded to that size must be placed alike: jit compiles one program
    for arrays of one shape only when they are also committed alike (a committed padded split
    made the realistic study compile its metrics twice, 8 s of XLA each)."""
    from diffhep.runs.evaluate import _as_jax, _padded
    from diffhep.types import Events

    rng = np.random.default_rng(1)
    valid, test = (
        _as_jax({"s": Events(rng.normal(size=(n, 3)), rng.uniform(1, 2, n))}) for n in (1024, 1020)
    )
    pv, pt = _padded(valid), _padded(test)
    assert pv["s"].w is valid["s"].w and pt["s"].w.shape == (1024,)
    metrics = jax.jit(lambda d: d["s"].w @ d["s"].x)
    np.testing.assert_allclose(metrics(pt), np.asarray(test["s"].w) @ np.asarray(test["s"].x))
    metrics(pv)
    assert metrics._cache_size() == 1


def test_evaluate_recomputes_the_summary(uninterrupted, tmp_path):
    from diffhep.runs.evaluate import evaluate_run

    before = json.loads((uninterrupted / "summary.json").read_text())
    after = evaluate_run(uninterrupted, plots=False)
    for key in ("expected_cls", "z0", "sigma_mu"):
        assert after[key] == pytest.approx(before[key], rel=1e-12)


def test_pipeline_step_compiles_once():
    """The real CLs step (soft histograms -> model -> fit -> CLs) is traced once over epochs
    with an annealed bandwidth: the model is never rebuilt or recompiled. (The step of this
    module's runs: their optimiser and hyperparameters, so the session's compilation cache
    serves whichever compiles it second; see ``run_env``.)"""
    from diffhep.io.datasets import batches
    from diffhep.runs.evaluate import _as_jax
    from diffhep.runs.prepare import prepare
    from diffhep.runs.train import _loss_fn, annealing, run_optimizer

    cfg = load_config(CLS_EXAMPLE, [*SMALL, "histogram.bandwidth_final=0.1"])
    pipe, parts, params = prepare(cfg)
    loss = eqx.debug.assert_max_traces(_loss_fn(pipe, {"cls": 1.0}), max_traces=1)
    hyper = annealing(cfg)
    assert hyper(2)["bandwidth"] < hyper(1)["bandwidth"]  # changes every epoch
    state = train(
        params,
        loss,
        run_optimizer(cfg, params),
        epochs=2,
        batches=lambda e: [_as_jax(b) for b in batches(parts["train"], 400, 0, e)],
        hyper=hyper,
        progress=False,
    )
    assert state.step == 2 * (len(parts["train"]["signal"].w) // 400)
    assert np.isfinite(state.history[-1]["loss"])


def test_loss_schedule_switches_objective():
    from diffhep.runs.train import phase_index

    cfg = load_config(ROOT / "examples" / "blobs_schedule.yaml")
    phases = cfg.training.phases()
    assert [p.terms for p in phases] == [{"bce": 1.0}, {"cls": 1.0}]
    assert [phase_index(phases, e) for e in range(1, 7)] == [0, 0, 0, 1, 1, 1]

    def towards(target, name):
        return lambda p, b, h: (jnp.sum((p - target) ** 2), {name: jnp.sum(p)})

    first, second = towards(1.0, "a"), towards(-1.0, "b")
    state = train(
        jnp.zeros(2),
        first,
        optax.sgd(0.2),
        epochs=40,
        batches=lambda e: [None],
        phase=lambda e: first if e <= 20 else second,
        progress=False,
    )
    assert "a" in state.history[19] and "b" in state.history[20]
    p = 0.0  # the same 40 SGD steps by hand: 20 towards +1, then 20 towards -1
    for e in range(40):
        p -= 0.2 * 2 * (p - (1.0 if e < 20 else -1.0))
    np.testing.assert_allclose(state.params, [p, p], rtol=1e-12)
    # the best model comes from the last phase: epoch 20 has the lowest loss of the run
    # (2.7e-9 vs 1.1e-8 at epoch 40), but a loss of another objective does not compete
    assert state.history[19]["loss"] < state.history[39]["loss"]
    assert state.best_epoch == 40
