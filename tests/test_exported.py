"""Kernels stored per model structure (diffhep.stats.exported): another signal point of the
same analysis traces and compiles nothing, and gives the numbers of a fresh computation."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import pytest

from diffhep.stats import executables, exported, workflows
from diffhep.stats.workspace import example_spec

SRC = str(Path(__file__).parents[1] / "src")


def _analysis():
    """A small background-only workspace and the patch of one signal point."""
    spec = example_spec()
    signal = spec["channels"][0]["samples"].pop(0)
    signal["name"] = "signal_300"
    signal["modifiers"] += [
        {"name": "sig_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.92}},
        {"name": "sig_shape", "type": "histosys",
         "data": {"hi_data": [13.0, 10.5], "lo_data": [11.0, 11.6]}},
    ]  # fmt: skip
    return spec, [{"op": "add", "path": "/channels/0/samples/0", "value": signal}]


def _other_point(patch: list, name: str, scale: float) -> list:
    """The patch of another signal point: the signal renamed and its yields scaled."""
    out = copy.deepcopy(patch)
    for op in out:
        if op["op"] == "add":
            op["value"]["name"] = name
            op["value"]["data"] = [scale * x for x in op["value"]["data"]]
            for m in op["value"]["modifiers"]:
                if m["type"] == "histosys":
                    for k in ("hi_data", "lo_data"):
                        m["data"][k] = [scale * x for x in m["data"][k]]
    return out


@pytest.fixture
def store(tmp_path):
    exported.set_cache_dir(tmp_path / "exported")
    exported._LOADED.clear()
    yield tmp_path / "exported"
    exported.set_cache_dir(None)
    exported._LOADED.clear()


@pytest.fixture
def exports(monkeypatch):
    """Count the kernels traced and exported."""
    calls = []
    real = jax.export.export

    def counting(fn, *a, **k):
        calls.append(fn)
        return real(fn, *a, **k)

    monkeypatch.setattr(jax.export, "export", counting)
    return calls


def _pyhf_cls(spec, patch):
    """pyhf's CLs (numpy backend, scipy) of the patched workspace: the reference."""
    import jsonpatch
    import pyhf

    ws = pyhf.Workspace(jsonpatch.apply_patch(spec, patch))
    model = ws.model()
    for tolerance in (None, 1e-10):  # guard the oracle: re-seat a failed fit once
        if tolerance is not None:
            pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=tolerance))
        obs, exp = pyhf.infer.hypotest(
            1.0, ws.data(model), model, test_stat="qtilde", return_expected_set=True
        )
        obs, exp = float(obs), np.asarray(exp, dtype=float).ravel()
        if np.isfinite([obs, *exp]).all():
            break
    pyhf.set_backend("numpy", "scipy")
    return obs, exp


def test_another_signal_point_reuses_the_stored_kernel(store, exports):
    spec, patch = _analysis()
    other = _other_point(patch, "signal_500", 0.4)
    first = workflows.cls(spec, patches=[patch])
    assert len(exports) == 1 and len(list(store.glob("*.bin"))) == 1
    exported._LOADED.clear()  # as a new process: only the file is left
    second = workflows.cls(spec, patches=[other])
    assert len(exports) == 1, "the second point traced its kernel again"
    for out, p in ((first, patch), (second, other)):
        obs, exp = _pyhf_cls(spec, p)
        assert out["CLs_obs"] == pytest.approx(obs, rel=1e-4)
        np.testing.assert_allclose(out["CLs_exp"], exp, rtol=1e-4)
    assert first["CLs_obs"] != pytest.approx(second["CLs_obs"], rel=1e-3)  # not a stale result


def test_another_structure_gets_its_own_kernel_and_damaged_entries_are_rebuilt(store, exports):
    spec, patch = _analysis()
    workflows.cls(spec, patches=[patch])
    smaller = copy.deepcopy(patch)
    for op in smaller:  # the signal without its histosys: other tables
        if op["op"] == "add":
            op["value"]["modifiers"] = [
                m for m in op["value"]["modifiers"] if m["type"] != "histosys"
            ]
    out = workflows.cls(spec, patches=[smaller])
    assert len(exports) == 2 and len(list(store.glob("*.bin"))) == 2
    obs, _ = _pyhf_cls(spec, smaller)
    assert out["CLs_obs"] == pytest.approx(obs, rel=1e-4)
    for entry in [*store.glob("*.bin"), *store.glob("*.exe")]:
        entry.write_bytes(b"not a kernel")
    exported._LOADED.clear()
    again = workflows.cls(spec, patches=[smaller])
    assert len(exports) == 3 and again == out


def _symmetrised(patch: list, modifier: str) -> list:
    """The patch with the signal's variation ``modifier`` symmetrised (down = up)."""
    out = copy.deepcopy(patch)
    for op in out:
        if op["op"] == "add":
            for m in op["value"]["modifiers"]:
                if m["name"] == modifier and m["type"] == "normsys":
                    m["data"]["lo"] = m["data"]["hi"]
                elif m["name"] == modifier:
                    m["data"]["lo_data"] = list(m["data"]["hi_data"])
    return out


def _mirrored_kernel(model):
    from diffhep.stats import multimodal

    return {"mirrored": multimodal.mirrored(model)}


def test_which_variations_are_symmetrised_is_an_input_of_one_program(store, exports, tmp_path):
    """Workspaces that differ only in which parameters have a symmetrised variation (5 of the
    7 structures of sbottom RegionA's signal points) share one stored program: the
    symmetrised set (the fits' mirrored restart) is an array input, not a constant, and each
    point gets its own set and the numbers of a separately traced program (and pyhf's)."""
    from diffhep.stats.workspace import Workspace

    spec, patch = _analysis()
    points = [_symmetrised(patch, "sig_norm"), _symmetrised(patch, "sig_shape")]
    models = [Workspace(spec).patched(p).model() for p in points]
    assert [m.config.symmetric for m in models] == [("sig_norm",), ("sig_shape",)]
    masks = [exported.call(_mirrored_kernel, m)["mirrored"] for m in models]
    for model, mask, name in zip(models, masks, ("sig_norm", "sig_shape"), strict=True):
        expected = np.zeros(model.config.npars, bool)
        expected[model.config.par_slice(name)] = True  # code4/code4p: no kinks
        np.testing.assert_array_equal(np.asarray(mask), expected)
    # an exclusion's vmapped batch (stats.grid) stacks the models: each row keeps its own set
    from diffhep.stats import grid, multimodal

    stacked = jax.vmap(multimodal.mirrored)(grid._stack(models))
    np.testing.assert_array_equal(np.asarray(stacked), np.asarray(masks))
    shared = [workflows.cls(spec, patches=[p]) for p in points]
    assert len(exports) == 2 and len(list(store.glob("*.bin"))) == 2  # mask kernel + cls
    exported.set_cache_dir(tmp_path / "separate")
    exported._LOADED.clear()
    separate = workflows.cls(spec, patches=[points[1]])  # traced for this point alone
    assert len(exports) == 3
    assert separate == shared[1]
    for out, p in zip(shared, points, strict=True):
        obs, exp = _pyhf_cls(spec, p)
        assert out["CLs_obs"] == pytest.approx(obs, rel=1e-4)
        np.testing.assert_allclose(out["CLs_exp"], exp, rtol=1e-4)


@pytest.mark.slow  # ~15 s: a scan and a dozen root-finding hypotests
def test_the_upper_limit_scan_uses_the_store(store, exports):
    spec, patch = _analysis()
    a = workflows.upper_limit(spec, patches=[patch])
    n = len(exports)
    assert n >= 1
    exported._LOADED.clear()
    b = workflows.upper_limit(spec, patches=[patch])
    assert len(exports) == n
    assert a == b


def test_second_command_on_another_point_compiles_nothing(tmp_path):
    """Two ``diffhep cls`` processes: the second, on another signal point, traces and
    compiles no kernel (it loads the stored executable), and finds its few other
    compilations in the persistent cache."""
    spec, patch = _analysis()
    (tmp_path / "bkg.json").write_text(json.dumps(spec))
    (tmp_path / "a.json").write_text(json.dumps(patch))
    (tmp_path / "b.json").write_text(json.dumps(_other_point(patch, "signal_700", 2.0)))
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "DIFFHEP_CACHE_DIR": str(tmp_path / "cache"),
        "JAX_LOG_COMPILES": "1",
    }
    cmd = [sys.executable, "-m", "diffhep", "cls", str(tmp_path / "bkg.json"), "-p"]
    first = subprocess.run([*cmd, str(tmp_path / "a.json")], env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Finished tracing flat" in first.stderr
    second = subprocess.run([*cmd, str(tmp_path / "b.json")], env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    lines = second.stderr.splitlines()
    compiled = [x for x in lines if "Compiling " in x]
    hits = [x for x in lines if "Persistent compilation cache hit" in x]
    assert len(hits) == len(compiled), "\n".join(compiled)
    assert "Compiling jit(stored_kernel)" in first.stderr  # the log works: in the first
    assert "Compiling jit(stored_kernel)" not in second.stderr
    assert "Finished tracing flat" not in second.stderr
    fresh = _pyhf_cls(spec, _other_point(patch, "signal_700", 2.0))
    assert json.loads(second.stdout)["CLs_obs"] == pytest.approx(fresh[0], rel=1e-4)


def test_a_warm_cls_command_compiles_only_its_kernel(tmp_path):
    """A second ``diffhep cls`` on another point loads its kernel's executable (compiles
    nothing of it) and stages no array through a jit (jnp.asarray of numpy arrays does, one
    compilation or cache read per shape): at most the one left in Model.from_spec
    (shapesys_uncrt)."""
    spec, patch = _analysis()
    (tmp_path / "bkg.json").write_text(json.dumps(spec))
    (tmp_path / "a.json").write_text(json.dumps(patch))
    (tmp_path / "b.json").write_text(json.dumps(_other_point(patch, "signal_900", 1.5)))
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": str(tmp_path / "cache"),
           "JAX_LOG_COMPILES": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "diffhep", "cls", str(tmp_path / "bkg.json"), "-p"]
    for point in ("a", "b"):
        done = subprocess.run([*cmd, str(tmp_path / f"{point}.json")], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    compiled = [x.split(" with ")[0] for x in done.stderr.splitlines() if "Compiling " in x]
    assert len(compiled) <= 1 and all(x.endswith("jit(stage)") for x in compiled), compiled


_SAME_PROGRAM = r"""
import json, sys
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from diffhep.stats import hypotest
from diffhep.stats.workspace import Workspace
spec = json.load(open(sys.argv[1]))
texts = []
for _ in range(2):  # two models with equal (not identical) tables, as a training makes
    ws = Workspace(spec)
    model = ws.model()
    f = jax.jit(lambda m, d: hypotest.hypotest(1.0, m, d))
    texts.append(f.lower(model, jnp.asarray(ws.data(model))).as_text())
print(json.dumps([len(t) for t in texts] + [texts[0] == texts[1]]))
"""


def test_a_program_traced_again_is_the_same_program(tmp_path):
    """The hypotest of an equal model traced a second time in one process lowers to the same
    program as the first (the persistent cache's key): a cached structure plan that aliased the
    first model's tables made it another (two constants more after a training run, so every
    re-evaluation of a run in the same process recompiled its metrics)."""
    path = Path(__file__).parent / "data" / "validation" / "multichan_coupledhistosys.json"
    out = subprocess.run(
        [sys.executable, "-c", _SAME_PROGRAM, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    n1, n2, same = json.loads(out.stdout.strip().splitlines()[-1])
    assert same, f"program text differs: {n1} vs {n2} characters"


def _double(model, x):
    return {"y": 2.0 * x}


@pytest.mark.parametrize("stored", [False, True])
def test_unknown_compiler_options_fall_back_to_xla_defaults(monkeypatch, tmp_path, stored):
    """The kernels compile with XLA's older CPU emitters where jaxlib knows the option; a
    jaxlib that does not (it raises at the first compilation) gets a plain jit, same result
    (in memory, and compiled to be stored)."""
    from diffhep.stats.workspace import Workspace

    model = Workspace(example_spec()).model()
    x = np.arange(3.0)
    for options in (
        {"xla_cpu_no_such_option_in_any_jaxlib": False},
        exported._CPU_COMPILER_OPTIONS,
    ):
        monkeypatch.setattr(exported, "_CPU_COMPILER_OPTIONS", options)
        monkeypatch.setattr(exported, "_OPTIONS_KNOWN", None)
        monkeypatch.setattr(exported, "_LOADED", {})
        monkeypatch.setattr(executables, "_STORE", tmp_path / str(options) if stored else None)
        out = exported.call(_double, model, x)
        np.testing.assert_array_equal(np.asarray(out["y"]), 2.0 * x)
        # decided at the first compilation: the bogus option dropped, the real one kept
        known = "emitters" in next(iter(options)) or jax.default_backend() != "cpu"
        assert exported._OPTIONS_KNOWN is (None if known else False)


def _by_rank(value, rank):
    """A value with every string (in tuples and lists) replaced by its rank: the reference."""
    if isinstance(value, str):
        return ("#", rank[value])
    if isinstance(value, (tuple, list)):
        return tuple(_by_rank(v, rank) for v in value)
    return value


def _reference_digest(config) -> bytes:
    """The digest by its definition: names (channels, samples, modifiers, parameters, the
    POI) replaced by their rank, the modifier types, kinds and interpolation codes kept."""
    import dataclasses
    import hashlib

    names_of = {"channels": lambda v: v, "samples": lambda v: v, "par_order": lambda v: v,
                "auxdata_order": lambda v: v, "poi_name": lambda v: [v],
                "channel_nbins_items": lambda v: [c for c, _ in v],
                "modifiers": lambda v: [m for m, _ in v]}  # fmt: skip
    for keys in ("normsys_keys", "histosys_keys", "staterror_keys"):
        names_of[keys] = lambda v: [n for key in v for n in key]
    names = set()
    for field, get in names_of.items():
        stack = list(get(getattr(config, field)))
        while stack:
            v = stack.pop()
            if isinstance(v, str):
                names.add(v)
            elif isinstance(v, (tuple, list)):
                stack.extend(v)
    rank = {n: i for i, n in enumerate(sorted(names))}
    values = []
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name == "symmetric":
            continue
        if f.name in ("channel_nbins_items", "modifiers"):
            v = tuple((("#", rank[a]), b) for a, b in v)
        elif f.name in names_of:
            v = _by_rank(v, rank)
        values.append(v)
    return hashlib.sha256(repr(tuple(values)).encode()).digest()


class _Quoted:
    """Not a configuration value: its repr looks like a string literal."""

    def __repr__(self):
        return "'zzz'"


def test_configuration_digest_ranks_names(monkeypatch):
    """Points whose signal sample has another name share the digest of their configuration
    with names replaced by their rank (names that sort elsewhere, quotes and backslashes in
    names, a value whose repr only looks like a name)."""
    import dataclasses

    from diffhep.stats.workspace import Workspace

    spec, patch = _analysis()
    configs = {
        name: Workspace(spec).patched(_other_point(patch, name, 1.0)).model().config
        for name in ("signal_300", "signal_500", "aaa_first", "signal'q", "sig\\b", "x\"y'z")
    }
    configs["quoted"] = dataclasses.replace(
        configs["signal_300"], poi_name=(_Quoted(), configs["signal_300"].poi_name)
    )
    monkeypatch.setattr(exported, "_CONFIGS", {})
    digests = {}
    for name, config in configs.items():
        digests[name] = exported._config_digest(config)
        assert digests[name] == _reference_digest(config), name
        assert exported._config_digest(config) == digests[name], name  # remembered
    assert digests["signal_300"] == digests["signal_500"] == digests["signal'q"]
    assert digests["aaa_first"] != digests["signal_300"]  # its rank among the names differs
    assert digests["quoted"] != digests["signal_300"]
    real_name = dataclasses.replace(
        configs["signal_300"], poi_name=("zzz", configs["signal_300"].poi_name)
    )
    assert digests["quoted"] != exported._config_digest(real_name)


def test_jax_settings_that_change_tracing_are_part_of_the_structure():
    """A kernel traced under JAX settings that change traced programs (the default matmul
    precision; the PRNG's partitioning, other random bits from one key) is another program:
    the store hands it neither to a call under the usual settings nor the reverse. Keys of
    equal settings stay equal (also across processes:
    test_second_command_on_another_point_compiles_nothing)."""
    import diffhep

    spec, patch = _analysis()
    ws = diffhep.Workspace(spec).patched(patch)
    model = ws.model()
    data = ws.data(model)
    usual = exported.structure_key(model, data)
    with jax.default_matmul_precision("highest"):
        precise = exported.structure_key(model, data)
    with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):
        other_bits = exported.structure_key(model, data)
    assert len({usual, precise, other_bits}) == 3
    assert exported.structure_key(model, data) == usual


def test_interpolation_codes_are_part_of_the_structure():
    """Two models that differ only in an interpolation code are two programs (the codes are
    constants of the compiled program, not names: with every string ranked, normsys code1
    and code4 next to histosys code4p had one key, and the second model got the first one's
    CLs)."""
    import diffhep
    from diffhep.stats.hypotest import hypotest

    spec, patch = _analysis()
    ws = diffhep.Workspace(spec).patched(patch)
    models = {code: ws.model(modifier_settings={"normsys": {"interpcode": code},
                                                "histosys": {"interpcode": "code4p"}})
              for code in ("code4", "code1")}  # fmt: skip
    data = ws.data(models["code4"])
    keys = {code: exported.structure_key(m, data) for code, m in models.items()}
    assert keys["code4"] != keys["code1"]
    for code, model in models.items():  # compiled from plain Python, each its own
        eager = hypotest(1.0, model, data).cls_obs
        inline = jax.jit(lambda d, m=model: hypotest(1.0, m, d).cls_obs)(data)
        np.testing.assert_allclose(eager, inline, rtol=1e-9, err_msg=code)


def test_python_calls_compile_once_per_structure_and_run_inline_when_traced():
    """The public fits, tests and information matrices called from plain Python: another
    signal point of the same structure (another name, other yields) traces nothing (each
    call traced and compiled its loops again before: 6.1-6.5 s per sbottom RegionA
    hypotest); under ``jit`` the kernel runs inline in the caller's program (no nested
    compiled call) with the same numbers (checked for two of them: each compiles again)."""
    import diffhep
    from diffhep.stats import covariance as cov
    from diffhep.stats import fit as ft
    from diffhep.stats import hypotest as ht

    spec = example_spec()  # (no restarts: a shapesys only; each kernel compiles in < 1 s)
    other = copy.deepcopy(spec)
    signal = other["channels"][0]["samples"][0]
    signal["name"], signal["data"] = "signal_500", [0.4 * x for x in signal["data"]]
    models = [diffhep.Workspace(s).model() for s in (spec, other)]
    # data with a signal (mu = 1 of the first point): the best fits differ between the points
    data = models[0].expected_data(np.asarray(models[0].config.init))
    models = [(m, data) for m in models]
    calls = {
        "fit": lambda m, d: ft.fit(m, d).bestfit,
        "fixed_poi_fit": lambda m, d: ft.fixed_poi_fit(1.0, m, d).twice_nll,
        "hypotest": lambda m, d: ht.hypotest(1.0, m, d).cls_exp,
        "qmu_tilde": lambda m, d: ht.qmu_tilde(3.0, m, d),
        "asimov_data": lambda m, d: ht.asimov_data(1.0, m, d),
        "hessian": lambda m, d: ft.hessian(m, m.config.init, d),
        "fisher_information": lambda m, d: ft.fisher_information(m, m.config.init),
        "prefit_yields": lambda m, d: [  # (its constraint terms and variations)
            s["yields"] + s["stdev"]
            for s in cov.prefit_yields(m, d)["singlechannel"]["samples"].values()
        ],
    }
    traced = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for name, f in calls.items():
            first = f(*models[0])
            traced.clear()
            second = f(*models[1])
            assert not traced, f"{name}: another point traced {len(traced)} function(s) again"
            assert not np.allclose(first, second, rtol=1e-6), f"{name}: a stale result"
            if name in ("hypotest", "fisher_information"):  # (their numbers against pyhf:
                # test_hypotest, test_likelihood; each compiles again here)
                with mock.patch.object(exported, "call", side_effect=AssertionError("nested")):
                    inline = jax.jit(f)(*models[1])  # the model an argument: traced
                    closed = jax.jit(lambda d, f=f: f(models[1][0], d))(data)  # a constant
                np.testing.assert_allclose(inline, second, rtol=1e-9, atol=1e-12, err_msg=name)
                np.testing.assert_allclose(closed, second, rtol=1e-9, atol=1e-12, err_msg=name)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # a traced static option (the tolerance under vmap) runs inline too, call after call
    model = models[1][0]
    for _ in range(2):
        steps = jax.vmap(lambda tol: ft.fit(model, data, tol=tol).n_steps)(np.array([1e-12, 1e-3]))
        assert steps[0] >= steps[1] >= 1


def _total(model, x):  # a kernel (module level, as exported.call needs)
    return (model.nominal.sum() + x,)


def test_kernels_in_memory_are_bounded_least_recently_used_first(store, exports, monkeypatch):
    """A long process (the worker, a Python session over many analyses) keeps at most
    ``MAX_LOADED`` kernels in memory: the least recently used goes, and comes back from the
    store without being traced again."""
    import diffhep
    from specs import channel, model_spec, normfactor, sample

    monkeypatch.setattr(exported, "MAX_LOADED", 2)
    models = [  # three structures: 1, 2 and 3 bins
        diffhep.Model.from_spec(model_spec(channel("SR", sample("s", [1.0] * n, normfactor()))))
        for n in (1, 2, 3)
    ]
    x = np.float64(0.5)
    sums = [float(exported.call(_total, m, x)[0]) for m in models[:2]]
    assert sums == [1.5, 2.5] and len(exports) == 2
    assert float(exported.call(_total, models[0], x)[0]) == 1.5  # used again: the newest
    assert float(exported.call(_total, models[2], x)[0]) == 3.5  # the 2-bin one goes
    key = [f"{__name__}._total-" + exported.structure_key(m, x) for m in models]
    assert list(exported._LOADED) == [key[0], key[2]] and len(exports) == 3
    assert float(exported.call(_total, models[1], x)[0]) == 2.5  # back from the store
    assert len(exports) == 3 and len(exported._LOADED) == 2  # not traced again
