"""Gradients of fits and asymptotic results with respect to yields and data.

diffhep differentiates through its fits with the implicit function theorem (no unrolled
iterations). Every gradient is checked against central finite differences of the same
function (float64, step 1e-5 relative to the yield, relative tolerance 1e-4), on small models
with one modifier type each, so that a wrong derivative points at its modifier.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffhep
from test_fit import (
    _restore_pyhf_backend,  # noqa: F401  (autouse fixture: restore pyhf's backend)
    channel,
    model_spec,
    normfactor,
    normsys,
    sample,
    small_models,
)

RTOL = 1e-4
REL_STEP = 1e-5
# one model per modifier type (see test_fit.CASES)
MODIFIER_CASES = {
    "normsys": "normsys_code4",
    "histosys": "histosys_code4p",
    "shapesys": "shapesys",
    "staterror": "staterror",
    "lumi": "lumi",
    "shapefactor": "shapefactor",
}


def _asimov_mu1(model):
    pars = jnp.asarray(model.config.init, dtype=model.nominal.dtype)
    return model.expected_data(pars.at[model.config.poi_index].set(1.0))


def quantities(nominal, model, data):
    """[CLs_exp median (qtilde, mu = 1), q0 (discovery) on the Asimov data of mu = 1 of the
    model with these yields, best fit to ``data``...]."""
    m = model.with_yields(nominal=nominal)
    cls_exp = diffhep.stats.hypotest.hypotest(1.0, m, data).cls_exp[2]
    q0 = diffhep.stats.hypotest.discovery(m, _asimov_mu1(m)).teststat
    bestfit = diffhep.stats.fit.fit(m, data, uncertainties=False).bestfit
    return jnp.concatenate([jnp.stack([cls_exp, q0]), bestfit])


@eqx.filter_jit
def value_and_jacobian(nominal, model, data):
    return quantities(nominal, model, data), jax.jacrev(quantities)(nominal, model, data)


def bestfit(nominal, model, data):
    return diffhep.stats.fit.fit(
        model.with_yields(nominal=nominal), data, uncertainties=False
    ).bestfit


@eqx.filter_jit
def bestfit_and_jacobian(nominal, model, data):
    return bestfit(nominal, model, data), jax.jacrev(bestfit)(nominal, model, data)


def central_differences(fn, x, rel_step=REL_STEP):
    """d fn / dx for every element of x with x != 0 (others: NaN)."""
    x = np.asarray(x, dtype=float)
    out = None
    for idx in np.ndindex(x.shape):
        if x[idx] == 0:
            continue
        h = rel_step * abs(x[idx])
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        d = (np.asarray(fn(up)) - np.asarray(fn(down))) / (2 * h)
        if out is None:
            out = np.full((*d.shape, *x.shape), np.nan)
        out[(..., *idx)] = d
    return out


def assert_jacobian_close(label, jac, fd, names, wrt="nominal", n_scalars=0):
    """Relative 1e-4, with an absolute floor of 1e-6 of the largest entry: per row for the
    first ``n_scalars`` rows (CLs, q0), over all remaining rows for the best-fit parameters
    (some of which barely move: their finite differences are rounding noise)."""
    jac = np.asarray(jac)
    ok = ~np.isnan(fd)
    block = np.max(np.abs(fd[n_scalars:][ok[n_scalars:]]))
    for r, name in enumerate(names):
        scale = np.max(np.abs(fd[r][ok[r]])) if r < n_scalars else block
        np.testing.assert_allclose(
            jac[r][ok[r]], fd[r][ok[r]], rtol=RTOL, atol=1e-6 * scale + 1e-14,
            err_msg=f"{label}: d({name})/d({wrt})",
        )  # fmt: skip


def _check_all_quantities(label, dmodel, data):
    nominal = np.asarray(dmodel.nominal)
    value, jac = value_and_jacobian(jnp.asarray(nominal), dmodel, data)
    value, jac = np.asarray(value), np.asarray(jac)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(jac))
    assert 0 < value[0] < 0.5 and value[1] > 0
    fd = central_differences(
        lambda nom: value_and_jacobian(jnp.asarray(nom), dmodel, data)[0], nominal
    )
    assert_jacobian_close(label, jac, fd, ["CLs_exp", "q0", *dmodel.config.par_names], n_scalars=2)
    # the gradients are informative: scaling the whole signal template up lowers CLs and
    # raises q0 (single bins may go either way: the nuisances re-balance)
    sig = dmodel.config.samples.index("signal")
    assert float(np.sum(jac[0, sig] * nominal[sig])) < 0
    assert float(np.sum(jac[1, sig] * nominal[sig])) > 0
    return value, jac, fd


@pytest.mark.parametrize("modifier", list(MODIFIER_CASES))
def test_bestfit_gradient_wrt_yields(modifier):
    dmodel, ddata, _, _ = small_models(MODIFIER_CASES[modifier])
    nominal = np.asarray(dmodel.nominal)
    value, jac = bestfit_and_jacobian(jnp.asarray(nominal), dmodel, ddata)
    assert np.all(np.isfinite(np.asarray(jac)))
    fd = central_differences(
        lambda nom: bestfit_and_jacobian(jnp.asarray(nom), dmodel, ddata)[0], nominal
    )
    assert_jacobian_close(modifier, jac, fd, dmodel.config.par_names)
    # scaling the signal template by (1 + e) scales the best-fit POI by 1 / (1 + e) where the
    # signal enters only through multiplicative modifiers (staterror widths depend on it)
    poi, sig = dmodel.config.poi_index, dmodel.config.samples.index("signal")
    directional = float(np.sum(np.asarray(jac)[poi, sig] * nominal[sig]))
    mu_hat = float(value[poi])
    if modifier == "staterror":
        assert directional < 0
    else:
        assert directional == pytest.approx(-mu_hat, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("modifier", list(MODIFIER_CASES))
def test_cls_q0_bestfit_gradients_wrt_yields(modifier):
    dmodel, ddata, _, _ = small_models(MODIFIER_CASES[modifier])
    _check_all_quantities(modifier, dmodel, ddata)


def test_cls_q0_bestfit_gradients_with_poi_at_its_bound():
    """d(CLs_exp median), d(q0 on Asimov data), d(best fit) with respect to the yields of the
    shapesys model of pyhf's simplemodels, with data below the background: the POI sits on
    its lower bound 0 in the free fit. Its derivative is exactly 0 (a small change of the
    yields keeps it there); the other parameters move as their conditional optimum does."""
    dmodel, _, _, _ = small_models("uncorrelated")
    data = jnp.asarray([44.0, 45.0, *dmodel.config.auxdata])
    value, jac, fd = _check_all_quantities("POI at bound", dmodel, data)
    poi = dmodel.config.poi_index
    assert float(value[2 + poi]) == 0.0
    assert np.all(jac[2 + poi] == 0.0)
    assert np.all(fd[2 + poi] == 0.0)
    assert np.any(np.abs(jac[2 + poi + 1 :]) > 1e-3)


@eqx.filter_jit
def _bestfit_and_jacobian_wrt_data(data, model):
    def fitted(d):
        return diffhep.stats.fit.fit(model, d, uncertainties=False).bestfit

    return fitted(data), jax.jacrev(fitted)(data)


@pytest.mark.parametrize("name", ["histosys_code4p"])
def test_bestfit_gradient_wrt_data(name):
    """Main and auxiliary data."""
    dmodel, ddata, _, _ = small_models(name)
    data = np.asarray(ddata)
    _, jac = _bestfit_and_jacobian_wrt_data(jnp.asarray(data), dmodel)
    fd = central_differences(
        lambda d: _bestfit_and_jacobian_wrt_data(jnp.asarray(d), dmodel)[0], data
    )
    # auxiliary data that are 0 (alphas) get an absolute step
    for j in np.nonzero(data == 0)[0]:
        up, down = data.copy(), data.copy()
        up[j] += 1e-5
        down[j] -= 1e-5
        fd[:, j] = (
            np.asarray(_bestfit_and_jacobian_wrt_data(jnp.asarray(up), dmodel)[0])
            - np.asarray(_bestfit_and_jacobian_wrt_data(jnp.asarray(down), dmodel)[0])
        ) / 2e-5
    jac = np.asarray(jac)
    assert_jacobian_close(name, jac, fd, dmodel.config.par_names, wrt="data")
    # a normfactor's best fit grows with the data of the bins its sample dominates
    poi = dmodel.config.poi_index
    assert np.all(jac[poi, : dmodel.config.nmaindata] > 0)


def _counting(signal, bkg, n):
    spec = model_spec(
        channel(
            "SR",
            sample("signal", signal, normfactor("mu")),
            sample("bkg", bkg, normsys("bkg_norm", 0.9, 1.1)),
        )
    )
    model = diffhep.Model.from_spec(spec)
    return model, jnp.asarray([*n, *model.config.auxdata])


def test_jitted_hypotest_does_not_retrace_when_yields_change():
    model, data = _counting([3.0, 5.0], [20.0, 10.0], [24.0, 12.0])

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def cls(model, data):
        return diffhep.stats.hypotest.hypotest(1.0, model, data).cls_obs

    values = [float(cls(model, data))]
    for scale in (0.5, 2.0, 3.0):
        other = model.with_yields(nominal=model.nominal * jnp.asarray([[scale], [1.0]]))
        values.append(float(cls(other, data)))
    values.append(float(cls(model.with_yields(normsys_hi=jnp.asarray([1.3])), data + 1.0)))
    assert len(set(values)) == len(values)  # the results really change
    # more signal, smaller CLs
    assert values[1] > values[0] > values[2] > values[3]
    # a model with another structure is a new trace, which the guard refuses
    other_structure, other_data = _counting([3.0], [20.0], [24.0])
    with pytest.raises(RuntimeError, match="traced"):
        cls(other_structure, other_data)
