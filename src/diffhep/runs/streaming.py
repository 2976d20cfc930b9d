"""Training on ntuple files read chunk by chunk: memory bounded by the chunk, not the events.

With ``training.chunk_events: N`` a run on ntuple samples (``analysis.samples[].files``)
never holds its events in memory: every pass over the data reads the files in chunks of
``N`` entries per file (``io.sources.iterate``), evaluates the features, filter and weights of
each *read group* on the chunk and keeps only what the current step needs. A read group is a
sample with its weight-only variations (the same events, several weights) or a feature-level
variation of a sample (``columns``: the branches renamed, features and filter re-evaluated).

Split. Every entry of a sample's files gets a uniform number from a counter-based hash of
(seed, sample, file index, entry), the same for the sample and its feature-level
variations (a varied event lands in the split of its nominal event); entries below
``split.train`` are training events, the next ``split.validation`` validation, the rest test.
The split fractions are therefore met on average, not exactly; the weights of a split are
divided by the fraction of the event set's events it got (counted in the first pass).

Passes. A first pass (:func:`scan`) counts the events of each event set and split and sums
the nominal weights (the sample normalisation ``yield``/``scale``), and keeps the first
``N`` training events of each nominal sample to standardise the network and place the initial
cut thresholds (the in-memory path uses all training events). Each epoch then reads the
training events once and each validation reads the validation events once (one more pass over
the files per epoch); the test histograms are accumulated chunk by chunk, in the pass that
also gathers what the run's cut flow and plots need (:mod:`diffhep.runs.streaming_finish`).

Epoch semantics. An epoch is one pass over every training event: with ``M`` the largest
number of training events of an event set, it has ``ceil(M / batch_size)`` steps and each step
takes the next ``ceil(n_g / steps)`` events of every read group ``g`` (so a step holds a
``1/steps`` slice of every event set, the weights scaled by ``n_g / b_g`` to estimate the full
yield; a small set wraps around to its first events to fill its last batch). This differs from
the in-memory batches (``min(batch_size, n)`` random events of every set, small sets repeated
within the epoch): a streamed run and an in-memory run give different numbers; both are
deterministic in the seed and config.

Shuffling is within a bounded buffer: the events of each chunk are permuted (a stream seeded
by seed, epoch, read group and chunk), chunks and files keep their order. A step therefore
holds events of one or two consecutive chunks per group: the files should not be sorted by a
physics quantity (the generator's are not).

Memory: about one chunk per read group (its raw columns while evaluating, then its features
and weights) plus one batch, independent of the number of events
(``benchmarks/training_memory.py``). glibc's heap is kept from growing with the number of
chunks read (:func:`_bound_heap`). A reader decompresses whole ROOT baskets (parquet row
groups): each open read group also holds its current basket of every branch it reads, so
files written in one basket per file cost memory that grows with the events per file (the
generator writes baskets of ``problems.ttbar_resonance.BASKET_ENTRIES``).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DataError
from ..io.sources import expand, iterate
from ..types import Events
from .config import Config, ConfigError
from .ntuples import (
    _named,
    _nominal_fields,
    _renamed,
    _sample_fields,
    _variation_fields,
    _weight_only,
    feature_names,
)

__all__ = [
    "Group",
    "StreamData",
    "check_streamable",
    "read_groups",
    "scan",
    "split_labels",
]

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class Group:
    """Events read together: a sample (with its weight-only variations) or a feature-level
    variation of a sample. ``weights`` maps each event set to its weight expression; the split
    stream is the nominal ``sample``'s; ``at``: the config fields its errors name (those of
    :func:`~diffhep.runs.ntuples.load_ntuple_events`)."""

    name: str
    sample: str
    files: tuple
    tree: str | None
    filter: str | None
    weights: dict = field(hash=False)
    columns: dict = field(default_factory=dict, hash=False)
    at: dict = field(default_factory=dict, hash=False)


def read_groups(cfg: Config) -> list[Group]:
    """The read groups of the run's samples (the chosen signal and the backgrounds), in the
    order :func:`~diffhep.runs.ntuples.load_ntuple_events` reads them."""
    used = cfg.analysis.used_samples
    samples = {s.name: s for s in used}
    out, seen = [], set()
    for s in used:
        weights = {s.name: s.weight}
        for sys in cfg.analysis.shape_systematics:
            if s.name in sys.targets:
                for v, name in sys.variations(s.name):
                    if _weight_only(v):
                        weights[name] = v.weight or s.weight
        out.append(Group(s.name, s.name, tuple(s.files), s.tree, s.filter, weights,
                         at=_nominal_fields(cfg, s)))  # fmt: skip
        seen |= set(weights)
    for k, sys in enumerate(cfg.analysis.shape_systematics):
        for sample in sys.targets:
            if sample not in samples:
                continue
            nom = samples[sample]
            for v, name in sys.variations(sample):
                if isinstance(v, str) or _weight_only(v) or name in seen:
                    continue
                seen.add(name)
                at = _variation_fields(cfg, k, v, nom)
                out.append(Group(name, sample, tuple(v.files or nom.files), v.tree or nom.tree,
                                 v.filter or nom.filter, {name: v.weight or nom.weight},
                                 dict(v.columns or {}), at))  # fmt: skip
    return out


def _hash_uniform(seed: int, stream: int, file_index: int, entries: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1) of (seed, stream, file, entry) (splitmix64): independent of
    how the file is chunked."""
    with np.errstate(over="ignore"):
        z = entries.astype(np.uint64) + np.uint64((file_index & 0xFFFF) << 40)
        z ^= np.uint64((stream * 0x9E3779B1 + seed * 0x85EBCA77) & 0xFFFFFFFFFFFFFFFF)
        for _ in range(2):
            z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
            z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
            z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
            z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_labels(cfg: Config, sample: str, file_index: int, entries: np.ndarray) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) of the entries of a sample's file."""
    f = cfg.data.split
    u = _hash_uniform(cfg.seed, zlib.crc32(sample.encode()), file_index, entries)
    return np.where(u < f.train, 0, np.where(u < f.train + f.validation, 1, 2)).astype(np.int8)


def _group_chunks(cfg: Config, g: Group, features, step: int, file=None):
    """``(x float32 (n, f), {event set: w float64}, split labels)`` of the events passing the
    group's filter, chunk by chunk; errors name the config field (``g.at``) as the in-memory
    read does."""
    try:
        yield from _read_chunks(cfg, g, features, step)
    except DataError as exc:
        raise _named(exc, cfg, g.name, g.at, g.columns, file) from None


def _read_chunks(cfg: Config, g: Group, features, step: int):
    """:func:`_group_chunks` without the config fields in its errors."""
    d = cfg.data
    feats = [_renamed(f, g.columns) for f in features]
    wexpr = {k: _renamed(w, g.columns) or "1" for k, w in g.weights.items()}
    filt = _renamed(g.filter, g.columns)
    exprs = list(dict.fromkeys([*feats, *wexpr.values(), *([filt] if filt else [])]))
    for fi, path in enumerate(expand(list(g.files), d.base_dir)):
        start = 0
        for out in iterate(path, tree=g.tree or d.tree, expressions=exprs, step_size=step,
                           constants=d.constants, check_finite=False):  # fmt: skip
            n = len(next(iter(out.values())))
            keep = np.ones(n, bool)
            if filt:
                keep = out[filt] if out[filt].dtype.kind == "b" else out[filt] != 0
            labels = split_labels(cfg, g.sample, fi, np.arange(start, start + n))[keep]
            start += n
            x = np.stack([out[f][keep] for f in feats], axis=1)
            ws = {k: np.asarray(out[e], np.float64)[keep] if out[e].ndim else
                  np.full(int(keep.sum()), float(out[e])) for k, e in wexpr.items()}  # fmt: skip
            for e in (*feats, *wexpr.values()):  # the expression, as load_sample names it
                v = out[e][keep] if out[e].ndim else out[e]
                if not np.all(np.isfinite(v)):
                    raise DataError(
                        f"event set {g.name!r}: {int(np.sum(~np.isfinite(v)))} NaN/inf values "
                        f"of {e!r} among the selected events", file=path, where=e,
                        fix="repair these events or exclude them with the sample's filter",
                    )  # fmt: skip
            yield x.astype(np.float32), ws, labels


@dataclass
class Scan:
    """What the first pass found: events per event set and split, the weight scale of each
    event set and split (sample normalisation / split fraction), a bounded sample of
    training events per nominal sample (for initialisation)."""

    counts: dict  # {event set: [train, validation, test]}
    scale: dict  # {event set: [factor / fraction for each split]}
    init_events: dict  # {sample: Events}
    group_counts: dict  # {group: [train, validation, test]}


def scan(cfg: Config, analysis, groups, features, step: int, file=None) -> Scan:
    """The first pass over the files (see the module docstring)."""
    counts, totals, gcounts, init = {}, {}, {}, {}
    for g in groups:
        c = np.zeros(3, np.int64)
        t = dict.fromkeys(g.weights, 0.0)
        xs, ws, kept = [], [], 0
        for x, w, lab in _group_chunks(cfg, g, features, step, file):
            c += np.bincount(lab, minlength=3)
            for k in t:
                t[k] += float(np.sum(w[k]))
            if g.name == g.sample and kept < step:
                tr = lab == 0
                xs.append(x[tr][: step - kept])
                ws.append(w[g.name][tr][: step - kept])
                kept += len(xs[-1])
        if c.sum() == 0:
            files = ", ".join(expand(list(g.files), cfg.data.base_dir))
            empty = DataError(f"event set {g.name!r} is empty after its filter", file=files,
                              where=g.filter)  # fmt: skip
            raise _named(empty, cfg, g.name, g.at, file=file)
        for split_i, what in enumerate(("train", "validation", "test")):
            if c[split_i] == 0:
                raise DataError(f"event set {g.name!r}: the {what} split is empty "
                                f"({int(c.sum())} events)", file=file, where=f"data.split.{what}",
                                fix=f"use more events or a larger data.split.{what} (the "
                                "fractions sum to 1)")  # fmt: skip
        gcounts[g.name] = c
        for k in g.weights:
            counts[k], totals[k] = c, t[k]
        if xs:
            init[g.sample] = Events(np.concatenate(xs), np.concatenate(ws))
    missing = [n for n in analysis.event_sets if n not in counts]
    if missing:
        raise DataError(f"event set(s) {', '.join(missing)} are neither a sample nor a "
                        "variation", file=file, where="analysis.shape_systematics")  # fmt: skip
    scale = {}
    for i, s in enumerate(cfg.analysis.samples):
        if s.name not in analysis.samples:
            continue
        names = [s.name] + [e for v in analysis.shape_systematics if v.sample == s.name
                            for e in (v.up, v.down) if e in counts]  # fmt: skip
        for n in dict.fromkeys(names):
            if totals[n] <= 0:
                raise DataError(f"sample {s.name!r} (event set {n!r}): the event weights sum "
                                f"to {totals[n]:.6g} <= 0", file=file,
                                where=f"analysis.samples[{i}]")  # fmt: skip
        factor = s.scale * (s.yield_ / totals[s.name] if s.yield_ is not None else 1.0)
        for n in dict.fromkeys(names):
            frac = counts[n] / counts[n].sum()
            scale[n] = [factor / f for f in frac]
    return Scan(counts, scale, init, gcounts)


def check_streamable(cfg: Config, file=None) -> None:
    """Refuse what the streamed path does not do (naming the option)."""
    t = cfg.training

    def no(where, what):
        fix = "remove training.chunk_events, or this option"
        raise ConfigError(f"training.chunk_events (streamed input) {what}", file=file,
                          where=where, fix=fix)  # fmt: skip

    if cfg.data.generator is not None or cfg.data.files:
        no("data", "needs ntuple samples (analysis.samples[].files)")
    if t.devices is not None or t.chunk_size is not None:
        no(
            "training.devices" if t.devices is not None else "training.chunk_size",
            "runs on one device with whole batches",
        )
    if cfg.black_box is not None:
        no("black_box", "does not run a black-box stage")
    if cfg.observable.kind == "deepsets":
        no("observable.kind", "supports the MLP observable only")
    for i, s in enumerate(cfg.analysis.used_samples):
        if s.strategy != "signed":
            no(f"analysis.samples[{i}].weights", "uses the signed weights only")


def _bound_heap(threshold: int = 1 << 20) -> bool:
    """Allocations above ``threshold`` bytes mapped on their own (glibc ``M_MMAP_THRESHOLD``,
    fixed): returned to the system when freed. By default glibc raises that threshold to the
    size of each large block freed (up to 32 MiB), after which a chunk's arrays (MBs each)
    come from the heap, which then fragments and grows with the number of chunks read: the
    first pass over two read groups' files of the benchmark, 11 vs 110 chunks of 50,000
    events (1e6 vs 1e7 events on disk), peaked at 295 vs 349 MB (heap 84 vs 156 MB, of it
    50 vs 121 MB free), with this threshold at 289 vs 293 MB, the same CPU time. Process-wide;
    a no-op without glibc. Returns whether it was set."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class StreamData:
    """The streamed data of a run: batches of an epoch, histograms of a split."""

    def __init__(self, cfg: Config, pipe, file=None):
        _bound_heap()
        self.cfg, self.pipe, self.file = cfg, pipe, file
        self.step = int(cfg.training.chunk_events)
        self.features = feature_names(cfg.data)
        self.groups = read_groups(cfg)
        self.scan = scan(cfg, pipe.analysis, self.groups, self.features, self.step, file)
        self.sets = pipe.analysis.event_sets
        self.events_per_second = None
        counts = self.scan.group_counts
        steps = self.n_steps()
        self.events_per_step = sum(
            -(-int(counts[g.name][0]) // steps) for g in self.groups
            if any(n in self.sets for n in g.weights)
        )  # fmt: skip

        @eqx.filter_jit
        def hist(params, x, ws, nominal):
            def one(w):
                return pipe.event_set_histograms(params, Events(x, w))

            h = jax.vmap(one)(ws)
            sel = jax.vmap(lambda w: jnp.sum(pipe.event_weights(params, Events(x, w))))(ws)
            tot = jnp.sum(ws, axis=1)
            return h, jnp.sum(sel * nominal), jnp.sum(tot * nominal)

        self._hist = hist

    # ------------------------------------------------------------------ training
    def n_steps(self) -> int:
        m = max(int(self.scan.counts[n][0]) for n in self.sets)
        return max(1, -(-m // self.cfg.training.batch_size))

    def _train_events(self, g: Group, epoch: int):
        """Endless stream of ``(x, {set: w})`` of the group's training events, each chunk
        permuted; it starts over after the last event."""
        stream = zlib.crc32(g.name.encode())
        cycle = 0
        while True:
            k = 0
            for x, ws, lab in _group_chunks(self.cfg, g, self.features, self.step, self.file):
                tr = lab == 0
                if not tr.any():
                    continue
                perm = np.random.default_rng([self.cfg.seed, epoch, stream, cycle, k])
                perm = perm.permutation(int(tr.sum()))
                k += 1
                yield x[tr][perm], {n: w[tr][perm] for n, w in ws.items()}
            cycle += 1

    def batches(self, epoch: int) -> _EpochBatches:
        return _EpochBatches(self, epoch)

    # ------------------------------------------------------------------ histograms
    def histograms(self, params, split: int, visit=None):
        """Hard ``{(channel, event set): (sumw, sumw2)}`` of a split (0 train, 1 validation,
        2 test) accumulated chunk by chunk, and the selected fraction of the nominal
        samples. ``visit(x, {event set: w})``, if given, sees every chunk's events of the
        split with their weights as histogrammed (the same pass over the files)."""
        acc, sel, tot = {}, 0.0, 0.0
        for g in self.groups:
            names = [n for n in g.weights if n in self.sets]
            if not names:
                continue
            nominal = np.array([n in self.pipe.analysis.samples for n in names], np.float64)
            for x, ws, lab in _group_chunks(self.cfg, g, self.features, self.step, self.file):
                keep = lab == split
                if not keep.any():
                    continue
                xs = _pad(x[keep], self.step)
                wk = {n: ws[n][keep] * self.scan.scale[n][split] for n in names}
                w = np.zeros((len(names), self.step))
                for i, n in enumerate(names):
                    w[i, : keep.sum()] = wk[n]
                if visit is not None:
                    visit(x[keep], wk)
                h, s, t = self._hist(params, jnp.asarray(xs), jnp.asarray(w), jnp.asarray(nominal))
                sel, tot = sel + float(s), tot + float(t)
                h = jax.device_get(h)
                for ch, (sw, sw2) in h.items():
                    for i, n in enumerate(names):
                        key = (ch, n)
                        a = (np.asarray(sw[i]), np.asarray(sw2[i]))
                        acc[key] = a if key not in acc else (acc[key][0] + a[0], acc[key][1] + a[1])
        return self.pipe.analysis.with_derived(acc), sel / tot

    def observed(self, params) -> dict | None:
        """``{channel: counts}`` of every event of the ``data`` sample (hard), or None."""
        d = self.cfg.analysis.data_sample
        if d is None:
            return None
        g = Group(d.name, d.name, tuple(d.files), d.tree, d.filter, {d.name: d.weight},
                  at=_sample_fields(self.cfg, d))  # fmt: skip
        acc = None
        for x, ws, _ in _group_chunks(self.cfg, g, self.features, self.step, self.file):
            w = np.zeros((1, self.step))
            w[0, : len(x)] = ws[d.name]
            h, _, _ = self._hist(params, jnp.asarray(_pad(x, self.step)), jnp.asarray(w),
                                 jnp.zeros(1))  # fmt: skip
            h = {c: np.asarray(v[0][0]) for c, v in jax.device_get(h).items()}
            acc = h if acc is None else {c: acc[c] + h[c] for c in acc}
        return acc


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, x.shape[1]), x.dtype)
    out[: len(x)] = x
    if len(x):
        out[len(x) :] = x[-1]  # a real event (finite network output), weight 0
    return out


class _EpochBatches:
    """The batches of one epoch (a length and one pass of iteration; see the module
    docstring): every read group's next ``ceil(n_g / steps)`` training events per step."""

    def __init__(self, data: StreamData, epoch: int):
        self.data, self.epoch = data, epoch
        self.steps = data.n_steps()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        d = self.data
        streams, sizes, buffers = {}, {}, {}
        for g in d.groups:
            if not any(n in d.sets for n in g.weights):
                continue
            n = int(d.scan.group_counts[g.name][0])
            streams[g.name] = d._train_events(g, self.epoch)
            sizes[g.name] = (n, -(-n // self.steps))
            buffers[g.name] = None
        t0, seen = time.perf_counter(), 0
        for _ in range(self.steps):
            batch = {}
            for g in d.groups:
                if g.name not in streams:
                    continue
                n, b = sizes[g.name]
                x, ws = _take(streams[g.name], buffers, g.name, b)
                seen += b
                for k, w in ws.items():
                    if k in d.sets:
                        w = w * (d.scan.scale[k][0] * n / b)
                        batch[k] = Events(jnp.asarray(x), jnp.asarray(w))
            yield {k: batch[k] for k in d.sets}
        dt = time.perf_counter() - t0
        d.events_per_second = seen / dt if dt > 0 else None


def _take(stream, buffers, name, b):
    """The next ``b`` events of a group's stream (its partly used chunk in ``buffers``)."""
    xs, ws, need = [], [], b
    while need:
        buf = buffers[name]
        if buf is None or len(buf[0]) == 0:
            buf = buffers[name] = next(stream)
        x, w = buf
        k = min(need, len(x))
        xs.append(x[:k])
        ws.append({n: v[:k] for n, v in w.items()})
        buffers[name] = (x[k:], {n: v[k:] for n, v in w.items()})
        need -= k
    x = np.concatenate(xs)
    return x, {n: np.concatenate([w[n] for w in ws]) for n in ws[0]}
