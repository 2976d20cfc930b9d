"""Write the ROOT ntuples of a toy multi-background search (the end-to-end example).

A heavy resonance decaying to top quarks + missing energy (signal) over two backgrounds:
top-quark pairs (``ttbar``, an NLO-like sample with ~15% negative generator weights) and
W + jets (``wjets``, few b jets, soft missing energy). NanoAOD-like flat branches
``met``, ``lep_pt``, ``lep_eta``, the jagged jet collection ``nJet``/``Jet_pt``/``Jet_eta``/
``Jet_btag`` (pT-ordered), ``genWeight``, and per-file constants ``xsec`` (fb) and ``sumw``
(sum of generator weights). The b-tagging scale factor ``btag_sf`` has the up/down variations
``btag_sf_up``/``btag_sf_down`` (a weight systematic that grows with the number of b jets).
Events are weighted with ``xsec * lumi * genWeight / sumw * btag_sf`` (``lumi`` in fb^-1 is a
constant of the config). ttbar is written as two files (``ttbar_0.root``, ``ttbar_1.root``)
to show globs.

Usage:
    python examples/ntuples/make_ntuples.py --out examples/ntuples/data --events 20000
    diffhep train examples/ntuples/analysis.yaml --out runs/ntuples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

#: sample -> (cross-section in fb, fraction of negative weights)
SAMPLES = {"signal": (10.0, 0.0), "ttbar": (800.0, 0.15), "wjets": (1500.0, 0.0)}


def _events(name: str, n: int, rng: np.random.Generator) -> dict:
    """One sample's events (kinematics loosely like the physics, scales in GeV)."""
    if name == "signal":
        njet = rng.poisson(4.0, n) + 1
        nb_rate, jet_scale, met = 0.4, 85.0, rng.gamma(3.0, 50.0, n)
        lep = rng.gamma(3.0, 35.0, n)
    elif name == "ttbar":
        njet = rng.poisson(3.5, n) + 1
        nb_rate, jet_scale, met = 0.4, 70.0, rng.gamma(2.5, 40.0, n)
        lep = rng.gamma(2.5, 30.0, n)
    else:
        njet = rng.poisson(1.5, n)
        nb_rate, jet_scale, met = 0.08, 50.0, rng.gamma(2.0, 30.0, n)
        lep = rng.gamma(2.2, 28.0, n)
    counts = njet.astype(np.int64)
    total = int(counts.sum())
    pt = 25.0 + rng.exponential(jet_scale, total)
    eta = rng.normal(0.0, 1.3 if name == "wjets" else 1.0, total)
    is_b = rng.random(total) < nb_rate
    btag = np.where(is_b, rng.beta(5.0, 1.2, total), rng.beta(1.2, 5.0, total))
    # pT-order the jets within each event
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    order = np.lexsort((-pt, starts))
    pt, eta, btag, is_b = pt[order], eta[order], btag[order], is_b[order]
    nb = np.bincount(np.repeat(np.arange(n), counts), weights=is_b, minlength=n)  # b jets
    jets = ak.unflatten(ak.zip({"pt": pt, "eta": eta, "btag": btag}), counts)
    return {
        "met": met,
        "lep_pt": 20.0 + lep,
        "lep_eta": rng.normal(0.0, 1.1, n),
        "Jet": jets,
        "btag_sf": 1.0 + 0.03 * nb,
        "btag_sf_up": 1.0 + 0.10 * nb,
        "btag_sf_down": 1.0 - 0.04 * nb,
    }


def _write(path: Path, data: dict) -> None:
    types = {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()}
    tmp = path.with_suffix(".tmp.root")
    with uproot.recreate(tmp) as f:
        f.mktree("events", types)
        f["events"].extend(data)
    tmp.replace(path)


def generate(out: str | Path, events: int = 20_000, seed: int = 1) -> list[Path]:
    """Write ``signal.root``, ``ttbar_0.root``, ``ttbar_1.root`` and ``wjets.root`` with
    ``events`` events per sample into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (name, (xsec, negative)) in enumerate(SAMPLES.items()):
        rng = np.random.default_rng([seed, k])
        data = _events(name, events, rng)
        gen = np.where(rng.random(events) < negative, -1.0, 1.0)
        data |= {
            "genWeight": gen,
            "xsec": np.full(events, xsec),
            "sumw": np.full(events, gen.sum()),
        }
        if name == "ttbar":
            half = events // 2
            for i, sl in enumerate((slice(0, half), slice(half, None))):
                paths.append(out / f"ttbar_{i}.root")
                _write(paths[-1], {key: v[sl] for key, v in data.items()})
        else:
            paths.append(out / f"{name}.root")
            _write(paths[-1], data)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "data"))
    p.add_argument("--events", type=int, default=20_000, help="events per sample")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    for path in generate(a.out, a.events, a.seed):
        print(path)


if __name__ == "__main__":
    main()
