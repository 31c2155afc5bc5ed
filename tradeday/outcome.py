"""What a session says about itself: counters, the heartbeat line, and its result.

The counters ride along with every ledger flush and end in the run's row and the report;
the heartbeat is their one-line summary in the log; the result is what the flow returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tradeday.events import NS_PER_S, ns_to_datetime

if TYPE_CHECKING:
    from tradeday.book import Book
    from tradeday.decode import DecodeStats
    from tradeday.engine import Engine
    from tradeday.feed import StreamFeed


@dataclass
class SessionResult:
    run_id: str
    session_date: str
    model: str
    status: str
    message: str
    ticks: int
    skipped: int
    reconnects: int
    orders: int
    fills: int
    risk_rejections: int
    final_positions: dict[str, int]
    realized: float
    fees: float
    net: float
    counters: dict[str, Any] = field(default_factory=dict)
    carried: dict[str, int] = field(default_factory=dict)  # held overnight, in final_positions

    @classmethod
    def of(
        cls,
        run_id: str,
        day: str,
        model: str,
        status: str,
        message: str,
        counters: dict[str, Any],
        book: Book,
        carried: dict[str, int] | None = None,
    ) -> SessionResult:
        return cls(
            run_id=run_id,
            session_date=day,
            model=model,
            status=status,
            message=message,
            ticks=counters["ticks"],
            skipped=counters["skipped"],
            reconnects=counters["reconnects"],
            orders=counters["orders"],
            fills=counters["fills"],
            risk_rejections=counters["risk_rejections"],
            final_positions=book.open_positions(),
            realized=round(book.realized, 6),
            fees=round(book.fees, 6),
            net=round(book.net(), 6),
            counters=counters,
            carried=carried or {},
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def counters(decoded: DecodeStats, feed: StreamFeed | None, engine: Engine) -> dict[str, Any]:
    """Every counter of the decoder, the feed (reconnects, gaps) and the engine, by name."""
    d, e = decoded, engine.stats
    f = feed.stats if feed is not None else None
    gaps = feed.gaps if feed is not None else []
    return {
        "ticks": d.trades + d.quotes + d.bars,
        "trades": d.trades,
        "quotes": d.quotes,
        "bars": d.bars,
        "frames": d.frames,
        "skipped": d.skipped,
        "malformed_frames": d.malformed_frames,
        "unknown_messages": d.unknown_messages,
        "bad_messages": d.bad_messages,
        "out_of_order": d.out_of_order,
        "after_stop": e.after_stop,
        "reconnects": f.reconnects if f else 0,
        "drops": f.drops if f else 0,
        "stale_reconnects": f.stale_reconnects if f else 0,
        "gaps": len(gaps),
        "gap_seconds": round(sum(b - a for a, b in gaps) / NS_PER_S, 6),
        "orders": e.orders,
        "fills": e.fills,
        "rejections": e.rejections,
        "risk_rejections": e.risk_rejections,
        "risk_rejections_by_limit": dict(engine.risk.counts),
    }


def heartbeat(c: dict[str, Any], book: Book, clock_ns: int) -> str:
    """The periodic log line: counters, positions, net P&L and the tick clock."""
    return (
        f"ticks={c['ticks']} skipped={c['skipped']} reconnects={c['reconnects']} "
        f"orders={c['orders']} fills={c['fills']} risk_rejections={c['risk_rejections']} "
        f"positions={book.open_positions()} net={book.net():.2f} "
        f"clock={ns_to_datetime(clock_ns).isoformat() if clock_ns else '-'}"
    )
