"""The persistent worker's process (``diffhep worker start`` runs ``python -m
diffhep.cli.server DIR KEY IDLE_SECONDS``; the client side is :mod:`diffhep.cli.worker`).

It imports JAX once at its start and the statistics with its first command (as that
command's own process would), then runs the forwarded commands one at a time, each as its own
process would: the client's arguments, working directory and environment; its
standard streams relayed over the connection (output streamed, input read on demand); a fresh
logging set-up and warnings registry; click's exit status. What a command changed in the
process (the directory, the environment, sys.argv, the streams, root logging handlers,
matplotlib's rc) is put back afterwards. A client that connects while a command runs is told
"busy" and runs its command itself. The worker exits after IDLE_SECONDS without a command, on
``stop``, or when its source files change (its key, :func:`diffhep.cli.worker.key`, no longer
matches: clients of the new code look for another socket). Until it notices (it checks between
commands, every :data:`_RECHECK` seconds) it is stale, and says so when asked its ``status``.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

from ..errors import EXIT_INTERRUPTED
from . import worker

#: Seconds between checks that the source files are unchanged.
_RECHECK = 30.0

#: The environment the worker started with (its key's) and the variables its imports set
#: (JAX sets TF_CPP_MIN_LOG_LEVEL, ...).
_START_ENV: dict = {}
_SET_BY_IMPORTS: dict = {}


class _Out(io.RawIOBase):
    """A standard stream's bytes sent to the client as ``(tag, bytes)`` messages."""

    def __init__(self, conn, tag, tty):
        self.conn, self.tag, self.tty = conn, tag, tty

    def writable(self):
        return True

    def isatty(self):
        return self.tty

    def write(self, b):
        self.conn.send((self.tag, bytes(b)))
        return len(b)


class _In(io.RawIOBase):
    """Standard input read from the client on demand."""

    def __init__(self, conn, tty):
        self.conn, self.tty = conn, tty

    def readable(self):
        return True

    def isatty(self):
        return self.tty

    def readinto(self, b):
        self.conn.send(("read", len(b)))
        _, data = self.conn.recv()
        b[: len(data)] = data
        return len(data)


def _text(raw, enc, buffered):
    encoding, errors = enc or ("utf-8", "strict")
    return io.TextIOWrapper(buffered(raw), encoding=encoding, errors=errors)


def _exit_code(code, stderr) -> int:
    """What the interpreter makes of ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1


def run_command(conn, request: dict) -> int:
    """One command of a client, run as its own process would run it; its exit status."""
    from . import common, main

    saved = (os.getcwd(), dict(os.environ), sys.argv, sys.stdin, sys.stdout, sys.stderr)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    tty, enc = request["tty"], request["encoding"]
    stdin = _text(_In(conn, tty[0]), enc[0], io.BufferedReader)
    stdout = _text(_Out(conn, "out", tty[1]), enc[1], io.BufferedWriter)
    stderr = _text(_Out(conn, "err", tty[2]), enc[2], io.BufferedWriter)
    common.QUICK_EXIT = common.ONE_CORE = common.OWN_PROCESS = False
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name, value in _SET_BY_IMPORTS.items():  # as the imports of its process would
            os.environ.setdefault(name, value)
        sys.argv = list(request["argv"])
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
        root.handlers = []
        with warnings.catch_warnings():  # a new registry: warnings show as in a new process
            try:
                main.main(args=sys.argv[1:], prog_name=request["prog"], standalone_mode=True)
                code = 0
            except SystemExit as done:
                code = _exit_code(done.code, stderr)
            except KeyboardInterrupt:  # the client's Ctrl-C between click's handlers
                code = EXIT_INTERRUPTED
            except Exception:
                traceback.print_exc(file=stderr)
                code = 1
    finally:
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        cwd, env, sys.argv, sys.stdin, sys.stdout, sys.stderr = saved
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        root.handlers, root.level = handlers, level
        common.QUICK_EXIT = common.ONE_CORE = False
        _reset_plotting()
    return code


def _reset_plotting() -> None:
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib
        import matplotlib.pyplot as plt

        plt.close("all")
        matplotlib.rcParams.update(matplotlib.rcParamsOrig)


def _stale(k: str) -> bool:
    """Whether this worker of key ``k`` is stale: the key of the environment it started with is
    another now (its source files, the interpreter or the installed packages changed on disk:
    it serves code that is no longer there)."""
    return worker.key(_START_ENV) != k


def _handle(conn, k: str, info: dict) -> bool:
    """One connection: a command, ``status`` or ``stop``; True: the worker is to exit."""
    if not conn.poll(worker.CONNECT_TIMEOUT):
        return False
    message = conn.recv()
    if message[0] == "status":
        conn.send(("status", {**info, "stale": _stale(k)}))
        return False
    if message[0] == "stop":
        conn.send(("stopped", info))
        return True
    if message[0] != "run" or message[1].get("key") != k:
        conn.send(("stale",))
        return message[0] == "run"
    conn.send(("started",))
    code = run_command(conn, message[1])
    conn.send(("exit", code))
    info["commands"] += 1
    return False


def serve(dir_: Path, k: str, idle: float) -> None:
    from multiprocessing.connection import Listener

    from . import common, main  # noqa: F401

    # XLA's threads on one core and this (the Python) thread beside, as the statistics
    # commands set themselves up in their own process (cli.common.ONE_CORE). The statistics
    # (equinox, diffhep.stats) are imported by the first command, as in its own process: its
    # compiled kernels load on another thread meanwhile (cli.common.prefetching)
    gc.disable()  # until the first command is done (as cli._Main pauses it for a start-up)
    common.ONE_CORE = common.OWN_PROCESS = True
    common.setup()
    common.ONE_CORE = common.OWN_PROCESS = False
    _SET_BY_IMPORTS.update({n: v for n, v in os.environ.items() if n not in _START_ENV})
    sock, path = dir_ / f"{k}.sock", dir_ / f"{k}.json"
    sock.unlink(missing_ok=True)  # a crashed worker's (worker start checked none runs)
    authkey = os.urandom(32)
    listener = Listener(str(sock), "AF_UNIX", authkey=authkey)
    os.chmod(sock, 0o600)
    info = {"pid": os.getpid(), "started": time.time(), "idle_timeout_s": idle}
    info.update(package=str(worker._PACKAGE), commands=0)
    tmp = dir_ / f"{k}.json.{os.getpid()}"
    tmp.write_text(json.dumps({**info, "authkey": authkey.hex()}))
    tmp.chmod(0o600)
    tmp.replace(path)

    jobs: queue.Queue = queue.Queue()
    busy = threading.Event()

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()
            except Exception:  # a failed handshake
                continue
            if busy.is_set():
                try:
                    conn.send(("busy",))
                finally:
                    conn.close()
                continue
            busy.set()
            jobs.put(conn)

    threading.Thread(target=accept, daemon=True).start()
    last = checked = time.monotonic()
    frozen = False
    try:
        while True:
            now = time.monotonic()
            if now - last >= idle:
                break
            if now - checked >= _RECHECK:
                checked = now
                if _stale(k):  # the code changed on disk
                    break
            try:
                conn = jobs.get(timeout=min(_RECHECK, idle - (now - last)))
            except queue.Empty:
                continue
            try:
                done = _handle(conn, k, info)
            except (EOFError, OSError):  # the client went away
                done = False
            finally:
                conn.close()
                busy.clear()
                last = time.monotonic()
            if not frozen and (info["commands"] or "diffhep.stats.workflows" in sys.modules):
                frozen = True  # what the first command imported lives to the end: later
                # collections skip it (a next command queues meanwhile)
                gc.collect()
                gc.freeze()
                gc.enable()
            if done:
                break
    finally:
        busy.set()  # clients from now on run their commands themselves
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                worker._remove(dir_, k)
        except (OSError, ValueError):
            pass
        logging.shutdown()
        os._exit(0)  # no finalisation of JAX (see diffhep.cli._quick_exit)


if __name__ == "__main__":
    _dir, _key, _idle = sys.argv[1:4]
    # a client's Ctrl-C (SIGINT to this process) interrupts its command, also where the
    # worker was started with SIGINT ignored (a script's background job): it ran on
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _START_ENV.update(os.environ)
    if worker.key() != _key:
        sys.exit(f"diffhep worker: key {_key} is not this installation's {worker.key()}")
    serve(Path(_dir), _key, float(_idle))
