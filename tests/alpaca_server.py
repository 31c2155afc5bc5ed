"""A local stand-in for Alpaca's trading API v2, served over real HTTP on 127.0.0.1.

The Alpaca broker is tested against this with alpaca-py's own ``TradingClient``, so what is
exercised is the real wire format, auth headers, status codes and pydantic parsing, without
internet or an Alpaca account. Bodies carry the fields alpaca-py's ``Order``, ``Position``,
``TradeAccount``, ``Clock``, ``ClosePositionResponse`` and ``CancelOrderResponse`` require.

Account model (deliberately simple, documented so tests can compute exact numbers): a 1x
account with no margin. Cash moves by ``qty * price`` on every fill; buying power is equity
not already exposed: ``cash - 2 * short cost - cost reserved by open buy orders``, positions
valued at cost. Selling more than the free long quantity is refused unless ``allow_short``.

One position per symbol per account, and Alpaca's rules for it (mimicked here, each with
Alpaca's message; sources: alpacahq/Alpaca-API issues 90, 82 and 250):

- no order crosses zero: with a long position, a sell for more than the long quantity not
  already held by open sell orders is refused, ``403 insufficient qty available for order
  (requested: 15, available: 10)``, shorting enabled or not; the same for a buy against a
  short position. Going from long to short takes two orders: close to zero, then open;
- a sell that opens a short (the position is flat or short) is refused while a buy that
  opens a long in the same symbol is open, ``403 cannot open a short sell while a long buy order is open``, and a
  buy that opens a long while a short sell is open, ``403 cannot open a long buy while a
  short sell order is open`` (an account cannot be long and short one symbol at once);
- ``qty_available`` of a position is its quantity less what open closing orders hold.

Fill modes: ``immediate`` fills a marketable order at ``fill_price`` as it is accepted (the
POST answer is the pre-fill snapshot, as Alpaca's usually is, so clients see the fill by
polling); ``partial`` fills half on acceptance, the next GET of an orders endpoint shows
that, and the GET after it finds the rest filled (so a poller sees both parts); ``manual``
fills only when a test calls :meth:`AlpacaTestServer.fill`.
Time in force, as Alpaca: ``ioc`` cancels at once what its acceptance did not fill (all
of it in ``manual`` mode, half in ``partial`` mode); ``opg`` and ``cls`` orders wait for
their auction, which a test runs with :meth:`AlpacaTestServer.auction`: each fills whole at
the fill price, a limit the price does not reach is canceled. Alpaca's submission cutoffs
for auction orders (09:28 and 15:50 ET) are not checked here: the server has no calendar.
Outside hours (``is_open=False``) orders are accepted and queued, as Alpaca queues them
for the next open; :meth:`AlpacaTestServer.open_market` opens it and fills them.
``fill_price`` is read at each fill and order check: a dict the test may change between
fills, or a function of the symbol. A symbol it does not know is refused as an unknown asset.

The ``trade_updates`` stream is served on the same port at ``/stream``, as Alpaca serves it
next to the REST API (:class:`_TradeUpdates`): every order event the account sees (new, fill,
partial_fill, canceled, expired, rejected) goes to every listening connection in the order
it happened. Tests cut it with :meth:`AlpacaTestServer.cut_trade_updates`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from websockets.exceptions import ConnectionClosed
from websockets.server import ServerProtocol
from websockets.sync.server import ServerConnection

log = logging.getLogger(__name__)

FillMode = Literal["immediate", "partial", "manual"]
PriceSource = Mapping[str, float] | Callable[[str], float]

_NEW_YORK = ZoneInfo("America/New_York")
_OPEN = frozenset({"new", "accepted", "pending_new", "partially_filled"})
_TIME_IN_FORCE = frozenset({"day", "gtc", "opg", "cls", "ioc", "fok"})
_MAX_CLIENT_ORDER_ID = 128

_CODE_UNPROCESSABLE = 40010001
_CODE_UNAUTHORIZED = 40110000
_CODE_FORBIDDEN = 40310000
_CODE_NOT_FOUND = 40410000
_CODE_NOT_CANCELABLE = 42210000


class _ApiError(Exception):
    """An error answer, shaped as Alpaca shapes them: ``{"code": ..., "message": ...}``."""

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, **extra}


def _rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _asset_id(symbol: str) -> str:
    """Stable per symbol, as Alpaca's asset ids are."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-testserver/asset/{symbol}"))


def _num(value: Decimal) -> str:
    """Alpaca sends quantities and prices as decimal strings."""
    return format(value.normalize(), "f")


@dataclass(slots=True)
class _Order:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: int
    limit_price: Decimal | None
    reserve_price: Decimal
    submitted_at: datetime
    updated_at: datetime
    status: str = "new"
    filled_qty: int = 0
    filled_avg_price: Decimal | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    position_intent: str = ""

    @property
    def remaining(self) -> int:
        return self.qty - self.filled_qty

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": _rfc3339(self.submitted_at),
            "updated_at": _rfc3339(self.updated_at),
            "submitted_at": _rfc3339(self.submitted_at),
            "filled_at": _rfc3339(self.filled_at),
            "expired_at": None,
            "canceled_at": _rfc3339(self.canceled_at),
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": _asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": str(self.qty),
            "filled_qty": str(self.filled_qty),
            "filled_avg_price": None
            if self.filled_avg_price is None
            else _num(self.filled_avg_price),
            "order_class": "",
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "time_in_force": self.time_in_force,
            "limit_price": None if self.limit_price is None else _num(self.limit_price),
            "stop_price": None,
            "status": self.status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "position_intent": self.position_intent,
        }


@dataclass(slots=True)
class _Position:
    qty: int = 0
    avg_entry: Decimal = Decimal(0)
    last_price: Decimal = Decimal(0)


@dataclass(slots=True)
class _Fault:
    status: int
    after_processing: bool


@dataclass(slots=True)
class _Book:
    """All account state; every access holds ``lock``."""

    cash: Decimal
    lock: threading.Lock = field(default_factory=threading.Lock)
    orders: dict[str, _Order] = field(default_factory=dict)
    by_client_id: dict[str, _Order] = field(default_factory=dict)
    positions: dict[str, _Position] = field(default_factory=dict)
    partial_rest: dict[str, bool] = field(default_factory=dict)
    """Half-filled order id -> whether a GET has shown it half filled yet."""


class AlpacaTestServer:
    """Alpaca trading API v2 on a real socket; see the module docstring for the rules."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        key_id: str = "test-key",
        secret_key: str = "test-secret",
        fill_price: PriceSource | None = None,
        buying_power: float = 100_000.0,
        fill_mode: FillMode = "immediate",
        allow_short: bool = False,
        is_open: bool = True,
    ) -> None:
        if fill_mode not in ("immediate", "partial", "manual"):
            raise ValueError(f"fill_mode must be immediate, partial or manual, not {fill_mode!r}")
        self._key_id = key_id
        self._secret_key = secret_key
        self._price = fill_price if fill_price is not None else (lambda _symbol: 100.0)
        self.fill_mode: FillMode = fill_mode
        self.allow_short = allow_short
        self.is_open = is_open
        self.trade_updates_outage: tuple[int, int] | None = None
        """(first, last): the stream is cut as the first-th order arrives and accepts
        connections again from the last-th on, to cut it mid-session at a known point."""
        self.latency = 0.0
        self.halt_after_orders: int | None = None
        """Accept this many orders, then refuse every new one with 403, as a venue refuses
        orders in a halted asset: what leaves a session unable to flatten."""
        self.close_after_orders: int | None = None
        """Close the market once this many orders were placed: later ones queue for the next
        open, as orders sent after hours do (a live session stopped after the close)."""
        """Seconds added before each answer, to show that callers do not block on HTTP."""
        self.requests: deque[tuple[str, str]] = deque(maxlen=100_000)
        """(method, path) of the requests received (the latest 100 000), to assert traffic."""
        self._book = _Book(cash=Decimal(str(buying_power)))
        self._faults: list[_Fault] = []
        self._connections: set[socket.socket] = set()
        self._stream = _TradeUpdates(key_id, secret_key)
        self._httpd = _Server((host, port), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long stop() waits for the loop to notice
            name="alpaca-testserver",
            daemon=True,
        )
        self._thread.start()

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL for ``TradingClient(url_override=...)`` (alpaca-py appends ``/v2``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving and cut keep-alive connections so no handler thread lingers."""
        self._httpd.shutdown()
        self._stream.cut(refuse=True)
        with self._book.lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> AlpacaTestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"AlpacaTestServer(url={self.url!r}, fill_mode={self.fill_mode!r})"

    # ----------------------------------------------------------------- test hooks

    @property
    def orders(self) -> list[dict[str, Any]]:
        """Every order accepted, oldest first, as Alpaca would return it."""
        with self._book.lock:
            return [o.to_json() for o in self._book.orders.values()]

    @property
    def positions(self) -> dict[str, int]:
        with self._book.lock:
            return {s: p.qty for s, p in self._book.positions.items() if p.qty}

    @property
    def cash(self) -> float:
        with self._book.lock:
            return float(self._book.cash)

    def fail_next(self, count: int, status: int = 503, after_processing: bool = False) -> None:
        """Answer the next ``count`` requests with ``status``.

        With ``after_processing`` the request takes effect first, as when a response is lost
        on the way back: the case that makes idempotent resubmission necessary.
        """
        with self._book.lock:
            self._faults.extend(_Fault(status, after_processing) for _ in range(count))

    def fill(
        self, client_order_id: str, qty: int | None = None, price: float | None = None
    ) -> None:
        """Fill an open order (all that remains by default) at ``price`` or the fill price."""
        with self._book.lock:
            order = self._book.by_client_id[client_order_id]
            if order.status not in _OPEN:
                raise ValueError(f"order {client_order_id} is {order.status}")
            qty = order.remaining if qty is None else qty
            if not 0 < qty <= order.remaining:
                raise ValueError(f"fill qty {qty} outside 1..{order.remaining}")
            fill_at = self._lookup_price(order.symbol) if price is None else Decimal(str(price))
            self._fill(order, qty, fill_at)

    def open_market(self) -> None:
        """The next open: the clock says open, and the orders queued while closed fill."""
        with self._book.lock:
            self.is_open = True
            for order in list(self._book.orders.values()):
                if order.status in _OPEN and order.time_in_force not in ("opg", "cls"):
                    self._auto_fill(order, self._lookup_price(order.symbol))

    def auction(self, time_in_force: Literal["opg", "cls"]) -> None:
        """Run the opening (``opg``) or closing (``cls``) auction for every order waiting for it."""
        with self._book.lock:
            for order in list(self._book.orders.values()):
                if order.time_in_force != time_in_force or order.status not in _OPEN:
                    continue
                price = self._lookup_price(order.symbol)
                if self._marketable(order, price):
                    self._fill(order, order.remaining, price)
                else:
                    self._cancel(order, "canceled")

    def cancel(self, client_order_id: str, status: str = "canceled") -> None:
        """End an open order as the venue would (``canceled`` or ``expired``)."""
        with self._book.lock:
            self._cancel(self._book.by_client_id[client_order_id], status)

    def reject(self, client_order_id: str) -> None:
        """The venue rejects an open order after Alpaca accepted it (a ``rejected`` event)."""
        with self._book.lock:
            self._cancel(self._book.by_client_id[client_order_id], "rejected")

    @property
    def stream_url(self) -> str:
        """Where alpaca-py's ``TradingStream(url_override=...)`` connects: ``ws://.../stream``."""
        return self.url.replace("http://", "ws://", 1) + "/stream"

    @property
    def trade_updates(self) -> list[dict[str, Any]]:
        """Every trade update sent so far (the ``data`` objects), oldest first."""
        return self._stream.sent()

    @property
    def trade_update_listeners(self) -> int:
        """Connections authenticated and listening to ``trade_updates`` now."""
        return self._stream.listeners()

    def cut_trade_updates(self, refuse: bool = True) -> None:
        """Drop every ``trade_updates`` connection; with ``refuse``, refuse new ones (503)
        until :meth:`restore_trade_updates`. Orders and REST go on as before."""
        self._stream.cut(refuse)

    def restore_trade_updates(self) -> None:
        self._stream.refusing = False

    # ----------------------------------------------------------------- HTTP dispatch

    def _handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._book.lock:
            self.requests.append((method, path))
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None and not fault.after_processing:
            return fault.status, {"code": fault.status * 100000, "message": "injected fault"}
        if (
            headers.get("APCA-API-KEY-ID") != self._key_id
            or headers.get("APCA-API-SECRET-KEY") != self._secret_key
        ):
            return 401, {"code": _CODE_UNAUTHORIZED, "message": "request is not authorized"}
        try:
            payload = json.loads(body) if body else {}
            with self._book.lock:
                result = self._route(method, path, query, payload)
        except _ApiError as err:
            result = (err.status, err.body)
        except json.JSONDecodeError:
            result = (400, {"code": 40010000, "message": "request body format is invalid"})
        except Exception:  # a bug here: answer as Alpaca would, and say so in the log
            log.exception("alpaca test server failed on %s %s", method, path)
            result = (500, {"code": 50010000, "message": "internal server error"})
        if fault is not None:
            return fault.status, {"code": fault.status * 100000, "message": "injected fault"}
        return result

    def _route(
        self, method: str, path: str, query: dict[str, str], payload: Any
    ) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/v2/orders"):
            self._advance_partials()
        match method, path.rstrip("/").split("/")[1:]:
            case "GET", ["v2", "account"]:
                return 200, self._account()
            case "GET", ["v2", "clock"]:
                return 200, self._clock()
            case "POST", ["v2", "orders"]:
                return 200, self._submit(payload)[1]
            case "GET", ["v2", "orders"]:
                return 200, self._list_orders(query)
            case "DELETE", ["v2", "orders"]:
                return 207, self._cancel_all()
            case "GET", ["v2", "orders:by_client_order_id"]:
                order = self._book.by_client_id.get(query.get("client_order_id", ""))
                return 200, self._found(order).to_json()
            case "GET", ["v2", "orders", order_id]:
                return 200, self._found(self._book.orders.get(order_id)).to_json()
            case "DELETE", ["v2", "orders", order_id]:
                order = self._found(self._book.orders.get(order_id))
                if order.status not in _OPEN:
                    raise _ApiError(422, _CODE_NOT_CANCELABLE, f"order is already {order.status}")
                self._cancel(order, "canceled")
                return 204, None
            case "GET", ["v2", "positions"]:
                return 200, [self._position_json(s) for s in self._open_symbols()]
            case "DELETE", ["v2", "positions"]:
                return 207, self._close_all(query.get("cancel_orders", "").lower() == "true")
            case "GET", ["v2", "positions", symbol]:
                if symbol not in self._open_symbols():
                    raise _ApiError(404, _CODE_NOT_FOUND, "position does not exist")
                return 200, self._position_json(symbol)
            case "DELETE", ["v2", "positions", symbol]:
                return 200, self._close_position(symbol).to_json()
        raise _ApiError(404, _CODE_NOT_FOUND, f"no route for {method} {path}")

    # ----------------------------------------------------------------- orders

    def _submit(self, payload: Any) -> tuple[_Order, dict[str, Any]]:
        """Validate and book an order; the answer is its snapshot from before any fill."""
        if not isinstance(payload, dict):
            raise _ApiError(422, _CODE_UNPROCESSABLE, "order must be a JSON object")
        symbol = str(payload.get("symbol") or "")
        side = payload.get("side")
        order_type = payload.get("type")
        tif = payload.get("time_in_force")
        client_order_id = payload.get("client_order_id") or str(uuid.uuid4())
        if not symbol:
            raise _ApiError(422, _CODE_UNPROCESSABLE, "symbol is required")
        if self.halt_after_orders is not None and len(self._book.orders) >= self.halt_after_orders:
            raise _ApiError(403, _CODE_FORBIDDEN, f"asset {symbol} is halted")
        if side not in ("buy", "sell"):
            raise _ApiError(422, _CODE_UNPROCESSABLE, f"invalid side {side!r}")
        if order_type not in ("market", "limit"):
            raise _ApiError(422, _CODE_UNPROCESSABLE, f"order type {order_type!r} not supported")
        if tif not in _TIME_IN_FORCE:
            raise _ApiError(422, _CODE_UNPROCESSABLE, f"invalid time_in_force {tif!r}")
        if len(client_order_id) > _MAX_CLIENT_ORDER_ID:
            raise _ApiError(
                422, _CODE_UNPROCESSABLE, "client_order_id must be no more than 128 characters"
            )
        qty = self._whole_qty(payload.get("qty"))
        limit_price = None
        if order_type == "limit":
            limit_price = self._positive_price(payload.get("limit_price"))
        if client_order_id in self._book.by_client_id:
            raise _ApiError(422, _CODE_UNPROCESSABLE, "client_order_id must be unique")
        if (
            self.close_after_orders is not None
            and len(self._book.orders) >= self.close_after_orders
        ):
            self.is_open = False
        price = self._lookup_price(symbol)
        self._check_funds(symbol, side, qty, limit_price or price)
        now = datetime.now(UTC)
        position = self._book.positions.get(symbol, _Position()).qty
        closing = (position > 0 and side == "sell") or (position < 0 and side == "buy")
        order = _Order(
            id=str(uuid.uuid4()),
            client_order_id=client_order_id,
            symbol=symbol,
            side=side,
            type=order_type,
            time_in_force=tif,
            qty=qty,
            limit_price=limit_price,
            reserve_price=limit_price or price,
            submitted_at=now,
            updated_at=now,
            position_intent=f"{side}_to_{'close' if closing else 'open'}",
        )
        self._book.orders[order.id] = order
        self._book.by_client_id[client_order_id] = order
        answer = order.to_json()
        if self.trade_updates_outage is not None:
            first, last = self.trade_updates_outage
            if len(self._book.orders) == first:
                self._stream.cut(refuse=True)
            elif len(self._book.orders) == last:
                self._stream.refusing = False
        self._stream.publish("new", order)
        self._auto_fill(order, price)
        return order, answer

    @staticmethod
    def _marketable(order: _Order, price: Decimal) -> bool:
        limit = order.limit_price
        return limit is None or (price <= limit if order.side == "buy" else price >= limit)

    def _auto_fill(self, order: _Order, price: Decimal) -> None:
        if order.time_in_force in ("opg", "cls"):
            return  # waits for its auction
        if not self.is_open:
            return  # queued for the next open
        if self.fill_mode != "manual" and self._marketable(order, price):
            if self.fill_mode == "partial" and order.qty > 1:
                self._fill(order, order.qty // 2, price)
                if order.time_in_force != "ioc":
                    self._book.partial_rest[order.id] = False
            else:
                self._fill(order, order.qty, price)
        if order.time_in_force == "ioc" and order.status in _OPEN:
            self._cancel(order, "canceled")

    def _advance_partials(self) -> None:
        """Partial mode: the first look shows half filled, the next one fills the rest."""
        for order_id, shown in list(self._book.partial_rest.items()):
            order = self._book.orders[order_id]
            if not shown:
                self._book.partial_rest[order_id] = True
                continue
            del self._book.partial_rest[order_id]
            if order.status in _OPEN:
                self._fill(order, order.remaining, self._lookup_price(order.symbol))

    def _fill(self, order: _Order, qty: int, price: Decimal) -> None:
        now = datetime.now(UTC)
        total = order.filled_qty + qty
        prior = (order.filled_avg_price or Decimal(0)) * order.filled_qty
        order.filled_avg_price = (prior + price * qty) / total
        order.filled_qty = total
        order.updated_at = now
        if order.remaining == 0:
            order.status, order.filled_at = "filled", now
        else:
            order.status = "partially_filled"
        signed = qty if order.side == "buy" else -qty
        self._book.cash -= price * signed
        position = self._book.positions.setdefault(order.symbol, _Position())
        after = position.qty + signed
        if position.qty == 0 or (position.qty > 0) == (signed > 0):
            position.avg_entry = (position.avg_entry * abs(position.qty) + price * qty) / abs(after)
        elif (after > 0) != (position.qty > 0) and after != 0:
            position.avg_entry = price
        position.qty = after
        position.last_price = price
        if after == 0:
            position.avg_entry = Decimal(0)
        event = "fill" if order.status == "filled" else "partial_fill"
        self._stream.publish(event, order, qty=qty, price=price, position_qty=after)

    def _cancel(self, order: _Order, status: str) -> None:
        if order.status not in _OPEN:
            raise _ApiError(422, _CODE_NOT_CANCELABLE, f"order is already {order.status}")
        now = datetime.now(UTC)
        order.status, order.updated_at, order.canceled_at = status, now, now
        self._stream.publish(status, order)

    def _cancel_all(self) -> list[dict[str, Any]]:
        answers = []
        for order in self._book.orders.values():
            if order.status in _OPEN:
                self._cancel(order, "canceled")
                answers.append({"id": order.id, "status": 200, "body": None})
        return answers

    def _list_orders(self, query: dict[str, str]) -> list[dict[str, Any]]:
        status = query.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise _ApiError(422, _CODE_UNPROCESSABLE, f"invalid status {status!r}")
        after = self._query_time(query, "after")
        until = self._query_time(query, "until")
        symbols = set(query["symbols"].split(",")) if query.get("symbols") else None
        try:
            limit = min(int(query.get("limit", 50)), 500)
        except ValueError:
            raise _ApiError(422, _CODE_UNPROCESSABLE, "invalid limit") from None
        selected = [
            o
            for o in self._book.orders.values()
            if (status == "all" or (o.status in _OPEN) == (status == "open"))
            and (after is None or o.submitted_at > after)
            and (until is None or o.submitted_at <= until)
            and (symbols is None or o.symbol in symbols)
            and query.get("side") in (None, o.side)
        ]
        selected.sort(key=lambda o: o.submitted_at, reverse=query.get("direction") != "asc")
        return [o.to_json() for o in selected[:limit]]

    def _found(self, order: _Order | None) -> _Order:
        if order is None:
            raise _ApiError(404, _CODE_NOT_FOUND, "order not found")
        return order

    # ----------------------------------------------------------------- positions & money

    def _open_symbols(self) -> list[str]:
        return sorted(s for s, p in self._book.positions.items() if p.qty)

    def _held(self, symbol: str, side: str) -> int:
        return sum(
            o.remaining
            for o in self._book.orders.values()
            if o.symbol == symbol and o.side == side and o.status in _OPEN
        )

    def _buying_power(self) -> Decimal:
        short_cost = sum(
            (-p.qty * p.avg_entry for p in self._book.positions.values() if p.qty < 0), Decimal(0)
        )
        reserved = sum(
            (
                o.remaining * o.reserve_price
                for o in self._book.orders.values()
                if o.side == "buy" and o.status in _OPEN
            ),
            Decimal(0),
        )
        return self._book.cash - 2 * short_cost - reserved

    def _check_funds(self, symbol: str, side: str, qty: int, price: Decimal) -> None:
        """Alpaca's pre-trade checks: no order across zero, no long and short at once, money."""
        position = self._book.positions.get(symbol, _Position()).qty
        closing = position > 0 if side == "sell" else position < 0
        if closing:
            held = self._held(symbol, side)
            available = max(abs(position) - held, 0)
            if qty <= available:
                return
            raise _ApiError(
                403,
                _CODE_FORBIDDEN,
                f"insufficient qty available for order (requested: {qty}, available: {available})",
                symbol=symbol,
                available=str(available),
                existing_qty=str(abs(position)),
                held_for_orders=str(held),
            )
        if side == "sell" and not self.allow_short:
            raise _ApiError(
                403,
                _CODE_FORBIDDEN,
                f"insufficient qty available for order (requested: {qty}, available: 0)",
                symbol=symbol,
                available="0",
            )
        other = "buy" if side == "sell" else "sell"
        if any(
            o.symbol == symbol and o.position_intent == f"{other}_to_open" and o.status in _OPEN
            for o in self._book.orders.values()
        ):
            words = ("short sell", "long buy") if side == "sell" else ("long buy", "short sell")
            raise _ApiError(
                403, _CODE_FORBIDDEN, f"cannot open a {words[0]} while a {words[1]} order is open"
            )
        if qty * price > self._buying_power():
            raise _ApiError(403, _CODE_FORBIDDEN, "insufficient buying power")

    def _close_position(self, symbol: str) -> _Order:
        position = self._book.positions.get(symbol, _Position()).qty
        if position == 0:
            raise _ApiError(404, _CODE_NOT_FOUND, "position does not exist")
        side = "sell" if position > 0 else "buy"
        available = abs(position) - self._held(symbol, side)
        if available <= 0:
            raise _ApiError(
                403,
                _CODE_FORBIDDEN,
                f"insufficient qty available for order (requested: {abs(position)}, available: 0)",
                symbol=symbol,
                available="0",
                existing_qty=str(abs(position)),
                held_for_orders=str(abs(position)),
            )
        payload = {"symbol": symbol, "side": side, "type": "market", "time_in_force": "day"}
        return self._submit({**payload, "qty": available})[0]

    def _close_all(self, cancel_orders: bool) -> list[dict[str, Any]]:
        if cancel_orders:
            self._cancel_all()
        answers: list[dict[str, Any]] = []
        for symbol in self._open_symbols():
            try:
                order = self._close_position(symbol)
            except _ApiError as err:
                answers.append({"symbol": symbol, "status": err.status, "body": err.body})
            else:
                answers.append(
                    {"symbol": symbol, "status": 200, "order_id": order.id, "body": order.to_json()}
                )
        return answers

    def _position_json(self, symbol: str) -> dict[str, Any]:
        p = self._book.positions[symbol]
        sign = 1 if p.qty > 0 else -1
        cost = p.avg_entry * p.qty
        value = p.last_price * p.qty
        pl = value - cost
        plpc = pl / abs(cost) if cost else Decimal(0)
        return {
            "asset_id": _asset_id(symbol),
            "symbol": symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "avg_entry_price": _num(p.avg_entry),
            "qty": str(p.qty),
            "qty_available": str(p.qty - self._held(symbol, "sell" if p.qty > 0 else "buy") * sign),
            "side": "long" if p.qty > 0 else "short",
            "market_value": _num(value),
            "cost_basis": _num(cost),
            "unrealized_pl": _num(pl),
            "unrealized_plpc": _num(plpc),
            "unrealized_intraday_pl": _num(pl),
            "unrealized_intraday_plpc": _num(plpc),
            "current_price": _num(p.last_price),
            "lastday_price": _num(p.last_price),
            "change_today": "0",
        }

    def _account(self) -> dict[str, Any]:
        long_value = sum(
            (p.qty * p.last_price for p in self._book.positions.values() if p.qty > 0), Decimal(0)
        )
        short_value = sum(
            (p.qty * p.last_price for p in self._book.positions.values() if p.qty < 0), Decimal(0)
        )
        equity = self._book.cash + long_value + short_value
        buying_power = _num(self._buying_power())
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-testserver/account/{self._key_id}")),
            "account_number": "PA0TESTSERVER",
            "status": "ACTIVE",
            "crypto_status": "INACTIVE",
            "currency": "USD",
            "buying_power": buying_power,
            "regt_buying_power": buying_power,
            "daytrading_buying_power": buying_power,
            "non_marginable_buying_power": buying_power,
            "cash": _num(self._book.cash),
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "portfolio_value": _num(equity),
            "pattern_day_trader": False,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": "2024-01-02T14:30:00Z",
            "trade_suspended_by_user": False,
            "multiplier": "1",
            "shorting_enabled": self.allow_short,
            "equity": _num(equity),
            "last_equity": _num(equity),
            "long_market_value": _num(long_value),
            "short_market_value": _num(short_value),
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "daytrade_count": 0,
        }

    def _clock(self) -> dict[str, Any]:
        """Synthetic times (no calendar here): Alpaca's shape, New York offsets."""
        now = datetime.now(_NEW_YORK)
        in_an_hour = now + timedelta(hours=1)
        tomorrow = now + timedelta(days=1)
        return {
            "timestamp": now.isoformat(),
            "is_open": self.is_open,
            "next_open": (tomorrow if self.is_open else in_an_hour).isoformat(),
            "next_close": (in_an_hour if self.is_open else tomorrow).isoformat(),
        }

    # ----------------------------------------------------------------- parsing

    def _lookup_price(self, symbol: str) -> Decimal:
        try:
            price = self._price[symbol] if isinstance(self._price, Mapping) else self._price(symbol)
        except KeyError:
            raise _ApiError(422, _CODE_UNPROCESSABLE, f"asset {symbol!r} not found") from None
        return Decimal(str(price))

    @staticmethod
    def _whole_qty(raw: Any) -> int:
        try:
            qty = Decimal(str(raw))
        except ArithmeticError:
            raise _ApiError(422, _CODE_UNPROCESSABLE, "qty must be a number") from None
        if not qty.is_finite() or qty <= 0:
            raise _ApiError(422, _CODE_UNPROCESSABLE, "qty must be > 0")
        if qty != qty.to_integral_value():
            raise _ApiError(422, _CODE_UNPROCESSABLE, "fractional qty is not supported here")
        return int(qty)

    @staticmethod
    def _positive_price(raw: Any) -> Decimal:
        try:
            price = Decimal(str(raw))
        except ArithmeticError:
            raise _ApiError(422, _CODE_UNPROCESSABLE, "limit_price must be a number") from None
        if raw is None or not price.is_finite() or price <= 0:
            raise _ApiError(422, _CODE_UNPROCESSABLE, "limit_price must be > 0")
        return price

    @staticmethod
    def _query_time(query: dict[str, str], name: str) -> datetime | None:
        raw = query.get(name)
        if raw is None:
            return None
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise _ApiError(422, _CODE_UNPROCESSABLE, f"invalid {name} {raw!r}") from None
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class _TradeUpdates:
    """Alpaca's ``trade_updates`` websocket, as alpaca-py's ``TradingStream`` speaks it.

    Client ``{"action": "authenticate", "data": {"key_id", "secret_key"}}``, server
    ``{"stream": "authorization", "data": {"status": "authorized"|"unauthorized", ...}}``;
    client ``{"action": "listen", "data": {"streams": ["trade_updates"]}}``, server
    ``{"stream": "listening", "data": {"streams": [...]}}``; then one message per event,
    ``{"stream": "trade_updates", "data": {"event", "order", "timestamp", ...}}``, fills with
    ``price``, ``qty``, ``position_qty`` (decimal strings) and ``execution_id``. Alpaca sends
    binary frames holding JSON, and so does this. :meth:`publish` is called under the
    book's lock, so every listener gets the account's events in the order they happened;
    each connection's own handler thread sends them (a slow client never holds the book).
    """

    def __init__(self, key_id: str, secret_key: str) -> None:
        self._key_id = key_id
        self._secret_key = secret_key
        self._lock = threading.Lock()
        self._listeners: dict[ServerConnection, queue.SimpleQueue[bytes | None]] = {}
        self._sent: list[dict[str, Any]] = []
        self.refusing = False

    def publish(
        self,
        event: str,
        order: _Order,
        *,
        qty: int | None = None,
        price: Decimal | None = None,
        position_qty: int | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "event": event,
            "timestamp": _rfc3339(order.updated_at),
            "order": order.to_json(),
        }
        if qty is not None and price is not None:
            data.update(
                execution_id=str(uuid.uuid4()),
                price=_num(price),
                qty=str(qty),
                position_qty=str(position_qty),
            )
        raw = json.dumps({"stream": "trade_updates", "data": data}).encode()
        with self._lock:
            self._sent.append(data)
            for outbox in self._listeners.values():
                outbox.put(raw)

    def sent(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._sent)

    def listeners(self) -> int:
        with self._lock:
            return len(self._listeners)

    def cut(self, refuse: bool) -> None:
        self.refusing = refuse
        with self._lock:
            cut = list(self._listeners.items())
            self._listeners.clear()
        for ws, outbox in cut:
            outbox.put(None)
            with contextlib.suppress(OSError):
                ws.socket.shutdown(socket.SHUT_RDWR)  # a dead link, not a clean close

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Take over ``handler``'s socket (an upgrade request for ``/stream``) until it closes."""
        ws = ServerConnection(handler.connection, ServerProtocol(), ping_interval=None)
        raw = handler.raw_requestline + b"".join(
            f"{name}: {value}\r\n".encode() for name, value in handler.headers.items()
        )
        with ws.protocol_mutex:  # the request was read already: hand its bytes to websockets
            ws.protocol.receive_data(raw + b"\r\n")
            for event in ws.protocol.events_received():
                ws.process_event(event)
        try:
            ws.handshake(timeout=5)
            if self._authenticate(ws) and self._listen(ws):
                self._send_events(ws)
        except (ConnectionClosed, OSError, TimeoutError, ValueError):
            pass
        finally:
            with self._lock:
                self._listeners.pop(ws, None)
            ws.close()

    def _authenticate(self, ws: ServerConnection) -> bool:
        message = json.loads(ws.recv(timeout=10))
        data = message.get("data") or {}
        ok = message.get("action") == "authenticate" and (
            data.get("key_id"),
            data.get("secret_key"),
        ) == (self._key_id, self._secret_key)
        status = "authorized" if ok else "unauthorized"
        reply = {"stream": "authorization", "data": {"status": status, "action": "authenticate"}}
        ws.send(json.dumps(reply).encode())
        return ok

    def _listen(self, ws: ServerConnection) -> bool:
        message = json.loads(ws.recv(timeout=10))
        streams = (message.get("data") or {}).get("streams")
        if message.get("action") != "listen" or not isinstance(streams, list):
            return False
        listening = [s for s in streams if s == "trade_updates"]
        outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        with self._lock:
            ws.send(json.dumps({"stream": "listening", "data": {"streams": listening}}).encode())
            if listening:
                self._listeners[ws] = outbox
        return bool(listening)

    def _send_events(self, ws: ServerConnection) -> None:
        with self._lock:
            outbox = self._listeners.get(ws)
        while outbox is not None:
            try:
                raw = outbox.get(timeout=0.2)
            except queue.Empty:
                if ws.protocol.state.name == "CLOSED":
                    return
                continue
            if raw is None:
                return
            ws.send(raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: AlpacaTestServer
    ) -> None:
        self.app = app
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.app._book.lock:
            self.app._connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (it timed out) is normal here; anything else is logged."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            log.exception("alpaca test server failed serving %s", client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.app._book.lock:
            self.app._connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive like the real API, and no Nagle delay between header and body writes.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def _serve(self) -> None:
        app = self.server.app
        if self.path == "/stream" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.close_connection = True  # the socket is the websocket's from here on
            if not app._stream.refusing:
                app._stream.serve(self)
                return
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = app._handle(self.command, self.path, self.headers, body)
        if app.latency:
            time.sleep(app.latency)
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests assert on log output, and access lines are noise there."""
