"""Alpaca paper trading through alpaca-py's ``TradingClient``.

Threading: :meth:`AlpacaPaperBroker.submit` only puts the order on a queue, so the feed
thread never waits on HTTP. One worker thread sends orders in arrival order and, while any
order of this broker is still working, polls Alpaca for fills. Outcomes go to
``executions`` as :class:`~tradeday.brokers.base.Execution` records.

Fills come from Alpaca's **``trade_updates`` stream** when it is configured
(:mod:`tradeday.brokers.trade_updates`, a thread of its own: directly from Alpaca, or from
the hub that holds the account's one connection), and from **polling**, which stays as the
reconciliation and the fallback. Each stream event is handed to the worker thread ahead
of the orders still queued for it and applied between two sends, always after its order's
own POST answer, so both paths change one order's state in one thread. Polling runs every
``poll_interval`` while an order is working and the stream is not listening; while it is,
only every ``reconcile_interval`` (Alpaca allows 200 requests a minute per account), and
at once when the stream comes back after a gap (Alpaca does not replay missed events) and
when the session flushes at shutdown.

A poll lists this account's orders submitted since the oldest working one
(``GET /v2/orders?status=all&after=``) and turns each increase of ``filled_qty`` into one
PARTIAL_FILL or FILL. The price of that delta comes from the cumulative average,
``(avg1*qty1 - avg0*qty0) / (qty1 - qty0)``, computed on Alpaca's decimal strings so
whole-order fills report exactly Alpaca's price; it is exact for partial fills too unless
Alpaca rounded the average. Two fills landing between two polls arrive as one execution at
their average price. A stream fill carries its own ``qty`` and ``price``, used as they are.

Exactly once: a fill is identified by the order's cumulative ``filled_qty`` after it (and
its ``execution_id``). Whichever path shows an increase first reports it; the other then
shows nothing new, and an event older than what is known (a late stream message after a
poll) is dropped. Events of orders this broker does not follow (another session's, on a
direct connection) are ignored.

Idempotence: orders carry the caller's deterministic ``client_order_id``. When Alpaca answers
that the id already exists (a resubmit after a restart, or a retry whose first answer was
lost) the broker looks the order up and follows it as the same order: no second order.
Refusals (403 buying power or shares, 422 bad parameters) become REJECTED executions with
Alpaca's message; nothing raises into the engine. Network errors and 429/5xx are retried with
bounded, jittered exponential backoff; an order whose fate stays unknown is reported REJECTED
and then checked on every poll, so if it did reach Alpaca its fills are still reported.

Netting: Alpaca holds one position per symbol per account, shared by every session on it,
and refuses an order that would take that position across zero ("insufficient qty available
for order"): long 10, a sell of 15 must be a sell of 10, then, once it filled, a sell of 5.
So when Alpaca refuses an order for that reason and the account's position is on the other
side, the broker sends what closes it under the order's own ``client_order_id`` and, when
that has filled, the rest as ``<id>-leg2`` (``-leg3``... if it must split again). To the
engine it stays one order: one ACCEPTED, the first part a PARTIAL_FILL, the last a FILL, and
:meth:`orders_of` folds the legs into their order. The session's ledger and flatten are its
own as before: only the account's position nets.

The keys live only inside the ``TradingClient``: they are never logged, and ``repr``/``str``
of the broker and of its exceptions do not contain them.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from requests.adapters import HTTPAdapter

from tradeday.brokers.base import (
    AccountOrder,
    Broker,
    BrokerError,
    BrokerOrder,
    ExecType,
    Execution,
    Leftovers,
)
from tradeday.brokers.trade_updates import StreamEndpoint, StreamStats, TradeUpdatesClient
from tradeday.decode import parse_rfc3339_ns
from tradeday.events import NS_PER_S, Side, datetime_to_ns, ns_to_datetime

log = logging.getLogger(__name__)

PAPER_URL = "https://paper-api.alpaca.markets"

T = TypeVar("T")

_TRANSIENT_HTTP = frozenset({429, 500, 502, 503, 504})
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_DUPLICATE_ID = "client_order_id must be unique"
_INSUFFICIENT_QTY = "insufficient qty available for order"
_MAX_RESENDS = 3
_LEG = re.compile(r"^(?P<parent>.+)-leg\d+$")
_TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REJECTED,
        OrderStatus.REPLACED,
    }
)
_ENDED = frozenset({OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REPLACED})
_MAX_ORDERS_PER_PAGE = 500
_STOP = object()
_WAKE = object()
_RECONCILE = object()  # poll now (the stream came back or went away, or shutdown flushes)
_FILL_EVENTS = frozenset({"fill", "partial_fill"})
_CHANGES = _FILL_EVENTS | {"canceled", "expired", "rejected", "replaced", "done_for_day"}
"""trade_updates events that can change what the broker reports."""


@dataclass(frozen=True, slots=True)
class _CancelRequest:
    client_order_id: str


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The fields of a trade update's order that :meth:`AlpacaPaperBroker._apply` reads,
    parsed without building alpaca-py's whole ``Order`` model for every event."""

    qty: str | None
    filled_qty: str
    filled_avg_price: str | None
    status: str
    filled_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, raw: dict[str, Any]) -> _Snapshot:
        filled_at = raw.get("filled_at")
        return cls(
            qty=raw.get("qty"),
            filled_qty=str(raw["filled_qty"]),
            filled_avg_price=raw.get("filled_avg_price"),
            status=OrderStatus(raw["status"]).value,
            filled_at=ns_to_datetime(parse_rfc3339_ns(filled_at)) if filled_at else None,
            updated_at=ns_to_datetime(parse_rfc3339_ns(raw["updated_at"])),
        )


@dataclass
class FillStats:
    """Where fills came from, and the polls sent: read them any time."""

    fills_from_stream: int = 0
    fills_from_poll: int = 0
    stream_events: int = 0
    stale_events: int = 0
    """Stream events that showed nothing new (already reported by a poll, or repeated)."""
    polls: int = 0


@dataclass(frozen=True, slots=True)
class _SendRest:
    """The leg before filled: send what is left of the order ``parent``."""

    parent: str


@dataclass(slots=True)
class _Split:
    """An order sent in legs because it crosses the account's zero (under the broker's lock)."""

    order: BrokerOrder
    legs: int = 1
    rest: int = 0
    """Quantity not placed yet: sent when the working leg has filled."""
    leg: str = ""
    """``client_order_id`` of the leg at Alpaca now."""
    canceled: bool = False


class AlpacaError(BrokerError):
    """Alpaca refused a request that has no execution to carry the refusal."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AlpacaAuthError(AlpacaError):
    """The keys were refused: no point retrying, the session cannot trade."""


class AlpacaUnavailable(AlpacaError):
    """Alpaca could not be reached (or kept failing) within the retry budget."""


@dataclass(frozen=True, slots=True)
class MarketClock:
    """Alpaca's clock in UTC (Alpaca sends New York offsets; tradeday is UTC inside)."""

    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


@dataclass(slots=True)
class _Tracked:
    """What this broker knows of one order; mutated only under the broker's lock."""

    client_order_id: str
    symbol: str
    side: Side
    broker_order_id: str
    submitted_at: datetime
    updated_at: datetime
    status: OrderStatus
    filled_qty: Decimal = Decimal(0)
    filled_avg: Decimal = Decimal(0)
    parent: str = ""
    """For a second or later leg of a split order: the order it reports as."""

    def state(self) -> Execution:
        """The order as one record: cumulative filled qty and average price."""
        if self.status is OrderStatus.FILLED:
            kind = ExecType.FILL
        elif self.status is OrderStatus.PARTIALLY_FILLED:
            kind = ExecType.PARTIAL_FILL
        elif self.status is OrderStatus.REJECTED:
            kind = ExecType.REJECTED
        elif self.status in _ENDED:
            kind = ExecType.CANCELED
        else:
            kind = ExecType.ACCEPTED
        return Execution(
            client_order_id=self.client_order_id,
            kind=kind,
            ts=datetime_to_ns(self.updated_at),
            symbol=self.symbol,
            side=self.side,
            qty=int(self.filled_qty),
            price=float(self.filled_avg),
            reason=self.status.value if kind in (ExecType.CANCELED, ExecType.REJECTED) else "",
            broker_order_id=self.broker_order_id,
        )


class _TimeoutAdapter(HTTPAdapter):
    """requests has no default timeout and alpaca-py sets none: a dead peer would hang."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


class _Api:
    """A ``TradingClient`` used by one thread at a time, retried with our own backoff."""

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        base_url: str,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        abort: threading.Event,
    ) -> None:
        self.client = TradingClient(key_id, secret_key, paper=True, url_override=base_url)
        # alpaca-py itself sleeps a fixed 3 s between up to 3 retries of 429/504, blocking
        # the worker with no jitter; switch that off and retry here instead.
        self.client._retry = 0
        adapter = _TimeoutAdapter(timeout)
        self.client._session.mount("http://", adapter)
        self.client._session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._abort = abort

    def call(self, what: str, fn: Callable[[TradingClient], T], retries: int | None = None) -> T:
        """``fn(client)``; network errors and 429/5xx retried, other API errors raised."""
        retries = self._retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                with self._lock:
                    return fn(self.client)
            except APIError as err:
                if err.status_code not in _TRANSIENT_HTTP:
                    raise
                problem = f"HTTP {err.status_code}"
            except _NETWORK_ERRORS as err:
                problem = f"{type(err).__name__}: {err}"
            if attempt == retries:
                break
            delay = min(self._max_backoff, self._backoff * 2**attempt) * random.uniform(0.5, 1.0)
            log.warning(
                "alpaca %s failed (%s); retry %d/%d in %.2fs",
                what,
                problem,
                attempt + 1,
                retries,
                delay,
            )
            if self._abort.wait(delay):
                break
        raise AlpacaUnavailable(f"{what}: {problem} (gave up after {attempt + 1} attempts)")

    def close(self) -> None:
        self.client._session.close()


def _message(err: APIError) -> str:
    """Alpaca's own words for a refusal; HTML from a proxy is cut short."""
    try:
        return str(err.message)
    except (ValueError, KeyError, TypeError):
        return str(err)[:200]


def _decimal(value: str | float | None) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))


def _fold_legs(orders: Iterable[AccountOrder]) -> list[AccountOrder]:
    """One row per order, oldest first: the ``-legN`` parts of a split order folded into it."""
    folded: dict[str, AccountOrder] = {}
    for order in sorted(orders, key=lambda o: (o.submitted_ns, o.client_order_id)):
        match = _LEG.match(order.client_order_id)
        first = folded.get(match["parent"]) if match else None
        if first is None:
            folded[order.client_order_id] = order
            continue
        filled = first.filled_qty + order.filled_qty
        notional = (
            first.filled_qty * first.filled_avg_price + order.filled_qty * order.filled_avg_price
        )
        folded[first.client_order_id] = replace(
            first,
            qty=first.qty + order.qty,
            filled_qty=filled,
            filled_avg_price=notional / filled if filled else 0.0,
            status=order.status,
            updated_ns=max(first.updated_ns, order.updated_ns),
        )
    return list(folded.values())


class AlpacaPaperBroker(Broker):
    """Orders to an Alpaca (paper) account; see the module docstring for the mechanics.

    :meth:`start` checks the keys with ``GET /v2/account`` so a bad key fails the session
    at its start with :class:`AlpacaAuthError`, not as a stream of rejected orders later;
    construction does no I/O.
    """

    name = "alpaca"  # the config's broker.kind: recovery matches ledger runs by it

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        base_url: str = PAPER_URL,
        poll_interval: float = 0.5,
        *,
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        trade_updates: StreamEndpoint | None = None,
        reconcile_interval: float = 10.0,
    ) -> None:
        super().__init__()
        if not key_id or not secret_key:
            raise AlpacaAuthError("Alpaca key_id and secret_key are both required")
        self.base_url = base_url.rstrip("/")
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.stats = FillStats()
        self._max_backoff = max_backoff
        self._closed = threading.Event()
        self._abort = threading.Event()
        api = (key_id, secret_key, self.base_url, timeout, max_retries, backoff, max_backoff)
        self._api = _Api(*api, abort=self._abort)
        self._worker_api = _Api(*api, abort=self._abort)
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._working: set[str] = set()
        self._unconfirmed: dict[str, BrokerOrder] = {}
        self._splits: dict[str, _Split] = {}
        self._queue: SimpleQueue[object] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="alpaca-broker", daemon=True)
        self._stream = (
            None
            if trade_updates is None
            else TradeUpdatesClient(
                trade_updates,
                self._on_stream_event,
                lambda _listening: self._queue.put(_RECONCILE),
                name="alpaca-trade-updates",
            )
        )
        self._seen_executions: set[str] = set()
        self._updates: deque[dict[str, Any]] = deque()

    def _on_stream_event(self, data: dict[str, Any]) -> None:
        """Stream thread: hand the event to the worker ahead of the orders queued for it.

        ``new``, ``accepted`` and the ``pending_*`` events change nothing the POST answer
        did not say already: they are counted and dropped here, off the worker.
        """
        self.stats.stream_events += 1  # counted on this thread only
        if data.get("event") not in _CHANGES:
            return
        self._updates.append(data)
        self._queue.put(_WAKE)

    @property
    def stream_stats(self) -> StreamStats | None:
        """The trade_updates connection's counters (connects, drops, events); None if off."""
        return None if self._stream is None else self._stream.stats

    @property
    def streaming(self) -> bool:
        """Whether fills are arriving through ``trade_updates`` now (else polling alone)."""
        return self._stream is not None and self._stream.listening

    def start(self) -> None:
        """Check the keys and the account, then start the worker that sends and follows."""
        if self._thread.is_alive() or self._closed.is_set():
            return
        try:
            self._check_account()
        except AlpacaError:
            self._api.close()
            self._worker_api.close()
            raise
        self._thread.start()
        if self._stream is not None:
            self._stream.start()

    def __repr__(self) -> str:
        return f"AlpacaPaperBroker(base_url={self.base_url!r}, working={len(self._working)})"

    # ----------------------------------------------------------------- Broker interface

    def submit(self, order: BrokerOrder) -> None:
        if self._closed.is_set():
            self._reject(order, "broker is closed")
            return
        self._queue.put(order)

    def cancel_order(self, client_order_id: str, now: int) -> None:
        """Queued for the worker, behind the order itself if that is not sent yet."""
        self._queue.put(_CancelRequest(client_order_id))

    def flush(self, now: int) -> None:
        """Shutdown is settling: reconcile by polling now rather than wait for the stream."""
        self._queue.put(_RECONCILE)

    def positions(self) -> dict[str, int]:
        held = self._sync("GET /v2/positions", lambda c: c.get_all_positions())
        return {p.symbol: int(_decimal(p.qty)) for p in held if _decimal(p.qty)}

    def find_order(self, client_order_id: str) -> Execution | None:
        """Local state if this broker follows the order, else Alpaca's; then follow it.

        ``qty``/``price`` are the cumulative filled quantity and average price. An order
        found at Alpaca is followed from its current state: later fills arrive as executions,
        earlier ones are only in this answer.
        """
        with self._lock:
            known = self._tracked.get(client_order_id)
            if known is not None:
                return known.state()
        try:
            found = self._sync(
                f"GET order {client_order_id}",
                lambda c: c.get_order_by_client_id(client_order_id),
            )
        except AlpacaError as err:
            if err.status == 404:
                return None
            raise
        with self._lock:
            tracked = self._tracked.get(client_order_id) or self._follow(found, baseline=True)
            state = tracked.state()
        self._queue.put(_WAKE)
        return state

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), stop the worker, drop connections."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._stream is not None:
            self._stream.stop()
        self._queue.put(_STOP)
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
            self._abort.set()
            self._thread.join(1.0)
        if self._thread.is_alive():
            log.warning("alpaca worker still busy %.1fs after close(); abandoning it", timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except Empty:
                break
            if isinstance(item, BrokerOrder):
                self._reject(item, "broker closed before sending")
        self._api.close()
        self._worker_api.close()

    # ----------------------------------------------------------------- account helpers

    def clock(self) -> MarketClock:
        clock = self._sync("GET /v2/clock", lambda c: c.get_clock())
        return MarketClock(
            timestamp=clock.timestamp.astimezone(UTC),
            is_open=clock.is_open,
            next_open=clock.next_open.astimezone(UTC),
            next_close=clock.next_close.astimezone(UTC),
        )

    def market_open(self) -> bool:
        return self.clock().is_open

    def close_all_positions(self) -> dict[str, int]:
        """Liquidate the whole account: only for sessions configured to own it.

        ``DELETE /v2/positions?cancel_orders=true``; returns the per-symbol status of the 207
        answer (200 = closing order placed). Alpaca names the closing orders itself, so their
        executions carry Alpaca's ``client_order_id``s. Follow with :meth:`wait_until_flat`.
        """
        answers = self._sync(
            "DELETE /v2/positions", lambda c: c.close_all_positions(cancel_orders=True)
        )
        statuses: dict[str, int] = {}
        for answer in answers:
            statuses[str(answer.symbol)] = answer.status or 0
            if isinstance(answer.body, Order):
                with self._lock:
                    self._follow(answer.body, baseline=False)
            else:
                log.warning("alpaca could not close %s: %s", answer.symbol, answer.body.message)
        log.info("close_all_positions: %s", statuses or "nothing to close")
        self._queue.put(_WAKE)
        return statuses

    def wait_until_flat(
        self, symbols: Iterable[str] | None = None, timeout: float = 10.0
    ) -> Leftovers:
        """Wait until no position and no open order is left (in ``symbols``, or at all).

        Asks Alpaca, not local state, so orders from before a restart count too. Returns what
        is left when flat or at ``timeout``; ``.flat`` says which.
        """
        wanted = None if symbols is None else set(symbols)
        deadline = time.monotonic() + timeout
        while True:
            positions = {s: q for s, q in self.positions().items() if wanted is None or s in wanted}
            request = GetOrdersRequest(
                status=QueryOrderStatus.OPEN,
                limit=_MAX_ORDERS_PER_PAGE,
                symbols=sorted(wanted) if wanted else None,
            )
            open_orders = self._sync("GET /v2/orders", lambda c, r=request: c.get_orders(r))
            left = Leftovers(positions, tuple(o.client_order_id for o in open_orders))
            remaining = deadline - time.monotonic()
            if left.flat or remaining <= 0:
                if not left.flat:
                    log.warning("not flat after %.1fs: %s", timeout, left)
                return left
            time.sleep(min(self.poll_interval, remaining))

    def orders_of(self, prefix: str, since_ns: int) -> list[AccountOrder]:
        """Every order of the account whose ``client_order_id`` starts with ``prefix``.

        A run's ids are ``<run_id>-<n>``, so ``prefix=run_id + "-"`` is everything a run sent,
        including orders sent just before a crash that its ledger never recorded. Pages
        through ``GET /v2/orders?status=all`` from ``since_ns`` (wall clock, minus a second),
        oldest first; the pages overlap by a microsecond and repeats are dropped.
        """
        since = datetime.fromtimestamp(since_ns / NS_PER_S, UTC) - timedelta(seconds=1)
        seen: dict[str, AccountOrder] = {}
        while True:
            request = GetOrdersRequest(
                status=QueryOrderStatus.ALL,
                after=since,
                direction=Sort.ASC,
                limit=_MAX_ORDERS_PER_PAGE,
            )
            page = self._sync("GET /v2/orders", lambda c, r=request: c.get_orders(r))
            for order in page:
                cid = order.client_order_id
                if cid.startswith(prefix) and str(order.id) not in seen:
                    seen[str(order.id)] = AccountOrder(
                        client_order_id=cid,
                        broker_order_id=str(order.id),
                        symbol=str(order.symbol),
                        side=Side(OrderSide(order.side).value),
                        qty=int(_decimal(order.qty)),
                        filled_qty=int(_decimal(order.filled_qty)),
                        filled_avg_price=float(_decimal(order.filled_avg_price)),
                        status=OrderStatus(order.status).value,
                        submitted_ns=datetime_to_ns(order.submitted_at),
                        updated_ns=datetime_to_ns(order.updated_at),
                    )
            following = page[-1].submitted_at - timedelta(microseconds=1) if page else since
            if len(page) < _MAX_ORDERS_PER_PAGE or following <= since:
                return _fold_legs(seen.values())
            since = following

    def cancel(self, broker_order_id: str) -> None:
        """Ask Alpaca to cancel an order (``DELETE /v2/orders/{id}``); one that already ended is fine."""
        try:
            self._sync(
                f"DELETE order {broker_order_id}",
                lambda c: c.cancel_order_by_id(broker_order_id),
            )
        except AlpacaError as err:
            if err.status != 422:  # 422: already filled or canceled
                raise

    # ----------------------------------------------------------------- worker thread

    def _run(self) -> None:
        next_poll = 0.0
        failures = 0
        while True:
            wait = max(0.0, next_poll - time.monotonic()) if self._busy() else None
            try:
                item = self._queue.get(timeout=wait)
            except Empty:
                item = None
            was_busy = self._busy()
            if item is _STOP:
                return
            if isinstance(item, BrokerOrder):
                self._send(item)
            elif isinstance(item, _SendRest):
                self._send_rest(item.parent)
            elif isinstance(item, _CancelRequest):
                self._request_cancel(item.client_order_id)
            elif item is _RECONCILE:
                next_poll = 0.0
            while self._updates:  # between two sends, never behind the orders still queued
                self._on_update(self._updates.popleft())
            if self.streaming and not was_busy and self._busy():
                # the stream reports this order's fate; the poll only reconciles, later
                next_poll = max(next_poll, time.monotonic() + self.reconcile_interval)
            if self._busy() and time.monotonic() >= next_poll:
                try:
                    failures = 0 if self._poll() else failures + 1
                except Exception:  # never let one bad answer end fill reporting
                    log.exception("alpaca poll failed")
                    failures += 1
                interval = self.reconcile_interval if self.streaming else self.poll_interval
                pause = min(interval * 2**failures, max(interval, self._max_backoff))
                next_poll = time.monotonic() + pause

    def _busy(self) -> bool:
        return bool(self._working or self._unconfirmed)

    def _send(self, order: BrokerOrder, attempt: int = 0) -> None:
        cid = order.client_order_id
        with self._lock:
            if cid in self._tracked:
                log.warning("order %s is already followed; not sending it again", cid)
                return
        try:
            request = self._request(order)
        except ValueError as err:
            self._reject(order, f"invalid order: {err}")
            return
        started = time.perf_counter()
        try:
            placed = self._worker_api.call(f"POST order {cid}", lambda c: c.submit_order(request))
        except APIError as err:
            message = _message(err)
            if _DUPLICATE_ID in message:
                self._adopt(order)
            elif not (message.startswith(_INSUFFICIENT_QTY) and self._split(order, attempt)):
                self._refuse(order, message)
            return
        except Exception as err:  # unreachable, or an answer we could not read
            if not isinstance(err, AlpacaUnavailable):
                log.exception("unexpected failure sending %s", cid)
            self._reject(order, f"not confirmed: {err}")
            with self._lock:
                self._unconfirmed[cid] = order
            return
        log.info(
            "order %s %s %s %d %s accepted as %s in %.1f ms",
            cid,
            order.side.value,
            order.symbol,
            order.qty,
            order.tif.value,
            placed.id,
            (time.perf_counter() - started) * 1000,
        )
        with self._lock:
            self._follow(placed, baseline=False)

    def _split(self, order: BrokerOrder, attempt: int) -> bool:
        """Send the part of a refused order that takes the account's position to zero.

        True when it did (the rest follows once that part filled), or when another session's
        fill moved the position meanwhile so that the order now fits and went again (up to
        ``_MAX_RESENDS`` times); False when the refusal was not about crossing zero, so it
        stands.
        """
        try:
            held = self._worker_api.call(
                f"GET position {order.symbol}", lambda c: c.get_open_position(order.symbol), 0
            )
        except (APIError, AlpacaUnavailable):
            return False  # no position (404): a short sell refused, not a crossing
        qty = int(_decimal(held.qty))
        available = abs(int(_decimal(held.qty_available or held.qty)))
        closes = qty > 0 if order.side is Side.SELL else qty < 0
        part = min(order.qty, available) if closes else 0
        if part == order.qty and attempt < _MAX_RESENDS:
            self._send(order, attempt + 1)
            return True
        if not 0 < part < order.qty:
            return False
        with self._lock:
            parent = self._parent_of(order.client_order_id)
            split = self._splits.setdefault(parent, _Split(order))
            split.rest += order.qty - part
        log.info(
            "order %s %s %d %s crosses the account's position %d: %d now, %d once that filled",
            order.client_order_id,
            order.side.value,
            order.qty,
            order.symbol,
            qty,
            part,
            order.qty - part,
        )
        self._send(replace(order, qty=part), attempt + 1)
        return True

    def _send_rest(self, parent: str) -> None:
        """The working leg filled: place what is left as the next leg."""
        with self._lock:
            split = self._splits.get(parent)
            if split is None or split.rest == 0:
                return  # canceled meanwhile
            split.legs += 1
            leg = replace(split.order, client_order_id=f"{parent}-leg{split.legs}", qty=split.rest)
            split.rest = 0
        self._send(leg)

    def _parent_of(self, cid: str) -> str:
        """The order a leg reports as (caller holds the lock)."""
        match = _LEG.match(cid)
        return match["parent"] if match and match["parent"] in self._splits else cid

    def _refuse(self, order: BrokerOrder, reason: str) -> None:
        """Alpaca refused ``order``: a REJECTED execution, or for a later leg the order's end."""
        with self._lock:
            parent = self._parent_of(order.client_order_id)
            split = self._splits.pop(parent, None)
        if split is None or parent == order.client_order_id:
            self._reject(order, reason)
            return
        log.warning("rest of order %s (%d) refused: %s", parent, order.qty, reason)
        self.executions.append(
            Execution(
                client_order_id=parent,
                kind=ExecType.CANCELED,
                ts=time.time_ns(),
                symbol=order.symbol,
                side=order.side,
                reason=f"rest of the order ({order.qty}) refused: {reason}",
            )
        )

    def _request_cancel(self, cid: str) -> None:
        """``DELETE /v2/orders/{id}``; the poll that follows reports the order's end."""
        with self._lock:
            split = self._splits.get(cid)
            if split is not None:
                split.rest, split.canceled = 0, True  # what is not placed yet goes too
                cid = split.leg or cid
            tracked = self._tracked.get(cid)
            working = cid in self._working
            if split is not None and tracked is not None and not working:
                del self._splits[split.order.client_order_id]  # between two legs
                self._emit(tracked, ExecType.CANCELED, datetime.now(UTC), reason="canceled")
                return
        if tracked is None or not working:
            log.info("cancel of %s: not a working order here; nothing to cancel", cid)
            return
        try:
            self._worker_api.call(
                f"DELETE order {cid}", lambda c: c.cancel_order_by_id(tracked.broker_order_id)
            )
        except APIError as err:
            if err.status_code != 422:  # 422: it filled or ended first, as the poll will show
                log.warning("cancel of %s refused: %s", cid, _message(err))
        except AlpacaUnavailable as err:
            log.warning("cancel of %s not sent: %s", cid, err)

    def _adopt(self, order: BrokerOrder) -> None:
        """The id exists at Alpaca already: follow that order instead of placing another."""
        cid = order.client_order_id
        try:
            existing = self._worker_api.call(
                f"GET order {cid}", lambda c: c.get_order_by_client_id(cid)
            )
        except Exception as err:
            log.warning("order %s exists at Alpaca but could not be read (%s)", cid, err)
            with self._lock:
                self._unconfirmed[cid] = order
            return
        log.info("order %s already at Alpaca as %s: following it, not resending", cid, existing.id)
        with self._lock:
            self._follow(existing, baseline=False)

    def _poll(self) -> bool:
        """One round of fill detection; False when Alpaca could not be asked."""
        self.stats.polls += 1
        with self._lock:
            working = {self._tracked[c].broker_order_id: self._tracked[c] for c in self._working}
            unconfirmed = list(self._unconfirmed.values())
        try:
            if working:
                self._poll_working(working)
            for order in unconfirmed:
                self._reconcile(order)
        except (APIError, AlpacaUnavailable) as err:
            log.warning("alpaca poll failed: %s", err)
            return False
        return True

    def _poll_working(self, working: dict[str, _Tracked]) -> None:
        """Page through the account's orders since the oldest working one, oldest first.

        Pages overlap by a microsecond (``after`` is exclusive and a burst shares
        timestamps); orders already seen are skipped. What paging cannot reach, such as
        more than a page of orders in one microsecond, is asked for one by one.
        """
        since = min(t.submitted_at for t in working.values()) - timedelta(seconds=1)
        while working:
            request = GetOrdersRequest(
                status=QueryOrderStatus.ALL,
                after=since,
                direction=Sort.ASC,
                limit=_MAX_ORDERS_PER_PAGE,
            )
            page = self._worker_api.call("GET /v2/orders", lambda c, r=request: c.get_orders(r), 0)
            for order in page:
                tracked = working.pop(str(order.id), None)
                if tracked is not None:
                    with self._lock:
                        self._apply(tracked, order)
            following = page[-1].submitted_at - timedelta(microseconds=1) if page else since
            if len(page) < _MAX_ORDERS_PER_PAGE or following <= since:
                break
            since = following
        for broker_order_id, tracked in working.items():
            try:
                order = self._worker_api.call(
                    f"GET order {tracked.client_order_id}",
                    lambda c, i=broker_order_id: c.get_order_by_id(i),
                    0,
                )
            except APIError as err:
                if err.status_code != 404:
                    raise
                log.warning("order %s unknown to Alpaca; no longer following it", broker_order_id)
                with self._lock:
                    self._working.discard(tracked.client_order_id)
                continue
            with self._lock:
                self._apply(tracked, order)

    def _reconcile(self, order: BrokerOrder) -> None:
        """Did an order whose sending failed reach Alpaca after all?"""
        cid = order.client_order_id
        try:
            found = self._worker_api.call(
                f"GET order {cid}", lambda c: c.get_order_by_client_id(cid), 0
            )
        except APIError as err:
            if err.status_code != 404:
                raise
            log.info("order %s never reached Alpaca; its rejection stands", cid)
            with self._lock:
                self._unconfirmed.pop(cid, None)
            return
        log.warning("order %s reached Alpaca after all, as %s: following it", cid, found.id)
        with self._lock:
            self._unconfirmed.pop(cid, None)
            self._follow(found, baseline=False)

    def _on_update(self, data: dict[str, Any]) -> None:
        """Apply one ``trade_updates`` event to the order it names, if it shows anything new."""
        raw = data.get("order") or {}
        cid = raw.get("client_order_id")
        event = data.get("event")
        execution_id = data.get("execution_id")
        with self._lock:
            tracked = self._tracked.get(cid) if isinstance(cid, str) else None
            if tracked is None:
                return  # not this broker's order (another session's, on a direct connection)
            filled = _decimal(raw.get("filled_qty"))
            if (
                cid not in self._working  # ended already: a poll saw it first
                or execution_id in self._seen_executions
                or filled < tracked.filled_qty  # older than what a poll showed
                or (event in _FILL_EVENTS and filled == tracked.filled_qty)  # polled already
            ):
                self.stats.stale_events += 1
                return
            try:
                order = _Snapshot.of(raw)
            except (KeyError, TypeError, ValueError, ArithmeticError) as err:
                log.warning("trade update for %s not understood (%s); polling covers it", cid, err)
                return
            if execution_id:
                self._seen_executions.add(execution_id)
            exact = None
            if event in _FILL_EVENTS and data.get("qty") and data.get("price"):
                exact = (_decimal(data["qty"]), _decimal(data["price"]))
            self._apply(tracked, order, exact=exact, from_stream=True)

    # ----------------------------------------------------------------- bookkeeping

    def _follow(self, order: Order, baseline: bool) -> _Tracked:
        """Start following ``order`` (caller holds the lock).

        With ``baseline`` its current fills count as already reported (``find_order``
        answered them); otherwise ACCEPTED and every fill so far become executions.
        """
        cid = order.client_order_id
        if cid in self._tracked:
            return self._tracked[cid]
        parent = self._parent_of(cid)
        tracked = _Tracked(
            client_order_id=cid,
            symbol=str(order.symbol),
            side=Side(OrderSide(order.side).value),
            broker_order_id=str(order.id),
            submitted_at=order.submitted_at,
            updated_at=order.updated_at,
            status=OrderStatus.NEW,
            parent="" if parent == cid else parent,
        )
        self._tracked[cid] = tracked
        if parent in self._splits:
            self._splits[parent].leg = cid
        if baseline:
            tracked.status = OrderStatus(order.status)
            tracked.filled_qty = _decimal(order.filled_qty)
            tracked.filled_avg = _decimal(order.filled_avg_price)
            if tracked.status not in _TERMINAL:
                self._working.add(cid)
            return tracked
        self._working.add(cid)
        if not tracked.parent:  # a later leg is the same order, accepted already
            self._emit(tracked, ExecType.ACCEPTED, order.submitted_at)
        self._apply(tracked, order)
        return tracked

    def _apply(
        self,
        tracked: _Tracked,
        order: Order | _Snapshot,
        exact: tuple[Decimal, Decimal] | None = None,
        from_stream: bool = False,
    ) -> None:
        """Turn what changed since the last look into executions (caller holds the lock).

        ``exact`` is a stream fill's own (qty, price): used when it is the whole change.
        """
        qty = _decimal(order.filled_qty)
        avg = _decimal(order.filled_avg_price)
        status = OrderStatus(order.status)
        parent = tracked.parent or tracked.client_order_id
        split = self._splits.get(parent)
        rest = split is not None and split.rest > 0
        cut = split is not None and split.canceled
        if qty > tracked.filled_qty:
            delta = qty - tracked.filled_qty
            if exact is not None and exact[0] == delta:
                price = exact[1]
            else:
                price = (avg * qty - tracked.filled_avg * tracked.filled_qty) / delta
            if from_stream:
                self.stats.fills_from_stream += 1
            else:
                self.stats.fills_from_poll += 1
            done = status is OrderStatus.FILLED and not (rest or cut)
            kind = ExecType.FILL if done else ExecType.PARTIAL_FILL
            at = order.filled_at if done and order.filled_at else order.updated_at
            self._emit(tracked, kind, at, qty=int(delta), price=float(price))
            log.info(
                "%s %s %s %s %s @ %s (%s of %s)",
                kind.value,
                tracked.client_order_id,
                tracked.side.value,
                delta,
                tracked.symbol,
                price.normalize(),
                qty,
                order.qty,
            )
            tracked.filled_qty, tracked.filled_avg = qty, avg
        tracked.status = status
        tracked.updated_at = order.updated_at
        if status in _TERMINAL:
            self._working.discard(tracked.client_order_id)
            if status is OrderStatus.FILLED and rest:
                self._queue.put(_SendRest(parent))
                return
            self._splits.pop(parent, None)
            if status is OrderStatus.FILLED and cut:
                self._emit(tracked, ExecType.CANCELED, order.updated_at, reason="canceled")
            elif status is OrderStatus.REJECTED:
                self._emit(tracked, ExecType.REJECTED, order.updated_at, reason="rejected")
            elif status in _ENDED:
                self._emit(tracked, ExecType.CANCELED, order.updated_at, reason=status.value)

    def _emit(
        self,
        tracked: _Tracked,
        kind: ExecType,
        at: datetime,
        qty: int = 0,
        price: float = 0.0,
        reason: str = "",
    ) -> None:
        self.executions.append(
            Execution(
                client_order_id=tracked.parent or tracked.client_order_id,
                kind=kind,
                ts=datetime_to_ns(at),
                symbol=tracked.symbol,
                side=tracked.side,
                qty=qty,
                price=price,
                reason=reason,
                broker_order_id=tracked.broker_order_id,
            )
        )

    def _reject(self, order: BrokerOrder, reason: str) -> None:
        log.warning(
            "order %s %s %s %d rejected: %s",
            order.client_order_id,
            order.side.value,
            order.symbol,
            order.qty,
            reason,
        )
        self.executions.append(
            Execution(
                client_order_id=order.client_order_id,
                kind=ExecType.REJECTED,
                ts=time.time_ns(),
                symbol=order.symbol,
                side=order.side,
                reason=reason,
            )
        )

    @staticmethod
    def _request(order: BrokerOrder) -> MarketOrderRequest | LimitOrderRequest:
        fields: dict[str, Any] = {
            "symbol": order.symbol,
            "qty": order.qty,
            "side": OrderSide(order.side.value),
            "time_in_force": TimeInForce(order.tif.value),
            "client_order_id": order.client_order_id,
        }
        if order.limit_price is None:
            return MarketOrderRequest(**fields)
        return LimitOrderRequest(limit_price=order.limit_price, **fields)

    def _sync(self, what: str, fn: Callable[[TradingClient], T]) -> T:
        """A call from the caller's thread; API refusals become :class:`AlpacaError`."""
        try:
            return self._api.call(what, fn)
        except APIError as err:
            status = err.status_code
            if status in (401, 403):
                raise AlpacaAuthError(
                    f"Alpaca at {self.base_url} refused the keys ({status}: {_message(err)}); "
                    "check key_id/secret_key and that they are paper keys for this endpoint",
                    status,
                ) from None
            raise AlpacaError(f"{what}: {_message(err)} ({status})", status) from None

    def _check_account(self) -> None:
        account = self._sync("GET /v2/account", lambda c: c.get_account())
        if account.trading_blocked or account.account_blocked:
            raise AlpacaError(f"Alpaca account at {self.base_url} is blocked from trading")
        log.info(
            "alpaca account at %s: %s, buying power %s",
            self.base_url,
            account.status.value,
            account.buying_power,
        )
