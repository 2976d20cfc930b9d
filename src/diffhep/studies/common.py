"""What the studies share: the shipped config a study starts from, medians of per-seed
results, and the "Reproduce with" sentence that heads a study's markdown."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_OUT", "median", "out_option", "proposals", "reproduce", "shipped_config"]

#: Where a study writes its report unless told otherwise: ``diffhep study``'s ``--out`` and
#: the study functions' ``out`` (the repository's own reports pass ``docs/studies``)
DEFAULT_OUT = "studies"


def shipped_config(name: str) -> Path:
    """The config ``src/diffhep/data/<name>.yaml`` shipped with the package."""
    return Path(str(resources.files("diffhep") / "data" / f"{name}.yaml"))


def median(rows, *keys) -> float:
    """The median over ``rows`` of ``row[keys[0]][keys[1]]...``.

    Example:
        >>> median([{"a": {"z": 1.0}}, {"a": {"z": 3.0}}, {"a": {"z": 2.5}}], "a", "z")
        2.5
    """
    vals = []
    for r in rows:
        for k in keys:
            r = r[k]
        vals.append(r)
    return float(np.median(vals))


def reproduce(
    study: str, config: str, seeds, epochs, overrides, runs_dir=None, per="", out=None
) -> str:
    """The sentence that tells how to run a study again (its config, seeds x epochs ``per``
    run, the overrides given, and where finished runs are reused from); ``out``: the
    directory the study wrote into (``--out``, given where it is not the default's).

    Example:
        >>> reproduce("cuts", "cuts_2d", 3, 20, ["seed=1"])
        'Reproduce with `diffhep study cuts` (config `src/diffhep/data/cuts_2d.yaml`; 3 seeds x 20 epochs; overrides `seed=1`; finished runs under `runs/cuts` are reused).'
    """  # noqa: E501
    return (
        f"Reproduce with `diffhep study {study}{out_option(out)}` "
        f"(config `src/diffhep/data/{config}.yaml`; "
        f"{seeds} seeds x {epochs} epochs{per}"
        + (f"; overrides `{' '.join(overrides)}`" if overrides else "")
        + f"; finished runs under `{runs_dir or f'runs/{study}'}` are reused)."
    )


def out_option(out) -> str:
    """`` --out DIR`` for a study written into ``out`` (empty for ``None``): the command that
    reproduces a report writes it where it is (``diffhep study``'s default is ``studies``).

    Example:
        >>> out_option("docs/studies"), out_option(None)
        (' --out docs/studies', '')
    """
    return "" if out is None else f" --out {Path(out).as_posix()}"


def proposals(method: str, d: int, budget: int, seed: int, lo: float, hi: float, prefix: str):
    """The points a black-box search proposes in the box ``[lo, hi]^d``, with a function that
    tells the search a point's value: Optuna's TPE (``"tpe"``, multivariate; parameters
    ``prefix0``, ``prefix1``, ...), uniform ``"random"`` points, or a ``"grid"`` of the centres
    of ``floor(budget^(1/d))`` cells per parameter in a seeded order. ``tell(value)`` (``None``
    for a failed evaluation) matters for TPE only.

    Example:
        >>> sorted(z for z, _ in proposals("grid", 2, 4, 0, 0.0, 1.0, "x"))  # the cell centres
        [[0.25, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.75]]
    """
    rng = np.random.default_rng(seed)
    study, grid = None, None
    if method == "tpe":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
        study = optuna.create_study(sampler=sampler)
    elif method == "grid":
        m = int(np.floor(budget ** (1 / d) + 1e-9))
        axis = lo + (hi - lo) * (np.arange(m) + 0.5) / m
        grid = np.stack(np.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)
        grid = grid[rng.permutation(len(grid))]
    elif method != "random":
        raise ValueError(f"unknown search method {method!r}")
    for k in range(budget if grid is None else len(grid)):
        if study is not None:
            trial = study.ask()
            z = [trial.suggest_float(f"{prefix}{j}", lo, hi) for j in range(d)]

            def tell(value, trial=trial):
                if value is None:
                    import optuna

                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)

        else:
            z = (rng.uniform(lo, hi, d) if grid is None else grid[k]).tolist()

            def tell(value):
                pass

        yield z, tell
