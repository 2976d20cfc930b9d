"""The exact full-dataset gradient in chunks: memory bounded by the chunk, not the dataset.

Every loss of the pipeline is a function of sums over events: the soft histograms
(``sum w p_k`` and ``sum w^2 p_k`` per bin, channel and event set), the soft yields, the
weighted cross-entropy sums and the selected weights. Writing ``S(params) = sum_c S_c(params)``
for the sums of chunk ``c`` and ``loss = F(params, S)``, the gradient is

    d loss / d params = dF/dparams + sum_c vjp(S_c)(dF/dS)

so :class:`TwoPass` computes it in two passes over the data: the first accumulates ``S``
chunk by chunk (forward only), then ``F``, its value and ``dF/dS`` are computed once, and
the second pass back-propagates ``dF/dS`` chunk by chunk (``vjp`` per chunk) and sums the
parameter gradients. Only one chunk is ever on the device; the result equals the in-memory
gradient up to rounding. Chunks are padded with zero-weight events to one shape (one
compilation) and may be sharded over devices (:mod:`diffhep.nn.sharding`).

:class:`TwoPass` is physics-free; :func:`pipeline_loss` writes a
:class:`~diffhep.analysis.pipeline.Pipeline`'s weighted loss terms in this form
(:meth:`~diffhep.analysis.pipeline.Pipeline.loss_sums`,
:meth:`~diffhep.analysis.pipeline.Pipeline.terms_from_sums`),
and :func:`gradient` is the one-call version.

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> loss = TwoPass(lambda p, c, h: jnp.sum(c * p),          # S = sum_i p x_i
    ...                lambda p, s, h: (s**2, {}))                # F = S^2
    >>> x = np.arange(10.0)
    >>> (value, _), grad = loss.value_and_grad(jnp.asarray(2.0), lambda: np.split(x, 5))
    >>> float(value), float(grad)                                  # (2 * 45)^2, 2 * 90 * 45
    (8100.0, 8100.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..nn.sharding import mesh_size, pad_events, padded_size, shard_events
from ..nn.training import all_finite
from ..types import Events
from .pipeline import Pipeline

__all__ = [
    "TwoPass",
    "gradient",
    "iter_chunks",
    "make_step",
    "pipeline_loss",
]


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class TwoPass:
    """A loss ``finish(params, sum over chunks of sums(params, chunk, hyper), hyper)``.

    Args:
        sums: ``(params, chunk, hyper) -> pytree`` of sums over the chunk's events (additive:
            the sums of two chunks add up to the sums of their union).
        finish: ``(params, sums, hyper) -> (loss, aux)``, ``aux`` a dict of scalars.

    The three compiled pieces (chunk sums, the finish with its gradient, the chunk pullback)
    are compiled once per object and chunk shape.
    """

    def __init__(self, sums: Callable, finish: Callable):
        self.sums, self.finish = sums, finish

        @eqx.filter_jit
        def chunk_sums(params, chunk, hyper):
            return sums(params, chunk, hyper)

        @eqx.filter_jit
        def accumulate(total, params, chunk, hyper):
            return _add(total, sums(params, chunk, hyper))

        @eqx.filter_jit
        def finish_grad(params, total, hyper):
            def f(ps):
                return finish(ps[0], ps[1], hyper)

            return eqx.filter_value_and_grad(f, has_aux=True)((params, total))

        @eqx.filter_jit
        def pullback(grads, params, chunk, hyper, cotangent):
            _, vjp = eqx.filter_vjp(lambda p: sums(p, chunk, hyper), params)
            return _add(grads, vjp(cotangent)[0])

        self._sums, self._accumulate = chunk_sums, accumulate
        self._finish, self._pullback = finish_grad, pullback

    def value(self, params, chunks: Callable[[], Iterable], hyper=None):
        """``(loss, aux)`` over all chunks (forward pass only)."""
        return self.finish(params, self._total(params, chunks, hyper), hyper)

    def _total(self, params, chunks, hyper):
        total = None
        for chunk in chunks():
            if total is None:
                total = self._sums(params, chunk, hyper)
            else:
                total = self._accumulate(total, params, chunk, hyper)
        if total is None:
            raise ValueError("no chunks: the data are empty")
        return total

    def value_and_grad(self, params, chunks: Callable[[], Iterable], hyper=None):
        """``((loss, aux), grads)`` over all chunks, in two passes.

        Args:
            params: An Equinox pytree; ``grads`` has its shape (``None`` for non-float leaves).
            chunks: Called twice, returns an iterable of chunks (the same ones each time).
            hyper: Passed to ``sums`` and ``finish``.
        """
        total = self._total(params, chunks, hyper)
        (value, aux), (grads, cotangent) = self._finish(params, total, hyper)
        for chunk in chunks():
            grads = self._pullback(grads, params, chunk, hyper, cotangent)
        return (value, aux), grads


def make_step(chunks_of: Callable[[object], Iterable]) -> Callable:
    """A step factory for :func:`diffhep.nn.training.train` (its ``make_step``): the step computes
    the gradient of a batch with :meth:`TwoPass.value_and_grad`, ``chunks_of(batch)`` giving
    the chunks, then applies the optimiser update (compiled)."""

    def factory(loss: TwoPass, optimizer):
        @eqx.filter_jit
        def update(params, opt_state, grads, value):
            updates, opt_state = optimizer.update(
                grads, opt_state, eqx.filter(params, eqx.is_inexact_array)
            )
            ok = jnp.isfinite(value) & all_finite(grads)
            return eqx.apply_updates(params, updates), opt_state, ok

        def step(params, opt_state, batch, hyper):
            (value, aux), grads = loss.value_and_grad(params, lambda: chunks_of(batch), hyper)
            params, opt_state, ok = update(params, opt_state, grads, value)
            return params, opt_state, value, aux, ok

        return step

    return factory


def _slice(ev: Events, start: int, size: int) -> Events:
    """Events ``start:start + size`` of ``ev``, padded with zero-weight events to ``size``."""
    part = Events(np.asarray(ev.x[start : start + size]), np.asarray(ev.w[start : start + size]))
    if len(part.w) == 0:  # this event set has no events left: one zero-weight event
        part = Events(np.asarray(ev.x[-1:]), np.zeros(1, np.asarray(ev.w[-1:]).dtype))
    return pad_events(part, size)


def iter_chunks(events: Mapping[str, Events], chunk_size: int, *, mesh=None) -> Iterator[dict]:
    """Consecutive chunks of ``chunk_size`` events of every event set (the last ones padded
    with zero-weight events, the size rounded up to a multiple of the mesh's devices), as
    device arrays (sharded over ``mesh`` if given). The events may be any sliceable arrays
    (numpy, ``np.memmap``, h5py datasets): only one chunk is read at a time."""
    size = padded_size(int(chunk_size), mesh_size(mesh))
    n_chunks = max(-(-len(ev.w) // size) for ev in events.values())
    for k in range(n_chunks):
        chunk = {n: _slice(ev, k * size, size) for n, ev in events.items()}
        if mesh is None:
            yield {n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in chunk.items()}
        else:
            yield shard_events(chunk, mesh)


def pipeline_loss(
    pipe: Pipeline, terms: Mapping[str, float], transform: Callable | None = None
) -> TwoPass:
    """The weighted sum of loss ``terms`` (``{term: weight}``) of ``pipe`` as a
    :class:`TwoPass`; ``hyper`` holds ``bandwidth`` and optionally ``slope``; ``aux`` the
    values of the terms. ``transform(params)`` is applied first (e.g. frozen parts)."""
    names = tuple(terms)

    def sums(params, chunk, hyper):
        params = transform(params) if transform is not None else params
        return pipe.loss_sums(params, chunk, names, hyper["bandwidth"], hyper.get("slope"))

    def finish(params, total, hyper):
        values = pipe.terms_from_sums(total, names)
        return sum(w * values[t] for t, w in terms.items()), values

    return TwoPass(sums, finish)


def gradient(
    pipe: Pipeline,
    params,
    events: Mapping[str, Events],
    terms: Mapping[str, float],
    *,
    chunk_size: int,
    bandwidth,
    slope=None,
    mesh=None,
):
    """Exact ``((loss, term values), grads)`` of the weighted loss ``terms`` on all of
    ``events``, computed in chunks of ``chunk_size`` events per event set (sharded over
    ``mesh`` if given). Compiles on each call: for repeated use keep a
    :func:`pipeline_loss` and call its ``value_and_grad``."""
    loss = pipeline_loss(pipe, terms)
    hyper = {"bandwidth": jnp.asarray(bandwidth)}
    if slope is not None:
        hyper["slope"] = jnp.asarray(slope)
    return loss.value_and_grad(params, lambda: iter_chunks(events, chunk_size, mesh=mesh), hyper)
