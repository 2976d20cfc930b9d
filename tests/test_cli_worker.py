"""The opt-in persistent worker (diffhep.cli.worker, diffhep.cli.server): a forwarded command
prints and exits exactly as the same command run in its own process (DIFFHEP_NO_WORKER=1, the
reference), a worker of another configuration is never used, `worker stop` stops it (and the
stale ones, never another configuration's), and the client never imports JAX.

One worker for the module (a private temporary directory, a temporary compilation cache);
the module costs ~6-10 s (the worker's start-up and the in-process reference runs), so the
tests that run commands in a worker are marked slow (those of `worker stop`, ~1 s a worker
started, are not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import affinity
from diffhep.stats.workspace import example_spec

SRC = str(Path(__file__).parents[1] / "src")


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFHEP_")}
    env.update(PYTHONPATH=SRC, DIFFHEP_WORKER_DIR=str(tmp / "w"))
    env.update(DIFFHEP_CACHE_DIR=str(tmp / "cache"), **extra)
    return env


def _diffhep(args, env, stdin=None, cwd=None, flags=()):
    return subprocess.run(
        [sys.executable, *flags, "-m", "diffhep.cli", *args],
        env=env, input=stdin, capture_output=True, cwd=cwd, timeout=300,
    )  # fmt: skip


def _commands(env) -> int:
    """The number of commands the current worker has run."""
    proc = _diffhep(["worker", "status"], env)
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if json.loads(x)["current"]]
    return line["commands"]


def test_the_client_without_a_worker_imports_no_jax(tmp_path):
    env = _env(tmp_path)
    proc = _diffhep(["worker", "status"], env, flags=["-X", "importtime"])
    assert proc.returncode == 1 and b"no worker for this installation" in proc.stderr
    assert b" jax" not in proc.stderr and b"diffhep.cli.worker" in proc.stderr
    probe = "import sys; from diffhep.cli import worker; print(worker.forward(['cls', 'x.json']),"
    probe += " 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["None", "False"], out.stderr
    # not at a terminal (standard error is a pipe): no worker was started either
    assert not list((tmp_path / "w").glob("*.json"))


@pytest.mark.parametrize(
    "setting, stdin_tty, stderr_tty, starts",
    [(None, True, True, True), (None, False, True, False), (None, True, False, False),
     ("tty", True, True, True), ("always", False, False, True), ("never", True, True, False)],
)  # fmt: skip
def test_a_worker_is_started_for_a_person_at_a_terminal(
    monkeypatch, setting, stdin_tty, stderr_tty, starts
):
    from diffhep.cli import worker

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(sys, "stdin", Stream(stdin_tty))
    monkeypatch.setattr(sys, "stderr", Stream(stderr_tty))
    if setting is None:
        monkeypatch.delenv("DIFFHEP_WORKER_START", raising=False)
    else:
        monkeypatch.setenv("DIFFHEP_WORKER_START", setting)
    assert worker._auto_start() is starts


def test_a_bad_worker_start_setting_is_an_error(tmp_path):
    proc = _diffhep(["cls", "ws.json"], _env(tmp_path, DIFFHEP_WORKER_START="sometimes"))
    assert proc.returncode == 2, proc.stderr
    assert b"DIFFHEP_WORKER_START='sometimes': expected tty, always or never" in proc.stderr


@pytest.mark.slow
def test_a_command_at_a_terminal_starts_the_worker_that_runs_the_next(tmp_path):
    """The first statistics command with no worker running starts one (here forced with
    ``always``: the test has no terminal) and is run by it, as is the next; the output is
    the same as in its own process, plus the notice of the start."""
    (tmp_path / "ws.json").write_text(json.dumps(example_spec()))
    env = _env(tmp_path, DIFFHEP_WORKER_START="always")
    here = _diffhep(["cls", "ws.json"], {**env, "DIFFHEP_NO_WORKER": "1"}, cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    try:
        first = _diffhep(["cls", "ws.json"], env, cwd=tmp_path)
        assert first.returncode == 0 and first.stdout == here.stdout, first.stderr
        assert first.stderr.startswith(b"diffhep: started a worker for the next commands")
        assert _commands(env) == 1
        second = _diffhep(["cls", "ws.json"], env, cwd=tmp_path)
        assert (second.returncode, second.stdout, second.stderr) == (0, here.stdout, here.stderr)
        assert _commands(env) == 2
        never = _diffhep(["cls", "ws.json"], {**env, "DIFFHEP_WORKER_START": "never"}, cwd=tmp_path)
        assert never.returncode == 0 and _commands(env) == 3  # never starts one, uses a running one
    finally:
        assert _diffhep(["worker", "stop"], env).returncode == 0


@pytest.mark.skipif(len(affinity.session_cores()) < 2, reason="the prefetch needs two cores")
def test_the_workers_first_command_prefetches_as_its_own_process_would(tmp_path):
    """The worker imports the statistics with its first command, whose compiled kernels load
    on a thread meanwhile as in a command's own process (what the last command called on
    that workspace, recorded under an alias); later commands find their kernels in memory
    and prefetch nothing (no alias of their own)."""
    (tmp_path / "ws.json").write_text(json.dumps(example_spec()))
    other = example_spec()
    other["observations"][0]["data"] = [d + 5 for d in other["observations"][0]["data"]]
    (tmp_path / "other.json").write_text(json.dumps(other))
    env = _env(tmp_path, DIFFHEP_WORKER_START="always")
    own = {**env, "DIFFHEP_NO_WORKER": "1"}
    with affinity.widened():  # the commands' cores: the session's
        here = [_diffhep(["cls", f], own, cwd=tmp_path) for f in ("ws.json", "other.json")]
    assert all(p.returncode == 0 for p in here), here[0].stderr + here[1].stderr
    aliases = tmp_path / "cache" / "exported" / "aliases"
    (exe,) = (tmp_path / "cache" / "exported").glob("*.exe")
    assert len(list(aliases.iterdir())) == 2  # one per workspace's bytes, one kernel
    for alias in aliases.iterdir():
        alias.unlink()
    try:
        with affinity.widened():  # the worker's cores: the session's
            first = _diffhep(["cls", "ws.json"], env, cwd=tmp_path)
        assert first.returncode == 0 and first.stdout == here[0].stdout, first.stderr
        assert _commands(env) == 1
        (alias,) = aliases.iterdir()  # recorded by the prefetch of the worker's first command
        assert alias.read_text().split() == [exe.name]
        second = _diffhep(["cls", "other.json"], env, cwd=tmp_path)
        assert second.returncode == 0 and second.stdout == here[1].stdout, second.stderr
        assert _commands(env) == 2
        assert list(aliases.iterdir()) == [alias]  # no prefetch: nothing recorded
    finally:
        assert _diffhep(["worker", "stop"], env).returncode == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    (tmp / "ws.json").write_text(json.dumps(example_spec()))
    (tmp / "bad.json").write_text("{}")
    env = _env(tmp)
    start = _diffhep(["worker", "start", "--idle-timeout", "3"], env)
    assert start.returncode == 0, start.stderr
    yield tmp, env
    _diffhep(["worker", "stop"], env)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, stdin, code",
    [(["cls", "ws.json"], None, 0), (["cls", "-"], "ws.json", 0), (["cls", "bad.json"], None, 2),
     (["cls", "--bogus", "ws.json"], None, 2), (["fit", "ws.json"], None, 0)],
)  # fmt: skip
def test_a_forwarded_command_is_its_own_process(served, args, stdin, code):
    tmp, env = served
    data = None if stdin is None else (tmp / stdin).read_bytes()
    before = _commands(env)
    there = _diffhep(args, env, data, cwd=tmp)
    assert _commands(env) == before + 1  # the worker ran it
    here = _diffhep(args, {**env, "DIFFHEP_NO_WORKER": "1"}, data, cwd=tmp)
    assert _commands(env) == before + 1  # ... and not this one
    assert (there.returncode, there.stdout, there.stderr) == (code, here.stdout, here.stderr)
    if code == 0:
        assert json.loads(there.stdout)


@pytest.mark.slow
def test_the_forwarding_client_imports_no_jax(served):
    tmp, env = served
    proc = _diffhep(["cls", "ws.json"], env, cwd=tmp, flags=["-X", "importtime"])
    assert proc.returncode == 0 and json.loads(proc.stdout)["CLs_obs"] > 0
    assert b" jax" not in proc.stderr and b"diffhep.cli.worker" in proc.stderr


@pytest.mark.slow
def test_a_worker_of_another_configuration_is_not_used(served):
    tmp, env = served
    before = _commands(env)
    other = {**env, "DIFFHEP_SOMETHING": "1"}  # another key (the source files: the same way)
    proc = _diffhep(["cls", "ws.json"], other, cwd=tmp)
    assert proc.returncode == 0 and json.loads(proc.stdout)["CLs_obs"] > 0
    assert _commands(env) == before
    assert _diffhep(["worker", "status"], other).returncode == 1


@pytest.mark.slow
def test_a_stale_request_is_refused_and_stop_stops(tmp_path):
    import time
    from multiprocessing.connection import Client

    env = _env(tmp_path)
    assert _diffhep(["worker", "start", "--idle-timeout", "1"], env).returncode == 0
    assert _commands(env) == 0
    (key,) = [p.name[:-5] for p in (tmp_path / "w").glob("*.json")]
    info = json.loads((tmp_path / "w" / f"{key}.json").read_text())
    address = str(tmp_path / "w" / f"{key}.sock")
    conn = Client(address, "AF_UNIX", authkey=bytes.fromhex(info["authkey"]))
    conn.send(("run", {"key": "0" * 20}))
    assert conn.recv() == ("stale",)  # and that worker exits
    conn.close()
    for _ in range(100):
        if _diffhep(["worker", "status"], env).returncode == 1:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the worker did not exit")
    assert not list((tmp_path / "w").glob("*.sock"))
    assert _diffhep(["worker", "start", "--idle-timeout", "1"], env).returncode == 0
    stop = _diffhep(["worker", "stop"], env)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.decode().splitlines()[-1] == "stopped 1 worker(s), left 0 running"
    assert _diffhep(["worker", "status"], env).returncode == 1
    assert not list((tmp_path / "w").glob("*.sock"))


def _pid(env) -> int | None:
    """The pid of the worker the installation of ``env`` uses (None: none runs)."""
    proc = _diffhep(["worker", "status"], env)
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    return next((line["pid"] for line in lines if line["current"]), None)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a worker's process."""
    return b"diffhep.cli.server" in _cmdline(pid)


def _ended(pid: int) -> bool:
    """Whether the worker ``pid`` ended within 5 s (a moment after it removed its files)."""
    import time

    for _ in range(50):
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _end_workers(tmp: Path) -> None:
    """Terminate what is left of the workers serving ``tmp``'s worker directory (a test that
    failed before its stop): only processes that run diffhep.cli.server on that directory."""
    import signal

    d = str(tmp / "w").encode()
    for p in (tmp / "w").glob("*.json"):
        try:
            pid = json.loads(p.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        args = _cmdline(pid).split(b"\0")
        if b"diffhep.cli.server" in args and d in args:
            os.kill(pid, signal.SIGTERM)


class _Busy:
    """The worker ``pid`` of ``tmp``'s directory busy with a command until the block ends: a
    ``cls -`` whose standard input (this client's) is read on demand and given at the exit."""

    def __init__(self, tmp: Path, env: dict, pid: int):
        from multiprocessing.connection import Client

        d = tmp / "w"
        (k,) = [p.name[:-5] for p in d.glob("*.json") if json.loads(p.read_text())["pid"] == pid]
        info = json.loads((d / f"{k}.json").read_text())
        self.conn = Client(str(d / f"{k}.sock"), "AF_UNIX", authkey=bytes.fromhex(info["authkey"]))
        utf8 = [("utf-8", "strict")] * 3
        request = dict(key=k, argv=["diffhep", "cls", "-"], prog="diffhep", cwd=str(tmp), env=env)
        self.conn.send(("run", {**request, "tty": [False] * 3, "encoding": utf8}))

    def __enter__(self):
        assert self.conn.recv() == ("started",)
        return self

    def __exit__(self, *exc):
        try:
            while True:
                tag, value = self.conn.recv()
                if tag == "read":
                    self.conn.send(("in", b""))
                elif tag == "exit":
                    assert value == 2  # no workspace on standard input
                    break
        finally:
            self.conn.close()


def test_stop_leaves_the_worker_of_another_configuration_running(tmp_path):
    """The report: two workers in one directory, keyed by their cache directories (two
    installations or configurations on one account); `worker stop` of one stops its own and
    says it left the other running; `--all` stops the other too when it is idle, never while
    it runs a command."""
    env = _env(tmp_path)
    env2 = {**env, "DIFFHEP_CACHE_DIR": str(tmp_path / "cache2")}
    try:
        for e in (env2, env):
            start = _diffhep(["worker", "start", "--idle-timeout", "2"], e)
            assert start.returncode == 0, start.stderr
        mine, other = _pid(env), _pid(env2)
        assert None not in (mine, other) and mine != other
        stop = _diffhep(["worker", "stop"], env)
        assert stop.returncode == 0, stop.stderr
        *lines, last = stop.stdout.decode().splitlines()
        assert sorted(lines) == sorted(
            [f"pid {mine}: stopped (this installation's worker)",
             f"pid {other}: left running (another installation or configuration; "
             "--all stops it when idle)"]
        )  # fmt: skip
        assert last == "stopped 1 worker(s), left 1 running"
        assert _pid(env) is None and _pid(env2) == other
        with _Busy(tmp_path, env2, other):
            for args in (["worker", "stop"], ["worker", "stop", "--all"]):
                stop = _diffhep(args, env)
                assert stop.returncode == 0, stop.stderr
                assert stop.stdout.decode().splitlines() == [
                    f"pid {other}: left running (another installation or configuration, busy "
                    "with a command)",
                    "stopped 0 worker(s), left 1 running",
                ]
                assert _alive(other)
            busy = json.loads(_diffhep(["worker", "status"], env).stdout)
            assert (busy["pid"], busy["busy"], busy["current"], busy["stale"]) == (
                other, True, False, None)  # fmt: skip
        stop = _diffhep(["worker", "stop", "--all"], env)
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.decode().splitlines() == [
            f"pid {other}: stopped (another installation or configuration, idle (--all))",
            "stopped 1 worker(s), left 0 running",
        ]
        assert _pid(env2) is None and _ended(other)
    finally:
        _end_workers(tmp_path)


def test_stop_stops_the_stale_workers(tmp_path):
    """Stale workers are stopped from any installation: one whose code changed on disk since
    it started (here a copy of the package, touched), which `status` reports as stale, and
    one whose process is gone (its files are removed)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(Path(SRC) / "diffhep", copy / "diffhep", ignore=shutil.ignore_patterns("*.pyc"))
    env = _env(tmp_path)
    old = _env(tmp_path, PYTHONPATH=str(copy))
    try:
        start = _diffhep(["worker", "start", "--idle-timeout", "2"], old)
        assert start.returncode == 0, start.stderr
        stale = _pid(old)
        assert stale is not None
        init = copy / "diffhep" / "__init__.py"
        os.utime(init, ns=(0, init.stat().st_mtime_ns + 10**9))  # its code changed on disk
        gone = subprocess.Popen(["true"])
        gone.wait()  # the files of a worker killed: its socket and JSON left
        (tmp_path / "w" / f"{'0' * 20}.json").write_text(json.dumps({"pid": gone.pid}))
        (tmp_path / "w" / f"{'0' * 20}.sock").touch()
        status = _diffhep(["worker", "status"], env)
        assert status.returncode == 1  # no worker of this installation
        (line,) = [json.loads(x) for x in status.stdout.splitlines()]
        assert (line["pid"], line["current"], line["stale"]) == (stale, False, True)
        assert b"1 worker(s) gone" in status.stderr
        stop = _diffhep(["worker", "stop"], env)
        assert stop.returncode == 0, stop.stderr
        *lines, last = stop.stdout.decode().splitlines()
        assert sorted(lines) == sorted(
            [f"pid {gone.pid}: stopped (stale: its process is gone; its files removed)",
             f"pid {stale}: stopped (stale: its code changed on disk since it started)"]
        )  # fmt: skip
        assert last == "stopped 2 worker(s), left 0 running"
        assert _ended(stale)
        assert not list((tmp_path / "w").glob("*.json"))
        assert not list((tmp_path / "w").glob("*.sock"))
    finally:
        _end_workers(tmp_path)


def _fake_worker(tmp: Path, monkeypatch, behave):
    """A stand-in worker (a thread of this process) for the client's failure paths: it
    answers each connection with ``behave(conn)``."""
    import threading
    from multiprocessing.connection import Listener

    from diffhep.cli import worker

    d = tmp / "w"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("DIFFHEP_WORKER_DIR", str(d))
    monkeypatch.delenv("DIFFHEP_NO_WORKER", raising=False)
    key = worker.key()
    authkey = os.urandom(16)
    listener = Listener(str(d / f"{key}.sock"), "AF_UNIX", authkey=authkey)
    (d / f"{key}.json").write_text(json.dumps({"pid": os.getpid(), "authkey": authkey.hex()}))

    def serve():
        conn = listener.accept()
        listener.close()
        conn.recv()
        behave(conn)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return worker, thread


@pytest.mark.parametrize("case", ["busy", "crash before output", "frozen"])
def test_the_client_runs_the_command_itself_when_the_worker_cannot(
    tmp_path, monkeypatch, capsys, case
):
    import threading

    hold = threading.Event()

    def behave(conn):
        if case == "busy":
            conn.send(("busy",))
        elif case == "crash before output":
            conn.send(("started",))
        else:
            hold.wait(10)  # never answers

    worker, thread = _fake_worker(tmp_path, monkeypatch, behave)
    monkeypatch.setattr(worker, "CONNECT_TIMEOUT", 0.3)
    assert worker.forward(["cls", "ws.json"]) is None  # None: run it in this process
    hold.set()
    thread.join(10)
    err = capsys.readouterr().err
    assert ("the worker ended before any output of the command; running it here" in err) == (
        case == "crash before output"
    ), err


def test_a_worker_that_ends_after_writing_is_an_error(tmp_path, monkeypatch, capfdbinary):
    def behave(conn):
        conn.send(("started",))
        conn.send(("out", b"{\n"))

    worker, thread = _fake_worker(tmp_path, monkeypatch, behave)
    assert worker.forward(["cls", "ws.json"]) == 1  # not run again: output was written
    thread.join(10)
    out, err = capfdbinary.readouterr()
    assert out == b"{\n" and b"the worker ended during the command" in err


def test_the_key_follows_the_source_files_and_the_keyed_environment(tmp_path, monkeypatch):
    from diffhep.cli import worker

    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "a.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(worker, "_PACKAGE", tmp_path / "pkg")
    env = {"HOME": "/h", "PATH": "/bin"}
    k = worker.key(env)
    assert worker.key(env) == k
    assert worker.key({**env, "PATH": "/usr/bin", "DIFFHEP_NO_WORKER": "1", "TERM": "x"}) == k
    for changed in ({"XLA_FLAGS": "--x"}, {"JAX_ENABLE_X64": "1"}, {"DIFFHEP_CACHE_DIR": ""}):
        assert worker.key({**env, **changed}) != k, changed
    os.utime(source, ns=(0, source.stat().st_mtime_ns + 1))  # the code changed on disk
    assert worker.key(env) != k
    k = worker.key(env)
    (tmp_path / "pkg" / "b.py").write_text("")  # a new module
    assert worker.key(env) != k


def test_the_key_skips_a_file_removed_while_it_walks(tmp_path, monkeypatch):
    """A file removed between the listing of its directory and its stat (an install or a
    ``pip uninstall`` running) is skipped, as if it had gone before: the command failed
    with a traceback (FileNotFoundError)."""
    from diffhep.cli import worker

    (tmp_path / "pkg").mkdir()
    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / "pkg" / name).write_text("x = 1\n")
    monkeypatch.setattr(worker, "_PACKAGE", tmp_path / "pkg")
    walk = os.walk

    def vanishing(top):
        for root, dirs, files in walk(top):
            if "b.py" in files:
                os.remove(os.path.join(root, "b.py"))  # listed, then removed
            yield root, dirs, files

    monkeypatch.setattr(worker.os, "walk", vanishing)
    k = worker.key({})
    monkeypatch.setattr(worker.os, "walk", walk)
    assert k == worker.key({})  # the key of the files left


def _listener(d: Path, key: str, authkey: bytes, behave):
    """A stand-in worker of key ``key`` in ``d`` (a thread of this process) that answers each
    connection that passes the handshake with ``behave(conn)`` (a failed handshake, as a
    worker does, is ignored) until the returned ``stop()``."""
    import threading
    from multiprocessing.connection import Listener

    listener = Listener(str(d / f"{key}.sock"), "AF_UNIX", authkey=authkey)
    done = threading.Event()

    def serve():
        while True:  # until stop()'s connection (the last: no exit before it is accepted)
            try:
                conn = listener.accept()
            except Exception:  # a failed handshake
                continue
            with conn:
                if done.is_set():
                    return
                try:
                    behave(conn)
                except (EOFError, OSError):  # the client hung up
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop():
        from multiprocessing.connection import Client

        done.set()
        Client(str(d / f"{key}.sock"), "AF_UNIX", authkey=authkey).close()
        thread.join(10)
        listener.close()

    return stop


@pytest.mark.parametrize("authkey", [{"authkey": "ab" * 32}, {}, {"authkey": 1}])
def test_a_worker_with_another_authkey_is_not_used(tmp_path, monkeypatch, capfd, authkey):
    """The JSON read is not the socket's worker's (one restarting between the two, or a JSON
    left by another, or by none: no authkey): its handshake fails, and the command runs in
    this process, no traceback."""
    from diffhep.cli import worker

    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("DIFFHEP_WORKER_DIR", str(d))
    monkeypatch.delenv("DIFFHEP_NO_WORKER", raising=False)
    monkeypatch.setenv("DIFFHEP_WORKER_START", "never")
    key = worker.key()
    answered = []
    stop = _listener(d, key, os.urandom(32), answered.append)
    try:
        (d / f"{key}.json").write_text(json.dumps({"pid": os.getpid(), **authkey}))
        assert worker.forward(["cls", "ws.json"]) is None  # None: run it in this process
    finally:
        stop()
    assert answered == [] and capfd.readouterr().err == ""


def test_status_of_a_worker_of_an_older_version(tmp_path, monkeypatch):
    """A worker of an older diffhep answers ``status`` without ``stale`` (it cannot tell):
    status says null (cannot say), not false, and `stop` leaves it running (another
    installation's, idle: --all stops it)."""
    from click.testing import CliRunner

    from diffhep.cli import main

    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("DIFFHEP_WORKER_DIR", str(d))
    key, authkey = "0" * 20, os.urandom(32)
    old = {"pid": os.getpid(), "started": 1.0, "idle_timeout_s": 60.0, "commands": 3}
    said = []

    def behave(conn):  # the status and stop of the first worker (b81a2c8)
        message = conn.recv()
        said.append(message[0])
        conn.send(("stopped", old) if message == ("stop",) else ("status", old))

    stop = _listener(d, key, authkey, behave)
    try:
        (d / f"{key}.json").write_text(json.dumps({**old, "authkey": authkey.hex()}))
        status = CliRunner().invoke(main, ["worker", "status"])
        assert status.exit_code == 1, status.output  # none of this installation
        assert f"pid {os.getpid()}: an older diffhep's worker (stale: cannot say)" in status.stderr
        line = json.loads(status.stdout)
        assert (line["pid"], line["current"], line["busy"], line["stale"]) == (
            os.getpid(), False, False, None)  # fmt: skip
        stopped = CliRunner().invoke(main, ["worker", "stop"])
        assert stopped.exit_code == 0, stopped.output
        assert stopped.stdout.splitlines()[0] == (
            f"pid {os.getpid()}: left running (another installation or configuration; --all "
            "stops it when idle)"
        )
    finally:
        stop()
    assert "stop" not in said


def test_a_worker_leaves_no_files(tmp_path):
    """Every worker's files go with it: stopped, or killed (SIGKILL) and its leftovers removed
    by `worker stop`; the lock of its key is there only while a worker of it starts."""
    import signal

    env = _env(tmp_path)
    d = tmp_path / "w"
    try:
        for end in ("stop", "kill", "stop"):
            start = _diffhep(["worker", "start", "--idle-timeout", "1"], env)
            assert start.returncode == 0, start.stderr
            pid = _pid(env)
            assert pid is not None and not list(d.glob("*.lock"))
            if end == "kill":
                os.kill(pid, signal.SIGKILL)
                assert _ended(pid)
            stop = _diffhep(["worker", "stop"], env)
            assert stop.returncode == 0, stop.stderr
            assert stop.stdout.decode().splitlines()[-1] == "stopped 1 worker(s), left 0 running"
            assert _ended(pid) and sorted(os.listdir(d)) == [], end
    finally:
        _end_workers(tmp_path)


#: A stand-in worker's process (``python FILE DIR KEY``) for the race of several clients
#: starting one: it notes its start in DIR/started and, if another worker of KEY runs, in
#: DIR/twice; listens and writes its JSON as a worker does, serves for a moment, removes them.
_SHORT_WORKER = """
import json, os, random, socket, sys, time
d, k, pid = sys.argv[1], sys.argv[2], os.getpid()
with open(os.path.join(d, "started"), "a") as f:
    f.write(f"{pid}\\n")
alive = os.path.join(d, k + ".alive")
try:
    os.close(os.open(alive, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
except FileExistsError:
    with open(os.path.join(d, "twice"), "a") as f:
        f.write(f"{pid}\\n")
path, sock = os.path.join(d, k + ".json"), os.path.join(d, k + ".sock")
if os.path.exists(sock):
    os.unlink(sock)
listener = socket.socket(socket.AF_UNIX)
listener.bind(sock)
listener.listen()
with open(f"{path}.{pid}", "w") as f:
    json.dump({"pid": pid, "authkey": ""}, f)
os.replace(f"{path}.{pid}", path)
time.sleep(random.uniform(0, 0.1))
os.unlink(alive)
os.unlink(path)
os.unlink(sock)
"""

#: A client (``python -c _STARTER FILE DIR KEY N``) that starts the worker of KEY again and
#: again (worker._spawn), each time with the stand-in worker FILE, until N were started (or
#: for 120 s).
_STARTER = """
import subprocess, sys, time
from pathlib import Path
from diffhep.cli import worker
script, d, k, n = sys.argv[1:5]
popen = subprocess.Popen
subprocess.Popen = lambda args, **kw: popen([sys.executable, script, d, k], **kw)
end = time.monotonic() + 120
started = Path(d) / "started"
while time.monotonic() < end and (
    not started.exists() or len(started.read_text().split()) < int(n)
):
    worker._spawn(Path(d), k, 1.0)  # (None if the stand-in ended before it was seen)
"""


def test_clients_starting_one_worker_at_once_start_one(tmp_path):
    """Four clients start the worker of one key again and again (each worker serves for a
    moment only, so a start is often due while another client waits for the lock): never two
    workers of the key at once, and no lock file left."""
    import time

    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    script = tmp_path / "short_worker.py"
    script.write_text(_SHORT_WORKER)
    k = "1" * 20
    args = [sys.executable, "-c", _STARTER, str(script), str(d), k, "40"]
    env = {**os.environ, "PYTHONPATH": SRC}
    clients = [subprocess.Popen(args, env=env, stderr=subprocess.PIPE) for _ in range(4)]
    try:
        errors = [c.communicate(timeout=120)[1] for c in clients]
    finally:
        for c in clients:
            c.kill()
            c.wait()
        started = [int(x) for x in (d / "started").read_text().split()]
        for pid in started:  # the stand-ins end by themselves in a moment
            for _ in range(100):
                if not _cmdline(pid):
                    break
                time.sleep(0.05)
    assert [c.returncode for c in clients] == [0] * 4, errors
    assert len(started) >= 40  # the lock was contended: a start was often due
    assert not (d / "twice").exists(), (d / "twice").read_text()
    assert not list(d.glob("*.lock"))


def test_a_command_does_not_wait_for_another_starting_the_worker(tmp_path):
    """While another command starts the worker (it holds the key's lock: here for good, as
    one suspended at the terminal would), a command runs in its own process at once instead
    of waiting for it (it waited as long as the other held the lock: for ever here)."""
    from diffhep.cli import worker

    env = _env(tmp_path, DIFFHEP_WORKER_START="always")
    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    probe = "from diffhep.cli import worker; print(worker.key())"
    k = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    k = k.stdout.strip()
    probe += "; print(worker.forward(['cls', 'x']))"
    with worker._locked(d, k):
        proc = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30
        )
    assert proc.stdout.split() == [k, "None"], proc.stderr  # None: run here
    assert proc.stderr == "" and os.listdir(d) == []


def test_output_read_by_no_one_ends_the_command_as_in_its_own_process(tmp_path):
    """The client's standard output is a pipe nobody reads any more (``| head``): the client
    exits 1 without a message, as click does in the command's own process (it said the worker
    had ended)."""
    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    env = _env(tmp_path, DIFFHEP_WORKER_START="never")
    probe = "import sys; from diffhep.cli import worker; print(worker.key(), file=sys.stderr)"
    k = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    k = k.stderr.strip()
    authkey = os.urandom(32)

    def behave(conn):
        conn.recv()
        conn.send(("started",))
        conn.send(("out", b"{}\n"))
        conn.recv()  # the client hangs up

    stop = _listener(d, k, authkey, behave)
    try:
        (d / f"{k}.json").write_text(json.dumps({"pid": os.getpid(), "authkey": authkey.hex()}))
        run = "import sys; from diffhep.cli import worker; sys.exit(worker.forward(['cls', 'x']))"
        proc = subprocess.Popen(
            [sys.executable, "-c", run], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        proc.stdout.close()  # read by no one
        _, err = proc.communicate(timeout=60)
    finally:
        stop()
    assert (proc.returncode, err) == (1, b"")


@pytest.mark.parametrize("where", ["file/w", "file"])
def test_a_worker_directory_that_cannot_be_made(tmp_path, where):
    """DIFFHEP_WORKER_DIR where no directory can be made (under a file, or a file): a command
    at a terminal runs in its own process, `worker start` exits 2 naming the directory and
    the variable (both gave a traceback)."""
    (tmp_path / "file").write_text("")
    (tmp_path / "file").chmod(0o600)
    (tmp_path / "ws.json").write_text(json.dumps(example_spec()))
    env = _env(tmp_path, DIFFHEP_WORKER_START="always", DIFFHEP_WORKER_DIR=str(tmp_path / where))
    probe = "from diffhep.cli import worker; print(worker.forward(['cls', 'ws.json']))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "None\n", "")  # None: run here
    start = _diffhep(["worker", "start"], env)
    assert start.returncode == 2 and start.stdout == b""
    assert start.stderr.decode() == (
        f"error: {tmp_path / where} is not a private directory (0700, yours) and cannot be "
        "made one (fix: DIFFHEP_WORKER_DIR=another directory)\n"
    )


def test_a_worker_started_with_sigint_ignored_is_interrupted(tmp_path):
    """A worker started where SIGINT is ignored (a script's background job; here as under
    pytest-xdist) ends its command at its client's Ctrl-C (SIGINT to its process), with exit
    status 130: it ran on, busy, the client gone."""
    import signal

    env = _env(tmp_path)
    start = "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); from diffhep.cli "
    start += "import main; sys.argv = ['diffhep', 'worker', 'start', '--idle-timeout', '1']; main()"
    proc = subprocess.run([sys.executable, "-c", start], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    busy = None
    try:
        pid = _pid(env)
        busy = _Busy(tmp_path, env, pid)  # a command reading its standard input
        assert busy.conn.recv() == ("started",) and busy.conn.poll(60)
        assert busy.conn.recv()[0] == "read"
        os.kill(pid, signal.SIGINT)  # as the client on Ctrl-C
        out, tag, value = [], None, None
        while busy.conn.poll(30):
            tag, value = busy.conn.recv()
            if tag == "exit":
                break
            out.append(value)
        assert (tag, value) == ("exit", 130), out
        assert _diffhep(["worker", "stop"], env).returncode == 0
    finally:
        if busy is not None:
            busy.conn.close()
        _end_workers(tmp_path)


def test_the_files_of_a_killed_worker_whose_pid_is_reused(tmp_path):
    """A worker killed (SIGKILL: its files left), its process id now another process's: no
    worker runs, so `worker start` starts one (it said the worker ran)."""
    import socket

    env = _env(tmp_path)
    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    probe = "from diffhep.cli import worker; print(worker.key())"
    k = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    k = k.stdout.strip()
    other = subprocess.Popen(["sleep", "60"])  # the process that has the id now
    try:
        with socket.socket(socket.AF_UNIX) as s:  # the killed worker's socket: nobody listens
            s.bind(str(d / f"{k}.sock"))
        (d / f"{k}.json").write_text(json.dumps({"pid": other.pid, "authkey": "ab" * 32}))
        start = _diffhep(["worker", "start", "--idle-timeout", "1"], env)
        assert start.returncode == 0, start.stderr
        assert start.stdout.startswith(b"worker started (pid "), start.stdout
        assert _pid(env) not in (None, other.pid)
        assert _diffhep(["worker", "stop"], env).returncode == 0
        assert other.poll() is None  # (not touched)
    finally:
        _end_workers(tmp_path)
        other.kill()
        other.wait()


def test_stop_removes_the_lock_files_older_versions_left(tmp_path):
    """An older diffhep left a lock file per key that ever started a worker: `worker stop`
    removes them, except one held (a worker of its key starting)."""
    from diffhep.cli import worker

    env = _env(tmp_path)
    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    for k in ("0" * 20, "1" * 20):
        (d / f"{k}.lock").touch()
    with worker._locked(d, "2" * 20):
        stop = _diffhep(["worker", "stop"], env)
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout == b"stopped 0 worker(s), left 0 running\n"
        assert os.listdir(d) == [f"{'2' * 20}.lock"]
    assert os.listdir(d) == []
