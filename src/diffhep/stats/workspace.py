"""pyhf JSON workspaces: the validated document, its measurements, model and data, patched
copies, write.

The workspace is the contract with the rest of the HEP world: diffhep reads and writes exactly
the documents `pyhf <https://pyhf.readthedocs.io>`_ does. Reading and schema validation are in
:mod:`diffhep.stats.schema`, patches and patchsets in :mod:`diffhep.stats.patches` (their
functions are importable from here too).

Example:
    >>> import diffhep
    >>> ws = diffhep.Workspace(diffhep.stats.workspace.example_spec())
    >>> ws.channel_names
    ['singlechannel']
    >>> model = ws.model()
    >>> model.config.par_names
    ['mu', 'uncorr_bkguncrt[0]', 'uncorr_bkguncrt[1]']
"""

from __future__ import annotations

import copy
import gzip
import json
from importlib import resources
from pathlib import Path

from ..errors import DiffhepError, SchemaError
from ..writers import write_atomic
from .model import Model
from .patches import _local_op, apply_patch, digest, load_patch, patch_schema, verify_patchset
from .schema import SCHEMA_VERSION, load_json, validate
from .validation import check_workspace, count

__all__ = [
    "Workspace",
    "apply_patch",
    "digest",
    "example_spec",
    "load_json",
    "load_patch",
    "patch_schema",
    "validate",
    "verify_patchset",
]


class Workspace:
    """A validated pyhf workspace.

    Args:
        spec: The workspace document (a dict following pyhf's ``workspace.json`` schema).
        file: Where it came from, for error messages.
        validate_schema: Validate against the schema (default ``True``).
        checked_samples: ``id`` of the sample objects of ``spec`` whose content was checked
            already (see :func:`~diffhep.stats.validation.check_workspace`).
    """

    def __init__(
        self,
        spec: dict,
        *,
        file: str | None = None,
        validate_schema: bool = True,
        checked_samples: frozenset[int] = frozenset(),
    ):
        if validate_schema:
            validate(spec, "workspace.json", file=file)
        self.spec = spec
        self.file = file
        #: How many patches :meth:`patched` applied to the workspace read.
        self.applied_patches = 0
        self._check_consistency(checked_samples)

    @classmethod
    def load(cls, path: str | Path, patches=()) -> Workspace:
        """Read a workspace file (``-`` for stdin) and apply JSON patches (lists of ops)."""
        spec, name = load_json(path, schema="workspace.json")
        for patch in patches:
            spec = apply_patch(spec, patch, file=name)
        return cls(spec, file=name)

    def _check_consistency(self, checked_samples=frozenset()):
        check_workspace(self.spec, self.file, checked_samples=checked_samples)
        obs = {o["name"] for o in self.spec["observations"]}
        for i, channel in enumerate(self.spec["channels"]):
            nbins = len(channel["samples"][0]["data"])
            if channel["name"] not in obs:
                raise DiffhepError(
                    f"channel {channel['name']!r} has no observation",
                    file=self.file,
                    where="observations",
                    fix=f"add {{'name': {channel['name']!r}, 'data': [...]}} to observations",
                )
            for j, sample in enumerate(channel["samples"]):
                if len(sample["data"]) != nbins:
                    raise DiffhepError(
                        f"sample {sample['name']!r} has {count(len(sample['data']), 'bin')}, "
                        f"the channel has {nbins}",
                        file=self.file,
                        where=f"channels[{i}].samples[{j}].data",
                        fix="every sample of a channel needs one number per bin",
                    )
        for k, o in enumerate(self.spec["observations"]):
            ch = next((c for c in self.spec["channels"] if c["name"] == o["name"]), None)
            nbins = len(ch["samples"][0]["data"]) if ch is not None else None
            if nbins is not None and len(o["data"]) != nbins:
                raise DiffhepError(
                    f"observation {o['name']!r} has {count(len(o['data']), 'bin')}, the channel "
                    f"has {nbins}",
                    file=self.file,
                    where=f"observations[{k}].data",
                    fix=f"give one observed count per bin of channel {o['name']!r} "
                    f"({count(nbins, 'number')})",
                )

    @property
    def channel_names(self) -> list[str]:
        """Channel names, sorted as pyhf orders them in the model."""
        return sorted({c["name"] for c in self.spec["channels"]})

    @property
    def measurement_names(self) -> list[str]:
        return [m["name"] for m in self.spec["measurements"]]

    def measurement(self, name: str | None = None) -> dict:
        """The measurement called ``name`` (the first one if ``None``)."""
        if name is None:
            return self.spec["measurements"][0]
        for m in self.spec["measurements"]:
            if m["name"] == name:
                return m
        raise DiffhepError(
            f"no measurement named {name!r}",
            file=self.file,
            where="measurements",
            fix=f"use one of: {', '.join(self.measurement_names)}",
        )

    def model(
        self,
        measurement: str | None = None,
        *,
        modifier_settings: dict | None = None,
        poi_name: str | None = None,
    ) -> Model:
        """Build the HistFactory :class:`~diffhep.stats.model.Model` of a measurement.

        Args:
            measurement: Measurement name (default: the first).
            modifier_settings: Interpolation codes per modifier type, as in pyhf, e.g.
                ``{"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}}``.
                Default: pyhf's (``code4`` and ``code4p``).
            poi_name: Override the measurement's POI.
        """
        meas = self.measurement(measurement)
        model_spec = {
            "channels": self.spec["channels"],
            "parameters": meas["config"].get("parameters", []),
        }
        return Model.from_spec(
            model_spec,
            poi_name=meas["config"]["poi"] if poi_name is None else poi_name,
            modifier_settings=modifier_settings,
            file=self.file,
        )

    def data(self, model: Model, include_auxdata: bool = True) -> list[float]:
        """Observed data in the model's bin order, followed by its auxiliary data."""
        obs = {o["name"]: o["data"] for o in self.spec["observations"]}
        data = [x for c in model.config.channels for x in obs[c]]
        if include_auxdata:
            data += [float(x) for x in model.config.auxdata]
        return data

    def patched(self, patch: list[dict]) -> Workspace:
        """A new workspace with a JSON patch applied.

        When every operation adds or replaces a sample, or removes a sample or a channel
        (what published signal patches do), only the new samples are validated against the
        schema, and the lists that lost an item must not be empty: the rest of the document
        was valid and stays so. Otherwise, or if a sample is invalid, the whole document is
        (so that errors name their place in it).
        """
        doc = apply_patch(self.spec, patch, file=self.file)
        local = all(_local_op(op) for op in patch) and all(
            c.get("samples") for c in doc.get("channels") or [{}]
        )
        try:
            for op in patch if local else ():
                if op["op"] != "remove":
                    validate(op["value"], "defs.json#/definitions/sample")
        except SchemaError:
            local = False
        # the samples shared with this (checked) workspace need no second content check
        shared = frozenset(id(s) for c in self.spec["channels"] for s in c["samples"])
        new = Workspace(doc, file=self.file, validate_schema=not local, checked_samples=shared)
        new.applied_patches = self.applied_patches + 1
        return new

    def to_json(self) -> str:
        return json.dumps(self.spec, indent=2, sort_keys=True)

    def write(self, path: str | Path) -> None:
        """Write the workspace as JSON (validated before writing)."""
        validate(self.spec, "workspace.json", file=str(path))
        write_atomic(Path(path), self.to_json() + "\n")

    def copy(self) -> Workspace:
        return Workspace(copy.deepcopy(self.spec), file=self.file, validate_schema=False)


def example_spec() -> dict:
    """pyhf's ``uncorrelated_background`` example as a workspace (2 bins, shapesys)."""
    return {
        "version": SCHEMA_VERSION,
        "channels": [
            {
                "name": "singlechannel",
                "samples": [
                    {
                        "name": "signal",
                        "data": [12.0, 11.0],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "background",
                        "data": [50.0, 52.0],
                        "modifiers": [
                            {"name": "uncorr_bkguncrt", "type": "shapesys", "data": [3.0, 7.0]}
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "singlechannel", "data": [51.0, 48.0]}],
        "measurements": [{"name": "Measurement", "config": {"poi": "mu", "parameters": []}}],
    }


def builtin_example(name: str = "sbottom_RegionA") -> tuple[dict, list[dict]]:
    """A real published likelihood shipped with diffhep (ATLAS sbottom, ins1748602).

    Returns:
        The background-only workspace and the signal patch for (1300, 850, 60) GeV.
    """
    root = resources.files("diffhep") / "data"
    spec = json.loads(gzip.decompress((root / f"{name}_BkgOnly.json.gz").read_bytes()))
    patch = json.loads(gzip.decompress((root / f"{name}_patch_1300_850_60.json.gz").read_bytes()))
    return spec, patch
