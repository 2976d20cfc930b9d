"""``diffhep optimize``: a black-box search of config keys on the exact objective."""

from __future__ import annotations

import click

from .common import emit, overrides, run


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(["bo", "gp", "grid", "random"]), default="bo",
              show_default=True,
              help="bo: Optuna's TPE sampler; gp: its Gaussian process (needs PyTorch); "
              "grid; random.")  # fmt: skip
@click.option("--budget", type=click.IntRange(min=1), default=20, show_default=True,
              help="Trials of the study (all workers together; a grid stops at its "
              "size).")  # fmt: skip
@click.option("--param", "params", multiple=True, metavar="NAME=LOW:HIGH[:log][:int]",
              help="A parameter (a config path as for --set) and its range, or NAME=A,B,C; "
              "adds to or replaces the config's search.params (repeatable).")  # fmt: skip
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: trials.csv/json, best.json, objective.png, the "
              "study.")  # fmt: skip
@click.option("--storage", default=None,
              help="Optuna storage shared by several workers: a journal file (default "
              "OUT/study.journal) or a URL such as sqlite:///study.db.")  # fmt: skip
@click.option("--study-name", default="diffhep", show_default=True, help="Study in the storage.")
@click.option("--seed", type=int, default=None, help="Sampler seed (default: the config's seed).")
@overrides
def optimize(config, method, budget, params, out, storage, study_name, seed, overrides):
    """Search the parameters of the training config CONFIG (its search section and --param)
    on the exact objective: hard cuts, hard histograms and exact fits on the validation
    split (search.objective: expected_cls, z0 or sigma_mu), each trial trained unless
    search.train is false. Running it again resumes the study; prints best.json."""
    from ..search.optimize import optimize as search

    def report(line):
        click.echo(line, err=True)

    best = run(search, config, out, method=method, budget=budget, params=params,
               overrides=overrides, seed=seed, storage=storage, study_name=study_name,
               report=report)  # fmt: skip
    emit(best)


COMMANDS = [optimize]
