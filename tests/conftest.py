"""Shared test setup: float64 JAX and the published sbottom likelihoods (ATLAS ins1748602)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# no persistent compilation cache in tests (the CLI enables one): entries written by other
# processes with other XLA flags (e.g. simulated devices) must not be read back here
os.environ["DIFFHEP_CACHE_DIR"] = ""

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
