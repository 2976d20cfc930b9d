"""The ONNX graph builder and the registry of observable exporters.

:class:`Graph` builds a graph with one input ``features``; :func:`register_observable`
registers the exporter of an observable type (the MLP here, Deep Sets in
:mod:`diffhep.io.onnx.deepsets`); :func:`observable_logits` dispatches to it.
:mod:`diffhep.io.onnx.export` assembles the whole event score from these pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import DiffhepError
from ...nn.observables import ACTIVATIONS, MLPObservable

__all__ = [
    "DESCRIBERS",
    "EXPORTERS",
    "ONNX_FORMAT",
    "ExportError",
    "Graph",
    "dense",
    "observable_logits",
    "register_observable",
    "standardised",
]

ONNX_FORMAT = "diffhep-onnx/1"
#: Opset 17 / IR version 8: read by every ONNX Runtime since 1.13 (CMSSW, Athena).
OPSET, IR_VERSION = 17, 8


class ExportError(DiffhepError):
    """The trained analysis cannot be exported (e.g. an observable type without exporter)."""


class Graph:
    """A small builder for an ONNX graph with one input ``features`` ``(N, nfeatures)``.

    Args:
        nfeatures: Number of input features.
        dtype: Numpy dtype of the input (float32, as diffhep's event features).
    """

    def __init__(self, nfeatures: int, dtype=np.float32):
        from onnx import TensorProto, helper

        self.dtype = np.dtype(dtype)
        self.nodes, self.initializers, self.outputs = [], [], []
        self._count = 0
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.inputs = [helper.make_tensor_value_info("features", elem, ["N", nfeatures])]
        self._int64 = TensorProto.INT64

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value, dtype=None, stem="c") -> str:
        """An initializer holding ``value`` (as ``dtype``); returns its name."""
        from onnx import numpy_helper

        name = self._name(stem)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs, stem=None, **attrs) -> str:
        """Append a node with one output; returns the output's name."""
        from onnx import helper

        out = self._name(stem or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def cast(self, name: str, dtype) -> str:
        from onnx import helper

        return self.node("Cast", [name], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def column(self, index: int) -> str:
        """Feature ``index`` of every event, ``(N,)``."""
        return self.node("Gather", ["features", self.const(index, np.int64)], axis=1)

    def n_events(self) -> str:
        """The shape ``[N]`` (int64, for ConstantOfShape)."""
        shape = self.node("Shape", ["features"])
        return self.node(
            "Slice", [shape, self.const([0], np.int64), self.const([1], np.int64)], stem="n"
        )

    def filled(self, value, dtype) -> str:
        """A ``(N,)`` tensor filled with ``value``."""
        from onnx import numpy_helper

        fill = numpy_helper.from_array(np.asarray([value], dtype=dtype))
        return self.node("ConstantOfShape", [self.n_events()], value=fill)

    def output(self, name: str, as_name: str) -> str:
        """Expose tensor ``name`` as the graph output ``as_name``."""
        from onnx import helper

        self.nodes.append(helper.make_node("Identity", [name], [as_name]))
        self.outputs.append(helper.make_empty_tensor_value_info(as_name))
        return as_name

    def model(self):
        """The checked ``onnx.ModelProto``."""
        import onnx
        from onnx import helper

        graph = helper.make_graph(
            self.nodes, "diffhep_event_score", self.inputs, self.outputs, self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="diffhep",
            ir_version=IR_VERSION,
        )
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


# ---------------------------------------------------------------- observables
#: ``{observable type: exporter(graph, observable, features tensor) -> logits tensor (N,)}``
EXPORTERS: dict[type, Callable[[Graph, object, str], str]] = {}
#: ``{observable type: describe(observable) -> dict}``: extra entries of preprocess.json's
#: ``observable`` (e.g. the layout of a Deep Sets observable).
DESCRIBERS: dict[type, Callable[[object], dict]] = {}


def register_observable(cls: type, describe: Callable[[object], dict] | None = None):
    """Decorator registering an exporter for observables of type ``cls``: a function
    ``(graph, observable, features) -> name of the (N,) logits tensor`` (the score is their
    sigmoid). It may add inputs of its own to ``graph.inputs``. ``describe(observable)``
    gives extra entries of the ``observable`` section of ``preprocess.json``."""

    def wrap(fn):
        EXPORTERS[cls] = fn
        if describe is not None:
            DESCRIBERS[cls] = describe
        return fn

    return wrap


def observable_logits(graph: Graph, obs, features: str) -> str:
    """The logits of ``obs`` on ``features`` in ``graph``, by the registered exporter."""
    fn = EXPORTERS.get(type(obs))
    if fn is None:
        raise ExportError(
            f"no ONNX exporter for observables of type {type(obs).__name__}",
            where="observable",
            fix="register one with diffhep.io.onnx.export.register_observable "
            f"(supported: {', '.join(t.__name__ for t in EXPORTERS)})",
        )
    return fn(graph, obs, features)


def _activation(graph: Graph, name: str, x: str, dtype) -> str:
    if name == "relu":
        return graph.node("Relu", [x])
    if name == "tanh":
        return graph.node("Tanh", [x])
    if name == "elu":
        return graph.node("Elu", [x], alpha=1.0)
    if name == "silu":
        return graph.node("Mul", [x, graph.node("Sigmoid", [x])], stem="silu")
    if name == "gelu":  # jax.nn.gelu's default: the tanh approximation
        x3 = graph.node("Mul", [graph.node("Mul", [x, x]), x])
        inner = graph.node("Add", [x, graph.node("Mul", [graph.const(0.044715, dtype), x3])])
        c = graph.const(np.sqrt(2 / np.pi).astype(dtype), dtype)
        t = graph.node("Tanh", [graph.node("Mul", [c, inner])])
        one, half = graph.const(1.0, dtype), graph.const(0.5, dtype)
        cdf = graph.node("Mul", [half, graph.node("Add", [one, t])])
        return graph.node("Mul", [x, cdf], stem="gelu")
    raise ExportError(f"activation {name!r} has no ONNX form", where="observable.activation")


def standardised(graph: Graph, obs, features: str) -> tuple[str, str]:
    """``(raw, standardised)``: ``features`` cast to the observable's dtype, and
    ``(raw - obs.mean) / obs.scale`` as the observable's ``standardise``."""
    dtype = np.dtype(obs.dtype.name)
    raw = graph.cast(features, dtype)
    mean = graph.const(np.asarray(obs.mean), dtype, "mean")
    scale = graph.const(np.asarray(obs.scale), dtype, "scale")
    h = graph.node("Sub", [raw, mean])
    return raw, graph.node("Div", [h, scale], stem="standardised")


def dense(graph: Graph, mlp, h: str, dtype) -> str:
    """An ``eqx.nn.MLP`` (identity final activation) on the last axis of ``h``: MatMul
    broadcasts over the leading axes, so ``(..., in) -> (..., out)``, with ``out = 1`` for a
    ``"scalar"`` output layer."""
    act = next((n for n, f in ACTIVATIONS.items() if f is mlp.activation), None)
    if act is None:
        raise ExportError(
            f"the MLP's activation {mlp.activation!r} is not one of {', '.join(ACTIVATIONS)}",
            where="observable.activation",
        )
    layers = mlp.layers
    for k, layer in enumerate(layers):
        w = np.asarray(layer.weight)
        w = w.reshape(-1, w.shape[-1])  # (out, in); out = 1 for the "scalar" output layer
        h = graph.node("MatMul", [h, graph.const(w.T, dtype, f"W{k}")])
        if layer.bias is not None:
            h = graph.node("Add", [h, graph.const(np.asarray(layer.bias).ravel(), dtype, f"b{k}")])
        if k < len(layers) - 1:
            h = _activation(graph, act, h, dtype)
    return h


@register_observable(MLPObservable)
def _mlp(graph: Graph, obs: MLPObservable, features: str) -> str:
    dtype = np.dtype(obs.dtype.name)
    _, z = standardised(graph, obs, features)
    h = dense(graph, obs.mlp, z, dtype)
    return graph.node("Squeeze", [h, graph.const([1], np.int64)], stem="logits")
