"""``diffhep worker status`` and ``stop``: the workers in the directory, of every key, and
which of them a ``stop`` may end (:mod:`diffhep.cli.worker` starts and talks to them).

A worker's state: ``idle``, ``busy`` (running a command), ``silent`` (no answer in time) or
``gone`` (its process ended, or nothing listens on its socket: its files are left over).
``stop`` ends this installation's worker (the one its commands use here) and the stale ones
(gone, or serving code changed on disk since they started), never a busy worker of another
installation or configuration: it runs someone's command.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from . import worker as w

__all__ = ["COMMANDS", "status", "stop"]


def _alive(pid: int) -> bool:
    """Whether a process of this user has the id ``pid`` (another user's: the id was reused)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _ask(dir_: Path, k: str, info: dict, message: tuple):
    """``message`` sent to the worker of key ``k``; its reply (None: none in time). A worker
    also answers "busy" while it finishes the previous connection (a request just before
    this): asked again for up to 0.5 s before "busy" is believed."""
    for _ in range(5):
        conn, reply = w._connect(dir_, k, info, message)
        if conn is not None:
            conn.close()
        if reply != ("busy",):
            break
        time.sleep(0.1)
    return reply


def _look(dir_: Path, k: str) -> tuple[str, dict] | None:
    """The worker of key ``k`` as it is now: its state and what it says of itself (its status;
    only its pid where it cannot say), None without one: the states of the module's docstring
    (``silent``: no answer within :data:`diffhep.cli.worker.CONNECT_TIMEOUT`)."""
    try:
        info = json.loads((dir_ / f"{k}.json").read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return "gone", {"pid": pid}
    reply = _ask(dir_, k, info, ("status",))
    if reply and reply[0] == "status":
        return "idle", reply[1]
    if reply and reply[0] == "busy":
        return "busy", {"pid": pid}
    if not w._listening(dir_ / f"{k}.sock"):
        return "gone", {"pid": pid}
    return "silent", {"pid": pid}


def _survey(dir_: Path) -> list[tuple[str, str, dict]]:
    """Every worker in the directory, of every key: its key, state and status (:func:`_look`)."""
    try:
        names = sorted(n[:-5] for n in os.listdir(dir_) if n.endswith(".json"))
    except OSError:
        return []
    return [(k, *look) for k in names if (look := _look(dir_, k)) is not None]


def _stale(current: bool, state: str, info: dict) -> bool | None:
    """Whether a worker is stale: its process is gone (or nothing listens on its socket), or it
    serves code changed on disk since it started (it says so when idle). None: not known (busy,
    not answering, or of an older version that cannot say, and of another key: this
    installation's key is computed from the code on disk now, so its worker is never stale)."""
    if state == "gone":
        return True
    if state == "idle":
        return info.get("stale")
    return False if current else None


def _remove_gone(dir_: Path, k: str, pid: int) -> tuple[str, str]:
    """Remove the socket and JSON left by the worker ``pid`` of key ``k`` that is gone: under
    the key's lock (held while a worker of the key starts, :func:`diffhep.cli.worker._spawn`)
    and only if they are still that worker's. What happened (``"stopped"`` or ``"left"``) and
    a note."""
    with w._locked(dir_, k, wait=False) as taken:
        if not taken:
            return "left", "a worker of its key is starting"
        if _look(dir_, k) != ("gone", {"pid": pid}):
            return "left", "its files changed meanwhile"
        w._remove(dir_, k)
    return "stopped", "its files removed"


def _ended(dir_: Path, k: str) -> bool:
    """Whether the worker of key ``k`` ended within 5 s (it removes its files on the way out)."""
    for _ in range(100):
        if w._info(dir_, k) is None:
            return True
        time.sleep(0.05)
    return False


def _stop_one(dir_: Path, k: str, pid: int, terminate: bool) -> tuple[str, str]:
    """Stop the worker ``pid`` of key ``k``: it is asked to; if it is busy with a command (it
    cannot hear the request then) or does not answer, it is terminated if ``terminate`` (its
    client reports the command's end as an error) and left running otherwise. What happened
    (``"stopped"``, ``"left"`` or ``"failed"``) and a note."""
    info = w._info(dir_, k)
    if info is None or info["pid"] != pid:
        return "stopped", "it ended meanwhile"
    reply = _ask(dir_, k, info, ("stop",))
    if reply and reply[0] == "stopped":
        return ("stopped", "") if _ended(dir_, k) else ("failed", "")
    busy = "busy with a command" if reply and reply[0] == "busy" else "not answering"
    if not terminate:
        return "left", f"{busy} by now"
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
    if not _ended(dir_, k):
        return "failed", busy
    _remove_gone(dir_, k, pid)  # (not those of a worker started meanwhile)
    return "stopped", f"terminated: {busy}"


_OTHER = "another installation or configuration"


def _decide(current: bool, state: str, stale: bool | None, everything: bool) -> tuple[bool, str]:
    """Whether :func:`stop` stops a worker (its key this installation's if ``current``; in
    ``state``; ``stale``; ``--all`` if ``everything``), and why."""
    if state == "gone":
        return True, "stale: its process is gone"
    if current:
        return True, "this installation's worker"
    if stale:
        return True, "stale: its code changed on disk since it started"
    if state == "busy":
        return False, f"{_OTHER}, busy with a command"
    if state == "silent":
        return False, f"{_OTHER}, not answering"
    if everything:
        return True, f"{_OTHER}, idle (--all)"
    return False, f"{_OTHER}; --all stops it when idle"


@click.command()
def status() -> None:
    """The workers running, as JSON lines: ``current``: this installation's (the one its
    commands use); ``busy``: running a command; ``stale``: serving code changed on disk since
    it started (null: busy, not answering or of an older diffhep, cannot say); the rest is what
    each says."""
    here = w.key()
    found = _survey(w.directory())
    for k, state, info in found:
        if state != "gone":
            stale = _stale(k == here, state, info)
            line = {**info, "current": k == here, "busy": state == "busy", "stale": stale}
            click.echo(json.dumps(line, sort_keys=True))
            if state == "idle" and "stale" not in info:
                click.echo(
                    f"pid {info['pid']}: an older diffhep's worker (stale: cannot say)", err=True
                )
    gone = sum(state == "gone" for _, state, _ in found)
    if gone:
        click.echo(f"{gone} worker(s) gone, their files left (worker stop removes them)", err=True)
    if not any(k == here and state != "gone" for k, state, _ in found):
        click.echo("no worker for this installation", err=True)
        sys.exit(1)


@click.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also stop the idle workers of other installations and configurations (one busy "
    "with a command is left running: it runs someone's command).",
)
def stop(everything: bool) -> None:
    """Stop this installation's worker and the stale ones; one line says what was done to each
    worker, and why.

    This installation's worker: the one its commands use here (the same code, interpreter and
    configuration: DIFFHEP_*, JAX_*, XLA_* variables, ...); if busy with a command it is
    terminated, and its client reports the command's end as an error. Stale: its process is
    gone (its files are removed), or it serves code changed on disk since it started (it would
    exit at its next check). The workers of other installations and configurations are left
    running (--all: the idle ones are stopped too). The lock files an older diffhep left are
    removed.
    """
    dir_ = w.directory()
    here = w.key()
    counts = {"stopped": 0, "left": 0, "failed": 0}
    for k, state, info in _survey(dir_):
        pid = info["pid"]
        current = k == here
        stops, why = _decide(current, state, _stale(current, state, info), everything)
        if not stops:
            done, note = "left", ""
        elif state == "gone":
            done, note = _remove_gone(dir_, k, pid)
        else:
            done, note = _stop_one(dir_, k, pid, terminate=current)
        counts[done] += 1
        why += f"; {note}" if note else ""
        if done == "failed":
            click.echo(f"error: worker pid {pid} did not stop ({why})", err=True)
        else:
            click.echo(f"pid {pid}: {'stopped' if done == 'stopped' else 'left running'} ({why})")
    try:
        locks = [n[:-5] for n in os.listdir(dir_) if n.endswith(".lock")]
    except OSError:
        locks = []
    for k in locks:  # an older diffhep's (it kept them for good): removed unless held
        with w._locked(dir_, k, wait=False):
            pass
    click.echo(f"stopped {counts['stopped']} worker(s), left {counts['left']} running")
    if counts["failed"]:
        sys.exit(1)


#: The subcommands of ``diffhep worker`` defined here (added to the group by :mod:`diffhep.cli`)
COMMANDS = [status, stop]
