"""``diffhep optimize``: black-box searches on the exact objective, resuming, bad spaces.

The reference of the cut search is a closed form: with one counting bin and no systematic,
the expected discovery significance of s signal and b background events is
Z0 = sqrt(2 ((s + b) ln(1 + s / b) - s)) (Cowan et al., Asimov); its optimum over the two
thresholds comes from a dense grid of that formula on the validation events.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from diffhep.cli import main
from diffhep.search import optimize as opt
from diffhep.search.objective import Objective

CONFIG = Path(__file__).parent / "data" / "optimize_cuts.yaml"
LOW, HIGH = -1.0, 3.0
TOLERANCE = 0.10  # of the optimum Z0: the region within it is ~13% of the search box


def _z0(s, b):
    return np.sqrt(2 * ((s + b) * np.log1p(s / b) - s))


@pytest.fixture(scope="module")
def reference():
    """Closed-form Z0 of the validation events at thresholds (c1, c2), and its dense-grid
    optimum on the search box."""
    from diffhep.runs.config import load_config
    from diffhep.runs.prepare import prepare

    _, parts, _ = prepare(load_config(CONFIG))
    v = parts["validation"]
    sig = np.asarray(v["signal"].x, float), np.asarray(v["signal"].w)
    bkg = np.asarray(v["background"].x, float), np.asarray(v["background"].w)

    def z0(c1, c2):
        s, b = (float(w[(x[:, 0] > c1) & (x[:, 1] > c2)].sum()) for x, w in (sig, bkg))
        return _z0(s, b)

    g = np.linspace(LOW, HIGH, 161)
    best = max(z0(a, b) for a in g for b in g)
    return z0, best


def _run(out, method, budget, *extra):
    args = ["optimize", str(CONFIG), "--method", method, "--budget", str(budget)]
    res = CliRunner().invoke(main, [*args, "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{") :])


@pytest.mark.parametrize(("method", "budget"), [("grid", 25), ("random", 30), ("bo", 30)])
def test_search_finds_the_dense_grid_optimum(tmp_path, reference, method, budget):
    z0, optimum = reference
    best = _run(tmp_path, method, budget)
    c1, c2 = best["best"]["params"].values()
    # the objective is the exact Z0 of the hard cuts (closed form at the reported point)
    assert best["best"]["value"] == pytest.approx(z0(c1, c2), rel=1e-6)
    assert best["best"]["value"] >= (1 - TOLERANCE) * optimum
    assert best["trials"] == {"complete": budget}
    rows = json.loads((tmp_path / "trials.json").read_text())
    assert len(rows) == budget
    assert (tmp_path / "trials.csv").read_text().count("\n") == budget + 1
    assert (tmp_path / "objective.png").stat().st_size > 0
    if method == "grid":  # 5 x 5 points: every one visited once
        points = {tuple(r[k] for k in r if k.startswith("param:")) for r in rows}
        assert len(points) == 25


def test_same_seed_same_trials(tmp_path):
    a = _run(tmp_path / "a", "random", 4)
    b = _run(tmp_path / "b", "random", 4)
    assert a["best"] == b["best"]


def test_resume_after_interruption(tmp_path, monkeypatch):
    """A study killed during a trial resumes: the finished trials are kept, the interrupted
    point is run again, nothing else twice, and the trials add up to the budget."""
    calls = {"n": 0}
    real = Objective.__call__

    def dies_on_the_fourth(self, values):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, values)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setattr(opt, "_worker_id", lambda: f"{opt.socket.gethostname()}:{dead.pid}")
    monkeypatch.setattr(Objective, "__call__", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        opt.optimize(CONFIG, tmp_path, method="random", budget=8)
    first = json.loads((tmp_path / "trials.json").read_text())
    assert [r["state"] for r in first] == ["complete"] * 3
    monkeypatch.setattr(Objective, "__call__", real)
    best = opt.optimize(CONFIG, tmp_path, method="random", budget=8)
    rows = json.loads((tmp_path / "trials.json").read_text())
    states = [r["state"] for r in rows]
    assert states.count("complete") == 8 and states.count("interrupted") == 1
    assert best["trials"] == {"complete": 8, "interrupted": 1}
    assert rows[:3] == first  # kept as they were
    done = [tuple(v for k, v in r.items() if k.startswith("param:")) for r in rows
            if r["state"] == "complete"]  # fmt: skip
    assert len(set(done)) == 8  # no point twice
    interrupted = next(r for r in rows if r["state"] == "interrupted")
    point = tuple(v for k, v in interrupted.items() if k.startswith("param:"))
    assert point in done  # the interrupted point was evaluated after all
    # running again with the same budget does nothing more
    assert opt.optimize(CONFIG, tmp_path, method="random", budget=8) == best
    assert len(json.loads((tmp_path / "trials.json").read_text())) == 9


def test_a_second_worker_shares_the_study(tmp_path):
    """Two processes on one journal storage: together they make the budget."""
    storage = str(tmp_path / "shared.journal")
    _run(tmp_path / "w1", "random", 3, "--storage", storage)
    best = _run(tmp_path / "w2", "random", 5, "--storage", storage, "--seed", "1")
    assert best["trials"] == {"complete": 5}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--param", "selection.cuts.5.init=0:1"], ["search.params[2]", "not an index"]),
        (["--param", "selection.cuts.0.init=3:1"], ["search.params", "must be below high"]),
        (["--param", "selection=0:1"], ["is a section"]),
        (["--param", "selection.cuts.0.feature=0:1"], ["not numeric", "choices"]),
        (["--param", "observable.hidden.0=4:16:int"], ["needs training", "search.train"]),
        (["--param", "oops"], ["--param", "not of the form"]),
        (["--param", "x=1:2:cubic"], ["unknown flag"]),
        (["--set", "search.train=true", "--param", "training.optimizer.learning_rate=0:1"],
         ["search.params[2]", "learning_rate = 0.0 gives an invalid config"]),
        (["--set", "search.params=[]"], ["no parameters to search"]),
        (["--set", "search.params.0.low=9"], ["search.params.0", "must be below high"]),
    ],
)  # fmt: skip
def test_bad_search_space_exits_2(tmp_path, args, words):
    res = CliRunner().invoke(main, ["optimize", str(CONFIG), "--out", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    for w in words:
        assert w in res.output


def test_another_space_on_the_same_study_exits_2(tmp_path):
    _run(tmp_path, "random", 2)
    res = CliRunner().invoke(main, ["optimize", str(CONFIG), "--out", str(tmp_path),
                                    "--param", "selection.cuts.1.init=0:2"])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "another search space" in res.output


def test_another_method_on_the_same_study_exits_2(tmp_path):
    """A study resumed with another --method is refused, naming the study's method (it did
    nothing and best.json then named the new method: a new user's trial)."""
    _run(tmp_path, "random", 2)
    res = CliRunner().invoke(main, ["optimize", str(CONFIG), "--out", str(tmp_path),
                                    "--method", "grid", "--budget", "2"])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "was run with --method random" in res.output, res.output
    assert "fix: use --method random to resume it" in res.output, res.output
    assert json.loads((tmp_path / "best.json").read_text())["method"] == "random"


@pytest.mark.slow
def test_training_search_of_cut_inits(tmp_path):
    """search.train true: the trial trains its cuts from the searched start (one epoch), the
    objective is the validation Z0 of the selected epoch, the test Z0 the run's."""
    out = tmp_path / "o"
    best = _run(out, "random", 1, "--set", "search.train=true", "--set", "training.epochs=1",
                "--set", "data.n_per_blob=1000", "--set", "training.loss=z0")  # fmt: skip
    run = Path(best["best"]["run"])
    summary = json.loads((run / "summary.json").read_text())
    assert best["best"]["test"] == summary["z0"]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert best["best"]["value"] == record["val_z0"]
    assert run.parent == out / "trials"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::diffhep.weights.weighting.NetYieldWarning")  # tiny sample
def test_training_search(tmp_path):
    """Every trial trains (a hyperparameter: the hidden width), from a copied config."""
    config = tmp_path / "blobs.yaml"
    shutil.copy(Path(__file__).parents[1] / "src/diffhep/data/demo.yaml", config)
    res = CliRunner().invoke(main, [
        "optimize", str(config), "--method", "grid", "--budget", "2", "--out", str(tmp_path / "o"),
        "--param", "observable.hidden.0=2,4", "--set", "data.n_per_blob=200",
        "--set", "training.epochs=1", "--set", "training.batch_size=200",
        "--set", "observable.hidden=[4]",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    best = json.loads(res.stdout[res.stdout.index("{") :])
    rows = json.loads((tmp_path / "o" / "trials.json").read_text())
    assert sorted(r["param:observable.hidden.0"] for r in rows) == [2, 4]
    run = Path(best["best"]["run"])
    summary = json.loads((run / "summary.json").read_text())
    assert best["best"]["test"] == summary["expected_cls"]
    from diffhep.runs.config import load_config

    trained = load_config(run / "config.yaml")
    assert trained.observable.hidden == [best["best"]["params"]["observable.hidden.0"]]
    assert trained.search.params == []  # the trial's config, not the search


def test_gp_without_pytorch_exits_2(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed: the GP sampler is available")
    res = CliRunner().invoke(main, ["optimize", str(CONFIG), "--out", str(tmp_path),
                                    "--method", "gp", "--budget", "2"])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "needs PyTorch" in res.output and "--method bo" in res.output


EDGES = """
seed: 0
data: {generator: cuts_2d, n_per_blob: 500}
analysis:
  samples:
    - {name: signal, role: signal, yield: 50}
    - {name: background, role: background, yield: 1000}
  channels: [{name: SR, bins: 3, observable: x2, edges: [-12, 0, 2, 12]}]
search:
  train: false
  params:
    - {name: analysis.channels.0.edges.1, low: -2, high: 2}
    - {name: analysis.channels.0.edges.2, low: 0, high: 4}
"""


def test_bin_edges_without_training(tmp_path):
    """Inner bin edges are substituted into the prepared parameters: the hard histograms of
    a trial are numpy's with its edges; edges out of order make a failed trial, not an error;
    an outer edge (the histogram range) needs training."""
    from diffhep.search.objective import TrialFailed
    from diffhep.search.space import load_search_config

    path = tmp_path / "edges.yaml"
    path.write_text(EDGES)
    objective = Objective(path, [], load_search_config(path), tmp_path)
    values = {"analysis.channels.0.edges.1": -0.7, "analysis.channels.0.edges.2": 3.1}
    ev = objective._exact
    params = ev.parameters(objective.config(values))
    val = ev.splits["validation"]
    hists = ev.pipe.histograms(params, val)
    for name in ("signal", "background"):
        x, w = np.asarray(val[name].x[:, 1]), np.asarray(val[name].w)
        ref, _ = np.histogram(x, [-12, -0.7, 3.1, 12], weights=w)
        np.testing.assert_allclose(np.asarray(hists[("SR", name)][0]), ref, rtol=1e-6)
    with pytest.raises(TrialFailed, match="strictly increasing"):
        objective.config({"analysis.channels.0.edges.1": 1.5, "analysis.channels.0.edges.2": 0.5})
    res = CliRunner().invoke(main, ["optimize", str(path), "--out", str(tmp_path / "o"),
                                    "--param", "analysis.channels.0.edges.3=10:14"])  # fmt: skip
    assert res.exit_code == 2 and "needs training" in res.output, res.output
