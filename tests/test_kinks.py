"""Fits whose objective has a kink: normsys ``code1`` and histosys ``code0`` interpolations
change their derivative at alpha = 0, and a minimum can sit exactly there (left slope
negative, right slope positive), where Newton's smooth model never arrives. The solver keeps
such a parameter on one side of 0 per step and holds it at 0 where neither side descends
(``diffhep.stats.solver``, ``kinks``).

References: closed forms; pyhf (guarded, scipy at tolerance 1e-12) as an upper bound of the
minimum (its optimisers do not know the kinks either: they stop near them, and MINUIT fails
on these models); one-sided finite differences at the kinks as the certificate of a minimum
there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

import diffhep
import oracle
from diffhep.stats import multimodal
from diffhep.stats.solver import CONVERGED, minimize
from diffhep.stats.workspace import builtin_example
from specs import CODES_1

# one code changed, the other kept at pyhf's model default (``--normsys-code code1`` alone;
# a type left out of ``modifier_settings`` gets its modifier's own default, code1 / code0)
NORMSYS_CODE1 = {"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code4p"}}
HISTOSYS_CODE0 = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code0"}}


def kinked_1d(x, args):
    """``a x0`` left of 0 and ``b x0`` right of it (the left branch's derivative at 0, as the
    interpolations have it), plus ``0.1 x0^2 + (x1 - x0 - 1)^2``: along x1 = x0 + 1, the
    branch ``s x0 + 0.1 x0^2`` has its minimum at x0 = -5 s."""
    a, b = args
    slope = jnp.where(x[0] > 0, b, a)
    return slope * x[0] + 0.1 * x[0] ** 2 + (x[1] - x[0] - 1.0) ** 2


def run(slopes, x0, kinks=True, lower=-5.0):
    lo, hi, fixed = jnp.asarray([lower, -5.0]), jnp.full(2, 5.0), jnp.zeros(2, bool)
    k = jnp.array([True, False]) if kinks else None
    args = tuple(jnp.asarray(s) for s in slopes)
    return minimize(kinked_1d, args, jnp.asarray(x0), lo, hi, fixed, kinks=k, max_steps=50)


@pytest.mark.parametrize("x0", [[1.3, 0.0], [-2.0, 3.0], [0.0, 0.0]])
def test_a_minimum_at_the_kink_is_reached_exactly(x0):
    """Slopes -0.5 left and 2 right of 0: the objective falls towards 0 from both sides, so
    the minimum is (0, 1), at the kink. From either side and from the kink itself the fit
    converges there exactly. Without ``kinks`` (the solver before) it does not."""
    res = run((-0.5, 2.0), x0)
    assert int(res.status) == CONVERGED, int(res.status)
    assert float(res.x[0]) == 0.0
    assert float(res.x[1]) == pytest.approx(1.0, abs=1e-9)
    blind = run((-0.5, 2.0), [1.3, 0.0], kinks=False)
    assert not (int(blind.status) == CONVERGED and float(blind.x[0]) == 0.0)


@pytest.mark.parametrize(
    ("slopes", "x0", "minimum"),
    [
        ((0.4, 0.5), [3.0, 1.0], -2.0),  # falls to the left through the kink
        ((0.4, 0.5), [0.0, 0.0], -2.0),  # from the kink: the left side descends
        ((-0.5, -0.6), [-3.0, 0.0], 3.0),  # falls to the right through the kink
        ((-0.5, -0.6), [0.0, 0.0], 3.0),  # from the kink: the right side descends
    ],
)
def test_a_kink_that_is_no_minimum_is_passed(slopes, x0, minimum):
    """Where the objective keeps falling through the kink, the fit stops there for one
    step (a step through it ends at it) and then moves on to the minimum on the other
    side: x0 = -5 s of the branch it lies on."""
    res = run(slopes, x0)
    assert int(res.status) == CONVERGED, int(res.status)
    assert float(res.x[0]) == pytest.approx(minimum, abs=1e-9)
    assert float(res.x[1]) == pytest.approx(minimum + 1.0, abs=1e-9)


def test_parameters_of_two_modifiers_have_the_kink_of_either():
    """A parameter of a histosys and a normsys modifier (most of sbottom's) has the kink of
    normsys code1 even though histosys (code4p) is smooth: before, only the parameter's first
    modifier type counted and none of them was kinked."""
    spec, patch = builtin_example()
    ws = diffhep.Workspace(spec).patched(patch)
    config = ws.model().config
    names = config.par_order
    types: dict = {}
    for name, modtype in config.modifiers:
        types.setdefault(name, set()).add(modtype)
    both = {name for name, t in types.items() if {"histosys", "normsys"} <= t}
    assert both
    for settings in (NORMSYS_CODE1, HISTOSYS_CODE0):
        kinked = multimodal.kinked(ws.model(modifier_settings=settings).config)
        assert all(kinked[names.index(n)] for n in both), settings
    assert not multimodal.kinked(ws.model().config).any()


@pytest.mark.parametrize(
    "settings",
    [NORMSYS_CODE1, HISTOSYS_CODE0, CODES_1],
    ids=["normsys-code1", "histosys-code0", "both"],
)
def test_real_likelihood_with_kinked_codes_reaches_a_minimum_at_or_below_pyhf(settings):
    """sbottom RegionA at 1300/850/60 with pyhf's other interpolation codes: the fit at
    mu = 1 stalled (status 3: no step decreases -log L) with parameters at their kinks, so
    `diffhep cls --normsys-code code1` failed on every signal point of the three regions. Now
    it converges, at or below pyhf's minimum, with every parameter at its kink a one-sided
    minimum there (the objective rises on both sides)."""
    spec, patch = builtin_example()
    ws = diffhep.Workspace(spec).patched(patch)
    model = ws.model(modifier_settings=settings)
    data = jnp.asarray(ws.data(model))
    res = diffhep.stats.fit.fixed_poi_fit(1.0, model, data, uncertainties=False)
    assert int(res.status) == CONVERGED, int(res.status)
    pmodel = pyhf.Workspace(ws.spec).model(modifier_settings=dict(settings))
    _, ref = oracle.fit(np.asarray(data), pmodel, poi_value=1.0, return_fitted_val=True)
    assert float(res.twice_nll) <= float(ref) + 1e-6, (float(res.twice_nll), float(ref))

    def f(x):
        return float(-2.0 * model.logpdf(jnp.asarray(x), data))

    x = np.asarray(res.bestfit)
    kinked = multimodal.kinked(model.config) & (x == 0)
    assert kinked.any()  # the case this test is about: a minimum at a kink
    base, h = f(x), 1e-6
    for i in np.flatnonzero(kinked):
        for sign in (-1.0, 1.0):
            y = x.copy()
            y[i] = sign * h
            assert f(y) > base - 1e-12, (model.config.par_order[i], sign)
    # and the smooth directions are at their minimum: the gradient vanishes there
    g = np.asarray(jax.grad(lambda p: -2.0 * model.logpdf(p, data))(jnp.asarray(x)))
    smooth = ~kinked & ~np.asarray(model.config.fixed)
    smooth[model.config.poi_index] = False
    at_bound = (x <= np.asarray(model.config.bounds)[:, 0]) | (
        x >= np.asarray(model.config.bounds)[:, 1]
    )
    assert np.max(np.abs(g[smooth & ~at_bound])) < 1e-4


def test_a_kink_at_a_lower_bound_takes_the_right_side():
    """With the lower bound at the kink (0) there is no left side: the left branch's slope
    (positive here) must not decide. Before, the parameter was held at 0 as at its bound,
    'converged' above the minimum (a review's 1-bin code1 model with bounds [0, 5]: -2lnL
    18.01 instead of 10.03); the minimum of the right branch is x0 = 3."""
    for x0 in ([0.0, 0.0], [2.0, 0.0]):
        res = run((0.4, -0.6), x0, lower=0.0)
        assert int(res.status) == CONVERGED, int(res.status)
        assert float(res.x[0]) == pytest.approx(3.0, abs=1e-9)
    held = run((0.4, 0.6), [1.0, 0.0], lower=0.0)  # rising on the right: at the bound
    assert float(held.x[0]) == 0.0 and int(held.status) == CONVERGED
