"""``diffhep study realistic``: the findings and the leading nuisance parameters against
hand-computed numbers (cheap), and the study's smoke form end to end (a tiny sample, a
reduced set of systematics, one epoch, one row): its table has the row it ran, and the
trained analysis's workspace.json gives in pyhf the expected CLs and the CLs at the expected
limit that the study records (the smoke form: ~1 min, in the default run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffhep.studies.realistic import ROWS, row_overrides
from diffhep.studies.realistic_report import _cell, findings, leading_parameters


def _rec(cls, lim, impacts, eps=1000.0, sigma_mu=1.0):
    return {"expected_cls": cls, "upper_limit": lim, "impacts": impacts, "widths": impacts,
            "events_per_second": eps, "sigma_mu": sigma_mu, "peak_rss_mb": 100.0}  # fmt: skip


def test_findings_are_the_numbers_of_the_records():
    imp_b = {"jes": 0.4, "btag": 0.2, "lumi": 0.1}
    imp_c = {"jes": 0.1, "btag": 0.3, "lumi": 0.1}
    rows = {
        "BCE / NN": [_rec(0.2, 2.0, imp_b), _rec(0.3, 3.0, imp_b), _rec(0.25, 2.5, imp_b)],
        "expected CLs / NN": [_rec(0.1, 1.5, imp_c, eps=250.0)] * 3,
    }
    assert leading_parameters(rows, "BCE / NN", 2) == ["jes", "btag"]
    kinds = {"BCE / NN": ["bce", "nn"], "expected CLs / NN": ["cls", "nn"]}
    text = "\n".join(findings({"rows": rows, "kinds": kinds}, "BCE / NN"))
    # 1.5 / 2.5 - 1 = -40%, outside BCE's seed range [2, 3]; CLs 0.1 / 0.25 - 1 = -60%
    assert (
        "expected limit on mu 1.5 vs 2.5 (wins, -40%; the seeds' ranges do not overlap; "
        "lower in 3 of 3 seeds)" in text
    )
    assert "expected CLs 0.1 vs 0.25 (-60%)" in text
    # jes 0.4 -> 0.1 (x0.25), btag 0.2 -> 0.3 (x1.5)
    assert "shrinks most for jes (x0.25 of BCE's: 0.4 -> 0.1)" in text
    assert "grows most for btag (x1.50)" in text
    assert "expected CLs x0.25" in text  # 250 / 1000 events/s
    # a seed without a limit (its scan did not converge): the median of the others, said so
    rows["expected CLs / NN"] = [
        _rec(0.1, 1.5, imp_c),
        _rec(0.1, None, imp_c),
        _rec(0.1, 1.7, imp_c),
    ]
    text = "\n".join(findings({"rows": rows, "kinds": kinds}, "BCE / NN"))
    assert (
        "expected limit on mu 1.6 vs 2.5 (wins, -36%; the seeds' ranges do not overlap; "
        "lower in 2 of 2 seeds; limits of 2 of 3 seeds and 3 of 3 seeds, a scan did not "
        "converge (JSON))" in text
    )
    rows["expected CLs / NN"][2] = _rec(0.1, 2.8, imp_c)  # seed 2: 2.8 vs BCE's 2.5
    text = "\n".join(findings({"rows": rows, "kinds": kinds}, "BCE / NN"))
    assert "lower in 1 of 2 seeds" in text
    rows["expected CLs / NN"][2] = _rec(0.1, 1.7, imp_c)
    assert _cell(rows["expected CLs / NN"], "upper_limit") == "1.6 (1.5-1.7; n/a in 1 of 3 seeds)"


def test_min_background_is_three_background_mc_events(tmp_path):
    from diffhep.studies.realistic import min_background

    samples = {
        "zprime_1500": {"events": 10, "expected_yield": 600.0},
        "ttbar": {"events": 100, "expected_yield": 200.0},
        "wjets": {"events": 50, "expected_yield": 160.0},
        "data": {"events": 999, "expected_yield": None},
    }
    (tmp_path / "samples.json").write_text(json.dumps({"samples": samples}))
    # (200 + 160) / (100 + 50) = 2.4 per generated event, x 1 / 0.6 in the training split
    assert min_background(tmp_path, 0.6) == pytest.approx(3 * 2.4 / 0.6)


def test_floor_workspace_is_the_pipelines_floor():
    """The evaluation's floor on a pyhf workspace against the training's on histograms
    (two implementations of one rule) and against max(b, floor)."""
    from diffhep.analysis.pipeline import Pipeline
    from diffhep.analysis.spec import Analysis, Channel, ShapeSystematic
    from diffhep.studies.realistic import floor_workspace

    analysis = Analysis(
        samples=("sig", "b1", "b2"),
        signal="sig",
        channels=(Channel("SR", 3),),
        shape_systematics=(ShapeSystematic("shape", "b1", "b1_up", "b1_down"),),
        mc_stat=True,
    )
    h = {("SR", "sig"): ([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]),
         ("SR", "b1"): ([0.0, 4.0, 40.0], [0.0, 1.0, 9.0]),
         ("SR", "b2"): ([0.5, 1.0, 10.0], [0.2, 0.5, 1.0]),
         ("SR", "b1_up"): ([0.1, 5.0, 44.0], [0.0, 1.0, 9.0]),
         ("SR", "b1_down"): ([0.0, 3.0, 36.0], [0.0, 1.0, 9.0])}  # fmt: skip
    floored = floor_workspace(analysis.workspace(h), 10.0)
    pipe = Pipeline(analysis, ("x",), min_background=10.0)
    arrays = {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in h.items()}
    want = analysis.workspace(pipe.floor_background(arrays))
    for got, ref in zip(floored["channels"][0]["samples"], want["channels"][0]["samples"],
                        strict=True):  # fmt: skip
        np.testing.assert_allclose(got["data"], np.asarray(ref["data"]), rtol=1e-12)
        for m, r in zip(got["modifiers"], ref["modifiers"], strict=True):
            if m["type"] == "histosys":
                for key in ("hi_data", "lo_data"):
                    np.testing.assert_allclose(m["data"][key], np.asarray(r["data"][key]))
            elif m["type"] == "staterror":
                np.testing.assert_allclose(m["data"], np.asarray(r["data"]))
    bkg = sum(np.asarray(s["data"]) for s in floored["channels"][0]["samples"][1:])
    np.testing.assert_allclose(bkg, [10.0, 10.0, 50.0])


def test_row_overrides_build_the_selections():
    from diffhep.runs.config import load_config
    from diffhep.studies.common import shipped_config

    base = load_config(shipped_config("ttbar_resonance"))
    for label, (loss, selection) in ROWS.items():
        cfg = load_config(shipped_config("ttbar_resonance"), row_overrides(base, loss, selection))
        sr, cr = cfg.analysis.channels
        assert cfg.training.loss == loss or str(loss) in str(cfg.training.loss), label
        assert (sr.observable == "count") == (selection == "cuts"), label
        assert sr.learnable_edges == (selection == "edges"), label
        assert bool(cfg.selection.cuts) == ("cuts" in selection), label
        assert cr == base.analysis.channels[1]


# the smoke form: two of the 20 named systematics (a feature-level JES, a weight b-tag),
# one normalisation: its event sets compile in seconds, not minutes
REDUCED = (
    "analysis.shape_systematics=[{name: jes_absolute, samples: [zprime_1500, ttbar], "
    "up: {columns: {Jet_pt: Jet_pt_jesAbsoluteUp}}, down: {columns: {Jet_pt: "
    "Jet_pt_jesAbsoluteDown}}}, {name: btag_b, samples: [zprime_1500, ttbar, wjets], "
    "up: {weight: 'genWeight * btagWeight_DeepCSVB_bUp'}, down: {weight: "
    "'genWeight * btagWeight_DeepCSVB_bDown'}}]",
    "analysis.norm_systematics=[{name: lumi, samples: [zprime_1500, ttbar, single_top, "
    "wjets, qcd], lo: 0.975, hi: 1.025}]",
    "training.batch_size=1000",
    "observable.hidden=[8]",
)


@pytest.mark.filterwarnings("ignore::diffhep.weights.weighting.NetYieldWarning")  # tiny sample
def test_realistic_study_smoke_matches_pyhf(tmp_path):
    """The smoke form, in the default run as issue 23 asks: one run of a reduced config (the
    CLs-trained network with cuts: the differentiable chain the study is about), one epoch.
    65 s of CPU at XLA opt level 0 on the idle 2-core machine (2026-12-06), almost all of it
    compilation (the event sets' histograms, the training step, the hypotest, covariance and
    limit scan). With the BCE row too it took 120 s; BCE training is the tiny run's
    (tests/conftest.py), and the comparisons between rows are tested above on records."""
    import pyhf

    import oracle
    from diffhep.stats import covariance
    from diffhep.stats.workspace import Workspace
    from diffhep.studies.realistic import floor_workspace, realistic_study

    rows = ["expected CLs / NN + cuts"]
    path = realistic_study(tmp_path / "doc", seeds=1, epochs=1, events=20_000, lumi=1.0,
                           rows=rows, overrides=REDUCED, runs_dir=tmp_path / "runs",
                           name="smoke")  # fmt: skip
    md = path.read_text()
    result = json.loads((tmp_path / "doc" / "smoke.json").read_text())
    assert list(result["rows"]) == rows
    for label in rows:
        assert md.count(f"| {label} |") == 4  # sensitivity, impacts, widths, cost
    assert (tmp_path / "doc" / "smoke.png").stat().st_size > 0
    run = tmp_path / "runs" / "cls-nn_cuts-seed0"
    rec = json.loads((run / "study.json").read_text())
    assert rec == result["rows"][rows[0]][0]
    assert set(rec["impacts"]) == {"jes_absolute", "btag_b", "lumi"}
    # pyhf on the run's workspace.json, on the background-only Asimov data at the nominal
    # parameters (diffhep's own model only gives the parameter vector and the data)
    spec = json.loads((run / "workspace.json").read_text())
    model = Workspace(spec).model()
    pars = covariance.nominal_parameters(model)
    pars[model.config.poi_index] = 0.0
    data = np.asarray(model.expected_data(pars))
    ref_model = pyhf.Workspace(spec).model()
    assert list(ref_model.config.par_order) == list(model.config.par_order)
    ref = float(oracle.hypotest(1.0, data, ref_model, test_stat="qtilde"))
    assert rec["expected_cls_unfloored"] == pytest.approx(ref, abs=1e-5)
    # the study's numbers: on the workspace with the evaluation's background floor
    floor = result["settings"]["evaluation_floor"]
    assert floor > 0
    spec = floor_workspace(spec, floor)
    model = Workspace(spec).model()
    data = np.asarray(model.expected_data(pars))
    ref_model = pyhf.Workspace(spec).model()
    ref = float(oracle.hypotest(1.0, data, ref_model, test_stat="qtilde"))
    assert rec["expected_cls"] == pytest.approx(ref, abs=1e-5)
    at_limit = float(oracle.hypotest(rec["upper_limit"], data, ref_model, test_stat="qtilde"))
    assert at_limit == pytest.approx(0.05, abs=1e-4)
    # Not compared: the observed CLs of the pseudo-data. On this tiny sample the likelihood
    # has several minima: pyhf's scipy and minuit fits disagree (CLs 0.39 vs 0.52) and its
    # mu >= 0 global fit (-2 log L 59.51) is above its own mu = 0 fit (58.63).


def test_release_compiled_clears_above_the_fraction_of_the_limit():
    """The study's guard against running out of memory maps (vm.max_map_count): it clears
    above the fraction of the limit only (a fake clear; the real one is the slow test)."""
    from diffhep.studies.realistic import release_compiled

    calls = []
    assert not release_compiled((26_000, 65_530), 0.4, clear=lambda: calls.append(1))
    assert not calls
    assert release_compiled((26_300, 65_530), 0.4, clear=lambda: calls.append(1))
    assert calls == [1]


_MAPS_SCRIPT = """
import jax, jax.numpy as jnp
from diffhep.studies.realistic import memory_maps, release_compiled


def program(k):
    def f(x):
        for i in range(30):
            x = jnp.sin(x * (k + i)) + jnp.cumsum(x) @ jnp.ones((8, 8)) / (i + 1)
        return x

    return jax.jit(f)


before = memory_maps()[0]
kept = [program(k) for k in range(4)]  # alive, as the study's functions: cached programs
for f in kept:
    jax.block_until_ready(f(jnp.ones(8)))
grown = memory_maps()[0]
print(before, grown, release_compiled(fraction=1.0), release_compiled(fraction=0.0))
print(memory_maps()[0])
"""


@pytest.mark.slow
def test_release_compiled_frees_the_memory_maps_of_compiled_programs():
    """Compiled programs hold memory maps until the guard clears JAX's caches (in a child
    process: clearing here would drop the test session's compiled programs). Fails if the
    guard does not free them (e.g. without the garbage collection or the clear)."""
    import subprocess
    import sys

    from diffhep.studies.realistic import memory_maps

    if memory_maps() is None:
        pytest.skip("no /proc/self/maps")
    out = subprocess.run([sys.executable, "-c", _MAPS_SCRIPT], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    before, grown, after = int(out[0]), int(out[1]), int(out[4])
    assert out[2:4] == ["False", "True"]  # kept below the fraction, cleared above it
    assert grown - before > 100  # 4 programs: ~190 maps each at the default opt level
    assert after - before < (grown - before) / 2  # most of them freed
