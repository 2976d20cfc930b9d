"""Ctrl-C ends a command with exit status 130 (as a shell reports SIGINT), not 1, which
means that a fit did not converge: in the command's own process and through the worker.
Click's own handling exited 1 (a new user's trial: scripts could not tell them apart)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from diffhep.errors import EXIT_INTERRUPTED
from diffhep.stats.workspace import example_spec

SRC = str(Path(__file__).parents[1] / "src")

#: The command's set-up receives SIGINT (Python's default handler: KeyboardInterrupt there;
#: set explicitly, as at a terminal: pytest-xdist's workers, and so their children, ignore it)
INTERRUPTED = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import diffhep.cli.common as common
common.setup = lambda: signal.raise_signal(signal.SIGINT)
from diffhep.cli import main
sys.argv = ["diffhep", *sys.argv[1:]]
main()
"""


def test_ctrl_c_in_a_command_exits_130(tmp_path):
    ws = tmp_path / "ws.json"
    ws.write_text(json.dumps(example_spec()))
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_NO_WORKER": "1"}
    for args in (["cls", str(ws)], ["fit", str(ws)], ["exclusion", str(ws), str(ws)]):
        proc = subprocess.run([sys.executable, "-c", INTERRUPTED, *args], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == EXIT_INTERRUPTED == 130, (args, proc.stderr[-2000:])
        assert "Aborted!" in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stdout == ""


def test_ctrl_c_while_the_worker_runs_the_command_exits_130(tmp_path, monkeypatch, capsys):
    """The client passes Ctrl-C on to the worker (SIGINT to its process: here a stand-in)
    and exits 130."""
    from multiprocessing.connection import Listener

    from diffhep.cli import worker

    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("DIFFHEP_WORKER_DIR", str(d))
    monkeypatch.delenv("DIFFHEP_NO_WORKER", raising=False)
    stand_in = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal("
                                 "signal.SIGINT, signal.SIG_DFL); print('ready', flush=True); "
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    # (its SIGINT handler in place: under pytest-xdist it starts with SIGINT ignored)
    assert stand_in.stdout.readline() == "ready\n"
    k = worker.key()
    authkey = os.urandom(16)
    listener = Listener(str(d / f"{k}.sock"), "AF_UNIX", authkey=authkey)
    (d / f"{k}.json").write_text(json.dumps({"pid": stand_in.pid, "authkey": authkey.hex()}))
    hold = threading.Event()
    main = threading.main_thread().ident

    def serve():  # the worker: the command started and asks for input; once the client
        conn = listener.accept()  # answered it waits in its relay: Ctrl-C there
        listener.close()
        conn.recv()
        conn.send(("started",))
        conn.send(("read", 1))
        conn.recv()
        signal.pthread_kill(main, signal.SIGINT)
        hold.wait(30)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # (xdist ignores it)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x")))
    thread.start()
    try:
        code = worker.forward(["cls", "ws.json"])
    finally:
        signal.signal(signal.SIGINT, handler)
        hold.set()
        thread.join(10)
        try:
            ended = stand_in.wait(10)
        except subprocess.TimeoutExpired:  # it did not get SIGINT: ended here
            ended = None
            stand_in.kill()
            stand_in.wait(10)
        stand_in.stdout.close()
    assert code == EXIT_INTERRUPTED
    assert ended == -signal.SIGINT  # the worker's process got SIGINT
    assert "Aborted!" in capsys.readouterr().err


#: Ctrl-C while the client connects to the worker or waits for it to start
FORWARDING = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import diffhep.cli.worker as worker
def forward(argv):
    signal.raise_signal(signal.SIGINT)
worker.forward = forward
from diffhep.cli import main
sys.argv = ["diffhep", *sys.argv[1:]]
main()
"""


def test_ctrl_c_before_the_worker_answers_exits_130_without_a_traceback(tmp_path):
    """A review: Ctrl-C while the client waited for the worker's first answer (up to 5 s) or
    for a worker to start gave a KeyboardInterrupt traceback (outside click's handling)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("DIFFHEP_NO_WORKER", None)
    proc = subprocess.run([sys.executable, "-c", FORWARDING, "cls", str(tmp_path / "ws.json")],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-2000:]
    assert "Aborted!" in proc.stderr and "Traceback" not in proc.stderr


def test_an_interrupted_training_says_how_to_resume(monkeypatch, tmp_path):
    """A new user's trial: Ctrl-C in `diffhep train` printed only 'Aborted!'."""
    from click.testing import CliRunner

    from diffhep.cli import main
    from diffhep.runs import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_run", interrupted)
    config = Path(__file__).parents[1] / "examples" / "blobs_cls.yaml"
    result = CliRunner().invoke(main, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "the same command resumes from the last one" in result.stderr
    assert str(tmp_path / "run") in result.stderr and "Aborted!" in result.stderr
