"""The live view: one markdown artifact per session, rewritten in place as it trades.

Built from the session on the main thread at a flush (never per tick), at most once every
:data:`LIVE_EVERY_S` and once more at the end, for live and replay sessions alike. The
artifact is created once and then updated (``PATCH /artifacts/{id}``), so the run's
Artifacts tab shows one current table, not hundreds of versions.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from tradeday.book import Book
from tradeday.events import ns_to_datetime
from tradeday.session import TradingSession

LIVE_EVERY_S = 60.0
LIVE_KEY = "session-live"


def position_rows(book: Book) -> list[tuple[str, int, float, float, float, float, float]]:
    """(symbol, qty, mark, realized, unrealized, fees, net) per symbol the session traded."""
    marks = dict(book.marks)  # copies: the feed thread updates both while we read
    rows = []
    for symbol, p in sorted(dict(book.positions).items()):
        mark = marks.get(symbol, p.avg_price)
        unrealized = p.unrealized(mark) if p.qty else 0.0
        rows.append(
            (symbol, p.qty, mark, p.realized, unrealized, p.fees, p.realized + unrealized - p.fees)
        )
    return rows


def live_markdown(session: TradingSession) -> str:
    """The live view's text: positions and P&L per symbol, order flow, feed health."""
    c = session.counters()
    clock = session.engine.clock
    age = session.feed.seconds_since_frame() if session.feed is not None else None
    head = (
        f"# {session.day} {session.model_name} · {session.status}\n\n"
        f"Run `{session.run_id}`. "
        f"Tick clock {ns_to_datetime(clock).isoformat() if clock else '-'}; "
        f"updated {time.strftime('%H:%M:%S UTC', time.gmtime())}\n\n"
    )
    rows = position_rows(session.book)
    table = "\n".join(
        f"| {s} | {q:,} | {m:,.4f} | {r:,.2f} | {u:,.2f} | {f:,.2f} | {n:,.2f} |"
        for s, q, m, r, u, f, n in rows
    )
    total = sum(r[-1] for r in rows)
    positions = (
        "| Symbol | Position | Mark | Realized | Unrealized | Fees | Net |\n"
        "|---|--:|--:|--:|--:|--:|--:|\n"
        + (table + "\n" if table else "")
        + f"| **All** | | | | | | **{total:,.2f}** |\n\n"
    )
    by_limit = ", ".join(f"{k} {v}" for k, v in sorted(c["risk_rejections_by_limit"].items()))
    flow = (
        "| Orders | Fills | Broker rejections | Risk rejections |\n|--:|--:|--:|--:|\n"
        f"| {c['orders']:,} | {c['fills']:,} | {c['rejections']:,} | "
        f"{c['risk_rejections']:,}{f' ({by_limit})' if by_limit else ''} |\n\n"
    )
    halted = session.engine.risk.halted_reason
    feed = (
        "| Ticks | Reconnects | Gaps | Gap seconds | Last frame |\n|--:|--:|--:|--:|--:|\n"
        f"| {c['ticks']:,} | {c['reconnects']} | {c['gaps']} | {c['gap_seconds']:.1f} | "
        f"{'-' if age is None else f'{age:.1f} s ago'} |\n"
    )
    return head + positions + flow + feed + (f"\n**Kill switch:** {halted}\n" if halted else "")


class LiveView:
    """A session observer (``TradingSession(observers=...)``) that keeps the artifact current.

    The Prefect API is not on the trading path: a failed call is logged once, and the
    view tries again at its next minute.
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.log = logger
        self.artifact_id: UUID | None = None
        self.last = float("-inf")
        self.warned = False

    def __call__(self, session: TradingSession) -> None:
        final = session.status != "running"
        now = time.monotonic()
        if not final and now - self.last < LIVE_EVERY_S:
            return
        self.last = now
        markdown = live_markdown(session)
        description = f"{session.day} {session.model_name}: live positions, P&L and feed"
        try:
            if self.artifact_id is None:
                self.artifact_id = create_markdown_artifact(
                    markdown=markdown, key=LIVE_KEY, description=description
                )
            else:
                with get_client(sync_client=True) as client:
                    client.update_artifact(self.artifact_id, ArtifactUpdate(data=markdown))
        except Exception as exc:  # the API down: the next minute tries again
            if not self.warned:
                self.log.warning(
                    "live view not updated (retried each minute): %s: %s", type(exc).__name__, exc
                )
                self.warned = True
