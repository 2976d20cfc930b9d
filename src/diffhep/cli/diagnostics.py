"""Fit diagnostics of pyhf workspaces: ``pulls``, ``ranking``, ``correlations``, ``yields``,
``scan``, ``significance``, ``gof`` (thin commands over :mod:`diffhep.stats.covariance` and
:mod:`diffhep.stats.diagnostics`; figures from :mod:`diffhep.plotting.diagnostics`)."""

from __future__ import annotations

import sys

import click

from ..errors import DiffhepError, FitError
from . import common
from .common import figure_path, output, prefetching, run
from .stats import _common, _note_ignored, _numbers, _on_workspace, _settings
from .toys import check_toy_options, finish, run_toys, toy_options

_poi_value = click.option(
    "--poi-value",
    type=float,
    default=None,
    help="Fit with the POI fixed at this value (default: the POI is fitted).",
)
_plot = click.option(
    "--plot",
    "plot",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    callback=figure_path,
    help="Also draw the figure to this file (format from the suffix: .png, .pdf, .svg).",
)
_style = click.option(
    "--style",
    type=click.Choice(["plain", "ATLAS", "CMS", "LHCb"]),
    default="plain",
    show_default=True,
    help="Plot style (mplhep's experiment styles).",
)


def _opts(f):
    for deco in reversed([_common, _poi_value, _plot, _style]):
        f = deco(f)
    return f


def _model(kw, poi=True):
    """(workspace, model, data) of the common options; pyhf's ignored options noted. Without
    ``poi`` the model has no parameter of interest (the measurement's may not be one of its
    parameters: a background-only workspace); its parameters are the same."""
    from ..stats import workflows

    _note_ignored(kw.pop("backend"), kw.pop("optimizer"), kw.pop("optconf"))
    ws = workflows.load_workspace(
        kw.pop("workspace"), kw.pop("patches"), kw.pop("patch_name"), not kw.pop("no_digest_check")
    )
    settings = _settings(kw.pop("normsys_code"), kw.pop("histosys_code"))
    measurement = kw.pop("measurement")
    try:
        model = ws.model(measurement, modifier_settings=settings, poi_name=None if poi else "")
    except DiffhepError as err:  # (a background-only workspace without its patch: says so)
        raise workflows._background_only(err, ws, measurement) from None
    return ws, model, ws.data(model)


def _postfit(model, data, poi_value, ws, near_singular=False):
    """The fit with its covariance; a Hessian that is not positive definite (with
    ``near_singular`` also one that is only by rounding) names the parameters it leaves
    undetermined, as ``diffhep fit`` does (:func:`diffhep.stats.diagnostics.checked_postfit`)."""
    from ..errors import DiffhepError
    from ..stats import covariance, diagnostics

    if poi_value is not None:
        covariance.require_poi(model)
        lo, hi = model.config.bounds[model.config.poi_index]
        if not lo <= poi_value <= hi:
            raise DiffhepError(
                f"POI value {poi_value:g} is outside the bounds [{lo:g}, {hi:g}] of the POI "
                f"{model.config.poi_name!r}",
                file=ws.file,
                where="--poi-value",
                fix="give a value inside the bounds, or widen them in the measurement",
            )
    return diagnostics.checked_postfit(model, data, poi_value=poi_value,
                                       near_singular=near_singular)  # fmt: skip


#: What a scan says of a best fit whose Hessian leaves the scanned parameters undetermined
#: (as ``diffhep fit``).
_UNDETERMINED = "the fit converged, but the Hessian at the best fit is singular or indefinite:"
_FIX = ("these parameters are not constrained separately by the data (e.g. two normfactors "
        "of one sample): fix one, or add a constraint")  # fmt: skip


def _draw(fn, plot, style, *args, **kwargs) -> None:
    if plot is None:
        return
    from ..plotting import diagnostics as figures

    try:
        getattr(figures, fn)(*args, path=plot, style=None if style == "plain" else style, **kwargs)
    except OSError as exc:
        click.echo(f"error: cannot write {plot}: {exc.strerror or exc}", err=True)
        click.echo("  fix: choose a writable --plot file", err=True)
        sys.exit(2)


def _run(name: str, kw: dict, work, **options):
    """``run(work)`` with the command's compiled kernels loading on a thread while it
    imports the statistics (:func:`diffhep.cli.common.prefetching`; what the last command
    ``name`` with these options called on a workspace of the same bytes)."""
    given = {k: v for k, v in kw.items() if k not in ("workspace", "patches")}
    workspace = kw["workspace"]
    common.QUICK_EXIT = True  # its last act is writing its result (and figure)

    def prefetched():
        with prefetching(name, workspace, {**given, **options}):
            return work()

    return run(prefetched)


def _show(out, output_file, figure, plot, style) -> None:
    """``out`` as JSON (standard output or ``--output-file``), drawn by ``figure`` to ``--plot``."""
    output(out, output_file)
    _draw(figure, plot, style, out)


@click.command()
@_opts
def pulls(plot, style, poi_value, output_file, **kw):
    """Post-fit pulls and constraints of the constrained parameters (normfactors and other
    free parameters separately, with their best fits and uncertainties)."""

    def work():
        from ..stats import diagnostics

        ws, model, data = _model(kw)
        return diagnostics.pulls(model, _postfit(model, data, poi_value, ws, near_singular=True))

    _show(_run("pulls", kw, work, poi_value=poi_value), output_file, "plot_pulls", plot, style)


@click.command()
@_common
@_plot
@_style
@click.option(
    "--method",
    type=click.Choice(["refit", "covariance"]),
    default="refit",
    show_default=True,
    help="refit: the POI shift of a fit with the parameter fixed at +-1 sigma (cabinetry's "
    "definition, all refits batched); covariance: the linear approximation.",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="NAME=PATTERN[,PATTERN]",
    help="Grouped impact of the parameters matching the patterns (fnmatch; repeatable).",
)
@click.option("--by-modifier", is_flag=True, help="Grouped impacts per modifier type.")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Parameters in the plot (the largest impacts).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print only the list of {parameter, prefit_up, prefit_down, postfit_up, postfit_down} "
    "(cabinetry's RankingResults), largest post-fit impact first.",
)
def ranking(plot, style, output_file, method, groups, by_modifier, top, as_json, **kw):
    """Impacts of every parameter on the POI, pre-fit and post-fit, up and down, largest
    post-fit impact first, with the POI's best fit and optional grouped impacts.

    When the POI's best fit is at a bound, poi_at_bound says which ("lower"/"upper", else
    null) and a warning (also in notes) says that refit impacts are truncated there."""
    patterns = {}
    for g in groups:
        name, sep, pats = g.partition("=")
        if not sep or not name or not pats:
            raise click.BadParameter(f"expected NAME=PATTERN[,PATTERN], got {g!r}",
                                     param_hint="--group")  # fmt: skip
        patterns[name] = pats.split(",")

    def work():
        from ..stats import covariance, diagnostics

        ws, model, data = _model(kw)
        covariance.require_poi(model)
        sets = covariance.parameter_groups(model, patterns, by_modifier)  # bad input first
        post = _postfit(model, data, None, ws, near_singular=True)
        r = diagnostics.ranking(model, data, post, method=method)
        out = {"poi": r.poi, "poi_bestfit": r.poi_bestfit, "poi_uncertainty": r.poi_uncertainty,
               "poi_at_bound": r.poi_at_bound, "method": method, "notes": list(r.notes),
               "ranking": r.to_list()}  # fmt: skip
        if sets:
            out["grouped"] = covariance.grouped_impacts(model, post, sets)
        return out, diagnostics.pulls(model, post)

    out, pull = _run("ranking", kw, work, method=method, groups=groups, by_modifier=by_modifier)
    output(out["ranking"] if as_json else out, output_file)
    for note in out["notes"]:
        click.echo(f"diffhep: warning: {note}", err=True)
    _draw("plot_ranking", plot, style, out["ranking"], pull, top=top, poi=out["poi"],
          poi_at_bound=out["poi_at_bound"], method=method)  # fmt: skip


@click.command()
@_opts
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Keep only parameters with an off-diagonal |correlation| >= this with another one.",
)
def correlations(plot, style, poi_value, output_file, threshold, **kw):
    """The post-fit correlation matrix of the free parameters."""

    def work():
        from ..stats import covariance

        ws, model, data = _model(kw)
        return covariance.correlations(_postfit(model, data, poi_value, ws), threshold)

    out = _run("correlations", kw, work, poi_value=poi_value)
    _show(out, output_file, "plot_correlations", plot, style)


def _markdown(pre, post) -> str:
    lines = []
    for c in post:
        nb = len(post[c]["data"])
        head = ["sample", *[f"bin {b}" for b in range(nb)], "total"]
        lines += [f"## {c}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, res in (("pre-fit", pre), ("post-fit", post)):
            rows = [*res[c]["samples"].items(), ("total", res[c]["total"])]
            for name, e in rows:
                cells = [f"{y:.2f} ± {s:.2f}" for y, s in zip(e["yields"], e["stdev"], strict=True)]
                cells.append(f"{e['sum']:.2f} ± {e['sum_stdev']:.2f}")
                lines.append(f"| {name} ({label}) | " + " | ".join(cells) + " |")
        data = post[c]["data"]
        lines.append("| data | " + " | ".join(f"{d:g}" for d in data)
                     + f" | {post[c]['data_sum']:g} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


@click.command()
@_opts
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "markdown"]),
    default="json",
    show_default=True,
    help="JSON ({prefit, postfit}: per channel, sample and bin) or a markdown table.",
)
def yields(plot, style, poi_value, output_file, fmt, **kw):
    """Pre- and post-fit yields per channel, sample and bin with their uncertainties (post-fit
    from the full covariance, cabinetry's yield_stdev), and the data."""

    def work():
        from ..stats import covariance

        ws, model, data = _model(kw)
        post = _postfit(model, data, poi_value, ws)
        return {"prefit": covariance.prefit_yields(model, data),
                "postfit": covariance.postfit_yields(model, data, post)}  # fmt: skip

    out = _run("yields", kw, work, poi_value=poi_value)
    if fmt == "markdown":
        if output_file is not None:
            from pathlib import Path

            from ..writers import write_atomic

            write_atomic(Path(output_file), _markdown(out["prefit"], out["postfit"]) + "\n")
        else:
            click.echo(_markdown(out["prefit"], out["postfit"]))
    else:
        output(out, output_file)
    _draw("plot_yields", plot, style, out["prefit"], out["postfit"])


@click.command()
@_common
@_plot
@_style
@click.option(
    "--parameter",
    "parameters",
    multiple=True,
    help="Parameter to scan (default: the POI); twice for a 2-D scan.",
)
@click.option(
    "--range",
    "ranges",
    multiple=True,
    metavar="LO,HI",
    help="Scan range per --parameter (default: best fit +- 3 uncertainties, within bounds).",
)
@click.option(
    "--points", type=click.IntRange(2, 10000), default=21, show_default=True,
    help="Points per parameter.",
)  # fmt: skip
def scan(plot, style, output_file, parameters, ranges, points, **kw):
    """Profile-likelihood scan: -2 Delta log L with one parameter (or two) fixed on a grid and
    the others refitted, all fits batched. A scanned parameter's uncertainty that the Hessian
    does not determine (singular or indefinite, as 'diffhep fit' says) is null and named,
    and the command exits 1; it then has no default range (give --range). A refit that does
    not converge leaves its row null (the others are printed) and the command exits 1."""
    import numpy as np

    if len(parameters) > 2:
        raise click.BadParameter("scan one or two parameters", param_hint="--parameter")
    if ranges and len(ranges) != max(len(parameters), 1):
        raise click.BadParameter("give one --range per --parameter", param_hint="--range")
    given = [_numbers(r, "--range", 2) for r in ranges]

    def work():
        from ..errors import DiffhepError
        from ..stats import covariance, diagnostics

        ws, model, data = _model(kw)
        names = list(parameters)
        if not names:
            names = [model.config.par_names[covariance.require_poi(model)]]
        for p in names:
            if p not in model.config.par_names:
                raise DiffhepError(f"unknown parameter {p!r}", file=ws.file, where="--parameter",
                                   fix="use a name of 'diffhep fit' output")  # fmt: skip
        best = diagnostics.best_fit(model, data)
        axes = []
        for i, p in enumerate(names):
            k = model.config.par_names.index(p)
            lo, hi = model.config.bounds[k]
            x, sd = float(best.bestfit[k]), float(best.uncertainty[k])
            if given:
                a, b = given[i]
            elif np.isfinite(sd):
                a, b = max(lo, x - 3 * sd), min(hi, x + 3 * sd)
            else:
                raise FitError(f"{_UNDETERMINED} the uncertainty of {p} is undetermined: the "
                               "default scan range (best fit +- 3 uncertainties) does not exist",
                               file=ws.file, where="--range",
                               fix=f"give the range (--range LO,HI); {_FIX}")  # fmt: skip
            if not lo <= a < b <= hi:
                raise DiffhepError(f"scan range [{a:g}, {b:g}] of {p!r} is empty or outside its "
                                   f"bounds [{lo:g}, {hi:g}]", file=ws.file, where="--range",
                                   fix="give LO < HI inside the bounds")  # fmt: skip
            axes.append(np.linspace(a, b, points))
        grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
        return diagnostics.scan(model, data, names, grid, best, partial=True)

    out = _run("scan", kw, work, parameters=parameters, ranges=ranges, points=points)
    _show(out, output_file, "plot_scan", plot, style)
    bad = out.get("not_converged")
    if bad:  # their rows are null (and gaps in the figure); the others are valid
        click.echo(f"error: {len(bad)} of the {len(out['values'])} scan fits did not converge "
                   f"(null rows; first at {', '.join(f'{v:g}' for v in bad[0])})\n"
                   "  fix: narrow the scan range (--range), or check the model at these values",
                   err=True)  # fmt: skip
        sys.exit(1)
    if out.get("undetermined"):
        click.echo(f"error: {_UNDETERMINED} the uncertainties of "
                   f"{', '.join(out['undetermined'])} are undetermined (null); the scan is valid\n"
                   f"  fix: {_FIX}", err=True)  # fmt: skip
        sys.exit(1)


@click.command()
@_common
@toy_options
def significance(output_file, ntoys, seed, first_toy, save_toys, max_nonconverged, chunk_size,
                 workers, scheduler, **kw):  # fmt: skip
    """Observed and median expected discovery significance (asymptotic q0 test of POI = 0).

    With --toys N: toy-based (pyhf's calctype='toybased', test_stat='q0'): p0 from the
    mu = 0 toys, its expected band from the mu = 1 toys, Z the normal quantiles."""
    check_toy_options(ntoys, seed, first_toy, save_toys, chunk_size, workers, scheduler)
    if ntoys is not None:
        res = run_toys({"test_stat": "q0"}, ntoys, seed, first_toy, chunk_size,
                       lambda fn, **a: _on_workspace(fn, kw, **a), workers,
                       scheduler)  # fmt: skip
        finish(res, save_toys, output_file, max_nonconverged)
        return

    def work():
        from ..stats import diagnostics

        _, model, data = _model(kw)
        return diagnostics.significance(model, data)

    output(_run("significance", kw, work), output_file)


@click.command()
@_common
def gof(output_file, **kw):
    """Goodness of fit against the saturated model: chi2 = -2 log(L / L_saturated), degrees of
    freedom (bins minus free unconstrained parameters), chi2/ndf and the p-value (null
    without degrees of freedom). It needs no parameter of interest: a background-only
    workspace is tested as it is; nor uncertainties: a Hessian that leaves parameters
    undetermined does not stop it. A best fit that did not converge exits 1."""

    def work():
        from ..stats import diagnostics

        _, model, data = _model(kw, poi=False)
        return diagnostics.gof(model, data)

    output(_run("gof", kw, work), output_file)


COMMANDS = [pulls, ranking, correlations, yields, scan, significance, gof]
