"""``diffhep reweight``: learned event weights written into files."""

from __future__ import annotations

import click

from .common import emit, run


def _list(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Output file, same format as FILE (default: FILE's stem + '_reweighted', beside it); "
    "never FILE itself (refused, also through links or relative paths).",
)
@click.option("--column", default="w_learned", show_default=True, help="Name of the new weights.")
@click.option("--tree", help="ROOT: the TTree (default: the only one); HDF5: the group.")
@click.option(
    "--weight",
    metavar="EXPR",
    help="The signed weight: a column or an expression, e.g. 'genWeight * xsec' (needed for "
    "ROOT, parquet, HDF5 and CSV; for .npz it reads 1-D arrays as columns).",
)
@click.option(
    "--features",
    help="Columns or expressions for the report, comma-separated (default: every flat numeric "
    "column but the weight's).",
)
@click.option("--weights-key", default="w", show_default=True, help=".npz x/w: weights array.")
@click.option("--names", help="Feature names, comma-separated (default x0, x1, ... or --features).")
@click.option("--inputs", help="Features the weight network reads (names or columns; all).")
@click.option(
    "--region",
    "regions",
    multiple=True,
    metavar="NAME=EXPR",
    help="Region for the sums of weights, e.g. 'central=x0 > -1 && x0 < 1' (repeatable).",
)
@click.option(
    "--method",
    type=click.Choice(["regression", "classifier"]),
    default="regression",
    show_default=True,
)
@click.option("--resample", is_flag=True, help="Nachman-Thaler resampling (keeps sum w^2).")
@click.option("--hidden", default="32,32", show_default=True, help="Hidden layer widths.")
@click.option("--folds", type=int, default=2, show_default=True, help="Cross-fitting folds.")
@click.option("--epochs", type=int, help="Epochs (default: 60, or enough for 800 steps).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--bins", type=int, default=20, show_default=True, help="Bins per feature.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="Report directory (default: OUT's stem + '_reweight').",
)
def reweight(
    file,
    out,
    column,
    tree,
    weight,
    features,
    weights_key,
    names,
    inputs,
    regions,
    method,
    resample,
    hidden,
    folds,
    epochs,
    seed,
    bins,
    report_dir,
):
    """Learn positive weights E[w|x] for the events of FILE and write a verification report
    (markdown, JSON, plots). FILE is ROOT, parquet, HDF5 or CSV (with --weight), or .npz
    (arrays x and signed w, or 1-D arrays with --weight). The output, of the same format,
    holds every original column unchanged plus the new weights (--column): ROOT one TTree of
    the same name (jagged collections nX/X_* carried over, other non-flat branches are an
    error), parquet every column type kept, HDF5 a copy of the file plus a dataset, CSV every
    line plus a value. Written atomically: nothing on error."""
    from ..weights.files import reweight_file

    region_map = {}
    for r in regions:
        name, _, expr = r.partition("=") if "=" in r else (r, "", r)
        region_map[name.strip()] = expr.strip()
    try:
        widths = tuple(int(h) for h in _list(hidden) or ())
    except ValueError:
        raise click.BadParameter(
            "not a list of integers (e.g. 64,64)", param_hint="--hidden"
        ) from None
    res = run(
        reweight_file,
        file,
        out,
        tree=tree,
        weight=weight,
        features=_list(features),
        weights_key=weights_key,
        column=column,
        names=_list(names),
        inputs=_list(inputs),
        regions=region_map or None,
        report_dir=report_dir,
        bins=bins,
        method=method,
        resampling=resample,
        folds=folds,
        seed=seed,
        hidden=widths,
        epochs=epochs,
    )
    emit(res)


COMMANDS = [reweight]
