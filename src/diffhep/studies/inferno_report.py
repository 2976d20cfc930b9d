"""The markdown of ``diffhep study inferno`` (``docs/studies/inferno.md``): setup, the two
tables (Hessian and profile-likelihood widths, median and range over seeds) and findings,
every number computed from the results of :mod:`diffhep.studies.inferno`."""

from __future__ import annotations

import numpy as np

from ..problems import inferno as I
from .common import out_option

__all__ = ["markdown"]


def _cell(values):
    v = np.asarray(values)
    return f"{np.median(v):.2f} ({v.min():.2f}-{v.max():.2f})"


def markdown(r, out=None) -> str:
    """The study's markdown from its result (``inferno.json``), written into ``out``."""
    s = r["settings"]
    bms = [str(k) for k in I.BENCHMARKS]
    lines = [
        "# Study: INFERNO's synthetic benchmark (arXiv:1806.04743)",
        "",
        f"Reproduce with `diffhep study inferno --workers {r.get('workers', 1)}{out_option(out)}` "
        f"({r['seeds']} seeds x {r['epochs']} epochs; "
        "finished runs under `runs/inferno` are reused).",
        "",
        "Setup: background x0, x1 ~ N((2 + r, 0), diag(5, 9)), x2 ~ Exp(lambda); signal "
        "N(0, 1), N(0, 1), Exp(2); s = 50, b = 1000 expected; r = 0, lambda = 3 nominal. "
        "Benchmarks (parameter of interest s): 0 no nuisance; 1 r free; 2 r and lambda free; "
        "3 r ~ N(0, 0.4), lambda ~ N(3, 1); 4 as 3 plus b ~ N(1000, 100). "
        f"Per seed {s['n_train']:,} training events per class (signal, nominal background)"
        + (" drawn afresh from the generator for every epoch" if s.get("fresh_events") else "")
        + f", {s['n_validation']:,} validation and {s['n_test']:,} test events per class "
        f"from independent samples; MLP {'-'.join(map(str, s['hidden']))} (ReLU), Adam with "
        f"cosine decay from {s['learning_rate']:g}, batch {s['batch_size']} events per class.",
        "",
        "Evaluation protocol, the same for every row: 10 hard bins (argmax of the softmax "
        "outputs, or 10 equal bins of a score), templates from the test events, background "
        "variations at r +- 0.2 and lambda +- 0.5 (the same events, transformed) as "
        "HistFactory histosys (code 4p), b as a Gaussian-constrained normalisation; free "
        "nuisances get a constraint of width 1e4 (in units of the variation). Expected "
        "uncertainty on s on the Asimov data of the nominal point.",
        "",
    ]
    an = r["analytic"]
    for what, title in (("hessian", "from the Hessian"), ("profile", "from the profile-"
                         "likelihood width (q = 1 crossings)")):  # fmt: skip
        lines += [
            f"## Expected uncertainty on s, {title}: median (min-max) over seeds",
            "",
            "| model | " + " | ".join(f"benchmark {k}" for k in bms) + " |",
            "|---" * (len(bms) + 1) + "|",
        ]
        for label, runs in r["rows"].items():
            if runs:
                cells = [_cell([x[k][what] for x in runs]) for k in bms]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("| analytic likelihood | " + " | ".join(f"{an[k]:.2f}" for k in bms) + " |")
        lines.append("")
    lines += ["## Findings (computed from the tables)", ""]
    lines += _findings(r)
    lines += [
        "",
        "The analytic row is the unbinned Fisher information of the true densities "
        "(Gauss-Legendre, 120 nodes per dimension); with 80 nodes it changes by at most "
        f"{max(abs(r['analytic_n80'][k] / an[k] - 1) for k in bms):.1e} (relative). "
        "Numbers per seed: `inferno.json`. Training and evaluation time of all runs "
        f"together: {sum(sum(v) for v in r['train_seconds'].values()) / 60:.0f} min "
        f"({r.get('workers', 1)} run(s) at a time); wall clock of the invocation that wrote "
        f"this file: {r['wall_seconds'] / 60:.0f} min (finished runs it reused cost nothing).",
        "",
    ]
    return "\n".join(lines)


def _findings(r) -> list[str]:
    an, rows_ = r["analytic"], r["rows"]
    out = []

    def med(label, k, what="hessian"):
        return float(np.median([x[str(k)][what] for x in rows_[label]]))

    if rows_.get("BCE classifier"):
        for k in (2, 3, 4):
            best = [
                (med(lbl, k), lbl)
                for lbl in (f"INFERNO {k}", f"diffhep sigma_mu {k}")
                if rows_.get(lbl)
            ]
            if best:
                v, lbl = min(best)
                out.append(
                    f"- Benchmark {k}: {lbl} {v:.2f} vs BCE {med('BCE classifier', k):.2f} "
                    f"({v / med('BCE classifier', k) - 1:+.0%}); analytic bound {an[str(k)]:.2f}."
                )
    diffhep = [lbl for lbl in rows_ if lbl.startswith("diffhep") and rows_[lbl]]
    for k in I.BENCHMARKS if diffhep else ():
        v, lbl = min((med(lbl, k), lbl) for lbl in diffhep)
        out.append(
            f"- Benchmark {k}: the best diffhep row is {lbl}, {v:.2f}, "
            f"{v / an[str(k)] - 1:+.1%} from the analytic bound "
            f"({'within' if v <= 1.05 * an[str(k)] else 'NOT within'} the 5% aim)."
        )
    if rows_.get("INFERNO 0") and rows_.get("diffhep sigma_mu 0"):
        a, b = (
            [x["0"]["hessian"] for x in rows_[lbl]] for lbl in ("INFERNO 0", "diffhep sigma_mu 0")
        )
        out.append(
            "- INFERNO 0 and diffhep sigma_mu 0 minimise the same quantity: without nuisances "
            "both losses are the variance of s from the same counts (the interpolation never "
            "enters). The two trainings start on the same path; round-off separates them over "
            f"the run. On benchmark 0 their medians are {np.median(a):.2f} and "
            f"{np.median(b):.2f}, seed by seed at most "
            f"{max(abs(x / y - 1) for x, y in zip(a, b, strict=True)):.1%} apart."
        )
    return out
