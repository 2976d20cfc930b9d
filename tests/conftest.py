"""Shared test setup: float64 JAX and the published sbottom likelihoods (ATLAS ins1748602)."""

from __future__ import annotations

import gc
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import jax
import pytest

import affinity
import session_shared

jax.config.update("jax_enable_x64", True)
# no user-level persistent compilation cache in tests (the CLI enables one): entries written by
# other processes with other XLA flags (e.g. simulated devices) must not be read back here
# (the session's own cache, shared by the pytest workers only: pytest_configure below)
os.environ["DIFFHEP_CACHE_DIR"] = ""
# no fit diagnostics in the reports of the runs tests train (their fits compile for ~13 s of
# CPU per model structure and process); tests/test_report.py turns them on where it tests them
os.environ["DIFFHEP_REPORT_DIAGNOSTICS"] = "0"

_CACHE_ENV = "DIFFHEP_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    """A persistent JAX compilation cache for this pytest session only, shared by its xdist
    workers (they inherit the directory through the environment: the controller configures
    before it starts them). It only pays where the same computation is compiled again (a
    function re-jitted per call on a model of the same structure): the failed-plot test of
    tests/test_report.py evaluates the tiny run twice, 41.6 -> 31.7 s of CPU, that file
    103.7 -> 94.5 s. Only programs that took at least half a second to compile are stored:
    writing each of the suite's ~9,600 compilations (most of them single operations run
    outside jit, ~10 ms each) cost more than it saved (2026-12-07, side by side on the two
    cores, then swapped: test_adversarial and test_scaling in one process 83.7 and 88.1 s
    storing all, 75.7 and 81.5 s storing those of >= 0.5 s; test_histograms, test_cuts and
    test_likelihood 62.6 and 68.2 s storing all, 59.8 and 58.5 s those of >= 1 s). Only this
    session's pytest processes read it: subprocesses do not (``DIFFHEP_CACHE_DIR`` is empty),
    nor does a later session."""
    config._diffhep_owned = []
    # each xdist worker on a core of its own (tests/affinity.py), before JAX starts its threads
    affinity.remember()
    affinity.pin_worker()
    if not os.environ.get(_CACHE_ENV):
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="diffhep-test-jax-cache-")
        config._diffhep_owned.append(_CACHE_ENV)
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    # results built once per session for every worker (tests/session_shared.py)
    if not os.environ.get(session_shared.ENV):
        os.environ[session_shared.ENV] = tempfile.mkdtemp(prefix="diffhep-test-shared-")
        config._diffhep_owned.append(session_shared.ENV)


def pytest_unconfigure(config):
    for env in getattr(config, "_diffhep_owned", ()):
        shutil.rmtree(os.environ.pop(env), ignore_errors=True)


SBOTTOM_TARBALL = Path(__file__).parent / "data" / "pyhf-ins1748602-probability-models.tar.gz"


@pytest.fixture(scope="session")
def sbottom_dir(tmp_path_factory) -> Path:
    """Directory holding RegionA, RegionB and RegionC (BkgOnly.json + patch.sbottom_*.json)."""
    dest = tmp_path_factory.mktemp("sbottom")
    with tarfile.open(SBOTTOM_TARBALL, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    for candidate in [dest, *sorted(p for p in dest.rglob("*") if p.is_dir())]:
        if all(
            (candidate / r / "BkgOnly.json").is_file() for r in ("RegionA", "RegionB", "RegionC")
        ):
            return candidate
    raise FileNotFoundError(f"RegionA/B/C not found in {SBOTTOM_TARBALL}")


#: A tiny but complete training run (blobs, a network, cuts of two directions, a norm
#: systematic, MC statistics, BCE loss, ATLAS-style plots): about 20 s on a loaded machine.
TINY_RUN = [
    "data.n_per_blob=800",
    "observable.hidden=[8]",
    "observable.activation=tanh",
    "training.epochs=2",
    "training.batch_size=400",
    "analysis.mc_stat=true",
    "analysis.norm_systematics=[{name: bkg_norm, samples: [background], lo: 0.9, hi: 1.1}]",
    "selection.cuts=[{feature: x0, direction: '>'}, {feature: x1, direction: window}]",
    "training.loss=bce",
    "report.style=ATLAS",
]


@pytest.fixture(scope="session")
def tiny_run() -> Path:
    """The run directory of :data:`TINY_RUN`, trained once per session by the first worker
    that needs it (tests/session_shared.py). Tests read it; tests that evaluate, resume or
    damage a run work on a copy."""
    from diffhep.runs.config import load_config
    from diffhep.runs.prepare import DEMO_CONFIG
    from diffhep.runs.train import train_run

    def train(out):
        train_run(load_config(DEMO_CONFIG, TINY_RUN), out, progress=False)

    return session_shared.directory("tiny_run", train)


#: Test modules run with JAX's strict dtype promotion (as equinox and optimistix test): an
#: implicit promotion (float32 with float64, floats times a bool mask) in the code they call
#: is an error there, to be written as an explicit cast. The other modules keep the standard
#: promotion because code they reach still promotes implicitly (issue 19), or was not run
#: with it yet (the statistics' bool-mask products are explicit selections since the
#: fits' test modules below were switched on):
#: - optax's Adam raises a Python float to its int32 step count (bias correction), so every
#:   training with Adam.
#: Session fixtures (e.g. ``tiny_run``) are built before a module's setting, with the standard
#: promotion.
STRICT_PROMOTION = {
    "test_apply",
    "test_calibration",
    "test_config_defaults",
    "test_config_reference",
    "test_dask_apply",
    "test_deepsets",
    "test_fit",
    "test_gradients",
    "test_hessian",
    "test_hypotest",
    "test_histograms",
    "test_layers",
    "test_likelihood",
    "test_onnx_export",
    "test_plot_images",
    "test_plotting",
    "test_readme",
    "test_report_content",
    "test_sources",
    "test_workspace_io",
    "test_solver",
}


@pytest.fixture(autouse=True, scope="module")
def _dtype_promotion(request):
    name = getattr(request.module, "__name__", "").rpartition(".")[2]
    mode = "strict" if name in STRICT_PROMOTION else "standard"
    with jax.numpy_dtype_promotion(mode):
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    One long pytest process compiles thousands of functions; each executable holds memory
    maps, and the kernel's per-process limit (``vm.max_map_count``, 65530 by default) is
    reached late in the run, where XLA then fails in unrelated tests.
    """
    yield
    jax.clear_caches()
    gc.collect()
