"""ONNX export of :class:`~diffhep.nn.deepsets.DeepSetsObservable` (registered with
:func:`diffhep.io.onnx.graph.register_observable`; imported by :mod:`diffhep.io.onnx.export`).

The graph takes the same ``features`` matrix as every export (the run's feature order, so the
collections' padded per-object columns ``Jet_pt[0], Jet_eta[0], num(Jet_pt) > 0, ...``) and
does what :meth:`DeepSetsObservable.logits` does: standardise every column, gather each
collection's block and reshape it to ``(N, n, k + 1)``, the mask ``raw mask column > 0.5``
(unstandardised, in the network dtype), the per-object MLP ``phi`` on ``(N, n, k)`` (MatMul
broadcasts over the objects), masked sum or mean pooling (mean divides by
``max(number of objects, 1)``), concatenation after the event features, the event MLP
``rho``.

Example:
    >>> import jax, numpy as np, onnxruntime as ort
    >>> from diffhep.nn.deepsets import DeepSetsObservable, Layout
    >>> from diffhep.io.onnx.export import Graph, observable_logits
    >>> x = np.array([[10.0, 50.0, 1.0, 30.0, 1.0], [20.0, 40.0, 1.0, 0.0, 0.0]], "f4")
    >>> obs = DeepSetsObservable.create(x, Layout((0,), ((1, 2, 1),)), (4,), (4,), 2,
    ...                                 key=jax.random.key(0))
    >>> g = Graph(5)
    >>> _ = g.output(observable_logits(g, obs, "features"), "logits")
    >>> sess = ort.InferenceSession(g.model().SerializeToString())
    >>> bool(np.allclose(sess.run(["logits"], {"features": x})[0], obs.logits(x), atol=1e-6))
    True
"""

from __future__ import annotations

import numpy as np

from ...nn.deepsets import DeepSetsObservable
from .graph import Graph, dense, register_observable, standardised


def _describe(obs: DeepSetsObservable) -> dict:
    return {
        "pooling": obs.pooling,
        "event_columns": list(obs.layout.event),
        "collections": [
            {"start": s, "objects": n, "features": k} for s, n, k in obs.layout.collections
        ],
        "note": "object j of a collection: its features in columns start + j (features + 1) "
        "+ i, then its mask (real object if > 0.5); all inside the model",
    }


def _block(graph: Graph, x: str, start: int, n: int, k: int) -> str:
    """Columns ``start .. start + n (k + 1)`` of ``x`` as ``(N, n, k + 1)``."""
    cols = graph.node(
        "Slice",
        [
            x,
            graph.const([start], np.int64),
            graph.const([start + n * (k + 1)], np.int64),
            graph.const([1], np.int64),
        ],
    )
    # 0 copies N from the input (allowzero=0), so empty batches reshape too
    return graph.node("Reshape", [cols, graph.const([0, n, k + 1], np.int64)], stem="objects")


@register_observable(DeepSetsObservable, describe=_describe)
def _deepsets(graph: Graph, obs: DeepSetsObservable, features: str) -> str:
    dtype = np.dtype(obs.dtype.name)
    raw, z = standardised(graph, obs, features)
    parts = []
    if obs.layout.event:
        parts.append(
            graph.node("Gather", [z, graph.const(list(obs.layout.event), np.int64)], axis=1)
        )
    for phi, (start, n, k) in zip(obs.phis, obs.layout.collections, strict=True):
        objs = graph.node(
            "Slice",
            [
                _block(graph, z, start, n, k),
                graph.const([0], np.int64),
                graph.const([k], np.int64),
                graph.const([2], np.int64),
            ],
        )  # (N, n, k)
        flag = graph.node("Gather", [_block(graph, raw, start, n, k), graph.const(k, np.int64)],
                          axis=2)  # fmt: skip
        mask = graph.cast(graph.node("Greater", [flag, graph.const(0.5, dtype)]), dtype)  # (N, n)
        h = dense(graph, phi, objs, dtype)  # (N, n, latent)
        h = graph.node("Mul", [h, graph.node("Unsqueeze", [mask, graph.const([2], np.int64)])])
        pooled = graph.node("ReduceSum", [h, graph.const([1], np.int64)], keepdims=0)
        if obs.pooling == "mean":
            count = graph.node("ReduceSum", [mask, graph.const([1], np.int64)], keepdims=1)
            count = graph.node("Max", [count, graph.const([1.0], dtype)])
            pooled = graph.node("Div", [pooled, count], stem="mean")
        parts.append(pooled)
    h = parts[0] if len(parts) == 1 else graph.node("Concat", parts, axis=1)
    h = dense(graph, obs.rho, h, dtype)
    return graph.node("Squeeze", [h, graph.const([1], np.int64)], stem="logits")
