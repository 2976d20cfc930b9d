"""A finished run for notebooks: config, metrics, history and ``hist.Hist`` histograms.

:func:`load_run` reads a run directory (no data, no JAX compilation): the configuration,
the test-set metrics (``summary.json``), the per-epoch history (``metrics.jsonl``), the
test-set histograms of every channel and event set (``histograms.json``, written with the
run) as ``hist.Hist`` objects with ``Weight`` storage (sum of weights and of squared
weights per bin; under/overflow are already folded into the outer bins, as in the fit) and
the fit diagnostics of the trained analysis (``diagnostics.json``, written with the report:
``run.pulls``, ``run.ranking``, ``run.yields``; :mod:`diffhep.runs.diagnostics`).

(:func:`diffhep.runs.prepare.restore_run` is the other loader: it rebuilds the pipeline, the data
and the model of a run, to continue working with them.)

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> write_histograms(d, {"SR": {"observable": "nn", "edges": [0, 0.5, 1],
    ...     "sumw": {"sig": [1.0, 3.0]}, "sumw2": {"sig": [0.5, 1.5]}}})
    >>> h = read_histograms(d)["SR"]["sig"]
    >>> h.values().tolist(), h.variances().tolist(), h.axes[0].edges.tolist()
    ([1.0, 3.0], [0.5, 1.5], [0.0, 0.5, 1.0])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..writers import write_atomic
from .config import Config, ConfigError, load_config
from .diagnostics import DIAGNOSTICS_FORMAT

__all__ = [
    "HISTOGRAMS_FORMAT",
    "RunResult",
    "load_run",
    "read_diagnostics",
    "read_histograms",
    "read_history",
    "write_histograms",
]

HISTOGRAMS_FORMAT = "diffhep-histograms/1"


def histograms_document(pipe, params, hists) -> dict:
    """``{channel: {observable, edges, sumw: {event set: ...}, sumw2: {...}}}`` of the
    hard histograms ``{(channel, event set): (sumw, sumw2)}`` of a pipeline."""
    out = {}
    for ch, binning in zip(pipe.analysis.channels, params.binnings, strict=True):
        names = pipe.analysis.event_sets
        out[ch.name] = {
            "observable": ch.observable,
            "edges": np.asarray(binning.edges(), dtype=float).tolist(),
            "sumw": {n: np.asarray(hists[(ch.name, n)][0], float).tolist() for n in names},
            "sumw2": {n: np.asarray(hists[(ch.name, n)][1], float).tolist() for n in names},
        }
    return out


def write_histograms(run_dir, channels: dict) -> None:
    """Write ``histograms.json`` (atomically) from :func:`histograms_document`'s output."""
    doc = {"format": HISTOGRAMS_FORMAT, "set": "test", "channels": channels}
    write_atomic(Path(run_dir) / "histograms.json", json.dumps(doc, indent=1))


def read_histograms(run_dir) -> dict:
    """``{channel: {event set: hist.Hist}}`` from a run's ``histograms.json``."""
    import hist

    path = Path(run_dir) / "histograms.json"
    if not path.is_file():
        raise ConfigError(
            "the run has no histograms.json",
            file=str(path),
            fix=f"recompute the run's artefacts: diffhep evaluate {Path(run_dir)}",
        )
    doc = json.loads(path.read_text())
    if doc.get("format") != HISTOGRAMS_FORMAT:
        raise ConfigError(f"unknown format {doc.get('format')!r}", file=str(path), where="format")
    out = {}
    for name, ch in doc["channels"].items():
        label = "neural observable" if ch["observable"] == "nn" else ch["observable"]
        out[name] = {}
        for sample, sumw in ch["sumw"].items():
            h = hist.Hist(
                hist.axis.Variable(ch["edges"], name="observable", label=label, flow=False),
                storage=hist.storage.Weight(),
                name=sample,
                label=f"{name}: {sample}",
            )
            h.view()["value"] = sumw
            h.view()["variance"] = ch["sumw2"][sample]
            out[name][sample] = h
    return out


@dataclass
class RunResult:
    """A finished run: ``config`` (:class:`~diffhep.runs.config.Config`), ``metrics`` (the
    test-set summary), ``history`` (one dict per epoch), ``hists`` (``{channel: {event set:
    hist.Hist}}``, the test-set histograms), ``diagnostics`` (the fit diagnostics of the
    trained analysis, ``diagnostics.json``, or ``None``: see :attr:`pulls`, :attr:`ranking`,
    :attr:`yields`) and ``path``."""

    path: Path
    config: Config
    metrics: dict
    history: list = field(default_factory=list)
    hists: dict = field(default_factory=dict)
    diagnostics: dict | None = None

    def __repr__(self) -> str:
        chans = ", ".join(f"{c}: {len(s)} sets" for c, s in self.hists.items())
        return f"RunResult({str(self.path)!r}, channels=[{chans}])"

    def _diagnostic(self, key: str):
        if self.diagnostics is None:
            failed = (self.metrics.get("failed") or {}).get("diagnostics.json")
            raise ConfigError(
                "the run has no fit diagnostics"
                + (f" (they failed: {failed})" if failed else " (diagnostics.json missing)"),
                file=str(self.path / "diagnostics.json"),
                fix=f"recompute the run's artefacts with its report: diffhep evaluate {self.path}",
            )
        return self.diagnostics[key]

    @property
    def pulls(self) -> dict:
        """Post-fit pulls and constraints of the trained analysis' nuisance parameters
        (``{"parameters": [{"name", "modifier", "bestfit", "uncertainty", "nominal",
        "prefit_uncertainty", "pull", "constraint"}], "normfactors": [...]}``, as
        :func:`diffhep.stats.diagnostics.pulls` and ``diffhep pulls``), from a fit of
        ``workspace.json`` to the run's observed data if it has a data sample, otherwise
        to its Asimov data at the nominal parameters (POI = 1); ``diagnostics["data"]``
        says which (:mod:`diffhep.runs.diagnostics`).

        Raises:
            ConfigError: The run has no ``diagnostics.json`` (written with the report).
        """
        return self._diagnostic("pulls")

    @property
    def ranking(self) -> dict:
        """Impacts of every parameter on the POI, pre-/post-fit, up/down, by refits (as
        ``diffhep ranking``): ``{"poi", "poi_bestfit", "poi_uncertainty", "method",
        "ranking": [{"parameter", "prefit_up", "prefit_down", "postfit_up",
        "postfit_down"}]}``, largest post-fit impact first; same fit as :attr:`pulls`.

        Raises:
            ConfigError: The run has no ``diagnostics.json`` (written with the report).
        """
        return self._diagnostic("ranking")

    @property
    def yields(self) -> dict:
        """Pre- and post-fit yields per channel, sample and bin with their uncertainties
        (``{"prefit", "postfit"}`` of :func:`diffhep.stats.covariance.yields` dictionaries,
        as ``diffhep yields``; post-fit from the full covariance); same fit as :attr:`pulls`.

        Raises:
            ConfigError: The run has no ``diagnostics.json`` (written with the report).
        """
        return self._diagnostic("yields")


def load_run(run_dir) -> RunResult:
    """Load a finished run directory for interactive work.

    Raises:
        ConfigError: If the directory is not a finished run (files missing).
    """
    run_dir = Path(run_dir)
    for name in ("config.yaml", "summary.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"not a finished diffhep run ({name} missing)",
                file=str(run_dir),
                fix="train first: diffhep train CONFIG --out DIR",
            )
    history = read_history(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    return RunResult(
        path=run_dir,
        config=load_config(run_dir / "config.yaml"),
        metrics=json.loads((run_dir / "summary.json").read_text()),
        history=history,
        hists=read_histograms(run_dir),
        diagnostics=read_diagnostics(run_dir),
    )


def read_history(run_dir) -> list[dict]:
    """The per-epoch records of ``run_dir`` (``metrics.jsonl``: a JSON object a line)."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_diagnostics(run_dir) -> dict | None:
    """The run's ``diagnostics.json`` (:mod:`diffhep.runs.diagnostics`), ``None`` if absent."""
    path = Path(run_dir) / "diagnostics.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("format") != DIAGNOSTICS_FORMAT:
        raise ConfigError(f"unknown format {doc.get('format')!r}", file=str(path), where="format")
    return doc
