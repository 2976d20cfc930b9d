"""Relaxed selection cuts: gradients, hard limits, dead-gradient warning, export, 1-D training.

References: finite differences for every gradient; the hard cut (exact boolean selection)
for the limits; a brute-force scan of the hard-cut s/sqrt(b) for the trained threshold.
"""

from __future__ import annotations

import itertools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffhep.analysis.cuts import CutSpec, Selection
from diffhep.io.expressions import Expression

FEATURES = ("x1", "x2")


def _events(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal([0.5, -0.2], [1.0, 2.0], (n, 2))


def _selection(relaxation, x):
    specs = [
        CutSpec("x1", ">", init=0.3, relaxation=relaxation),
        CutSpec("x2", "<", init=1.0, relaxation=relaxation),
        CutSpec("x2", "window", init=(-2.5, 2.0), relaxation=relaxation),
    ]
    sel = Selection.create(specs, FEATURES, x)
    return jax.tree.map(lambda a: a.astype(jnp.float64), sel)


def _flat(sel):
    return jnp.concatenate([c.thresholds for c in sel.cuts])


def _unflat(sel, t):
    out, k = [], 0
    for c in sel.cuts:
        n = c.thresholds.shape[0]
        out.append(t[k : k + n])
        k += n
    return sel.with_thresholds(out)


@pytest.mark.parametrize("relaxation", ["sigmoid", "erf"])
def test_gradient_matches_finite_differences(relaxation):
    x = _events()
    sel = _selection(relaxation, x)
    w = np.random.default_rng(1).uniform(-0.2, 1.0, len(x))  # signed event weights

    def f(t):
        return jnp.sum(w * _unflat(sel, t).weights(jnp.asarray(x), slope=3.0))

    t0 = _flat(sel)
    g = jax.grad(f)(t0)
    eps = 1e-6
    fd = np.array(
        [(f(t0.at[i].add(eps)) - f(t0.at[i].add(-eps))) / (2 * eps) for i in range(len(t0))]
    )
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-9)


def test_straight_through_is_hard_forward_and_sigmoid_backward():
    x = _events()
    st = _selection("straight_through", x)
    sg = _selection("sigmoid", x)
    xs = jnp.asarray(x)
    np.testing.assert_array_equal(
        np.asarray(st.weights(xs, 3.0)), np.asarray(st.passes(xs)).astype(float)
    )
    # backward: the sigmoid relaxation's derivative (one-sided cuts; in a window each
    # boundary's derivative is multiplied by the other boundary's hard value instead)
    for k in (0, 1):
        one_st, one_sg = Selection((st.cuts[k],)), Selection((sg.cuts[k],))
        g_st = jax.grad(lambda t, s=one_st: jnp.sum(_unflat(s, t).weights(xs, 3.0)))
        g_sg = jax.grad(lambda t, s=one_sg: jnp.sum(_unflat(s, t).weights(xs, 3.0)))
        np.testing.assert_allclose(
            np.asarray(g_st(_flat(one_st))), np.asarray(g_sg(_flat(one_sg))), rtol=1e-12
        )


@pytest.mark.parametrize("relaxation", ["sigmoid", "erf"])
def test_relaxed_cut_tends_to_the_hard_cut(relaxation):
    x = _events(2000)
    sel = _selection(relaxation, x)
    xs = jnp.asarray(x)
    hard = np.asarray(sel.passes(xs)).astype(float)
    errors = [np.mean(np.abs(np.asarray(sel.weights(xs, k)) - hard)) for k in (3, 30, 300, 3000)]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 2e-3


def test_quantile_initialisation_is_inside_the_data():
    x = _events(1000)
    sel = Selection.create(
        [CutSpec("x1", ">"), CutSpec("x2", "<"), CutSpec("x2", "window")], FEATURES, x
    )
    t = [np.asarray(c.thresholds) for c in sel.cuts]
    np.testing.assert_allclose(t[0], np.quantile(x[:, 0], [0.1]), rtol=1e-6)
    np.testing.assert_allclose(t[1], np.quantile(x[:, 1], [0.9]), rtol=1e-6)
    np.testing.assert_allclose(t[2], np.quantile(x[:, 1], [0.05, 0.95]), rtol=1e-6)
    assert sel.dead_cuts(x, 10.0) == []
    passed = np.asarray(sel.passes(jnp.asarray(x))).mean()
    assert 0.6 < passed < 0.85  # 0.9 x 0.9 x 0.9 for independent cuts, not the same here


def test_cut_far_outside_the_data_warns_of_zero_gradient():
    x = _events()
    sel = Selection.create([CutSpec("x1", ">", init=50.0), CutSpec("x2", "<")], FEATURES, x)
    g = jax.grad(lambda t: jnp.sum(_unflat(sel, t).weights(jnp.asarray(x), 10.0)))(_flat(sel))
    assert abs(float(g[0])) < 1e-30  # the premise: no gradient at all (nor for the others:
    # every event fails the dead cut, so the product of weights is flat in every threshold)
    with pytest.warns(UserWarning, match=r"cut 'x1 > 50' has zero gradient"):
        dead = sel.warn_dead(x, 10.0)
    assert len(dead) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Selection.create([CutSpec("x1", ">", init=0.0)], FEATURES, x).warn_dead(x, 10.0)


def test_expression_and_json_round_trip_to_the_same_cutflow():
    x = _events(500, seed=3)
    events = {"signal": (x[:200], np.full(200, 0.1)), "background": (x[200:], np.full(300, 2.0))}
    sel = Selection.create(
        [CutSpec("x1", ">", init=0.123456), CutSpec("x2", "window", init=(-1.5, 2.25))],
        FEATURES,
        x,
    )
    flow = sel.cutflow(events, FEATURES)
    assert flow[0]["signal"] == {"events": 200, "yield": pytest.approx(20.0)}
    # JSON: exact thresholds
    again = sel.with_thresholds([d["thresholds"] for d in sel.to_json()])
    assert again.cutflow(events, FEATURES) == flow
    # expression: the printed digits, one term per boundary
    expr = sel.expression()
    assert expr == "x1 > 0.1235 && x2 > -1.5 && x2 < 2.25"
    # read back (the column expressions' grammar): the same events pass
    parsed = Expression(expr).evaluate({f: x[:, i] for i, f in enumerate(FEATURES)}, len(x))
    assert int(parsed[:200].sum()) == flow[-1]["signal"]["events"]
    assert int(parsed[200:].sum()) == flow[-1]["background"]["events"]
    # and by hand
    keep = (x[:, 0] > 0.1235) & (x[:, 1] > -1.5) & (x[:, 1] < 2.25)
    assert flow[-1]["background"]["events"] == int(keep[200:].sum())


@pytest.mark.parametrize(
    "spec, match",
    [
        (dict(feature="x3"), "unknown feature 'x3'"),
        (dict(feature="x1", direction="window", init=(2.0, 1.0)), "window init needs a < b"),
        (dict(feature="x1", direction=">="), "direction '>=' is not one of"),
        (dict(feature="x1", relaxation="tanh"), "relaxation 'tanh' is not one of"),
        (dict(feature="x1", direction="window", init=1.0), "init needs 2 value"),
    ],
)
def test_bad_cut_configuration_is_a_clear_error(spec, match):
    with pytest.raises(ValueError, match=match):
        Selection.create([CutSpec(**spec)], FEATURES, _events())


# --------------------------------------------------------------------------- 1-D training
def _toy_1d(n=10_000, seed=0):
    """The 1-D toy of issue 4: signal N(5, 1), background N(0, 4), 10,000 events each."""
    rng = np.random.default_rng(seed)
    return rng.normal(5.0, 1.0, (n, 1)), rng.normal(0.0, 4.0, (n, 1))


def _brute_force_cut(xs, xb):
    """Threshold maximising the hard-cut s/sqrt(b) (unit weights), scanned over every event."""
    grid = np.sort(np.concatenate([xs[:, 0], xb[:, 0]]))
    s = len(xs) - np.searchsorted(np.sort(xs[:, 0]), grid, side="right")
    b = len(xb) - np.searchsorted(np.sort(xb[:, 0]), grid, side="right")
    z = np.where(b > 0, s / np.sqrt(np.maximum(b, 1)), 0.0)
    # the hard objective is flat between events: take the middle of the best plateau
    best = np.argmax(z)
    return 0.5 * (grid[best] + grid[min(best + 1, len(grid) - 1)]), z[best]


@pytest.mark.parametrize("relaxation", ["sigmoid", "straight_through"])
def test_one_cut_trained_on_s_over_sqrt_b_reaches_the_brute_force_optimum(relaxation):
    xs, xb = _toy_1d()
    c_best, z_best = _brute_force_cut(xs, xb)
    assert 3.3 < c_best < 4.1  # the analytic optimum of the densities is 3.7
    sel = Selection.create([CutSpec("x", ">", relaxation=relaxation)], ("x",), np.vstack([xs, xb]))
    sel = jax.tree.map(lambda a: a.astype(jnp.float64), sel)
    xs_j, xb_j = jnp.asarray(xs), jnp.asarray(xb)

    def loss(t, slope):
        s_ = _unflat(sel, t)
        s = jnp.sum(s_.weights(xs_j, slope))
        b = jnp.sum(s_.weights(xb_j, slope))
        return b / s**2  # = 1 / (s / sqrt(b))^2

    opt = optax.adam(0.05)
    t = _flat(sel)
    state = opt.init(t)
    step = jax.jit(jax.value_and_grad(loss))
    steps = 600
    for i in range(steps):
        slope = 2.0 * (200.0 / 2.0) ** (i / (steps - 1))  # anneal 2 -> 200 (geometric)
        _, g = step(t, slope)
        updates, state = opt.update(g, state)
        t = optax.apply_updates(t, updates)
    c = float(t[0])
    assert abs(c - c_best) < 0.1, (c, c_best)
    # the relaxed objective at the end of annealing agrees with the hard one
    s_hard = np.sum(xs[:, 0] > c)
    b_hard = np.sum(xb[:, 0] > c)
    z_relaxed = 1.0 / np.sqrt(float(loss(t, 200.0)))
    assert z_relaxed == pytest.approx(s_hard / np.sqrt(b_hard), rel=0.02)
    assert s_hard / np.sqrt(b_hard) > 0.99 * z_best


# --------------------------------------------------------------------------- in the pipeline
def _pipeline(channel, cuts, n=300, seed=0):
    from diffhep.analysis.pipeline import Events, Pipeline
    from diffhep.analysis.spec import Analysis

    rng = np.random.default_rng(seed)
    events = {
        "signal": Events(rng.normal([1.0, 1.5], 1.0, (n, 2)), rng.uniform(0.02, 0.06, n)),
        "background": Events(rng.normal(0.0, 2.0, (n, 2)), rng.uniform(0.5, 1.5, n)),
    }
    pipe = Pipeline(Analysis(("signal", "background"), "signal", (channel,)), FEATURES)
    params = pipe.init_params(events, key=jax.random.key(0), hidden=(4,), cuts=cuts)
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_array(a) and a.dtype == jnp.float32 else a,
        params,
    )
    return pipe, params, events


def test_hard_histograms_apply_the_hard_cuts():
    from diffhep.analysis.spec import Channel

    edges = (-12.0, -1.0, 0.5, 2.0, 12.0)
    cuts = [CutSpec("x2", ">", init=0.3), CutSpec("x1", "window", init=(-2.0, 2.5))]
    pipe, params, events = _pipeline(Channel("SR", 4, "x1", edges), cuts)
    hists = pipe.histograms(params, events)
    for name, ev in events.items():
        x, w = np.asarray(ev.x), np.asarray(ev.w)
        keep = (x[:, 1] > 0.3) & (x[:, 0] > -2.0) & (x[:, 0] < 2.5)
        want, _ = np.histogram(x[keep, 0], bins=edges, weights=w[keep])
        want2, _ = np.histogram(x[keep, 0], bins=edges, weights=w[keep] ** 2)
        np.testing.assert_allclose(np.asarray(hists[("SR", name)][0]), want, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(hists[("SR", name)][1]), want2, rtol=1e-12)
    frac = float(pipe.selected_fraction(params, events))
    kept = sum(
        np.sum(np.asarray(e.w)[np.asarray(params.selection.passes(e.x))]) for e in events.values()
    )
    assert frac == pytest.approx(kept / sum(np.sum(e.w) for e in events.values()), rel=1e-12)


@pytest.mark.parametrize("term", ["b_over_s2", "s_sqrt_sb", "z_asimov", "skim", "cls", "bce"])
def test_loss_gradients_in_the_cut_thresholds_match_finite_differences(term):
    from diffhep.analysis.spec import Channel

    channel = Channel("SR", 2) if term == "bce" else Channel("SR", 2, "x1", (-12.0, 0.5, 12.0))
    cuts = [CutSpec("x2", ">", init=-0.5), CutSpec("x1", "<", init=2.0)]
    pipe, params, events = _pipeline(channel, cuts)

    @jax.jit  # compiled once for the gradient and the four evaluations (not op by op)
    def f(t):
        p = eqx_set_selection(params, _unflat(params.selection, t))
        return pipe.loss_terms(p, events, (term,), 0.5, slope=3.0)[term]

    t0 = _flat(params.selection)
    g = np.asarray(jax.jit(jax.grad(f))(t0))
    eps = 1e-5
    fd = np.array(
        [(f(t0.at[i].add(eps)) - f(t0.at[i].add(-eps))) / (2 * eps) for i in range(len(t0))]
    )
    assert np.all(np.abs(fd) > 0)  # the thresholds matter
    np.testing.assert_allclose(g, fd, rtol=1e-4)


def eqx_set_selection(params, selection):
    return eqx.tree_at(lambda p: p.selection, params, selection)


# --------------------------------------------------------------------------- runs and config
EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("override", "where", "message"),
    [
        ("selection.cuts=[{feature: y}]", "selection.cuts[0].feature", "unknown feature 'y'"),
        (
            "selection.cuts=[{feature: x, direction: window, init: [2, 1]}]",
            "selection.cuts.0",
            "window init needs a < b",
        ),
        ("selection.cuts=[{feature: x, init: [1, 2]}]", "selection.cuts.0", "one init value"),
        ("training.loss=bce", "training.loss", "need a neural observable"),
    ],
)
def test_bad_cut_config_errors_name_the_field(override, where, message):
    from diffhep.runs.config import ConfigError, load_config
    from diffhep.runs.prepare import prepare

    path = EXAMPLES / "cuts_1d.yaml"
    with pytest.raises(ConfigError) as err:
        prepare(load_config(path, [override]), str(path))
    text = str(err.value)
    assert where in text and message in text, text


def test_cuts_alone_train_end_to_end(tmp_path):
    """examples/cuts_1d.yaml: one cut, no network, counting experiment. The run writes the
    selection (expression, JSON, cut flow) and the cut lands on the brute-force optimum of
    the training events."""
    import json

    from diffhep.runs.config import load_config
    from diffhep.runs.prepare import prepare
    from diffhep.runs.train import train_run

    cfg = load_config(EXAMPLES / "cuts_1d.yaml")
    summary = train_run(cfg, tmp_path, progress=False)
    _, parts, _ = prepare(cfg)
    xs, xb = np.asarray(parts["train"]["signal"].x), np.asarray(parts["train"]["background"].x)
    c_best, _ = _brute_force_cut(xs, xb)
    cut = summary["selection"]["cuts"][0]["thresholds"][0]
    assert abs(cut - c_best) < 0.1, (cut, c_best)
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["expression"].startswith("x > ")
    flow = sel["cutflow"]
    xt = np.asarray(parts["test"]["background"].x)[:, 0]
    assert flow[1]["background"]["events"] == int(np.sum(xt > cut))
    assert 0 < summary["selected_fraction"] < 0.3
    assert (tmp_path / "plots" / "cuts.png").is_file()
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "cut0_x" in history[0]


@pytest.mark.slow
def test_cuts_trained_with_a_network_do_not_drift_away(tmp_path):
    """Cuts and network trained together (the talk's toy, loss -Z0): the cut weights multiply
    the network's sigmoid per event with no normalisation across events, so the cuts stay
    inside the bulk of the data instead of drifting to -infinity (what a softmax over the
    batch does), and they still cut."""
    import json
    from importlib import resources

    from diffhep.runs.config import load_config
    from diffhep.runs.prepare import prepare
    from diffhep.runs.train import train_run

    path = resources.files("diffhep") / "data" / "cuts_2d.yaml"
    overrides = ["data.n_per_blob=3000", "training.epochs=8", "training.batch_size=600"]
    cfg = load_config(str(path), overrides)
    _, parts, start = prepare(cfg)
    summary = train_run(cfg, tmp_path, progress=False)
    x = np.concatenate([np.asarray(parts["train"][n].x) for n in ("signal", "background")])
    history = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for k, cut in enumerate(summary["selection"]["cuts"]):
        column = x[:, start.selection.cuts[k].index]
        lo, hi = np.quantile(column, [0.005, 0.995])
        values = [h[f"cut{k}_{cut['feature']}"] for h in history]
        assert all(lo < v < hi for v in values), (cut["feature"], values, lo, hi)
    assert summary["selected_fraction"] < 0.95


def test_fixed_cut_has_no_gradient_and_stays():
    x = _events()
    sel = Selection.create(
        [CutSpec("x1", ">", init=0.2, trainable=False), CutSpec("x2", "<", init=1.0)], FEATURES, x
    )
    g = jax.grad(lambda s: jnp.sum(s.weights(jnp.asarray(x), 3.0)))(sel)
    assert float(g.cuts[0].thresholds[0]) == 0.0
    assert float(g.cuts[1].thresholds[0]) != 0.0


def test_cuts_study_markdown_names_its_runs_dir(tmp_path, monkeypatch):
    """cuts.md's "Reproduce with" names the --runs-dir the runs went to, not runs/cuts, and
    the --out it was written into."""
    from diffhep.studies import cuts as study

    row = {"z0": 1.0, "expected_cls": 0.1, "selected_fraction": 0.5, "expression": "x1 > 0",
           "thresholds": []}  # fmt: skip
    monkeypatch.setattr(study, "_run", lambda runs_dir, name, overrides: row)
    monkeypatch.setattr(study, "_plot", lambda *a: None)
    path = study.cuts_study(tmp_path / "out", seeds=1, epochs=2, runs_dir=tmp_path / "elsewhere")
    text = path.read_text()
    assert f"finished runs under `{tmp_path / 'elsewhere'}` are reused" in text, text
    # and the directory it was written into (diffhep study's default is ./studies: the
    # command without --out wrote the report elsewhere)
    assert f"`diffhep study cuts --out {(tmp_path / 'out').as_posix()}`" in text, text
