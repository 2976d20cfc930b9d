"""Exact gradient and Hessian of ``-log L`` from the Jacobians of the expected rates.

The Newton solver's generic Hessian pushes one tangent per global parameter through the
whole likelihood (``G + k`` Hessian-vector products, :func:`diffhep.stats.solver.hessian_parts`).
On models with many global parameters and few bins (published likelihoods: sbottom RegionA
has 58 global parameters, 6 bins and 428 histosys entries) that is most of a fit's time, although
every modifier depends on one parameter only. Here the Hessian is assembled from that
structure instead. Each cell (sample, bin) has the rate ``lam_c = A_c * D_c * exp(N_c)``:

- ``A_c``: nominal plus histosys changes, each entry a function of one parameter;
- ``D_c``: the product of the direct factors (normfactor, lumi, staterror, shapesys,
  shapefactor), a few layers of one parameter each;
- ``N_c``: the sum of the normsys log-factors, each entry a function of one parameter.

Per entry, the first and second derivatives of the interpolation are elementwise (one
forward-mode pass each), the Jacobians ``dA, dD, dN`` (cells x parameters) follow by static
one-hot matrix products, and with ``phi_b(lam_b)`` the Poisson term of bin ``b`` (elementwise),

    H = U^T diag(phi'') U + sum_c phi'_b(c) d^2 lam_c + diag(constraint''),

where ``U`` is the Jacobian of the bin rates and ``d^2 lam_c`` expands by the product rule into
diagonal terms (``A'', N''``), products of the three Jacobians, and pairs of direct layers.
Everything is exact (equal to automatic differentiation up to rounding; the tests compare
them); the cost is a few small matrix products instead of ``G + k`` passes.

:func:`supports` decides, from the static structure, whether this is the cheaper way.
"""

from __future__ import annotations

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

from . import interpolation

__all__ = ["supports", "value_grad_hessian"]

#: Fewer Hessian-vector products than this: the generic structured Hessian is as cheap.
_MIN_DIRECTIONS = 8
#: Largest number of parameters for a dense Hessian assembled here.
_MAX_PARS = 512
#: Largest static one-hot matrix (cells x normsys entries, cells x parameters per direct
#: layer) and largest number of direct layers.
_MAX_ONEHOT = 2**23
_MAX_LAYERS = 8


@cache
def _plan(tables, config):
    """Static one-hot matrices of a model structure, or ``None`` where they would be too
    large (many parameters, entries or direct layers; normsys without a one-hot matrix)."""
    P = config.npars
    layers = tables.direct_table.shape[0]
    cells = tables.direct_table.shape[1] if layers else tables.normsys_table.shape[1]
    E = tables.histosys_par.shape[0]
    En = tables.normsys_par.shape[0]
    if P > _MAX_PARS or layers > _MAX_LAYERS:
        return None
    if cells * En > _MAX_ONEHOT or cells * P * layers > _MAX_ONEHOT:
        return None
    if En and tables.normsys_onehot(En) is None:
        return None
    plan = {}
    # the parameters each Jacobian can be nonzero in (static): the cross terms' product
    # runs over these rows and columns only (:func:`_cross_terms`)
    plan["columns"] = (
        np.unique(np.asarray(tables.histosys_par, dtype=np.int64)),
        np.setdiff1d(np.unique(np.asarray(tables.direct_table, dtype=np.int64)), [P]),
        np.unique(np.asarray(tables.normsys_par, dtype=np.int64)),
    )
    if E:
        # entry -> (sample, parameter) and entry -> sample, summed by segment sums: a dense
        # one-hot product (S*P, E) @ (E, B) cost ~90 us per call on CPU (B = 6: a skinny dot),
        # the segment sum ~15 us (sbottom RegionA, one core)
        plan["histosys"] = np.asarray(tables.histosys_sample * P + tables.histosys_par)
        plan["histosys_sample"] = np.array(tables.histosys_sample)  # a copy: see below
    if En:
        plan["normsys_cells"] = tables.normsys_onehot(En)  # (cells, En)
        # a copy, never the tables' own array: the plan is cached by value, so a later model
        # with equal tables would get the first model's array object, which JAX then does not
        # deduplicate with its own (a constant more in the program: another persistent-cache
        # key than in a fresh process, where they were one object)
        plan["normsys_par"] = np.array(tables.normsys_par)  # entry -> parameter
    if layers:
        # (layers, cells, P): the parameter of each layer in each cell (the padding index P,
        # a constant 1, has no column)
        oh = np.zeros((layers, cells, P + 1))
        for i, layer in enumerate(tables.direct_table):
            oh[i, np.arange(cells), layer] = 1.0
        plan["direct"] = oh[..., :P]
        # the pairs i < j of layers as one scatter into a (P+1) x (P+1) matrix: cell -> flat
        # index of (parameter of layer i, parameter of layer j), the padding row/column dropped
        pairs = [(i, j) for i in range(layers) for j in range(i + 1, layers)]
        table = np.asarray(tables.direct_table)
        plan["direct_pairs"] = pairs
        plan["direct_pair_index"] = np.concatenate(
            [table[i] * (P + 1) + table[j] for i, j in pairs] or [np.zeros(0, int)]
        )
    return plan


def supports(model, structure) -> bool:
    """Whether :func:`value_grad_hessian` is the cheaper way for ``model`` whose Hessian has
    the sparsity ``structure`` (static: decided from the model's structure).

    The generic Hessian costs one pass per global parameter (and per block slot); this one
    a few dense products over all parameters. It wins where most parameters are global
    (sbottom RegionA: 58 of 64) and loses where most are per-bin gammas (the 50-bin benchmark
    model: 11 of 61 global, 1.8x slower here).
    """
    nglobal = structure.npars - sum(len(b) for b in structure.blocks)
    if nglobal + structure.kmax < _MIN_DIRECTIONS or 2 * nglobal < structure.npars:
        return False
    return _plan(model.tables, model.config) is not None


def _elementwise_derivatives(fn, x):
    """``fn(x)`` and its first and second derivatives, for ``fn`` elementwise in ``x`` (each
    output row depends on its own entry of ``x`` only): two forward-mode passes."""
    ones = jnp.ones_like(x)

    def first(y):
        return jax.jvp(fn, (y,), (ones,))

    (v, d1), (_, d2) = jax.jvp(first, (x,), (ones,))
    return v, d1, d2


def _histosys_delta(model):
    """The histosys entries' changes of their sample's yields, ``(E,) -> (E, B)``: each row a
    function of its own entry's parameter value."""
    t = model.tables
    code = model.config.interpcode("histosys")
    weights = interpolation.code4p_weights if code == "code4p" else interpolation.code0_weights
    nom_e = model.nominal[t.histosys_sample]

    def delta(a):
        w_lo, w_nom, w_hi = (w[:, None] for w in weights(a))
        d = w_lo * model.histosys_lo + w_nom * nom_e + w_hi * model.histosys_hi
        return jnp.where(t.histosys_mask, d, 0.0)

    return delta


def _normsys_logf(model):
    """The normsys entries' log-factors, ``(En,) -> (En,)``, elementwise."""
    if model.config.interpcode("normsys") == "code4":

        def logf(a):
            f = interpolation.code4(a, model.normsys_lo, model.normsys_hi)
            return jnp.log(jnp.where(f > 0, f, 1e-300))

        return logf
    return lambda a: interpolation.log_code1(a, model.normsys_lo, model.normsys_hi)


def _rates_and_derivatives(model, pars, plan):
    """Per cell: ``A, D, N`` (cells,), their Jacobians (cells, P) and the diagonal second
    derivatives of ``A`` and ``N`` (cells, P)."""
    t = model.tables
    S, B = model.nominal.shape
    P = pars.shape[0]
    dtype = pars.dtype
    cells = S * B
    zeros = jnp.zeros((cells, P), dtype)
    A, dA, hA = model.nominal.reshape(cells), zeros, zeros
    if "histosys" in plan:
        d0, d1, d2 = _elementwise_derivatives(_histosys_delta(model), pars[t.histosys_par])
        A = A + jax.ops.segment_sum(d0, plan["histosys_sample"], num_segments=S).reshape(cells)

        def to_cells(d):  # (E, B) -> (cells, P): entries summed into (sample, parameter)
            sp = jax.ops.segment_sum(d, plan["histosys"], num_segments=S * P)
            return jnp.transpose(sp.reshape(S, P, B), (0, 2, 1)).reshape(cells, P)

        dA, hA = to_cells(d1), to_cells(d2)
    N, dN, hN = jnp.zeros(cells, dtype), zeros, zeros
    if "normsys_cells" in plan:
        l0, l1, l2 = _elementwise_derivatives(_normsys_logf(model), pars[t.normsys_par])
        cell_of = jnp.asarray(plan["normsys_cells"], dtype)
        N = cell_of @ l0
        # (cells, En) entries summed into their parameters by a segment sum
        per_entry = cell_of.T[:, :, None] * jnp.stack([l1, l2], axis=-1)[:, None, :]
        per_par = jax.ops.segment_sum(per_entry, plan["normsys_par"], num_segments=P)
        dN, hN = per_par[..., 0].T, per_par[..., 1].T  # (cells, P) each
    D, dD, layers = jnp.ones(cells, dtype), zeros, None
    if "direct" in plan:
        ext = jnp.concatenate([pars, jnp.ones(1, dtype)])
        layers = ext[t.direct_table]  # (L, cells)
        D = jnp.prod(layers, axis=0)
        oh = jnp.asarray(plan["direct"], dtype)
        for i in range(layers.shape[0]):
            dD = dD + oh[i] * _product_without(layers, (i,))[:, None]
    return A, D, N, (dA, dD, dN), (hA, hN), layers


def _product_without(layers, skip):
    """Product of the layers (L, cells) other than those in ``skip`` (no division: a factor
    may be 0, e.g. mu = 0)."""
    out = jnp.ones(layers.shape[1], layers.dtype)
    for i in range(layers.shape[0]):
        if i not in skip:
            out = out * layers[i]
    return out


def _main_terms(model, n, lam):
    """``phi(lam)`` summed, ``phi'`` and ``phi''`` per bin, with ``phi`` the bins' part of
    ``-log L`` (elementwise in ``lam``; the counts ``n`` fixed)."""

    def phi(y):
        return -model._main_relative_at(n, y)

    d1, d2 = jax.jvp(jax.grad(phi), (lam,), (jnp.ones_like(lam),))
    return phi(lam), d1, d2


def value_grad_hessian(model, data, pars):
    """``-log L`` without its constant (the fits' objective), its gradient and its dense
    Hessian at ``pars`` (any model within the size limits; :func:`supports` says where it is
    also the cheaper way)."""
    plan = _plan(model.tables, model.config)
    if plan is None:
        raise ValueError("value_grad_hessian: the model is too large for a dense Hessian")
    pars = jnp.asarray(pars, dtype=model.nominal.dtype)
    main, aux = model._split(data)
    S, B = model.nominal.shape
    A, D, N, (dA, dD, dN), (hA, hN), layers = _rates_and_derivatives(model, pars, plan)
    E = jnp.exp(N)
    DE = D * E
    lam_c = A * DE
    grad_c = DE[:, None] * dA + (A * E)[:, None] * dD + lam_c[:, None] * dN  # (cells, P)
    lam = jnp.sum(lam_c.reshape(S, B), axis=0)
    U = jnp.sum(grad_c.reshape(S, B, -1), axis=0)  # (B, P)
    f_main, phi1, phi2 = _main_terms(model, main, lam)
    w = jnp.tile(phi1, S)  # phi' of each cell's bin (cells are sample-major)

    # constraint terms: each depends on one parameter, so their Hessian is diagonal
    def constraint(x):
        return -model._constraint_relative(aux, x)

    f_con, g_con = jax.value_and_grad(constraint)(pars)
    h_con = jax.jvp(jax.grad(constraint), (pars,), (jnp.ones_like(pars),))[1]

    H = U.T @ (phi2[:, None] * U)
    diag = jnp.sum((w * DE)[:, None] * hA + (w * lam_c)[:, None] * hN, axis=0) + h_con
    # the cross terms of d^2 (A D e^N): with the Jacobians Z = (dA, dD, dN) stacked over
    # cells, sum_c w_c Z_c^T K_c Z_c where K_c pairs each factor's derivative with the
    # others' values (E, D E, A E; lam for dN dN): dA^T w(E dD + DE dN) +
    # dD^T w(E dA + AE dN) + dN^T w(DE dA + AE dD + lam dN), symmetric by construction;
    # each product over the columns its Jacobian can be nonzero in (_cross_terms)
    AE = A * E
    H = H + jnp.diag(diag) + _cross_terms(plan["columns"], (dA, dD, dN), A, E, DE, lam_c, w)
    if plan.get("direct_pairs"):
        # pairs of direct layers (e.g. mu x lumi x staterror in one cell): scattered into
        # (parameter of layer i, parameter of layer j), then symmetrised
        P = pars.shape[0]
        c = jnp.concatenate(
            [w * AE * _product_without(layers, pair) for pair in plan["direct_pairs"]]
        )
        M = jnp.zeros((P + 1) * (P + 1), pars.dtype).at[plan["direct_pair_index"]].add(c)
        M = M.reshape(P + 1, P + 1)[:P, :P]
        H = H + M + M.T
    g = U.T @ phi1 + g_con
    return f_main + f_con, g, H


def _cross_terms(columns, jacobians, A, E, DE, lam_c, w):
    """``sum_c w_c Z_c^T K_c Z_c``, the cross terms of ``d^2 (A D e^N)`` (see
    :func:`value_grad_hessian`): ``dA^T T_A + dD^T T_D + dN^T T_N`` with ``T_A = w(E dD + DE
    dN)``, ``T_D = w(E dA + AE dN)``, ``T_N = w(DE dA + AE dD + lam dN)``.

    Each Jacobian is nonzero only in the columns of its own parameters (``columns``:
    histosys, direct, normsys), so each product runs over those rows, and ``T_A`` over the
    direct and normsys columns: the same products as the dense ``Z^T T`` of the stacked
    Jacobians (the rows and columns left out hold zeros) at a fraction of its cost (sbottom
    RegionA: 52 histosys, 9 direct and 3 normsys of 64 parameters; (162 x 64)^T (162 x 64),
    0.053 ms of the 0.073 ms of a Hessian, one core)."""
    dA, dD, dN = jacobians
    hc, dc, nc = columns
    AE = A * E
    P = dA.shape[1]
    rows, owner = [], []
    if hc.size:
        rows.append(dA[:, hc].T @ ((w * E)[:, None] * dD + (w * DE)[:, None] * dN))
        owner.append(hc)
    if dc.size:
        rows.append(dD[:, dc].T @ ((w * E)[:, None] * dA + (w * AE)[:, None] * dN))
        owner.append(dc)
    if nc.size:
        t_n = (w * DE)[:, None] * dA + (w * AE)[:, None] * dD + (w * lam_c)[:, None] * dN
        rows.append(dN[:, nc].T @ t_n)
        owner.append(nc)
    if not rows:
        return jnp.zeros((P, P), dA.dtype)
    owner = np.concatenate(owner)
    stacked = jnp.concatenate([*rows, jnp.zeros((1, P), dA.dtype)])
    if np.unique(owner).size == owner.size:
        # each parameter's row from its own product (a static gather), 0 for the others
        index = np.full(P, owner.size)
        index[owner] = np.arange(owner.size)
        return stacked[index]
    return jnp.zeros((P, P), dA.dtype).at[owner].add(stacked[:-1])  # a parameter in two


def supports_probes(model, candidates) -> bool:
    """Whether :func:`probe_objective` applies: the model within the size limits and no
    candidate in a direct layer (its changes must act through histosys and normsys only)."""
    if _plan(model.tables, model.config) is None:
        return False
    return not np.isin(np.asarray(candidates), np.asarray(model.tables.direct_table)).any()


def probe_objective(model, data, pars, candidates, values):
    """The fits' objective (``-log L`` without its constant) with one parameter changed at a
    time: ``out[k, i]`` at ``pars`` with ``pars[candidates[i]] = values[k, i]``.

    The restart for several minima (:func:`diffhep.stats.fit.fit_bounded`) probes each
    candidate at a few values; evaluated one by one that is ``len(values) x len(candidates)``
    passes through the model (220 on sbottom RegionA, ~1.9 ms). A histosys or normsys
    parameter changes the yields through its own entries only, so the changed yields of every
    probe follow from the base factors ``A, D, N`` and the entries' changes, summed into
    ``(candidate, cell)`` (~0.15 ms; exact up to rounding; :func:`supports_probes` says where).

    Args:
        model, data: The model and its data (main + auxiliary).
        pars: The base point ``(P,)``.
        candidates: Static indices of the probed parameters ``(C,)`` (numpy).
        values: Their probe values ``(K, C)``.
    """
    plan = _plan(model.tables, model.config)
    t = model.tables
    main, aux = model._split(data)
    S, B = model.nominal.shape
    P, cells, dtype = pars.shape[0], S * B, pars.dtype
    cand = np.asarray(candidates)
    A, D, N = model.nominal.reshape(cells), jnp.ones(cells, dtype), jnp.zeros(cells, dtype)
    if "histosys" in plan:
        delta = _histosys_delta(model)
        d0 = delta(pars[t.histosys_par])
        A = A + jax.ops.segment_sum(d0, plan["histosys_sample"], num_segments=S).reshape(cells)
    if "normsys_cells" in plan:
        logf = _normsys_logf(model)
        l0 = logf(pars[t.normsys_par])
        N = jnp.asarray(plan["normsys_cells"], dtype) @ l0
    if "direct" in plan:
        D = jnp.prod(jnp.concatenate([pars, jnp.ones(1, dtype)])[t.direct_table], axis=0)
    # the constraint terms: one per auxiliary datum, each of one parameter, so a probe
    # changes those of its own parameter only: their values at every probe value, (K, aux),
    # and per candidate the change of their sum, not all terms at every probe (a log per
    # Poisson term and probe: 5 x 55 x 62 on sbottom RegionA, a third of the probes' time)
    aux_par = np.asarray(t.aux_par)
    slot = np.full(P, -1)
    slot[cand] = np.arange(len(cand))
    owner = slot[aux_par]  # (aux,): the candidate each term belongs to, -1: none
    theta = pars[aux_par]

    def con_terms(th):
        return -model._constraint_relative_terms(aux, th)

    con_base = con_terms(theta) if aux_par.size else jnp.zeros(0, dtype)
    if (owner >= 0).any():
        of_cand = jnp.asarray(owner[:, None] == np.arange(len(cand))[None, :], dtype)
        moved = jnp.where(owner >= 0, values[:, np.maximum(owner, 0)], theta)  # (K, aux)
        con = jnp.sum(con_base) + (jax.vmap(con_terms)(moved) - con_base) @ of_cand
    else:
        con = jnp.broadcast_to(jnp.sum(con_base), values.shape)

    def one(v):  # (C,) -> (C,)
        y = pars.at[cand].set(v)
        dA = jnp.zeros((len(cand), cells), dtype)
        dN = jnp.zeros((len(cand), cells), dtype)
        if "histosys" in plan:
            change = delta(y[t.histosys_par]) - d0  # (E, B), 0 where the parameter is not moved
            sp = jax.ops.segment_sum(change, plan["histosys"], num_segments=S * P)
            dA = jnp.transpose(sp.reshape(S, P, B), (1, 0, 2)).reshape(P, cells)[cand]
        if "normsys_cells" in plan:
            change = logf(y[t.normsys_par]) - l0  # (En,)
            per_entry = jnp.asarray(plan["normsys_cells"], dtype).T * change[:, None]
            dN = jax.ops.segment_sum(per_entry, plan["normsys_par"], num_segments=P)[cand]
        lam = jnp.sum(((A + dA) * D * jnp.exp(N + dN)).reshape(len(cand), S, B), axis=1)
        return jax.vmap(lambda lam_b: -model._main_relative_at(main, lam_b))(lam)

    return jax.vmap(one)(values) + con
