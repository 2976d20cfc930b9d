"""The persistent worker, client side: ``diffhep worker start|stop|status``, the forwarding
of statistics commands to a running worker, and its start by the first command typed at a
terminal (standard library and click only: the client never imports JAX; the worker itself
is :mod:`diffhep.cli.server`).

A whole ``diffhep cls`` spends ~0.5-1 s importing JAX and the statistics before it computes
anything (docs/benchmarks-commands.md). A worker is a background process that has done that
once (like ``dmypy`` or gradle's daemon); while it runs, the commands of :data:`FORWARDED` are
sent to it over a local socket (:mod:`multiprocessing.connection` with a random authkey, in a
private 0700 directory) and their standard output, standard error and exit status are the
worker's, streamed back; standard input is read on demand. ``diffhep worker start`` starts
one; so does the first forwarded command that finds none where a person types it
(:func:`_auto_start`: standard input and error are terminals; ``DIFFHEP_WORKER_START``), and
says so on standard error; it exits after :data:`AUTO_IDLE_TIMEOUT` minutes without a command.
Scripts, batch jobs and pipelines (no terminal), ``DIFFHEP_WORKER_START=never`` and
``DIFFHEP_NO_WORKER=1`` start none, and without a worker every command runs in its own
process.

A worker serves only clients of the same installation and configuration (:func:`key`: the
source files' paths, sizes and modification times, the Python executable, the installed
packages' directory, the environment variables that set JAX's process-wide state); its socket
is named by that key, so a client whose code or configuration changed never finds a stale
worker, and a worker whose code changed on disk exits (it is stale until it notices). ``diffhep
worker stop`` stops this installation's worker and the stale ones (:func:`stop`), never a busy
worker of another installation or configuration: it runs someone's command. Training and
other long commands (``train``, ``apply``, ``study``, ...) and commands with a Dask cluster
(``--workers``, ``--scheduler``) always run in their own process: 0.5 s does not matter to
them and they change process-wide state (threads, plotting styles, Dask clusters).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from ..errors import EXIT_INTERRUPTED

#: Commands sent to a running worker: the statistics on workspaces (short, JSON out).
FORWARDED = frozenset(
    {
        "cls", "fit", "upper-limit", "exclusion", "pulls", "ranking", "correlations",
        "yields", "scan", "significance", "gof", "merge-toys",
    }
)  # fmt: skip

#: Environment variables that set process-wide state of the worker (JAX/XLA flags, the
#: compilation cache, the code imported): part of :func:`key`, not switched per command.
_KEYED_PREFIXES = ("JAX_", "XLA_", "TF_", "DIFFHEP_", "MPL", "CUDA_", "OMP_", "PYTHON")
_KEYED_NAMES = ("HOME", "XDG_CACHE_HOME")
_UNKEYED = ("DIFFHEP_NO_WORKER", "DIFFHEP_WORKER_DIR", "DIFFHEP_WORKER_START")

_PACKAGE = Path(__file__).resolve().parents[1]

#: Seconds a client waits for a worker to accept a command before running it itself.
CONNECT_TIMEOUT = 5.0
#: Minutes without a command after which a worker started by a command (:func:`forward`) exits.
AUTO_IDLE_TIMEOUT = 15.0
#: Seconds to wait for a starting worker (importing JAX on a loaded machine) before giving up.
START_TIMEOUT = 120.0


def directory() -> Path:
    """The private directory of the workers' sockets: ``$DIFFHEP_WORKER_DIR``, else
    ``$XDG_RUNTIME_DIR/diffhep``, else ``~/.cache/diffhep/worker`` (made 0700)."""
    given = os.environ.get("DIFFHEP_WORKER_DIR")
    if given:
        return Path(given)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "diffhep"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffhep" / "worker"


def private(path: Path, create: bool = False) -> bool:
    """Whether ``path`` is a directory only this user can use (made so if ``create``)."""
    try:
        if create:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0


def key(environ=None) -> str:
    """The installation and configuration a worker serves (see the module's docstring)."""
    import hashlib  # (here: --help and commands without a worker need none of it)
    import sysconfig

    environ = os.environ if environ is None else environ
    from .. import __version__

    h = hashlib.sha256()
    h.update(f"{__version__}\0{sys.executable}\0{sys.version}\0{_PACKAGE}\0".encode())
    try:
        h.update(str(os.stat(sysconfig.get_paths()["purelib"]).st_mtime_ns).encode())
    except OSError:
        pass
    for root, dirs, files in os.walk(_PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:  # removed since the listing (an install running)
                continue
            h.update(f"{root}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for name in sorted(environ):
        if name not in _UNKEYED and (name.startswith(_KEYED_PREFIXES) or name in _KEYED_NAMES):
            h.update(f"{name}={environ[name]}\0".encode())
    return h.hexdigest()[:20]


def _info(dir_: Path, k: str) -> dict | None:
    """The running worker of key ``k`` (its pid and authkey), or None."""
    try:
        info = json.loads((dir_ / f"{k}.json").read_text())
        os.kill(info["pid"], 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def _listening(sock: Path) -> bool:
    """Whether a process listens on the socket ``sock`` (a killed worker leaves its file)."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(str(sock))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            pass  # a full backlog, a time-out: someone listens
    return True


def _remove(dir_: Path, k: str) -> None:
    """Remove the files of the worker of key ``k``: its JSON, its socket and its log if empty
    (one that says something is kept: ``worker start`` names it)."""
    for suffix in (".json", ".sock"):
        (dir_ / f"{k}{suffix}").unlink(missing_ok=True)
    log = dir_ / f"{k}.log"
    try:
        if log.stat().st_size == 0:
            log.unlink()
    except OSError:
        pass


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def _connect(dir_: Path, k: str, info: dict, first: tuple, timeout: float | None = None):
    """A connection to the worker with ``first`` sent and its first reply, within ``timeout``
    seconds (None, None: no answer; a frozen or busy worker never blocks the client, nor does
    one whose authkey is not ``info``'s: it restarted since, or ``info`` is another's)."""
    from multiprocessing.connection import AuthenticationError, Client

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CONNECT_TIMEOUT if timeout is None else timeout)
    conn = None
    try:
        conn = Client(str(dir_ / f"{k}.sock"), "AF_UNIX", authkey=bytes.fromhex(info["authkey"]))
        try:
            conn.send(first)
        except OSError:  # a busy worker answers at once and hangs up: its answer is there
            pass
        return conn, conn.recv()
    except (_Timeout, OSError, EOFError, ValueError, KeyError, TypeError, AuthenticationError):
        if conn is not None:
            conn.close()
        return None, None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _command_name(argv: list[str]) -> str | None:
    for arg in argv:
        if arg in ("-h", "--help", "--version"):
            return None
        if not arg.startswith("-"):
            return arg
    return None


def _prog_name() -> str:
    try:
        from click.utils import _detect_program_name

        return _detect_program_name()
    except Exception:  # a private click helper: fall back to what click did before it
        return os.path.basename(sys.argv[0])


def _auto_start() -> bool:
    """Whether a forwarded command that finds no worker starts one (``DIFFHEP_WORKER_START``:
    ``tty``, the default: where standard input and standard error are terminals, i.e. a
    person at a shell, not a script, a batch job or a pipeline fed from a file; ``always``;
    ``never``)."""
    how = os.environ.get("DIFFHEP_WORKER_START", "tty")
    if how not in ("tty", "always", "never"):
        click.echo(
            f"diffhep: error: DIFFHEP_WORKER_START={how!r}: expected tty, always or never "
            "(fix: unset it for the default, tty)",
            err=True,
        )
        sys.exit(2)
    if how == "tty":
        return all(s is not None and s.isatty() for s in (sys.stdin, sys.stderr))
    return how == "always"


def forward(argv: list[str]) -> int | None:
    """Run ``diffhep ARGV`` in the worker of this installation: its exit status, its output
    written here; None when the command is to run in this process. Without a running worker,
    one is started first where :func:`_auto_start` says so."""
    if os.environ.get("DIFFHEP_NO_WORKER") or _command_name(argv) not in FORWARDED:
        return None
    if any(a in ("-h", "--help") for a in argv):
        return None
    if any(a.split("=")[0] in ("--workers", "--scheduler") for a in argv):
        return None  # a Dask cluster of its own: long, and process-wide state
    dir_ = directory()
    try:
        running = any(n.endswith(".sock") for n in os.listdir(dir_)) and private(dir_)
    except OSError:
        running = False
    k = key() if running else None
    info = _info(dir_, k) if running else None
    if info is None:
        if not _auto_start() or not private(dir_, create=True):
            return None
        k = k or key()
        info, started = _spawn(dir_, k, AUTO_IDLE_TIMEOUT, wait=False)
        if started is None:
            return None  # another command is starting it (for ever if suspended): not waited for
        if info is None:
            click.echo(f"diffhep: warning: no worker started (see {dir_}); running here", err=True)
            return None
        if started:
            click.echo(
                f"diffhep: started a worker for the next commands (pid {info['pid']}; it exits "
                f"after {AUTO_IDLE_TIMEOUT:g} min without one; `diffhep worker stop`; "
                "DIFFHEP_WORKER_START=never: no worker)",
                err=True,
            )
    streams = (sys.stdin, sys.stdout, sys.stderr)
    request = {
        "key": k,
        "argv": [sys.argv[0], *argv],
        "prog": _prog_name(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "tty": [bool(s is not None and s.isatty()) for s in streams],
        "encoding": [(s.encoding, s.errors) if s is not None else None for s in streams],
    }
    conn, reply = _connect(dir_, k, info, ("run", request))
    if reply != ("started",):
        if conn is not None:
            conn.close()
        return None  # busy, stale, or not answering: this process runs it
    return _relay(conn, info["pid"])


def _relay(conn, pid: int) -> int | None:
    """Copy the worker's output here and feed it standard input until it sends the exit."""
    touched = False  # whether output was written or input read (no silent re-run then)
    try:
        while True:
            tag, value = conn.recv()
            if tag == "exit":
                return value
            touched = True
            if tag == "read":
                conn.send(("in", sys.stdin.buffer.read1(value) if sys.stdin else b""))
            else:
                stream = sys.stdout if tag == "out" else sys.stderr
                try:
                    stream.buffer.write(value)
                    stream.buffer.flush()
                except BrokenPipeError:  # read by no one any more (`| head`): exit 1 without a
                    # message, as click in the command's own process (the rest to /dev/null)
                    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
                    return 1
    except KeyboardInterrupt:  # Ctrl-C: the worker's command is interrupted too (click's
        try:  # Abort there, as here)
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass
        click.echo("\nAborted!", err=True)
        return EXIT_INTERRUPTED
    except (EOFError, OSError):
        if touched:
            click.echo("diffhep: error: the worker ended during the command", err=True)
            return 1
        click.echo(
            "diffhep: warning: the worker ended before any output of the command; running it here",
            err=True,
        )
        return None
    finally:
        conn.close()


# --- diffhep worker start|stop|status -----------------------------------------------------


@click.group()
def worker() -> None:
    """The persistent worker: statistics commands without JAX's start-up (~0.5-1 s).

    While a worker runs, `cls`, `fit`, `upper-limit`, `exclusion` and the diagnostics are
    run by it (same output and exit status); DIFFHEP_NO_WORKER=1 runs them here. The first
    of them typed at a terminal starts one (it exits after 15 minutes without a command);
    DIFFHEP_WORKER_START=never: only `worker start` does, always: also without a terminal.
    """


@worker.command()
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=15.0,
    show_default=True,
    help="Minutes without a command after which the worker exits.",
)
def start(idle_timeout: float) -> None:
    """Start a worker for this installation (nothing if one runs already)."""
    dir_ = directory()
    if not private(dir_, create=True):
        click.echo(
            f"error: {dir_} is not a private directory (0700, yours) and cannot be made one "
            "(fix: DIFFHEP_WORKER_DIR=another directory)",
            err=True,
        )
        sys.exit(2)
    k = key()
    info, started = _spawn(dir_, k, idle_timeout)
    if info is None:
        click.echo(f"error: the worker did not start; see {dir_ / (k + '.log')}", err=True)
        sys.exit(1)
    if started:
        click.echo(f"worker started (pid {info['pid']}, idle timeout {idle_timeout:g} min)")
    else:
        click.echo(f"worker running (pid {info['pid']})")


@contextlib.contextmanager
def _locked(dir_: Path, k: str, wait: bool = True):
    """The lock of key ``k`` held for the block (it yields False if not ``wait`` and another
    process holds it). Its file, ``<k>.lock``, is there only while it is held: the holder
    removes it at the end, and a process that took a file removed meanwhile (it waited on the
    previous holder) takes the one now at the path instead, so that the holders of the file at
    the path exclude each other."""
    import fcntl

    path = dir_ / f"{k}.lock"
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            st, now = os.fstat(fd), os.stat(path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                break
        except BlockingIOError:  # (not wait) held by another
            os.close(fd)
            yield False
            return
        except FileNotFoundError:  # removed by its holder after this process opened it
            pass
        os.close(fd)
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)  # while held: see above
        os.close(fd)


def _spawn(
    dir_: Path, k: str, idle_minutes: float, wait: bool = True
) -> tuple[dict | None, bool | None]:
    """The worker of key ``k``, started unless one runs: its info (None if it did not start
    within :data:`START_TIMEOUT`) and whether this call started it. Under the key's lock
    (:func:`_locked`), so that two commands started at once start one worker; if not ``wait``,
    None, None while another process holds it (it starts the worker)."""
    import subprocess

    with _locked(dir_, k, wait) as taken:
        if not taken:
            return None, None
        info = _info(dir_, k)
        if info is not None and _listening(dir_ / f"{k}.sock"):
            return info, False  # (else its files are a killed worker's, its pid another's now)
        log = open(dir_ / f"{k}.log", "ab")  # handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "diffhep.cli.server", str(dir_), k, str(idle_minutes * 60)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            info = _info(dir_, k)
            if info is not None and info["pid"] == proc.pid:
                return info, True
            if proc.poll() is not None:
                return None, False
            time.sleep(0.05)
        proc.terminate()
        return None, False


COMMANDS = [worker]
