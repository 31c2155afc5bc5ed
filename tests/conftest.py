"""Shared fixtures: one Prefect test server per session, recorded data, temp ledgers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OPEN_FIXTURE = FIXTURES / "es-2013-09-03-open.parquet"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real Prefect API (temporary server on a temp database), shared by the whole run."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def open_fixture() -> Path:
    """The first 5,000 regular-hours ES trades of 2013-09-03 (real CME prints)."""
    return OPEN_FIXTURE


@pytest.fixture
def session_paths(tmp_path: Path) -> dict[str, str]:
    return {
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "report_path": str(tmp_path / "reports.duckdb"),
    }


# -- Real servers for the orchestration tests (test_deployments, test_cancel, test_ui_browser,
# test_scale_out): started on 127.0.0.1 by the tests, stopped by them, every wait bounded.

BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEPLOYMENTS = (
    "daily-session",
    "hub-volume-modulo",
    "hub-mean-reversion",
    "hub-opening-momentum",
    "replay-day",
    "replay-range",
    "flatten-now",
    "end-of-day-report",
    "sweep",
)
HUB_DEPLOYMENTS = DEPLOYMENTS[1:4]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; a bound instead of a hang."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return result


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class RetryOn503(httpx.HTTPTransport):
    """Prefect answers 503 for retryable errors (a busy SQLite, say); its own client retries."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(8):
            response = super().handle_request(request)
            if response.status_code != 503 or attempt == 7:
                break
            response.close()
            time.sleep(0.25 * 2**attempt)
        return response


@dataclass
class PrefectServer:
    api_url: str
    env: dict[str, str]
    home: Path
    startup_s: float

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def api(self) -> httpx.Client:
        """Plain REST calls, as the UI makes them: independent of in-process Prefect settings.

        With ``PREFECT_API_AUTH_STRING`` in the server's env, they carry it as Prefect's
        clients do (HTTP Basic, the whole ``user:password`` string base64-encoded)."""
        auth = self.env.get("PREFECT_API_AUTH_STRING")
        headers = {"Authorization": f"Basic {b64encode(auth.encode()).decode()}"} if auth else {}
        return httpx.Client(
            base_url=self.api_url, headers=headers, timeout=30.0, transport=RetryOn503()
        )


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def run_prefect_server(home: Path, port: int | None = None, **env: str) -> Iterator[PrefectServer]:
    """``prefect server start`` on ``port`` (default a free one) of 127.0.0.1 with its own
    PREFECT_HOME; the same home and port again restart the same server."""
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port or free_port()}/api"
    full_env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **env,
    }
    port = api_url.rsplit(":", 1)[1].removesuffix("/api")
    log = home / f"server-{time.time_ns()}.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
        env=full_env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: proc.poll() is not None or _healthy(api_url), 400, "prefect server")
        assert proc.poll() is None, log.read_text()[-3000:]
        server = PrefectServer(api_url, full_env, home, time.monotonic() - t0)
        print(f"\nprefect server {api_url} up in {server.startup_s:.1f} s")
        yield server
    finally:
        stop_process(proc)


@contextmanager
def run_tradeday_serve(server: PrefectServer, cwd: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``tradeday serve [args]`` against ``server``; stopped before the server.

    No ``PREFECT_RUNNER_POLL_FREQUENCY``: serve's own one-second poll (deployments.POLL_SECONDS)
    is what starts the runs here, as for users."""
    log = cwd / "serve.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "tradeday"), "serve", *args],
        env={k: v for k, v in server.env.items() if k != "PREFECT_RUNNER_POLL_FREQUENCY"},
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"tradeday serve exited:\n{log.read_text()[-3000:]}")
        return "Your deployments are being served" in log.read_text()

    try:
        wait_until(ready, 400, "tradeday serve")
        print(f"\ntradeday serve up in {time.monotonic() - t0:.1f} s")
        yield proc
    finally:
        stop_process(proc, 40.0)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server (SQLite) shared by the orchestration and browser tests."""
    with run_prefect_server(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


@pytest.fixture(scope="session")
def serve_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the shared ``tradeday serve`` runs; its output is ``serve.log`` there."""
    return tmp_path_factory.mktemp("serve")


class Serving:
    """The shared ``tradeday serve``, restartable (the browser test restarts it)."""

    def __init__(self, server: PrefectServer, cwd: Path) -> None:
        self.server = server
        self.cwd = cwd
        self._running = ExitStack()

    def start(self) -> None:
        self._running.enter_context(run_tradeday_serve(self.server, self.cwd))

    def stop(self) -> None:
        self._running.close()

    def restart(self) -> None:
        self.stop()
        self._running = ExitStack()
        self.start()


@pytest.fixture(scope="session")
def serving(prefect_server: PrefectServer, serve_dir: Path) -> Iterator[Serving]:
    """``tradeday serve`` of prefect.yaml's deployments on ``prefect_server``."""
    serving = Serving(prefect_server, serve_dir)
    serving.start()
    try:
        yield serving
    finally:
        serving.stop()


@pytest.fixture(scope="session")
def served(serving: Serving) -> PrefectServer:
    """The deployments of prefect.yaml served by ``tradeday serve`` on ``prefect_server``."""
    return serving.server


@pytest.fixture(scope="session")
def start_prefect_server() -> Callable[..., Any]:
    """For a test that needs a server of its own (e.g. on PostgreSQL): ``with start(home, **env)``."""
    return run_prefect_server


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster; ``stop``/``start`` are pg_ctl's, for outage tests."""

    url: str  # SQLAlchemy URL of its ``postgres`` database
    pg_ctl: list[str]
    options: str
    log: Path

    def start(self) -> None:
        subprocess.run(
            [*self.pg_ctl, "-o", self.options, "-l", str(self.log), "start"],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def stop(self) -> None:
        subprocess.run([*self.pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=90)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL 15 cluster in a temp dir, stopped and removed at the end."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN}")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="tradeday-pg-"))  # not under pytest's 0700 root dir
    if as_postgres:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = PostgresCluster(
        url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        pg_ctl=[*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60"],
        options=f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        log=data / "log",
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The SQLAlchemy URL of the throwaway cluster's ``postgres`` database."""
    return postgres_cluster.url
