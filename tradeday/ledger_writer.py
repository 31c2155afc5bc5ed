"""A session's writes to the ledger: in order, never lost, never raised into the session.

The session hands every flush's batch to :meth:`DurableWriter.write`. A batch the
ledger refuses (SQLite locked by another process, PostgreSQL stopped or restarting, the
network down) stays queued, in order, and is retried with exponential backoff while
the session goes on trading; the writer logs one warning when an outage starts and one
when the queued rows land (a warning too, so a console showing warnings shows both). :meth:`DurableWriter.finish` queues the run's final
status and keeps trying until its deadline; whatever is still unwritten then goes to
the local :class:`~tradeday.journal.Journal`, fsynced, for the next session start,
``flatten-now`` or end-of-day report to replay. Each batch carries a ``batch_id``
(``<run_id>/<n>``) that makes a retry after an ambiguous failure (the commit landed but
its reply was lost) and a replay idempotent.

What a long outage does to trading is the risk gate's rule
(``risk.max_ledger_outage_minutes``, read from :meth:`DurableWriter.outage_seconds`):
past it, no order may open or grow a position; the session keeps managing and
flattening what it holds.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tradeday.journal import Journal
from tradeday.ledger import Ledger, final_update
from tradeday.records import Batch

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0


class DurableWriter:
    def __init__(
        self,
        ledger: Ledger,
        run_id: str,
        journal: Journal,
        *,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.journal = journal
        self.log = logger or log
        self.clock = clock
        self.pending: deque[Batch] = deque()
        self.written = 0  # batches the ledger took
        self.journaled = 0  # batches that went to the journal instead
        self._seq = 0
        self._down_since: float | None = None
        self._retry_in = FIRST_RETRY_S
        self._next_try = 0.0

    def write(self, batch: Batch) -> None:
        """Queue ``batch`` and write what is queued, unless a retry is not due yet."""
        if batch:
            self._seq += 1
            batch.batch_id = f"{self.run_id}/{self._seq}"
            self.pending.append(batch)
        if self.pending and self.clock() >= self._next_try:
            self._drain()

    def outage_seconds(self) -> float:
        """How long the ledger has refused writes (0 when it takes them)."""
        return 0.0 if self._down_since is None else self.clock() - self._down_since

    def finish(
        self,
        status: str,
        message: str,
        ended_ns: int,
        counters: dict[str, Any],
        *,
        timeout_s: float,
    ) -> bool:
        """Queue the run's final status; retry until ``timeout_s``, then journal the rest.

        True when everything is in the ledger; False when the journal holds the rest (or,
        if even the journal cannot be written, when rows were lost: logged as an error).
        """
        self.write(Batch(run_update=final_update(status, message, ended_ns, counters)))
        deadline = self.clock() + timeout_s
        while self.pending and self.clock() < deadline:
            time.sleep(max(0.0, min(self._next_try, deadline) - self.clock()))
            self._drain()
        if not self.pending:
            return True
        batches = list(self.pending)
        rows = sum(b.rows() for b in batches)
        try:
            path = self.journal.append(self.run_id, batches)
        except OSError as exc:
            self.log.error(
                "ledger unreachable and the journal unwritable (%s: %s): %d batches (%d rows) "
                "of run %s are LOST",
                type(exc).__name__,
                exc,
                len(batches),
                rows,
                self.run_id,
            )
            return False
        self.pending.clear()
        self.journaled += len(batches)
        self.log.warning(
            "ledger still unreachable at shutdown: %d batches (%d rows) and the run's final "
            "status are in the journal %s; the next session start, flatten-now or end-of-day "
            "report writes them into the ledger",
            len(batches),
            rows,
            path,
        )
        return False

    def _drain(self) -> None:
        batches = rows = 0
        while self.pending:
            try:
                self.ledger.write(self.pending[0], self.run_id)
            except Exception as exc:  # any failure of the ledger: the rows stay queued
                self._failed(exc)
                return
            rows += self.pending.popleft().rows()
            batches += 1
        self.written += batches
        if self._down_since is not None:
            # a warning like the one that opened the outage, so whoever saw that sees this
            self.log.warning(
                "ledger reachable again after %.0f s: the %d queued batches (%d rows) are written",
                self.clock() - self._down_since,
                batches,
                rows,
            )
            self._down_since = None
        self._retry_in = FIRST_RETRY_S
        self._next_try = 0.0

    def _failed(self, exc: Exception) -> None:
        now = self.clock()
        if self._down_since is None:
            self._down_since = now
            cause = getattr(exc, "orig", None) or exc  # the driver's error, without the SQL
            self.log.warning(
                "ledger write failed (%s: %s): keeping the rows and retrying with backoff; "
                "trading goes on",
                type(cause).__name__,
                (str(cause).splitlines() or [""])[0][:300],
            )
        self._next_try = now + self._retry_in
        self._retry_in = min(self._retry_in * 2, MAX_RETRY_S)
