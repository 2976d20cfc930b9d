"""What the ``diffhep_*`` columns of ``diffhep apply``'s outputs mean: the analysis selection.

The run's ``config.yaml`` says which filter (of which sample), which weight expression and
which weight columns apply (:func:`analysis_selection`); :func:`metadata` is the description
written into every output under the key ``diffhep_metadata`` (:func:`read_metadata` reads it).

Example:
    >>> sel = AnalysisSelection(sample="ttbar", filter="njet >= 2", weight="w * sf")
    >>> sel.expressions(), sel.weight_columns
    (['njet >= 2', 'w * sf'], ('sf', 'w'))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..writers import METADATA_KEY
from . import sources

__all__ = ["PREFIX", "AnalysisSelection", "analysis_selection", "metadata", "read_metadata"]

PREFIX = "diffhep_"


# ----------------------------------------------------------------- the analysis selection
@dataclass(frozen=True)
class AnalysisSelection:
    """What ``diffhep_selected`` and the weight columns of an output are, from the run's
    config: the sample whose filter applies (None: no sample chosen), its ``filter``
    expression (None: no filter), the ``weight`` expression written as ``diffhep_weight``
    (None: none applies) and the ``weight_expressions`` whose columns are copied."""

    sample: str | None = None
    filter: str | None = None
    weight: str | None = None
    weight_expressions: tuple[str, ...] = ()
    constants: dict = field(default_factory=dict)
    note: str = ""

    @property
    def weight_columns(self) -> tuple[str, ...]:
        """The file columns the weight expressions read (constants excluded), sorted."""
        exprs = [*self.weight_expressions, *([self.weight] if self.weight else [])]
        return tuple(c for c in sources.columns_of(exprs) if c not in self.constants)

    def expressions(self) -> list[str]:
        """The expressions evaluated besides the copied columns: filter, weight."""
        return [e for e in (self.filter, self.weight) if e]

    def describe(self, prep: dict) -> dict:
        """``{column: meaning}`` of the ``diffhep_*`` output columns."""
        cuts = (prep.get("selection") or {}).get("expression") or "none"
        if self.filter:
            who = f"of sample {self.sample!r}" if self.sample else "shared by every sample"
            sel = f"the analysis selection: the filter {who} ({self.filter}) AND the cuts"
        else:
            sel = "the analysis selection: the selection cuts"
        out = {
            PREFIX + "selected": f"{sel} ({cuts})" + (f"; {self.note}" if self.note else ""),
        }
        if prep.get("observable") is not None:
            out[PREFIX + "score"] = "the neural observable in [0, 1], for every event"
        for ch in prep.get("channels", []):
            out[PREFIX + ch["output"]] = (
                f"bin of channel {ch['name']!r} (0 .. {len(ch['edges']) - 2}) of events "
                f"passing {PREFIX}selected (and the channel's region), -1 otherwise"
            )
        if self.weight:
            who = f"of sample {self.sample!r}" if self.sample else "of every sample"
            out[PREFIX + "weight"] = (
                f"the event weight {who}: {self.weight} (before the config's yield/scale "
                "normalisation)"
            )
        return out


def _read_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the run's config ({exc})", file=str(path)) from None
    return cfg if isinstance(cfg, dict) else {}


def analysis_selection(run_dir, sample: str | None = None) -> AnalysisSelection:
    """The :class:`AnalysisSelection` of a run (its ``config.yaml``) for ``sample``.

    ``sample``: the sample whose filter (and weight) applies. By default: the filter all
    samples share (none if their filters differ, which the metadata note says); the weight
    expression all samples share, and the columns of every sample's weight expressions.
    Runs on generated or ``.npz`` data (no ntuple samples) have no filter and no weights.

    Raises:
        DataError: ``sample`` is not a sample of the run.
    """
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    samples = [s for s in (cfg.get("analysis") or {}).get("samples") or [] if isinstance(s, dict)]
    names = [s.get("name") for s in samples]
    if sample is not None and sample not in names:
        raise DataError(
            f"no sample {sample!r} in the run's config",
            file=str(run_dir / "config.yaml"),
            where="--sample",
            fix=f"give one of: {', '.join(map(str, names)) or '(the run has no samples)'}",
        )
    ntuples = any(s.get("files") for s in samples)
    if not ntuples:
        return AnalysisSelection(sample=sample, note="the run has no ntuple samples: no filter")
    data = cfg.get("data") or {}
    constants = dict(data.get("constants") or {})
    chosen = [s for s in samples if s.get("name") == sample] if sample else samples
    variations = {}
    for sys in (cfg.get("analysis") or {}).get("shape_systematics") or []:
        for v in (sys.get("up"), sys.get("down")):
            if isinstance(v, dict) and v.get("weight"):
                variations.setdefault(sys.get("sample"), []).append(v["weight"])
    exprs = []
    for s in chosen:
        exprs += [s.get("weight") or "1", *variations.get(s.get("name"), [])]
    filters = {s.get("filter") or None for s in chosen}
    weights = {s.get("weight") or "1" for s in chosen}
    note = ""
    if len(filters) > 1:
        note = (
            "the samples' filters differ, none is applied; choose the sample whose filter "
            "applies with --sample (" + ", ".join(map(str, names)) + ")"
        )
    return AnalysisSelection(
        sample=sample,
        filter=next(iter(filters)) if len(filters) == 1 else None,
        weight=next(iter(weights)) if len(weights) == 1 else None,
        weight_expressions=tuple(dict.fromkeys(exprs)),
        constants=constants,
        note=note,
    )


def metadata(run_dir, prep: dict, selection: AnalysisSelection) -> dict:
    """The description written into every output (:func:`read_metadata` reads it)."""
    return {
        "producer": "diffhep apply",
        "run": str(Path(run_dir).resolve()),
        "sample": selection.sample,
        "filter": selection.filter,
        "cuts": (prep.get("selection") or {}).get("expression"),
        "weight": selection.weight,
        "weight_columns": list(selection.weight_columns),
        "columns": selection.describe(prep),
    }


def read_metadata(path) -> dict | None:
    """The ``diffhep_metadata`` of an output of ``diffhep apply`` (parquet or ROOT), or None."""
    path = Path(path)
    if path.suffix.lower() == ".root":
        import uproot

        with uproot.open(path) as f:
            if METADATA_KEY not in f:
                return None
            return json.loads(str(f[METADATA_KEY]))
    import pyarrow.parquet as pq

    # the footer's key-value metadata: the Arrow schema's copy, unless replaced at the end
    # (AtomicWriter.set_metadata: e.g. the input warnings found while scoring)
    meta = pq.ParquetFile(path).metadata.metadata or {}
    raw = meta.get(METADATA_KEY.encode())
    return json.loads(raw) if raw else None
