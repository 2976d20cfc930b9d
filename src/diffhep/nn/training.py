"""A generic optax training loop: one compiled step, validation, checkpoints, NaN guard.

Knows nothing of physics: it minimises ``loss_fn(params, batch, hyper) -> (loss, aux)``
where ``params`` is any Equinox pytree. Per epoch it runs the batches, validates, keeps the
best parameters on the validation metric (never the test set), stops early after
``patience`` epochs without improvement, and writes a checkpoint (parameters, optimiser
state, best parameters, epoch, step, history) atomically into the run directory, so a run
killed at any moment resumes from its last completed epoch and ends with the same numbers as
an uninterrupted one (batches are a deterministic function of the seed and the epoch).

A non-finite loss or gradient stops training with :class:`TrainingError`; the checkpoint
then holds the last good state (before the offending step).

Example:
    >>> import jax.numpy as jnp, optax
    >>> loss = lambda p, batch, hyper: (jnp.sum((p - batch) ** 2), {})
    >>> state = train(jnp.zeros(2), loss, optax.sgd(0.1), epochs=30,
    ...               batches=lambda epoch: [jnp.array([1.0, 2.0])], progress=False)
    >>> [round(float(v), 3) for v in state.params]
    [0.999, 1.998]
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import DiffhepError
from ..writers import write_atomic

__all__ = [
    "CheckpointError",
    "TrainState",
    "TrainingError",
    "load_checkpoint",
    "make_optimizer",
    "read_checkpoint_meta",
    "train",
]

CHECKPOINT = "checkpoint.eqx"
STATE = "checkpoint.json"
#: The parameters of a checkpoint being written: renamed to :data:`CHECKPOINT` once
#: :data:`STATE`, which names them by their SHA-256, is written (:func:`save_checkpoint`)
PENDING = "checkpoint.next.eqx"
METRICS = "metrics.jsonl"


class TrainingError(DiffhepError):
    """Training stopped (non-finite loss or gradients)."""


class CheckpointError(DiffhepError):
    """A checkpoint file of a run directory is damaged (truncated, empty, not JSON, ...)."""


_RESUME_FIX = (
    "start the run over with --no-resume (the checkpoint is overwritten), or restore the "
    "file from a copy"
)
#: Fields of ``checkpoint.json`` and their types.
_META_TYPES = {
    "epoch": int,
    "step": int,
    "best_epoch": (int, type(None)),
    "best_value": (int, float, type(None)),
    "history": list,
    "step_seconds": list,
    "status": str,
}


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """An optax optimiser by name (``adam``, ``adamw``, ``sgd``)."""
    return {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}[name](learning_rate)


@dataclass
class TrainState:
    """Everything needed to continue or report a run."""

    params: Any
    opt_state: Any
    best_params: Any
    epoch: int = 0  # completed epochs
    step: int = 0
    best_epoch: int | None = None
    best_value: float | None = None
    history: list = field(default_factory=list)
    step_seconds: list = field(default_factory=list)
    status: str = "running"  # running | finished | early-stopped | nan

    def meta(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "epoch",
                "step",
                "best_epoch",
                "best_value",
                "history",
                "step_seconds",
                "status",
            )
        }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(run_dir: Path, state: TrainState) -> None:
    """Write the checkpoint so that a process killed at any moment leaves one whole state:
    the parameters go to :data:`PENDING`, then :data:`STATE` with their SHA-256, then the
    rename to :data:`CHECKPOINT`. Before, the parameters of epoch N+1 were renamed into
    place before the state of epoch N was replaced: a kill between the two resumed epoch
    N+1 from its own end (``test_resume_after_kill_gives_the_same_result``: another
    expected CLs, 2.8e-4 instead of 1.7e-4, on a loaded machine)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tree = (state.params, state.opt_state, state.best_params)
    pending = run_dir / PENDING
    write_atomic(pending, lambda p: eqx.tree_serialise_leaves(p, tree))
    meta = {**state.meta(), "params_sha256": _sha256(pending)}
    write_atomic(run_dir / STATE, json.dumps(meta, indent=1))
    pending.replace(run_dir / CHECKPOINT)
    lines = "".join(json.dumps(h) + "\n" for h in state.history)
    write_atomic(run_dir / METRICS, lines)


def read_checkpoint_meta(run_dir: Path, *, fix: str = _RESUME_FIX) -> dict:
    """The epoch, history and status of ``run_dir``'s checkpoint (``checkpoint.json``).

    Raises:
        CheckpointError: The file is not readable, not JSON or lacks a field (naming it).
    """
    path = Path(run_dir) / STATE
    try:
        meta = json.loads(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint: {exc.strerror}", file=str(path),
                              fix=fix) from None  # fmt: skip
    except ValueError as exc:  # also UnicodeDecodeError
        why = "empty" if not path.read_bytes().strip() else f"not JSON: {exc}"
        raise CheckpointError(
            f"the checkpoint is damaged ({why})", file=str(path), fix=fix
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"the checkpoint is damaged (a JSON {type(meta).__name__}, not an object)",
            file=str(path),
            fix=fix,
        )
    for key, types in _META_TYPES.items():
        if key not in meta or isinstance(meta[key], bool) or not isinstance(meta[key], types):
            what = "missing" if key not in meta else f"{meta[key]!r} has the wrong type"
            raise CheckpointError(
                f"the checkpoint is damaged (field {key!r} {what})",
                file=str(path),
                where=key,
                fix=fix,
            )
    return {k: meta[k] for k in _META_TYPES}


def load_checkpoint(run_dir: Path, like: TrainState) -> TrainState | None:
    """The saved state of ``run_dir`` (``like`` gives the pytree structure), or None if
    there is no checkpoint (a ``checkpoint.eqx`` without ``checkpoint.json`` is an epoch that
    did not complete its checkpoint: none either).

    Raises:
        CheckpointError: A checkpoint file is damaged or missing (naming it, with the fix
            ``--no-resume``).
    """
    run_dir = Path(run_dir)
    if not (run_dir / STATE).is_file():
        return None
    meta = read_checkpoint_meta(run_dir)
    path, pending = run_dir / CHECKPOINT, run_dir / PENDING
    digest = json.loads((run_dir / STATE).read_bytes()).get("params_sha256")  # (older runs: none)
    if digest is not None and pending.is_file() and _sha256(pending) == digest:
        pending.replace(path)  # a save stopped between its state and its rename: finish it
    if digest is not None and path.is_file() and _sha256(path) != digest:
        raise CheckpointError(
            f"the checkpoint is damaged ({CHECKPOINT} is not the file {STATE} names)",
            file=str(path),
            fix=_RESUME_FIX,
        )
    if not path.is_file():
        raise CheckpointError(
            f"the checkpoint is damaged ({CHECKPOINT} is missing beside {STATE})",
            file=str(path),
            fix=_RESUME_FIX,
        )
    tree = (like.params, like.opt_state, like.best_params)
    try:
        params, opt_state, best = eqx.tree_deserialise_leaves(path, tree)
    except Exception as exc:  # truncated or foreign: numpy/equinox raise many kinds
        raise CheckpointError(
            f"the checkpoint is damaged ({type(exc).__name__}: {exc})".replace("\n", " "),
            file=str(path),
            fix=_RESUME_FIX,
        ) from None
    return TrainState(params, opt_state, best, **meta)


def all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _make_step(loss_fn, optimizer):
    @eqx.filter_jit
    def step(params, opt_state, batch, hyper):
        (loss, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(params, batch, hyper)
        updates, opt_state = optimizer.update(
            grads, opt_state, eqx.filter(params, eqx.is_inexact_array)
        )
        ok = jnp.isfinite(loss) & all_finite(grads)
        return eqx.apply_updates(params, updates), opt_state, loss, aux, ok

    return step


def train(
    params,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    epochs: int,
    batches: Callable[[int], Iterable],
    hyper: Callable[[int], dict] | None = None,
    phase: Callable[[int], Callable] | None = None,
    validate: Callable[[Any], dict] | None = None,
    select_on: str | None = None,
    maximize: bool = False,
    trusted: str | None = None,
    patience: int | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    describe: Callable[[dict], str] | None = None,
    make_step: Callable | None = None,
    count: Callable[[Any], int] | None = None,
) -> TrainState:
    """Train ``params`` for ``epochs`` epochs.

    Args:
        params: Initial parameters (an Equinox pytree).
        loss_fn: ``(params, batch, hyper) -> (loss, aux)``; ``aux`` a dict of scalars.
        optimizer: An optax optimiser.
        epochs: Number of epochs.
        batches: ``epoch -> iterable of batches`` (deterministic in the epoch).
        hyper: ``epoch -> dict`` of scalar hyper-parameters passed as arrays (e.g. an
            annealed bandwidth): changing them never recompiles.
        phase: ``epoch -> loss_fn`` to switch objectives (loss schedules); each distinct
            function is compiled once.
        validate: ``params -> dict`` of metrics (e.g. ``val_expected_cls``), after every epoch.
        select_on: Key of the validation metric that picks the best parameters (default:
            the epoch's mean training loss; then the best is chosen within the last loss
            phase, as losses of different phases are not comparable).
        maximize: Whether larger ``select_on`` is better.
        trusted: Key of a boolean of the validation record saying whether ``select_on`` can
            be trusted (e.g. ``val_trusted``: false where the validation histograms have a
            bin with signal and no background): an untrusted epoch is never chosen as best
            while a trusted one exists (it is chosen only while none is).
        patience: Stop after this many epochs without improvement.
        run_dir: Where checkpoints and ``metrics.jsonl`` go (None: keep nothing).
        resume: Continue from a checkpoint in ``run_dir`` if there is one.
        progress: Show a rich progress bar.
        describe: Formats an epoch's record for the progress line.
        make_step: ``(loss_fn, optimizer) -> step`` with ``step(params, opt_state, batch,
            hyper) -> (params, opt_state, loss, aux, ok)``; default: one compiled step of
            ``loss_fn`` (e.g. :func:`diffhep.analysis.chunked.make_step` for chunked gradients).
        count: ``batch -> number of events``: the progress line then shows events/s.

    ``batches(epoch)`` may return a sized iterable (``len`` and one pass of iteration, e.g.
    batches read from files as they are needed); any other iterable is made a list first.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    state = _initial_state(params, optimizer, run_dir, resume)
    steps = {}

    def step_for(fn):
        if fn not in steps:
            steps[fn] = (make_step or _make_step)(fn, optimizer)
        return steps[fn]

    bar = _progress_bar(progress)
    with bar:
        while state.epoch < epochs and state.status == "running":
            epoch = state.epoch + 1
            fn = phase(epoch) if phase is not None else loss_fn
            if select_on is None and epoch > 1 and phase is not None and fn is not phase(epoch - 1):
                state.best_value = None  # losses of different phases are not comparable
            compiles = fn not in steps  # the first step of each objective compiles
            step = step_for(fn)
            hp = {k: jnp.asarray(v) for k, v in (hyper(epoch) if hyper else {}).items()}
            epoch_batches = batches(epoch)
            if not hasattr(epoch_batches, "__len__"):
                epoch_batches = list(epoch_batches)
            task = bar.add_task("", total=len(epoch_batches), epoch=epoch, info="")
            losses, auxes = _run_steps(state, step, epoch_batches, hp, epoch, compiles, run_dir,
                                       bar, task, count)  # fmt: skip
            record = _end_epoch(state, epoch, losses, auxes, epochs, validate, select_on,
                                maximize, patience, run_dir, trusted)  # fmt: skip
            bar.update(task, info=describe(record) if describe else f"loss {record['loss']:.4g}")
    return state


def _initial_state(params, optimizer, run_dir, resume) -> TrainState:
    """Fresh parameters and optimiser state, or the checkpoint in ``run_dir`` to resume (not
    one that stopped on a non-finite loss)."""
    opt_state = optimizer.init(eqx.filter(params, eqx.is_inexact_array))
    state = TrainState(params, opt_state, params)
    if run_dir is not None and resume:
        state = load_checkpoint(run_dir, state) or state
    if state.status in ("nan",):
        raise TrainingError(
            f"the run in {run_dir} stopped on a non-finite loss; not resuming",
            fix="change the configuration and start a new run",
        )
    return state


def _progress_bar(progress: bool):
    """The rich progress line of :func:`train` (disabled: ``progress=False``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not progress,
        transient=False,
    )


def _run_steps(state, step, epoch_batches, hp, epoch, compiles, run_dir, bar, task, count=None):
    """One epoch's optimiser steps on ``state`` (updated in place): their losses and aux
    values. A non-finite loss or gradient saves the last good state and raises; the first
    step of a new objective (it compiles) is not timed."""
    losses, auxes = [], []
    start, events = time.perf_counter(), 0
    for i, batch in enumerate(epoch_batches):
        t0 = time.perf_counter()
        new_params, new_opt, loss, aux, ok = step(state.params, state.opt_state, batch, hp)
        loss = float(loss)  # blocks until the step is done
        dt = time.perf_counter() - t0
        if not bool(ok):
            state.status = "nan"
            if run_dir is not None:
                save_checkpoint(run_dir, state)
            raise TrainingError(
                f"non-finite loss or gradient at epoch {epoch}, step {state.step + 1} "
                f"(loss = {loss}); the last good state is saved"
                + (f" in {run_dir}" if run_dir else ""),
                fix="lower the learning rate, widen the histogram bandwidth, or check the inputs",
            )
        if not (compiles and i == 0):
            state.step_seconds.append(dt)
        state.params, state.opt_state = new_params, new_opt
        state.step += 1
        losses.append(loss)
        auxes.append({k: float(v) for k, v in aux.items()})
        info = f"loss {loss:.4g}"
        if count is not None:
            events += count(batch)
            info += f"  {events / max(time.perf_counter() - start, 1e-9):,.0f} events/s"
        bar.update(task, advance=1, info=info)
    return losses, auxes


def _is_trusted(record: dict, trusted: str | None) -> bool:
    return trusted is None or bool(record.get(trusted, True))


def _end_epoch(state, epoch, losses, auxes, epochs, validate, select_on, maximize, patience,
               run_dir, trusted=None) -> dict:  # fmt: skip
    """The epoch's record (mean loss and aux values, validation metrics) added to the
    history, the best parameters, the stop conditions and the checkpoint. With ``trusted``,
    a trusted epoch beats an untrusted best whatever their values, and an untrusted epoch
    never beats a trusted best (the best's trust is read from its record in the history)."""
    record = {"epoch": epoch, "step": state.step, "loss": float(np.mean(losses))}
    for k in auxes[0] if auxes else ():
        record[k] = float(np.mean([a[k] for a in auxes]))
    if validate is not None:
        record.update(validate(state.params))
    value = record[select_on] if select_on else record["loss"]
    better = state.best_value is None or (
        value > state.best_value if maximize else value < state.best_value
    )
    if trusted is not None and state.best_value is not None:
        best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
        now, was = _is_trusted(record, trusted), _is_trusted(best, trusted)
        if now != was:
            better = now
    if better and np.isfinite(value):
        state.best_value, state.best_epoch, state.best_params = value, epoch, state.params
    record["best_epoch"] = state.best_epoch
    state.history.append(record)
    state.epoch = epoch
    if patience is not None and state.best_epoch is not None:
        if epoch - state.best_epoch >= patience:
            state.status = "early-stopped"
    if state.epoch >= epochs and state.status == "running":
        state.status = "finished"
    if run_dir is not None:
        save_checkpoint(run_dir, state)
    return record
