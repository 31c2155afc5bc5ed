"""A session's report, delivered without ever failing the session.

The run's rows are staged next to the report and merged into it (``tradeday.report``).
If another process holds the report file (a DuckDB shell or notebook, read-write or
read-only: both block a writer), the session does not wait past ``DELIVER_WAIT_S``: the
report is *deferred*, the session says who holds the file, and a background writer
(``python -m tradeday.report_delivery REPORT``, one per report) merges the staged rows as
soon as the file is free. If the rows cannot even be staged (unwritable directory, full
disk), the delivery *fails* with a message naming the path and the fix; the ledger keeps
every row either way.
"""

from __future__ import annotations

import errno
import fcntl
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic, sleep
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError

from tradeday import report
from tradeday.journal import JournalError, replay_journal
from tradeday.ledger import Ledger

DELIVER_WAIT_S = 10.0  # sessions ending together take turns; longer than that, defer
DRAIN_POLL_S = 1.0  # how often the background writer tries a held file
DRAIN_GIVE_UP_S = 24 * 3600.0  # then the next session, flatten-now or `tradeday report` does it


@dataclass(frozen=True)
class Delivery:
    """What became of a run's report: ``written``, ``deferred`` (``detail``: who holds the
    file) or ``failed`` (``detail``: what went wrong and how to fix it)."""

    path: Path
    status: Literal["written", "deferred", "failed"]
    detail: str = ""

    def message(self) -> str:
        if self.status == "written":
            return f"report written to {self.path}"
        if self.status == "deferred":
            return (
                f"report deferred: {self.path} is held by {self.detail}; it is written as "
                "soon as that process closes it"
            )
        return f"report not written: {self.detail}"


def storage_problem(path: Path, exc: BaseException) -> str:
    """What went wrong writing under ``path``, in words naming the path and the fix."""
    text = f"{type(exc).__name__}: {exc}"
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text:
        fix = "free some space there"
        what = f"the disk holding {path.parent} is full"
    elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a writable report_path or fix the directory's permissions"
        what = f"{path.parent} is not writable"
    else:
        fix = "fix the cause"
        what = f"writing {path} failed"
    return f"report_path {path}: {what} ({text}); {fix}"


LEDGER_KEEPS_IT = (
    ", then write the report from the ledger, which keeps every row (the end-of-day-report "
    "deployment for that date)"
)


def check_writable(path: str | Path) -> None:
    """Refuse, before a session trades, a report path it could never write.

    Creates the report's directory and a probe file in it, then removes the probe.
    """
    path = Path(path)
    probe = report.pending_dir(path) / ".probe"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise report.ReportError(storage_problem(path, exc)) from exc


def deliver_report(
    ledger_url: str, run_id: str, path: str | Path, wait_s: float = DELIVER_WAIT_S
) -> Delivery:
    """Write a run into the report, or defer it, or say why not; never raises."""
    path = Path(path)
    try:
        with Ledger(ledger_url) as ledger:
            replay_journal(ledger)  # rows the session could not write before it ended
            report.stage_run(ledger, run_id, path)
    except (SQLAlchemyError, KeyError, JournalError) as exc:  # unreachable, no such run
        problem = (
            f"run {run_id} could not be read from the ledger ({type(exc).__name__}: {exc}); "
            "write the report once it can (the end-of-day-report deployment for that date)"
        )
        return Delivery(path, "failed", problem)
    except Exception as exc:
        return Delivery(path, "failed", storage_problem(path, exc) + LEDGER_KEEPS_IT)
    try:
        report.merge_pending(path, wait_s)
    except report.ReportLocked as exc:
        start_background_writer(path)
        return Delivery(path, "deferred", exc.holder)
    except Exception as exc:
        return Delivery(path, "failed", storage_problem(path, exc) + LEDGER_KEEPS_IT)
    return Delivery(path, "written")


def start_background_writer(path: Path) -> None:
    """Start ``drain(path)`` in its own process, outliving this one (its log:
    ``<report>.pending/writer.log``)."""
    log = report.pending_dir(path) / "writer.log"
    with log.open("ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "tradeday.report_delivery", str(path.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _log(line: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}Z {line}", flush=True)


def drain(path: Path, poll_s: float = DRAIN_POLL_S, give_up_s: float = DRAIN_GIVE_UP_S) -> int:
    """Merge the staged runs into the report as soon as the file is free; 0 once none is left.

    One writer per report: a second one exits at once, and the first looks again after
    letting go, so a run staged meanwhile is never left behind.
    """
    folder = report.pending_dir(path)
    deadline = monotonic() + give_up_s
    held_by = ""
    while report.staged_runs(path):
        with (folder / ".writer.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another background writer has it
            while report.staged_runs(path):
                try:
                    for run_id in report.merge_pending(path, wait_s=0):
                        _log(f"wrote {run_id} into {path}")
                except report.ReportLocked as exc:
                    if exc.holder != held_by:
                        held_by = exc.holder
                        _log(f"{path} is held by {held_by}: waiting")
                    if monotonic() >= deadline:
                        _log(f"gave up after {give_up_s:.0f} s; the next write merges the rest")
                        return 1
                    sleep(poll_s)
    return 0


if __name__ == "__main__":
    sys.exit(drain(Path(sys.argv[1])))
