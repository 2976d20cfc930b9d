"""Data-parallel training: the event axis of every batch split across devices.

The pipeline's histograms, soft yields and cross-entropies are sums over events, so a batch
can be split along its event axis: :func:`shard_events` places every event set with a
``NamedSharding(mesh, P("events"))`` on a one-dimensional :func:`make_mesh`, the parameters
are replicated (:func:`replicate`), and the unchanged jitted step (``jax.jit`` / GSPMD) turns
every event sum into per-device partial sums plus an all-reduce; the profile fit and the loss
then run on the reduced histograms (replicated: each device computes the same numbers, so no
result is ever gathered from one device). Nothing in the training loop knows about devices.

Each event set is padded to a multiple of the device count with **zero-weight** events (copies
of its last event, so features stay in range): every quantity of the pipeline is weighted by
the event weights (histograms, soft yields, the weight-normalised cross-entropy, the selected
fraction), so the padding changes no histogram, loss, gradient or metric.

Multi-host (``jax.distributed.initialize()`` first): every process computes the same global
batch (batches are deterministic in seed and epoch) and :func:`shard_events` places only the
slices of its own devices (``jax.make_array_from_callback``), so the same code runs on one CPU,
several GPUs of one machine and several machines.

Example:
    >>> import numpy as np
    >>> from diffhep.analysis.pipeline import Events
    >>> mesh = make_mesh(1)
    >>> ev = {"sig": Events(np.ones((5, 2), "f4"), np.full(5, 2.0))}
    >>> placed = shard_events(ev, mesh, multiple=4)
    >>> placed["sig"].x.shape, [float(v) for v in placed["sig"].w]
    ((8, 2), [2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..errors import DiffhepError
from ..types import Events

__all__ = [
    "EVENT_AXIS",
    "ShardingError",
    "make_mesh",
    "mesh_size",
    "pad_events",
    "padded_size",
    "replicate",
    "shard_events",
]

#: Name of the mesh axis the events are split along.
EVENT_AXIS = "events"


class ShardingError(DiffhepError):
    """More devices requested than available, or an invalid device count."""


def make_mesh(devices: int | str | Sequence | None = None) -> Mesh:
    """A one-dimensional mesh with axis ``"events"``.

    Args:
        devices: ``None`` or ``"all"``: every device JAX sees (all hosts after
            ``jax.distributed.initialize``); an int ``n``: the first ``n`` devices; or a
            sequence of devices.

    Raises:
        ShardingError: If more devices are requested than exist, or ``n < 1``.
    """
    available = jax.devices()
    if devices is None or devices == "all":
        chosen = available
    elif isinstance(devices, int | np.integer):
        n = int(devices)
        if n < 1 or n > len(available):
            raise ShardingError(
                f"training.devices = {n}, but JAX sees {len(available)} device(s) "
                f"({available[0].platform})",
                where="training.devices",
                fix="use 'all' or a number up to the device count; on CPU, simulate devices "
                "with XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX starts)",
            )
        chosen = available[:n]
    else:
        chosen = list(devices)
    return Mesh(np.asarray(chosen), (EVENT_AXIS,))


def mesh_size(mesh: Mesh | None) -> int:
    """Number of devices of ``mesh`` (1 for ``None``)."""
    return 1 if mesh is None else int(mesh.devices.size)


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ``>= n`` (and ``>= multiple``)."""
    return max(multiple, -(-int(n) // multiple) * multiple)


def pad_events(ev: Events, size: int) -> Events:
    """``ev`` (host arrays) extended to ``size`` events by zero-weight copies of its last
    event; ``size`` must be at least the number of events."""
    x, w = np.asarray(ev.x), np.asarray(ev.w)
    extra = size - len(w)
    if extra < 0:
        raise ValueError(f"cannot pad {len(w)} events to {size}")
    if extra == 0:
        return Events(x, w)
    fill = np.repeat(x[-1:], extra, axis=0)
    return Events(np.concatenate([x, fill]), np.concatenate([w, np.zeros(extra, w.dtype)]))


def _place(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    # each process materialises only the slices of its own (addressable) devices
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def shard_events(
    events: Mapping[str, Events], mesh: Mesh, *, multiple: int | None = None
) -> dict[str, Events]:
    """Every event set padded to a multiple of the mesh size (or of ``multiple``, which must
    be a multiple of it) and split along its event axis over ``mesh``."""
    size = mesh_size(mesh)
    multiple = size if multiple is None else int(multiple)
    if multiple % size:
        raise ValueError(f"multiple={multiple} is not a multiple of the {size} devices")
    rows = NamedSharding(mesh, PartitionSpec(EVENT_AXIS))
    table = NamedSharding(mesh, PartitionSpec(EVENT_AXIS, None))
    out = {}
    for name, ev in events.items():
        p = pad_events(ev, padded_size(len(ev.w), multiple))
        out[name] = Events(_place(p.x, table), _place(p.w, rows))
    return out


def replicate(tree, mesh: Mesh):
    """``tree`` with every array leaf replicated on all devices of ``mesh`` (the parameters
    of data-parallel training); other leaves are unchanged."""
    full = NamedSharding(mesh, PartitionSpec())

    def put(a):
        return _place(np.asarray(a), full) if eqx.is_array(a) else a

    return jax.tree.map(put, tree)
