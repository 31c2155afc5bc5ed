"""Every day the hub streams, kept for replay in the project's Parquet recording format.

A live day used to vanish: only ``tradeday record`` (REST, after the fact) kept data. The hub
sees every upstream event of every session, so it writes them down. The hub's loop only
puts each frame's messages on a queue; a recorder thread turns them into rows and, every
``flush_s``, writes one part file per day: ``ROOT/YYYY-MM-DD/<first ts>-<write ns>.parquet``,
the day in America/New_York. A part is written under a dot-name and renamed, so every file
on disk is whole: a kill loses at most the last interval. A day's directory is a recording
(readers skip dot-files and read parts in name order, which is time order):
``recording.load(dir)`` and a replay session's ``feed.recording`` take it like a bundled
file. A part that fails to write (a full disk) keeps its rows for the next interval.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tradeday import recording
from tradeday.calendar import EXCHANGE_TZ
from tradeday.decode import parse_rfc3339_ns
from tradeday.hub.upstream import Item
from tradeday.replay.wire import FIELDS

log = logging.getLogger(__name__)


@dataclass
class RecorderStats:
    rows: int = 0
    parts: int = 0
    failed_writes: int = 0
    skipped: int = 0  # messages without a readable timestamp


class Recorder:
    """Writes upstream messages under ``root``, one part per day every ``flush_s`` seconds."""

    def __init__(self, root: str | Path, flush_s: float = 60.0) -> None:
        if flush_s <= 0:
            raise ValueError(f"flush_s must be > 0, got {flush_s}")
        self.root = Path(root)
        self.flush_s = flush_s
        self.stats = RecorderStats()
        self._queue: queue.SimpleQueue[list[Item]] = queue.SimpleQueue()
        self._unwritten: list[pa.Table] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-recorder", daemon=True)

    def __repr__(self) -> str:
        return f"Recorder({str(self.root)!r}, every {self.flush_s:g} s)"

    def add(self, items: list[Item]) -> None:
        """From the hub's loop: one frame's messages, in upstream order. A queue put, no more."""
        self._queue.put(items)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, then end the thread. Idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.flush_s):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        table = self._rows()
        if table.num_rows:
            self._unwritten.append(table)
        if not self._unwritten:
            return
        pending = pa.concat_tables(self._unwritten)
        try:
            for day, part in _by_day(pending):
                self._write(day, part)
                self.stats.rows += part.num_rows
                self.stats.parts += 1
        except OSError:
            self.stats.failed_writes += 1
            log.exception("hub recorder: writing under %s failed; keeping the rows", self.root)
            return
        self._unwritten = []

    def _rows(self) -> pa.Table:
        """Everything queued so far as recording rows (the wire fields mapped back)."""
        rows: list[dict] = []
        while True:
            try:
                items = self._queue.get_nowait()
            except queue.Empty:
                break
            for item in items:
                message = item.message
                try:
                    ts = parse_rfc3339_ns(message["t"])
                except (KeyError, TypeError, ValueError, IndexError):
                    self.stats.skipped += 1
                    continue
                row = {"ts": ts, "symbol": item.symbol, "kind": item.kind}
                for key, column in FIELDS[item.kind]:
                    row[column] = message.get(key)
                rows.append(row)
        return pa.Table.from_pylist(rows, schema=recording.SCHEMA)

    def _write(self, day: str, part: pa.Table) -> None:
        folder = self.root / day
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{part['ts'][0].as_py():020d}-{time.time_ns():020d}.parquet"
        temporary = folder / f".{name}"
        recording.write(part, temporary)
        os.replace(temporary, folder / name)


def _by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """Rows split by America/New_York date, each part in upstream order."""
    ts = table["ts"].to_numpy()
    days = pd.to_datetime(ts, unit="ns", utc=True).tz_convert(EXCHANGE_TZ).strftime("%Y-%m-%d")
    labels = np.asarray(days)
    return [(day, table.filter(pc.equal(pa.array(labels), day))) for day in dict.fromkeys(labels)]
