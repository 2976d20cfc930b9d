"""Weight networks trained jointly with the analysis (``weights: {strategy: learned, joint:
true}``): the coupling, the cross-fitting, and the learned E[w | x] against the closed form
of the 2-D toy next to the two-stage ``learned`` strategy's.

References: exact zeros and exact equalities of gradients (the coupling is a stop-gradient,
so these are identities, not approximations); the closed-form E[w | x] of
:func:`diffhep.problems.weight_toys.negweight_2d_mean_weight`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import optax
import pytest

from diffhep.analysis.pipeline import Pipeline
from diffhep.analysis.spec import Analysis, Channel
from diffhep.io.datasets import batches
from diffhep.nn.training import train
from diffhep.problems.weight_toys import negweight_2d, negweight_2d_mean_weight
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.joint import WithWeights, joint_loss, joint_optimizer
from diffhep.types import Events
from diffhep.weights.joint import JointWeights, fold_of
from diffhep.weights.reweight import learn_positive_weights

ANALYSIS = Analysis(("signal", "background"), "signal", (Channel("SR", 3),))
N = 4000


@pytest.fixture(scope="module")
def events():
    raw = negweight_2d(N, seed=3)
    return {k: Events(x, w) for k, (x, w) in raw.items()}


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(ANALYSIS, ("x1", "x2"))


def analysis_loss(pipe):
    def loss(params, batch, hyper):
        v = pipe.loss_terms(params, batch, ("bce",), 0.3)
        return v["bce"], v

    return loss


@pytest.fixture(scope="module")
def state(pipe, events):
    params = pipe.init_params(events, hidden=(8,), key=jax.random.key(0))
    nets = JointWeights.create(events, ["background"], hidden=(16,), key=jax.random.key(1))
    return WithWeights(params, nets)


@pytest.fixture(scope="module")
def batch(events):
    return next(iter(batches(events, 500, seed=0, epoch=1)))


def _leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))


def test_analysis_loss_gives_no_gradient_to_the_weight_networks(pipe, state, batch):
    """The weight networks cannot move weight onto events the analysis likes: the analysis
    loss's gradient in them is exactly zero, so the joint gradient there is exactly the
    regression loss's, and in the analysis exactly the analysis loss's on fixed weights."""
    loss = analysis_loss(pipe)

    def analysis_only(s):
        return loss(s.analysis, s.weights.apply(batch), {})[0]

    g_analysis = eqx.filter_grad(analysis_only)(state)
    assert all(np.all(np.asarray(g) == 0.0) for g in _leaves(g_analysis.weights))
    assert any(np.any(np.asarray(g) != 0.0) for g in _leaves(g_analysis.analysis))

    g_joint = eqx.filter_grad(lambda s: joint_loss(loss)(s, batch, {})[0])(state)
    g_reg = eqx.filter_grad(lambda s: s.weights.regression_loss(batch))(state)
    assert any(np.any(np.asarray(g) != 0.0) for g in _leaves(g_reg.weights))
    for a, b in zip(_leaves(g_joint.weights), _leaves(g_reg.weights), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(g_joint.analysis), _leaves(g_analysis.analysis), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def test_learned_weights_are_rescaled_to_the_signed_sum(state, batch):
    out = state.weights.apply(batch)
    w, new = np.asarray(batch["background"].w), np.asarray(out["background"].w)
    assert np.all(new >= 0)
    np.testing.assert_allclose(new.sum(), w.sum(), rtol=1e-6)
    np.testing.assert_array_equal(out["signal"].w, batch["signal"].w)  # not jointly weighted


def test_folds_are_fixed_per_event_and_cross_fitted(state, events):
    """An event's fold does not depend on the batch; its learned weight comes from the other
    fold's network only (the network that regressed on its own weight has no say)."""
    x = np.asarray(events["background"].x)
    f = np.asarray(fold_of(x))
    perm = np.random.default_rng(0).permutation(len(x))
    np.testing.assert_array_equal(np.asarray(fold_of(x[perm])), f[perm])
    assert 0.45 < f.mean() < 0.55
    jw = state.weights
    name = "background"
    ev = Events(x, np.asarray(events[name].w))
    before = np.asarray(jw.mean_weights(name, ev))
    net0 = jw.nets[name][0]
    scrambled = jax.tree.map(lambda a: a * 3.0 if eqx.is_inexact_array(a) else a, net0.net)
    moved = eqx.tree_at(lambda j: j.nets[name][0].net, jw, scrambled)
    after = np.asarray(moved.mean_weights(name, ev))
    np.testing.assert_array_equal(after[f == 0], before[f == 0])  # weighted by network 1
    assert np.any(after[f == 1] != before[f == 1])


@pytest.fixture(scope="module")
def trained(pipe, state, events):
    """Joint training, BCE analysis loss: 800 steps (100 epochs of 8 batches of 500)."""
    loss = joint_loss(analysis_loss(pipe))
    opt = joint_optimizer(optax.adam(1e-3), 3e-3)
    s = train(
        state,
        loss,
        opt,
        epochs=100,
        batches=lambda e: batches(events, 500, seed=0, epoch=e),
        progress=False,
    )
    return s.params


def _relative_error(learned, x):
    truth = negweight_2d_mean_weight(x)
    return float(np.mean(np.abs(learned - truth)) / np.mean(truth))


def test_joint_weights_match_the_closed_form_like_two_stage(trained, events):
    """On the 2-D toy (20% negative weights, E[w | x] known) the jointly learned, cross-fitted
    E[w | x] is as close to the truth as the two-stage strategy's on the same events."""
    x, w = np.asarray(events["background"].x), np.asarray(events["background"].w)
    joint = np.asarray(trained.weights.mean_weights("background", Events(x, w)))
    two_stage = learn_positive_weights(x, w, hidden=(16,), seed=0).weights
    err_joint, err_two = _relative_error(joint, x), _relative_error(two_stage, x)
    assert err_joint < 0.15, (err_joint, err_two)
    assert err_joint < 1.5 * err_two + 0.02, (err_joint, err_two)
    np.testing.assert_allclose(joint.sum() / w.sum(), 1.0, atol=0.05)
    # and not just a constant: the learned weight follows the cancellation region
    truth = negweight_2d_mean_weight(x)
    assert np.corrcoef(joint, truth)[0, 1] > 0.9


BASE = """
data: {generator: negweight_2d, n_per_blob: 300}
analysis:
  samples:
    - {name: signal, role: signal, yield: 50}
    - {name: background, role: background, yield: 1000, weights: %s}
  channels: [{name: SR, bins: 3}]
observable: {hidden: [4]}
training: {loss: bce, epochs: 2, batch_size: 100}
"""


@pytest.mark.parametrize(
    "weights, where",
    [
        ("{strategy: abs, joint: true}", "analysis.samples.1.weights"),
        ("{strategy: learned, joint: 1.5}", "analysis.samples.1.weights.joint"),
        ("{stratgy: learned}", "analysis.samples.1.weights.stratgy"),
    ],
)
def test_bad_weight_options_name_their_yaml_path(weights, where):
    with pytest.raises(ConfigError) as err:
        load_config(text=BASE % weights)
    assert err.value.where == where


def test_train_run_with_joint_weights(tmp_path):
    """The option end to end: the run trains, the summary verifies the learned weights."""
    from diffhep.runs.train import train_run

    cfg = load_config(text=BASE % "{strategy: learned, joint: true, hidden: [8]}")
    assert cfg.analysis.samples[1].strategy == "learned" and cfg.analysis.samples[1].joint
    summary = train_run(cfg, tmp_path / "run", progress=False, plots=False)
    report = summary["training_weights"]
    assert report["joint"] == ["background"]
    rep = report["joint_report"]["background"]
    assert 0.5 < rep["sum_ratio"] < 1.5
    assert "global" in rep["verification"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert '"weight_regression"' in lines[-1]


def test_readme_examples_are_valid_configs():
    """The README's config examples of both features load (not only parse)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    joint = [b for b in blocks if "joint: true" in b]
    nuisance = [b for b in blocks if "sigma_theta" in b]
    assert joint and nuisance
    cfg = load_config(text=joint[0])
    assert cfg.analysis.samples[1].joint
    cfg = load_config(text=nuisance[0])
    assert cfg.training.phases()[0].terms["sigma_theta[bkg_shape;target=1.0]"] == 1.0
