"""Which opening or closing auction an ``opg`` or ``cls`` order joins, by Alpaca's rules.

Alpaca (docs, "Orders at Alpaca", time in force): an ``opg`` order sent after 09:28 ET and
before 19:00 ET is rejected, one sent from 19:00 ET goes to the next session's opening
auction; a ``cls`` order sent after 15:50 ET (ten minutes before the close, so 12:50 on an
early-close day) and before 19:00 ET is rejected, one sent from 19:00 ET goes to the next
session's closing auction. The simulated broker applies the same rules, so a model tested
on a replay is refused live for the same orders. Sessions come from the exchange calendar
(:mod:`tradeday.calendar`): holidays and early closes included.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import cache

from tradeday.calendar import EXCHANGE_TZ, MarketClosed, session_window
from tradeday.events import MINUTE_NS, SessionWindow, TimeInForce, ns_to_datetime

OPG_CUTOFF_NS = 2 * MINUTE_NS  # before the open
CLS_CUTOFF_NS = 10 * MINUTE_NS  # before the close
NEXT_DAY_HOUR = 19  # ET: from then on, orders go to the next session's auctions
_SEARCH_DAYS = 10  # the longest run of closed days (weekend plus holidays) is far shorter


class AuctionRefused(ValueError):
    """The order came too late for today's auction and too early for the next one."""


@cache
def _session(day: date) -> SessionWindow | None:
    try:
        return session_window(day)
    except MarketClosed:
        return None


def _next_session(after: date) -> SessionWindow:
    for offset in range(1, _SEARCH_DAYS + 1):
        window = _session(after + timedelta(days=offset))
        if window is not None:
            return window
    raise AuctionRefused(f"no exchange session within {_SEARCH_DAYS} days after {after}")


def auction_session(tif: TimeInForce, ts: int) -> SessionWindow:
    """The session whose opening (``opg``) or closing (``cls``) auction an order sent at ``ts`` joins.

    Raises :class:`AuctionRefused`, saying when the order may be sent, inside the
    window where Alpaca rejects it.
    """
    local = ns_to_datetime(ts).astimezone(EXCHANGE_TZ)
    today = local.date()
    window = _session(today)
    if window is None or local.hour >= NEXT_DAY_HOUR:
        return _next_session(today)
    if tif is TimeInForce.OPG:
        auction, cutoff = window.open_ns, OPG_CUTOFF_NS
    elif tif is TimeInForce.CLS:
        auction, cutoff = window.close_ns, CLS_CUTOFF_NS
    else:
        raise ValueError(f"{tif!r} is not an auction time in force (opg or cls)")
    if ts < auction - cutoff:
        return window
    last = ns_to_datetime(auction - cutoff).astimezone(EXCHANGE_TZ)
    raise AuctionRefused(
        f"{tif.value} order sent at {local:%H:%M:%S} ET on {today}: {tif.value} orders must be "
        f"sent before {last:%H:%M} ET for that day's auction, or from {NEXT_DAY_HOUR}:00 ET for the "
        "next session's"
    )
