"""The docs run: every shell command, SQL query and Python example in docs/*.md is executed.

Convention for fenced blocks in docs/*.md (also in docs/architecture.md, "Docs conventions").
The info string after the opening fence is ``LANG [TAG] [key=value ...]``:

    ```sh test              bash, run in the doc's sandbox; must exit 0
    ```python test          run by the sandbox's .venv/bin/python (stdin, cwd = the repo)
    ```sql test             DuckDB SQL, run against a report written by real replayed sessions
    ```LANG file=PATH       not run: written to PATH (relative to the repo) when reached
    ```python edit=PATH     one top-level assignment; replaces the assignment to the same name
                            in PATH (a tuple or list must keep every item PATH has now)
    ```LANG untested        shown, not run; the text paragraph just before it says why,
                            starting "Not tested here:" (the reason is visible to readers)

Blocks in sh/bash/shell/console/python/py/sql must carry ``test``, ``untested``, ``file=`` or
``edit=``; other languages (text, toml, ini, json, yaml, mermaid, ...) are free unless they
carry ``file=``. Options: ``timeout=SECONDS`` (default 180); for ``sh test``: ``background``
(runs for the rest of the doc, then gets SIGTERM) and ``port=N`` (wait until 127.0.0.1:N
accepts connections before the next block).

The sandbox, one per doc: a copy of the working tree (tracked and untracked files, not
ignored ones) in a temp dir, made a git repository with one commit, set up the way ``make``
sets up a fresh clone (``.venv`` through ``uv sync --locked``). Blocks run in document order,
each in a fresh bash (``cd`` and ``export`` do not carry over), cwd = the copy, with PATH
starting at ``.venv/bin``, ``PREFECT_API_URL`` pointing at the test Prefect server and
``PREFECT_HOME`` inside the temp dir; no Alpaca keys are set. ``../NAME`` paths stay in the
temp dir. Keep tested blocks short: this whole file should run in about two minutes.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SHARED_VENV_BIN = Path(sys.executable).parent

COMMAND_LANGS = {"sh", "bash", "shell", "console", "python", "py", "sql"}
RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
DEFAULT_TIMEOUT = 180.0
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    tags: set[str]
    options: dict[str, str]
    body: str
    before: str  # the text paragraph just before the fence

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout", DEFAULT_TIMEOUT))


def parse(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with its tags and options."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    paragraph: list[str] = []  # the text paragraph before the next fence
    last_text = ""
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                paragraph.append(lines[i].strip())
            elif paragraph:
                last_text, paragraph = " ".join(paragraph), []
            i += 1
            continue
        if paragraph:
            last_text, paragraph = " ".join(paragraph), []
        fence, indent = m["fence"], m["indent"]
        words = m["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.name}:{i + 1}: unclosed code fence")
        blocks.append(
            Block(
                doc=path.name,
                line=i + 1,
                lang=words[0].lower() if words else "",
                tags={w for w in words[1:] if "=" not in w},
                options=dict(w.split("=", 1) for w in words[1:] if "=" in w),
                body="\n".join(body) + "\n",
                before=last_text,
            )
        )
        last_text = ""
        i = j + 1
    return blocks


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in parse(path)]


# -- the convention itself -------------------------------------------------------------------


def test_docs_exist_and_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in ("architecture.md", "models.md", "operations.md", "data.md"):
        assert (DOCS / name).exists(), f"docs/{name} is missing"
        assert f"(docs/{name})" in readme, f"README.md does not link docs/{name}"


def test_every_command_block_is_tagged():
    problems = []
    for b in all_blocks():
        kinds = b.tags & {"test", "untested"}
        writes = {"file", "edit"} & b.options.keys()
        if b.lang in COMMAND_LANGS and len(kinds) + len(writes) != 1:
            problems.append(
                f"{b.where}: ```{b.lang} needs exactly one of test/untested/file=/edit="
            )
        if "test" in b.tags and b.lang not in (*RUNNABLE, "sql"):
            problems.append(f"{b.where}: cannot run ```{b.lang} blocks")
        if "edit" in b.options and b.lang not in ("python", "py"):
            problems.append(f"{b.where}: edit= works on python blocks only")
        if "untested" in b.tags and "not tested" not in b.before.lower():
            problems.append(
                f'{b.where}: an untested block needs a visible "Not tested here: <why>" paragraph'
                f" just before it (found {b.before!r})"
            )
        unknown = b.tags - {"test", "untested", "background"}
        unknown_opts = b.options.keys() - {"file", "edit", "timeout", "port"}
        if unknown or unknown_opts:
            problems.append(f"{b.where}: unknown tags {sorted(unknown | unknown_opts)}")
    assert not problems, "\n".join(problems)


def test_relative_links_resolve():
    link = re.compile(r"\]\((?!https?://|mailto:|#)([^)#\s]+)")
    missing = []
    for path in [ROOT / "README.md", *doc_files()]:
        text = path.read_text()
        for target in link.findall(text):
            if not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not missing, "broken links:\n" + "\n".join(missing)


def test_systemd_units_verify(tmp_path):
    """The shipped unit files pass ``systemd-analyze verify`` against a real install."""
    units = sorted((ROOT / "deployments" / "systemd").glob("*.service"))
    names = {u.name for u in units}
    assert {
        "tradeday-prefect-server.service",
        "tradeday-worker.service",
        "tradeday-serve.service",
    } <= names
    for unit in units:
        text = unit.read_text()
        assert re.search(r"^Restart=(always|on-failure)$", text, re.M), unit.name
        assert "EnvironmentFile=" in text, unit.name
        # a stop must leave the session time to flatten (it has 30 s; Prefect's own bound)
        stop = re.search(r"^TimeoutStopSec=(\d+)$", text, re.M)
        assert stop and int(stop[1]) >= 45, f"{unit.name}: TimeoutStopSec >= 45 s"
        assert not re.search(r"^KillMode=(process|none)$", text, re.M), unit.name
    # the API takes no request without the auth string, and only loopback hears it
    server = (ROOT / "deployments" / "systemd" / "tradeday-prefect-server.service").read_text()
    assert "--host 127.0.0.1" in server
    assert "EnvironmentFile=/etc/tradeday/prefect-server.env" in server  # required, no "-"
    assert 'test -n "$$PREFECT_SERVER_API_AUTH_STRING"' in server
    examples = ROOT / "deployments" / "systemd"
    assert (
        "\nPREFECT_SERVER_API_AUTH_STRING=\n"
        in (examples / "prefect-server.env.example").read_text()
    )
    assert "\nPREFECT_API_AUTH_STRING=\n" in (examples / "tradeday.env.example").read_text()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: only the static checks ran")
    # /opt/tradeday is where operations.md installs tradeday: point it at this checkout
    for unit in units:
        text = unit.read_text().replace("/opt/tradeday/.venv/bin", str(SHARED_VENV_BIN))
        (tmp_path / unit.name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # only complaints about these units count (the host's own units are not ours)
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "tradeday" in ln]
    assert not ours, "\n".join(ours)
    for unit in units:
        exec_start = re.search(r"^ExecStart=(.+)$", unit.read_text(), re.M)[1].split()
        binary = SHARED_VENV_BIN / Path(exec_start[0]).name
        # the subcommand exists and takes these options (help exits 0 without starting)
        proc = subprocess.run(
            [str(binary), *exec_start[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
        )
        assert proc.returncode == 0, f"{unit.name}: {' '.join(exec_start)}\n{proc.stderr[-2000:]}"


# -- running the blocks ------------------------------------------------------------------------


@dataclass
class Sandbox:
    root: Path  # the temp dir; the repo copy is root / "tradeday"
    env: dict[str, str]
    background: list[tuple[Block, subprocess.Popen]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # what each block printed, for the report

    @property
    def repo(self) -> Path:
        return self.root / "tradeday"


def make_sandbox(tmp: Path, api_url: str) -> Sandbox:
    """A fresh clone of the working tree, set up as ``make`` does it."""
    repo = tmp / "tradeday"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file() and not name.startswith(("data/", ".venv/")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    git = ["git", "-c", "user.name=docs", "-c", "user.email=docs@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "docs sandbox"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True, timeout=60)
    # the Makefile's set-up: a venv holding uv, then `uv sync --locked` (uv is linked here
    # instead of pip-installed: same binary, no index access)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", ".venv"], cwd=repo, check=True, timeout=120
    )
    (repo / ".venv" / "bin" / "uv").symlink_to(SHARED_VENV_BIN / "uv")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "APCA_", "ALPACA_", "VIRTUAL_ENV", "PYTHONPATH", "PYTEST"))
        # bytecode is written (into the sandbox's own .venv), as on a user's machine: with
        # PYTHONDONTWRITEBYTECODE every process would compile Prefect again (~5 s each)
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        PATH=f"{repo / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_LOGGING_LEVEL="WARNING",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    proc = subprocess.run(
        ["make", ".venv/.synced-stamp"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"sandbox set-up failed:\n{proc.stdout}\n{proc.stderr}"
    return Sandbox(tmp, env)


def _target(sandbox: Sandbox, block: Block, key: str) -> Path:
    path = (sandbox.repo / block.options[key]).resolve()
    assert path.is_relative_to(sandbox.root), f"{block.where}: {key}= leaves the sandbox"
    return path


def write_file(sandbox: Sandbox, block: Block) -> None:
    path = _target(sandbox, block, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.body)


def apply_edit(sandbox: Sandbox, block: Block) -> None:
    """Replace the top-level assignment to the block's name in the target file."""
    path = _target(sandbox, block, "edit")
    (new,) = ast.parse(block.body).body
    assert isinstance(new, ast.Assign | ast.AnnAssign), f"{block.where}: not an assignment"
    name = (new.targets[0] if isinstance(new, ast.Assign) else new.target).id
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    for old in ast.parse(source).body:
        targets = old.targets if isinstance(old, ast.Assign) else [getattr(old, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            break
    else:
        raise AssertionError(f"{block.where}: {path.name} has no top-level {name} = ...")
    try:
        before, after = ast.literal_eval(old.value), ast.literal_eval(new.value)
    except ValueError:
        before = after = None
    if isinstance(before, tuple | list):
        dropped = [item for item in before if item not in after]
        assert not dropped, (
            f"{block.where}: the docs' {name} drops {dropped} that {block.options['edit']} "
            f"has now: update the example"
        )
    lines[old.lineno - 1 : old.end_lineno] = [block.body]
    path.write_text("".join(lines))


def _wait_for_port(proc: subprocess.Popen, port: int, timeout: float, block: Block) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{block.where}: background command exited {proc.returncode}"
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"{block.where}: nothing listens on port {port} after {timeout:.0f} s")


def run_block(sandbox: Sandbox, block: Block) -> str:
    """Run one ``sh test``/``python test`` block; returns its output."""
    kind = RUNNABLE[block.lang]
    if kind == "sh":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.body]
        stdin = None
    else:
        cmd = [str(sandbox.repo / ".venv" / "bin" / "python"), "-"]
        stdin = block.body
    if "background" in block.tags:
        assert kind == "sh", f"{block.where}: only sh blocks run in the background"
        log = (sandbox.root / f"background-{block.line}.log").open("w")
        proc = subprocess.Popen(
            cmd,
            cwd=sandbox.repo,
            env=sandbox.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        sandbox.background.append((block, proc))
        if "port" in block.options:
            _wait_for_port(proc, int(block.options["port"]), block.timeout, block)
        return ""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=sandbox.repo,
            env=sandbox.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=block.timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{block.where}: still running after {block.timeout:.0f} s\n{block.body}\n"
            f"{(exc.stdout or b'')[-3000:]!r}"
        ) from None
    out = proc.stdout + proc.stderr
    sandbox.log.append(
        f"--- {block.where} ({time.monotonic() - t0:.1f} s)\n{block.body}{out[-1500:]}"
    )
    assert proc.returncode == 0, (
        f"{block.where} exited {proc.returncode}:\n{block.body}\n--- output ---\n{out[-4000:]}"
    )
    return out


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so nothing outlives a killed run."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_background(sandbox: Sandbox) -> None:
    """SIGTERM to each background block's process tree, SIGKILL after 20 s."""
    import psutil

    for block, proc in reversed(sandbox.background):
        if proc.poll() is None:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.terminate()
            _, alive = psutil.wait_procs(tree, timeout=20)
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            proc.wait(10)
        elif proc.returncode != 0:
            log = (sandbox.root / f"background-{block.line}.log").read_text()
            raise AssertionError(f"{block.where}: background command failed:\n{log[-3000:]}")


def runs_something(path: Path) -> bool:
    return any(
        ("test" in b.tags and b.lang != "sql") or "file" in b.options or "edit" in b.options
        for b in parse(path)
    )


@pytest.fixture(scope="module")
def api_url(prefect_harness) -> str:
    """The test Prefect server's API, for the sandbox's processes."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


# Deployments and work pools live on the one test Prefect server all docs share: from a doc's
# first block that registers or runs deployments to its last one, it holds this lock.
SHARED_SERVER = re.compile(r"prefect\b.*\b(deploy|deployment|work-pool)\b")
_server_lock = threading.Lock()


def run_doc(path: Path, tmp: Path, api_url: str) -> Sandbox:
    blocks = [b for b in parse(path) if b.options.keys() & {"file", "edit"} or "test" in b.tags]
    shared = [i for i, b in enumerate(blocks) if "test" in b.tags and SHARED_SERVER.search(b.body)]
    sandbox = make_sandbox(tmp, api_url)
    holding = False
    try:
        for i, block in enumerate(blocks):
            if shared and i == shared[0]:
                _server_lock.acquire()
                holding = True
            if "file" in block.options:
                write_file(sandbox, block)
            elif "edit" in block.options:
                apply_edit(sandbox, block)
            elif block.lang != "sql":
                run_block(sandbox, block)
            if holding and i == shared[-1]:
                _server_lock.release()
                holding = False
    finally:
        if holding:
            _server_lock.release()
        stop_background(sandbox)
    check = POST_CHECKS.get(path.name)
    if check is not None:
        check(sandbox)
    return sandbox


RUN_DOCS = [p for p in doc_files() if runs_something(p)]


@pytest.fixture(scope="module")
def doc_runs(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every doc's blocks, the docs side by side (each in its own sandbox): a doc mostly
    waits on subprocesses, so three at a time take about half the time of one after another.
    Maps the doc's name to its Sandbox, or to the exception that stopped it."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path: Path) -> object:
        tmp = tmp_path_factory.mktemp(path.stem)
        try:
            return run_doc(path, tmp, api_url)
        except BaseException as exc:  # reported by the doc's own test
            return exc

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(one, RUN_DOCS)
        return {p.name: r for p, r in zip(RUN_DOCS, results, strict=True)}


# the first of these tests sets up doc_runs, which runs every doc: its time counts there
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("path", RUN_DOCS, ids=lambda p: p.name)
def test_doc_commands_run(path: Path, doc_runs: dict[str, object]):
    result = doc_runs[path.name]
    if isinstance(result, BaseException):
        raise result
    print("\n".join(result.log))


# -- what the walkthroughs must have achieved ----------------------------------------------------


def check_models_walkthrough(sandbox: Sandbox) -> None:
    """models.md added a model, registered it (in the repo, then from its own package) and
    replayed real data with it: each replay ran to completion and traded."""
    import json

    from sqlalchemy import create_engine, text

    (snippet,) = [
        b for b in parse(DOCS / "models.md") if b.options.get("file", "").startswith("models/")
    ]
    name = re.search(r'name: Literal\["(\w+)"\]', snippet.body)[1]
    engine = create_engine(f"sqlite:///{sandbox.repo / 'data' / 'ledger.sqlite'}")
    try:
        with engine.connect() as con:
            rows = con.execute(
                text("SELECT status, counters FROM runs WHERE model = :m"), {"m": name}
            ).all()
    finally:
        engine.dispose()
    assert len(rows) >= 2, f"expected the in-repo and the entry-point replay of {name}: {rows}"
    for status, counters in rows:
        counters = json.loads(counters) if isinstance(counters, str) else counters
        assert status == "completed", rows
        assert counters["ticks"] > 0 and counters["orders"] > 0, counters
        assert counters["fills"] == counters["orders"], counters
    # the last replay really came through the entry point, not the repo's models/
    assert not (sandbox.repo / "models" / f"{snippet.options['file'].split('/')[-1]}").exists()
    assert name not in (sandbox.repo / "models" / "registry.py").read_text()


POST_CHECKS = {"models.md": check_models_walkthrough}


# -- SQL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_report(prefect_harness, tmp_path_factory) -> Path:
    """A DuckDB report written by real replayed sessions: two models on recorded ES trades,
    and two January-2023 days of buy_close_sell_open holding AAPL overnight."""
    import models
    from flows.session import trading_session
    from tradeday.config import parse_session_config

    out = tmp_path_factory.mktemp("docs-report")
    paths = {
        "ledger_url": f"sqlite:///{out / 'ledger.sqlite'}",
        "report_path": str(out / "r.duckdb"),
    }
    recording = ROOT / "tests" / "fixtures" / "es-2013-09-03-open.parquet"
    others = [n for n in models.names() if n != "volume_modulo"][:1]
    for name in ["volume_modulo", *others]:
        config = parse_session_config(
            {
                "model": {"name": name},
                "symbols": ["ES"],
                "feed": {"recording": str(recording)},
                **paths,
            }
        )
        trading_session(config=config, session_date=date(2013, 9, 3))
    # two days of a model that holds overnight: one night for the overnight SQL
    hold = {
        "model": {"name": "buy_close_sell_open", "close_shares": 10},
        "symbols": ["AAPL"],
        "close_buffer_minutes": 0,
        **paths,
    }
    for day in (date(2023, 1, 11), date(2023, 1, 12)):
        trading_session(config=parse_session_config(hold), session_date=day)
    return out / "r.duckdb"


def sql_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang == "sql" and "test" in b.tags]


@pytest.mark.parametrize("block", sql_blocks(), ids=lambda b: f"{b.doc}:{b.line}")
def test_doc_sql_runs(block: Block, docs_report: Path):
    import duckdb

    con = duckdb.connect(str(docs_report), read_only=True)
    try:
        rows = con.execute(block.body).fetchall()
    except duckdb.Error as exc:
        raise AssertionError(f"{block.where}: {exc}\n{block.body}") from None
    finally:
        con.close()
    print(f"--- {block.where}: {len(rows)} rows\n{rows[:5]}")
