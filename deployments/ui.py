"""``tradeday ui`` (``make ui``): one command to the Prefect UI with tradeday's deployments.

It starts a Prefect server on 127.0.0.1 with its own ``PREFECT_HOME`` (``data/prefect`` unless
set), then ``tradeday serve`` against it, prints the UI's URL once the deployments are served,
and on Ctrl-C or SIGTERM stops serve first and the server second (the other order leaves serve
waiting on a server that is gone). Both children run in their own process group, so a
terminal's Ctrl-C reaches only this process, which stops them in that order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import FrameType

DEFAULT_PORT = 4200
"""Prefect's own default, so ``tradeday demo`` finds the server; any free port if taken."""
SERVED = "Your deployments are being served"
STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 40.0


class Stop(Exception):
    """Ctrl-C or SIGTERM arrived."""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_port(port: int | None) -> int:
    """``port`` if given (refused if taken), else 4200 if free, else one the OS picks."""
    if port is not None:
        if not _port_free(port):
            sys.exit(f"tradeday ui: port {port} on 127.0.0.1 is in use; choose another --port")
        return port
    if _port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2.0) as reply:
            return reply.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _echo_until_served(proc: subprocess.Popen, served: threading.Event) -> None:
    """Pass serve's output through to this terminal and note when it serves."""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if SERVED in line:
            served.set()


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def run_ui(port: int | None, home: Path, prefect_yaml: Path | None) -> int:
    """Start both, print the URL, wait for Ctrl-C/SIGTERM or a child's exit; stop both."""
    port = choose_port(port)
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,  # a port other than 4200 needs it for the UI
        "DO_NOT_TRACK": os.environ.get("DO_NOT_TRACK", "1"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get(
            "PREFECT_SERVER_ANALYTICS_ENABLED", "false"
        ),
    }
    log = home / "server.log"
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    children: list[subprocess.Popen] = []
    try:
        print(f"tradeday ui: starting a Prefect server ({api_url}, home {home}, log {log})")
        prefect = str(Path(sys.executable).parent / "prefect")
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        children.append(server)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(api_url):
            if server.poll() is not None:
                print(f"tradeday ui: the Prefect server exited; see {log}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"tradeday ui: no Prefect server after {STARTUP_TIMEOUT_S:.0f} s; see {log}")
                return 1
            time.sleep(0.5)
        command = [str(Path(sys.executable).parent / "tradeday"), "serve"]
        if prefect_yaml is not None:
            command += ["--prefect-yaml", str(prefect_yaml)]
        serve = subprocess.Popen(
            command,
            env={**env, "PYTHONUNBUFFERED": "1"},  # its lines reach the terminal as printed
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        children.append(serve)
        served = threading.Event()
        threading.Thread(target=_echo_until_served, args=(serve, served), daemon=True).start()
        while not served.wait(0.5):
            if serve.poll() is not None:
                print("tradeday ui: tradeday serve exited", file=sys.stderr)
                return 1
        print(f"\ntradeday ui: the Prefect UI is at http://127.0.0.1:{port}  (Ctrl-C stops it)")
        sys.stdout.flush()
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("tradeday ui: a child process exited; stopping", file=sys.stderr)
        return 1
    except Stop as stop:
        print(f"tradeday ui: {stop}; stopping tradeday serve, then the Prefect server")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not orphan the server
        for child in reversed(children):  # serve first, then the server
            _stop(child)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
