"""``diffhep study NAME``: the reproducible studies."""

from __future__ import annotations

import click

from .common import overrides, run

STUDY_DEFAULTS = {  # seeds, epochs
    "neos-blobs": (7, 15),
    "cuts": (3, 20),
    "inferno": (5, 80),
    "significance": (3, 20),
    "negative-weights": (3, 60),
    "black-box": (3, 20),
    "realistic": (3, 8),
}


@click.command()
@click.argument("name", type=click.Choice(sorted(STUDY_DEFAULTS)))
@click.option(
    "--out",
    default="studies",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the study's markdown, JSON and plots go (relative to the working directory; "
    "the repository's own studies: --out docs/studies).",
)
@click.option(
    "--seeds",
    type=int,
    help="Seeds (neos-blobs: 7, cuts: 3, inferno: 5, significance: 3, negative-weights: 3).",
)
@click.option(
    "--epochs", type=int, help="Epochs per run (neos-blobs: 15, cuts: 20, inferno: 80, ...)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="inferno only: runs trained at once, each in its own process (default 1; on a CPU "
    "machine, its number of cores).",
)
@click.option(
    "--rows",
    help="neos-blobs only: comma-separated run names of the rows to train (default: all; "
    "cls, bce, bce_aug, sigma_mu, z0, log_cls, sigma_mu+sigma_gamma, neos_objective, "
    "sigma_mu+impact, sigma_mu+pull).",
)
@click.option(
    "--prefix-runs",
    type=click.Path(file_okay=False),
    help="neos-blobs only: a directory of longer runs of the same rows (e.g. a convergence "
    "study); a row's run found there gives this study's run as its first --epochs epochs.",
)
@click.option(
    "--events",
    type=click.IntRange(min=1000),
    help="realistic only: simulated events generated for the study (default 300000).",
)
@click.option(
    "--lumi",
    type=click.FloatRange(min=0, min_open=True),
    help="realistic only: integrated luminosity in fb^-1 of the expected yields (default 10).",
)
@click.option(
    "--joint-only",
    is_flag=True,
    help="negative-weights only: learned and learned-joint weights on the full and reduced "
    "budgets, no stress test (negative-weights-joint.md).",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    help="Where the training runs go (reused; default runs/NAME).",
)
@overrides
def study(
    name,
    out,
    seeds,
    epochs,
    rows,
    prefix_runs,
    events,
    lumi,
    joint_only,
    runs_dir,
    workers,
    overrides,
):
    """Run a reproducible study into OUT: neos-blobs (the neos paper's Figure 3), cuts
    (selection cuts and a neural observable, alone and together, and the skim trade-off),
    inferno (INFERNO's benchmark: every model on one protocol) or significance (the
    Elwood-Kruecker significance losses) or negative-weights (training weight strategies
    for negative event weights) or black-box (gradients, L-GSO and Bayesian optimisation
    on exact objectives: cut thresholds, a detector resolution) or realistic (the Z' ->
    ttbar search of ttbar_resonance.yaml: every loss and selection, 20 nuisance parameters)."""
    from ..studies.black_box import black_box_study
    from ..studies.cuts import cuts_study
    from ..studies.inferno import inferno_study
    from ..studies.negative_weights import negative_weights_study
    from ..studies.neos_blobs import neos_blobs
    from ..studies.realistic import realistic_study
    from ..studies.significance import significance_study

    fn = {
        "neos-blobs": neos_blobs,
        "cuts": cuts_study,
        "inferno": inferno_study,
        "significance": significance_study,
        "negative-weights": negative_weights_study,
        "black-box": black_box_study,
        "realistic": realistic_study,
    }[name]
    default_seeds, default_epochs = STUDY_DEFAULTS[name]
    extra = {}
    if workers is not None:
        if name != "inferno":
            raise click.UsageError("--workers applies to the inferno study only")
        extra["workers"] = workers
    for key, value in (("events", events), ("lumi", lumi)):
        if value is not None:
            if name != "realistic":
                raise click.UsageError(f"--{key} applies to the realistic study only")
            extra[key] = value
    if joint_only:
        if name != "negative-weights":
            raise click.UsageError("--joint-only applies to the negative-weights study only")
        extra["joint_only"] = True
    if prefix_runs is not None:
        if name != "neos-blobs":
            raise click.UsageError("--prefix-runs applies to the neos-blobs study only")
        extra["prefix_runs"] = prefix_runs
    if rows is not None:
        if name != "neos-blobs":
            raise click.UsageError("--rows applies to the neos-blobs study only")
        from ..studies.neos_blobs import rows as study_rows

        try:
            extra["losses"] = study_rows([r.strip() for r in rows.split(",") if r.strip()])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rows") from None
    path = run(
        fn,
        out,
        seeds=seeds or default_seeds,
        epochs=epochs or default_epochs,
        overrides=overrides,
        runs_dir=runs_dir or f"runs/{name}",
        **extra,
    )
    click.echo(f"study written to {path}")


COMMANDS = [study]
