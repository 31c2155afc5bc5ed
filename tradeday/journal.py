"""The local journal: batches a session could not get into the ledger before it ended.

When the ledger is still unreachable at shutdown, the session's durable writer appends
its unwritten batches here, one JSON line per :class:`~tradeday.records.Batch`, and
fsyncs before the process exits. The next session's start, ``flatten-now`` and the
end-of-day report replay every journal into the ledger before they read it. A batch
lands exactly once: the ledger records each ``batch_id`` in the batch's own transaction
and skips one it already has, so a replay cut short (or run twice) doubles nothing.

One file per run (``<run_id>.jsonl``) in a directory next to a SQLite ledger
(``data/ledger.sqlite`` → ``data/ledger.sqlite.rows-journal/``), or under
``data/ledger-journal/<host>-<port>-<database>/`` for a server database. Writers and
replayers take an exclusive ``flock`` on a file, so a replay never reads one half written.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec
from sqlalchemy.engine import make_url

from tradeday.ledger import Ledger, sqlite_file
from tradeday.records import Batch

log = logging.getLogger(__name__)

SERVER_JOURNALS = Path("data") / "ledger-journal"


class Entry(msgspec.Struct):
    """One journal line: a batch and the run it belongs to."""

    run_id: str
    batch: Batch


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Entry).decode


def journal_dir(ledger_url: str) -> Path:
    """Where the journals of the ledger at ``ledger_url`` live (see the module docstring)."""
    if (db := sqlite_file(ledger_url)) is not None:
        return db.with_name(f"{db.name}.rows-journal")
    url = make_url(ledger_url)
    slug = re.sub(
        r"[^A-Za-z0-9_.-]+", "_", f"{url.host or 'local'}-{url.port or ''}-{url.database}"
    )
    return SERVER_JOURNALS / slug


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def for_ledger(cls, ledger_url: str) -> Journal:
        return cls(journal_dir(ledger_url))

    def path(self, run_id: str) -> Path:
        return self.directory / f"{run_id}.jsonl"

    def append(self, run_id: str, batches: Sequence[Batch]) -> Path:
        """Append ``batches`` durably: written, fsynced (and the new file's directory too)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(run_id)
        created = not path.exists()
        data = b"".join(_encode(Entry(run_id, b)) + b"\n" for b in batches)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        if created:
            _fsync_dir(self.directory)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.jsonl")) if self.directory.is_dir() else []

    def replay(self, ledger: Ledger) -> int:
        """Write every journaled batch into ``ledger``; returns how many landed now.

        A file is removed once all its batches are in the ledger. One that another
        process holds (being written or replayed) is left for the next replay. A ledger
        error propagates, and the file stays for the next try.
        """
        landed = 0
        for path in self.pending():
            landed += self._replay_file(ledger, path)
        return landed

    def _replay_file(self, ledger: Ledger, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # another process replayed it first
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            if not path.exists():  # replayed and removed while we waited for the lock
                return 0
            with os.fdopen(os.dup(fd), "rb") as f:
                lines = f.read().splitlines()
            entries = []
            for n, line in enumerate(lines, 1):
                try:
                    entries.append(_decode(line))
                except msgspec.DecodeError as exc:
                    # a line cut short by a crash while appending: keep the file for a person
                    bad = path.with_suffix(".jsonl.unreadable")
                    path.rename(bad)
                    raise JournalError(
                        f"{path} line {n} is unreadable ({exc}); moved to {bad}, nothing of it "
                        "was replayed: fix or remove that line, rename it back to .jsonl and "
                        "run flatten-now"
                    ) from None
            landed = sum(ledger.write(e.batch, e.run_id) for e in entries)
            path.unlink()
            _fsync_dir(path.parent)
        finally:
            os.close(fd)
        skipped = len(entries) - landed
        log.warning(
            "ledger journal %s replayed: %d batches (%d rows) written%s",
            path.name,
            landed,
            sum(e.batch.rows() for e in entries),
            f", {skipped} already in the ledger" if skipped else "",
        )
        return landed


class JournalError(RuntimeError):
    """A journal file that cannot be read back; its message says what to do."""


def replay_journal(ledger: Ledger) -> int:
    """Replay the journals of ``ledger`` into it: what every reader of the ledger does first."""
    return Journal.for_ledger(ledger.url).replay(ledger)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
