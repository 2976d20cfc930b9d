"""ONNX export of the whole event score: what decides an event's bin, for C++ inference.

The graph is built with the ``onnx`` package directly (the JAX exporters do not support the
installed JAX). It takes the raw features of a batch of events, ``features`` (``(N, F)``,
float32 like the training features), and computes exactly what the trained analysis does
with an event:

- ``score`` (``(N,)``): the neural observable, standardisation included (absent when the
  analysis has no network);
- ``selected`` (``(N,)``, bool): the hard selection cuts (``x > c``, ``x < c``, windows
  ``a < x < b``), all true without cuts;
- ``bin_<channel>`` (``(N,)``, int64): the bin of every channel, ``-1`` when the event fails
  the selection or the channel's region. Bins follow
  :func:`diffhep.analysis.histograms.hard_histogram`:
  bin ``k`` is ``[e_k, e_{k+1})`` in float64, under/overflow go to the outer bins.

Comparisons use the dtypes diffhep uses (cuts and regions in the feature dtype, bin edges in
float64), so the bins agree exactly given the same score. ``preprocess.json`` beside the
model describes the inputs (feature names and order, dtype), the standardisation, the cuts,
the edges of every channel and the outputs.

Exporters exist for :class:`~diffhep.nn.observables.MLPObservable` (here) and
:class:`~diffhep.nn.deepsets.DeepSetsObservable` (:mod:`diffhep.io.onnx.deepsets`, same single
``features`` input). New observable types register an exporter with
:func:`register_observable`; an observable without one raises :class:`ExportError`.

Example:
    >>> import jax, numpy as np, onnxruntime as ort
    >>> from diffhep.nn.observables import MLPObservable
    >>> x = np.random.default_rng(0).normal(size=(50, 2)).astype("f4")
    >>> obs = MLPObservable.create(x, hidden=(4,), key=jax.random.key(0))
    >>> g = Graph(2)
    >>> _ = g.output(g.node("Sigmoid", [observable_logits(g, obs, "features")]), "score")
    >>> sess = ort.InferenceSession(g.model().SerializeToString())
    >>> bool(np.allclose(sess.run(["score"], {"features": x})[0], obs(x), atol=1e-6))
    True
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...writers import write_atomic
from . import deepsets  # noqa: F401 (registers the Deep Sets exporter)
from .graph import (
    DESCRIBERS,
    ONNX_FORMAT,
    ExportError,
    Graph,
    observable_logits,
    register_observable,
)

__all__ = [
    "ONNX_FORMAT",
    "ExportError",
    "Graph",
    "export_onnx",
    "observable_logits",
    "register_observable",
]


# ---------------------------------------------------------------- cuts and bins
def _selection(graph: Graph, selection) -> str:
    """``(N,)`` bool: the hard cuts, as ``Cut.passes`` (thresholds in the feature dtype)."""
    out = None
    for cut in selection.cuts if selection is not None else ():
        v = graph.column(cut.index)
        t = np.asarray(cut.thresholds).astype(graph.dtype)
        if cut.direction == ">":
            ok = graph.node("Greater", [v, graph.const(t[0], graph.dtype)])
        elif cut.direction == "<":
            ok = graph.node("Less", [v, graph.const(t[0], graph.dtype)])
        else:
            lo = graph.node("Greater", [v, graph.const(t[0], graph.dtype)])
            ok = graph.node("And", [lo, graph.node("Less", [v, graph.const(t[1], graph.dtype)])])
        out = ok if out is None else graph.node("And", [out, ok])
    return out if out is not None else graph.filled(True, np.bool_)


def _bin_index(graph: Graph, values: str, edges) -> str:
    """``(N,)`` int64 bin of ``values`` (float64 comparisons, overflow in the outer bins)."""
    edges = np.asarray(edges, dtype=np.float64)
    if len(edges) == 2:
        return graph.filled(0, np.int64)
    v = graph.node("Unsqueeze", [graph.cast(values, np.float64), graph.const([1], np.int64)])
    above = graph.node("GreaterOrEqual", [v, graph.const(edges[None, 1:-1], np.float64, "edges")])
    return graph.node(
        "ReduceSum",
        [graph.cast(above, np.int64), graph.const([1], np.int64)],
        keepdims=0,
    )


def build_graph(pipe, params, dtype=np.float32):
    """The ONNX model and its ``preprocess.json`` description for a pipeline and its
    trained parameters."""
    a = pipe.analysis
    graph = Graph(len(pipe.features), dtype)
    outputs = {}
    score = None
    if params.observable is not None:
        logits = observable_logits(graph, params.observable, "features")
        score = graph.output(graph.node("Sigmoid", [logits]), "score")
        outputs["score"] = "the neural observable in [0, 1], (N,)"
    selected = graph.output(_selection(graph, params.selection), "selected")
    outputs["selected"] = "bool (N,): the event passes the selection cuts"
    channels = []
    for ch, binning in zip(a.channels, params.binnings, strict=True):
        edges = np.asarray(binning.edges(), dtype=np.float64)
        if ch.observable == "nn":
            values = score
        elif ch.observable == "count":
            values = None
        else:
            values = graph.column(pipe.features.index(ch.observable))
        bins = graph.filled(0, np.int64) if values is None else _bin_index(graph, values, edges)
        mask = selected
        for f, lo, hi in ch.region:
            v = graph.column(pipe.features.index(f))
            inside = graph.node(
                "And",
                [
                    graph.node("GreaterOrEqual", [v, graph.const(lo, graph.dtype)]),
                    graph.node("Less", [v, graph.const(hi, graph.dtype)]),
                ],
            )
            mask = graph.node("And", [mask, inside])
        bins = graph.node("Where", [mask, bins, graph.const(-1, np.int64)])
        name = graph.output(bins, f"bin_{ch.name}")
        outputs[name] = f"int64 (N,): bin of channel {ch.name!r}, -1 outside it"
        channels.append(
            {
                "name": ch.name,
                "observable": ch.observable,
                "edges": edges.tolist(),
                "region": {f: [lo, hi] for f, lo, hi in ch.region},
                "output": name,
            }
        )
    obs = params.observable
    sel = params.selection
    preprocess = {
        "format": ONNX_FORMAT,
        "model": "model.onnx",
        "inputs": {
            "features": {
                "names": list(pipe.features),
                "dtype": graph.dtype.name,
                "shape": ["N", len(pipe.features)],
            }
        },
        "standardisation": None
        if obs is None
        else {
            "mean": np.asarray(obs.mean, dtype=float).tolist(),
            "scale": np.asarray(obs.scale, dtype=float).tolist(),
            "note": "x_std = (x - mean) / scale, applied inside the model",
        },
        "observable": None
        if obs is None
        else {"type": type(obs).__name__, **DESCRIBERS.get(type(obs), lambda _: {})(obs)},
        "selection": None
        if sel is None
        else {
            "expression": sel.expression(),
            "cuts": [{**c.to_dict(), "index": c.index} for c in sel.cuts],
        },
        "channels": channels,
        "outputs": outputs,
        "bins": "bin k is [e_k, e_{k+1}) compared in float64; under/overflow in the outer bins",
    }
    return graph.model(), preprocess


def export_onnx(out_dir, pipe, params, dtype=np.float32) -> dict:
    """Write ``model.onnx`` and ``preprocess.json`` into ``out_dir``; returns the
    ``preprocess`` description. Both files are written atomically, and only once the
    whole graph is built and checked.

    Raises:
        ExportError: If the observable has no exporter.
    """
    out_dir = Path(out_dir)
    model, preprocess = build_graph(pipe, params, dtype)
    write_atomic(out_dir / "model.onnx", model.SerializeToString())
    write_atomic(out_dir / "preprocess.json", json.dumps(preprocess, indent=1))
    return preprocess
