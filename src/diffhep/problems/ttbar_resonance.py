"""A semileptonic Z' -> ttbar resonance search in NanoAOD layout (issue 23's analysis).

:func:`generate` writes the samples of the search as ROOT (TTree ``Events``) and/or parquet
files in chunks, with the branch names and types of CMS NanoAOD (checked against the real
CMS Open Data file in ``tests/``): ``nJet``, ``Jet_pt/eta/phi/mass/btagDeepFlavB/
hadronFlavour``, one lepton (``Muon_*`` or ``Electron_*``), ``MET_pt/phi``, ``genWeight``,
``LHE_HT``, ``LHEScaleWeight`` (9), ``LHEPdfWeight``, ``PSWeight`` (4), ``btagWeight_DeepCSVB``,
``run``/``luminosityBlock``/``event``. Samples (:data:`SAMPLES`): three Z' masses, ttbar (NLO
like: 15% negative ``genWeight``), single top, W+jets, QCD multijet (small, with a large
normalisation uncertainty in the example config) and pseudo-data (``data``: the backgrounds
drawn with Poisson counts at the luminosity, unit weights, no signal).

Systematic variations stored as an analysis has them:

- **feature level**: ``Jet_pt_jesAbsoluteUp/Down``, ``Jet_pt_jesRelativeUp/Down``,
  ``Jet_pt_jesFlavorQCDUp/Down`` and ``Jet_pt_jerUp/Down`` (NanoAOD-tools' names): the jets'
  pT after a shift (or another smearing width); a config renames ``Jet_pt`` to them
  (``columns: {Jet_pt: Jet_pt_jerUp}``) and every feature and filter is re-evaluated, so
  events migrate in and out of the selection (MET is not re-computed);
- **weights**: ``btagWeight_DeepCSVB_bUp/bDown/lightUp/lightDown`` (b-tagging scale
  factors), ``LHEScaleWeight`` (muR, muF: NanoAOD's order, [4] nominal), ``LHEPdfWeight``
  (a reduced set: [0] nominal, [1]/[2] one Hessian-like up/down pair), ``PSWeight``
  (ISR up, FSR up, ISR down, FSR down), a top-pT-like reweighting from ``LHE_HT``
  (``exp(0.0615 - 0.0005 * LHE_HT / 2)``, written in the config, one-sided).

Not NanoAOD's: ``genWeight`` is normalised so that its sum over a sample is, on average, the
sample's expected events at the generated luminosity (real NanoAOD divides by the ``Runs``
tree's ``genEventSumw``); ``samples.json`` records the expected yields. uproot writes the
counters of jagged ROOT branches (``nJet``, ...) as int32 where NanoAOD has uint32 (the
parquet files have uint32).

Events are drawn per chunk from ``numpy.random.default_rng([seed, sample, chunk])``: the same
seed and chunk size give the same files, whatever is generated before; memory follows the
chunk size. Example (``diffhep generate ttbar-resonance --events 100000 --out DIR``):

    >>> import tempfile
    >>> out = generate(tempfile.mkdtemp(), events=700, seed=1, formats=("parquet",), lumi=0.01)
    >>> sorted(out["samples"])[:3], out["samples"]["ttbar"]["events"]
    (['data', 'qcd', 'single_top'], 350)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..writers import AtomicWriter, write_atomic

__all__ = ["JES_SOURCES", "SAMPLES", "generate", "generate_chunk"]

#: Sample -> (kind, Z' mass, expected events per fb^-1 before any selection, fraction of
#: the generated MC events, fraction of negative genWeight).
SAMPLES = {
    "zprime_1000": ("zprime", 1000.0, 150.0, 0.05, 0.0),
    "zprime_1500": ("zprime", 1500.0, 60.0, 0.05, 0.0),
    "zprime_2000": ("zprime", 2000.0, 25.0, 0.05, 0.0),
    "ttbar": ("ttbar", None, 20000.0, 0.50, 0.15),
    "single_top": ("single_top", None, 2500.0, 0.10, 0.02),
    "wjets": ("wjets", None, 8000.0, 0.15, 0.0),
    "qcd": ("qcd", None, 1500.0, 0.10, 0.0),
}
#: Jet energy scale sources: relative shift ``a + b / pT + c |eta|`` (per jet).
JES_SOURCES = {"Absolute": (0.012, 0.6, 0.0), "Relative": (0.004, 0.0, 0.012),
               "FlavorQCD": (0.010, 0.0, 0.0)}  # fmt: skip
BTAG_WP = 0.3  # the medium working point of Jet_btagDeepFlavB used by the scale factors

# per kind: (m_tt law: offset, gamma shape, gamma scale), (extra jets mean), b quarks
_KINDS = {
    "ttbar": ((350.0, 2.0, 120.0), 4, 0.7, 2),
    "zprime": (None, 4, 0.7, 2),
    "single_top": ((200.0, 2.0, 90.0), 2, 0.9, 1),
    "wjets": ((150.0, 1.6, 120.0), 1, 1.5, 0),
    "qcd": ((100.0, 1.5, 100.0), 2, 1.5, 0),
}


def _jagged_index(counts):
    """Event index of every object and the first object of every event."""
    starts = np.cumsum(counts) - counts
    return np.repeat(np.arange(len(counts)), counts), starts


def generate_chunk(sample: str, n: int, rng, *, data: bool = False) -> dict:
    """``n`` events of ``sample`` as flat columns: scalars ``(n,)``, collections as
    ``(counts, {field: values})`` under ``Jet``, ``Muon``, ``Electron``, ``LHEScaleWeight``,
    ``LHEPdfWeight``, ``PSWeight`` (values only for the last three). ``data``: unit weights."""
    kind, mass, _, _, negative = SAMPLES[sample]
    law, njet0, extra, nb_true = _KINDS[kind]
    if kind == "zprime":
        mtt = rng.normal(mass, 0.08 * mass, n)
    else:
        mtt = law[0] + rng.gamma(law[1], law[2], n)
    mtt = np.maximum(mtt, 120.0)
    njet = njet0 + rng.poisson(extra, n)
    idx, starts = _jagged_index(njet)
    total = int(njet.sum())
    # jets: a share of the system mass, Dirichlet-split between the event's jets
    share = rng.gamma(1.5, 1.0, total)
    share /= np.bincount(idx, share, len(njet))[idx]
    budget = mtt * rng.uniform(0.45, 0.75, n)
    pt_true = 18.0 + budget[idx] * share
    eta = np.clip(rng.normal(0.0, 1.0 if kind == "zprime" else 1.3, total), -2.4, 2.4)
    phi = rng.uniform(-math.pi, math.pi, total)
    z = rng.normal(0.0, 1.0, total)  # the resolution draw shared by the JER variations
    pt = pt_true * np.maximum(1.0 + 0.04 * z, 0.3)
    mass_j = pt * rng.uniform(0.05, 0.2, total)
    # true b jets: the first nb of each event (then shuffled by the pT ordering)
    nb = np.full(n, nb_true)
    if kind == "single_top":
        nb = 1 + (rng.random(n) < 0.5)
    elif kind in ("wjets", "qcd"):
        nb = 2 * (rng.random(n) < (0.06 if kind == "wjets" else 0.1))
    is_b = (np.arange(total) - starts[idx]) < np.minimum(nb, njet)[idx]
    btag = np.where(is_b, rng.beta(1.2, 1.0, total), rng.beta(0.4, 8.0, total))  # eff 76%, 1.3%
    flavour = np.where(is_b, 5, 0).astype(np.int32)
    order = np.lexsort((-pt, idx))  # pT-ordered within each event
    jet = {
        "pt": pt,
        "eta": eta,
        "phi": phi,
        "mass": mass_j,
        "btagDeepFlavB": btag,
        "hadronFlavour": flavour,
    }
    for name, (a, b, c) in JES_SOURCES.items():
        rel = a + b / pt + c * np.abs(eta)
        if name == "FlavorQCD":
            rel = np.where(is_b, 0.5 * rel, rel)
        jet[f"pt_jes{name}Up"] = pt * (1.0 + rel)
        jet[f"pt_jes{name}Down"] = pt * (1.0 - rel)
    jet["pt_jerUp"] = pt_true * np.maximum(1.0 + 0.06 * z, 0.3)
    jet["pt_jerDown"] = pt_true * np.maximum(1.0 + 0.02 * z, 0.3)
    jet = {k: v[order] for k, v in jet.items()}
    # one lepton (muon or electron), MET
    lep_pt = 20.0 + mtt * rng.uniform(0.03, 0.22, n)
    if kind == "qcd":
        lep_pt = 20.0 + rng.exponential(20.0, n)
    muon = rng.random(n) < 0.5
    lep = {
        "pt": lep_pt,
        "eta": np.clip(rng.normal(0.0, 1.1, n), -2.4, 2.4),
        "phi": rng.uniform(-math.pi, math.pi, n),
        "charge": np.where(rng.random(n) < 0.5, -1, 1).astype(np.int32),
        "iso": rng.exponential(0.3 if kind == "qcd" else 0.04, n),
    }
    met = mtt * rng.uniform(0.02, 0.2, n) * (0.3 if kind == "qcd" else 1.0) + rng.exponential(
        10.0, n
    )
    # weights
    yield_per_event = 1.0  # rescaled by the caller (expected yield / events)
    sign = np.where(rng.random(n) < negative, -1.0, 1.0)
    gen = sign * yield_per_event / max(1.0 - 2.0 * negative, 1e-3)
    btag_w = _btag_weights(jet, idx, n)
    scale, pdf, ps = _theory_weights(mtt, njet - njet0)
    if data:
        gen = np.ones(n)
        btag_w = dict.fromkeys(btag_w, np.ones(n))
        scale, pdf, ps = np.ones_like(scale), np.ones_like(pdf), np.ones_like(ps)
    out = {
        "MET_pt": met,
        "MET_phi": rng.uniform(-math.pi, math.pi, n),
        "genWeight": gen,
        "LHE_HT": np.bincount(idx, pt_true, n),
        **{f"btagWeight_DeepCSVB{k}": v for k, v in btag_w.items()},
        "Jet": (njet, jet),
        "Muon": (muon.astype(int), _lepton(lep, muon, 0.10566, "pfRelIso04_all")),
        "Electron": (~muon * 1, _lepton(lep, ~muon, 0.000511, "pfRelIso03_all")),
        "LHEScaleWeight": (np.full(n, 9), {"": scale.ravel()}),
        "LHEPdfWeight": (np.full(n, 3), {"": pdf.ravel()}),
        "PSWeight": (np.full(n, 4), {"": ps.ravel()}),
    }
    return out


def _btag_weights(jet, idx, n) -> dict:
    """Per-event b-tagging scale factors (nominal, b and light up/down) of the tagged true b
    and light jets of the (pT-ordered) ``jet`` columns; ``idx``: each jet's event."""
    tagged = jet["btagDeepFlavB"] > BTAG_WP
    jb = jet["hadronFlavour"] == 5
    n_tb = np.bincount(idx, tagged & jb, n)
    n_tl = np.bincount(idx, tagged & ~jb, n)
    return {
        "": 0.95**n_tb * 1.10**n_tl,
        "_bUp": 0.98**n_tb * 1.10**n_tl,
        "_bDown": 0.92**n_tb * 1.10**n_tl,
        "_lightUp": 0.95**n_tb * 1.20**n_tl,
        "_lightDown": 0.95**n_tb * 1.00**n_tl,
    }


def _theory_weights(mtt, extra_jets):
    """The 9 scale, 3 PDF and 4 parton-shower weights per event: the scale variations grow
    with m_tt (a shape), the PDF ones with m_tt / 1 TeV, the shower ones with the extra jets."""
    n = len(mtt)
    r = 0.08 + 0.04 * np.log(mtt / 400.0)
    scale = np.stack(
        [1 + 1.4 * r, 1 + r, 1 + 0.5 * r, 1 + 0.5 * r, np.ones(n), 1 - 0.4 * r,
         1 - 0.3 * r, 1 - 0.8 * r, 1 - 1.2 * r],
        axis=1,
    )  # fmt: skip
    p = 0.02 + 0.03 * mtt / 1000.0
    pdf = np.stack([np.ones(n), 1 + p, 1 - p], axis=1)
    k = 0.04 * extra_jets
    ps = np.stack([1 + k, 1 + 0.5 * k, 1 - k, 1 - 0.5 * k], axis=1)
    return scale, pdf, ps


def _lepton(lep, keep, mass, iso):
    out = {k: lep[k][keep] for k in ("pt", "eta", "phi", "charge")}
    out["mass"] = np.full(int(keep.sum()), mass)
    out[iso] = lep["iso"][keep]
    if iso == "pfRelIso04_all":
        out["tightId"] = np.ones(int(keep.sum()), dtype=bool)
    else:
        out["cutBased"] = np.full(int(keep.sum()), 4, dtype=np.int32)
    return out


def _typed(v):
    v = np.asarray(v)
    if v.dtype == np.float64:
        return v.astype(np.float32)
    return v


def _root_columns(chunk: dict, ids: dict) -> dict:
    import awkward as ak

    out = {k: v for k, v in ids.items()}
    for key, value in chunk.items():
        if isinstance(value, tuple):
            counts, fields = value
            counts = np.asarray(counts, dtype=np.int64)
            if set(fields) == {""}:
                out[key] = ak.unflatten(_typed(fields[""]), counts)
            else:
                flat = ak.zip({f: _typed(v) for f, v in fields.items()}, depth_limit=1)
                out[key] = ak.unflatten(flat, counts)
        else:
            out[key] = _typed(value)
    return out


def _parquet_columns(chunk: dict, ids: dict):
    import pyarrow as pa

    cols = {k: pa.array(v) for k, v in ids.items()}
    for key, value in chunk.items():
        if isinstance(value, tuple):
            counts, fields = value
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            cols[f"n{key}"] = pa.array(np.asarray(counts, dtype=np.uint32))
            for f, v in fields.items():
                name = key if f == "" else f"{key}_{f}"
                cols[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(_typed(v)))
        else:
            cols[key] = pa.array(_typed(value))
    return pa.table(cols)


#: Entries per ROOT basket / parquet row group. A reader decompresses whole baskets: with
#: one basket per 500,000-event file each open read stream of a streamed run held ~54 MB
#: (9 streams: 489 MB for the 1e7 benchmark files, 305 MB for the 1e6 files, whose small
#: samples' files were smaller), so the memory of training grew with the events per file;
#: with baskets of this size it is bounded by it (as for NanoAOD, written in many baskets).
BASKET_ENTRIES = 50_000


def _write(path: Path, fmt: str, chunk: dict, ids: dict) -> None:
    w = AtomicWriter(path, fmt, "Events", title="diffhep ttbar-resonance")
    columns = _parquet_columns(chunk, ids) if fmt == "parquet" else _root_columns(chunk, ids)
    n = len(next(iter(ids.values())))
    try:
        for start in range(0, max(n, 1), BASKET_ENTRIES):  # one basket / row group each
            stop = start + BASKET_ENTRIES
            if fmt == "parquet":
                w.write(columns.slice(start, BASKET_ENTRIES))
            else:
                w.write({k: v[start:stop] for k, v in columns.items()})
        w.commit({})
    except BaseException:
        w.abort()
        raise


def _scale_weights(chunk: dict, factor: float) -> None:
    chunk["genWeight"] = chunk["genWeight"] * factor


def generate(
    out,
    *,
    events: int,
    seed: int = 0,
    chunk_size: int = 500_000,
    formats=("root",),
    lumi: float = 1.0,
    data: bool = True,
    samples=None,
    progress=None,
) -> dict:
    """Write the samples into ``out`` (``<sample>_<k>.root`` / ``.parquet``, k-th chunk) and
    ``samples.json`` (files, events, expected yields, seed, luminosity); returns that record.

    Args:
        out: Output directory (created).
        events: Simulated events in total, shared between the samples by :data:`SAMPLES`.
        seed: Seed of every chunk's random stream.
        chunk_size: Events per file (memory follows it).
        formats: ``"root"`` and/or ``"parquet"``.
        lumi: Integrated luminosity (fb^-1): the expected yields (``genWeight`` sums) and the
            pseudo-data counts scale with it.
        data: Also write pseudo-data (``data_*``): each background with Poisson counts.
        samples: Only these simulated samples (default: all).
        progress: Called with the number of events written after each chunk.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chunk_size = max(int(chunk_size), 1)
    names = list(samples or SAMPLES)
    unknown = [s for s in names if s not in SAMPLES]
    if unknown:
        raise ValueError(f"unknown sample(s) {unknown}; samples are {', '.join(SAMPLES)}")
    total_fraction = sum(SAMPLES[s][3] for s in names)
    record = {"generator": "ttbar-resonance", "seed": seed, "lumi_fb": lumi,
              "chunk_size": chunk_size, "samples": {}}  # fmt: skip
    plan = [(s, max(1, round(events * SAMPLES[s][3] / total_fraction)), False) for s in names]
    if data:
        rng = np.random.default_rng([seed, 999])
        counts = {b: int(rng.poisson(SAMPLES[b][2] * lumi))
                  for b in ("ttbar", "single_top", "wjets", "qcd")}  # fmt: skip
        plan.append(("data", sum(counts.values()), counts))
    for name, n, is_data in plan:
        k = list(SAMPLES).index(name) if name in SAMPLES else len(SAMPLES)  # a stable stream
        files, written = [], 0
        sources = list(is_data.items()) if is_data else [(name, n)]
        chunk_id = 0
        for j, (src, m) in enumerate(sources):
            expected = SAMPLES[src][2] * lumi
            for start in range(0, m, chunk_size):
                size = min(chunk_size, m - start)
                rng = np.random.default_rng([seed, k, j, chunk_id])
                chunk = generate_chunk(src, size, rng, data=bool(is_data))
                if not is_data:
                    _scale_weights(chunk, expected / m)
                ids = {
                    "run": np.ones(size, dtype=np.uint32),
                    "luminosityBlock": np.full(size, chunk_id + 1, dtype=np.uint32),
                    "event": np.arange(written + 1, written + size + 1, dtype=np.uint64),
                }
                for fmt in formats:
                    ext = "root" if fmt == "root" else "parquet"
                    path = out / f"{name}_{chunk_id:03d}.{ext}"
                    _write(path, fmt, chunk, ids)
                    files.append(path.name)
                written += size
                chunk_id += 1
                if progress is not None:
                    progress(size)
        kind, mass, per_fb, _, negative = SAMPLES.get(name, ("data", None, None, None, 0.0))
        record["samples"][name] = {
            "kind": kind,
            "mass": mass,
            "events": written,
            "expected_yield": None if is_data else per_fb * lumi,
            "negative_fraction": negative,
            "files": files,
        }
    write_atomic(out / "samples.json", json.dumps(record, indent=1))
    return record
