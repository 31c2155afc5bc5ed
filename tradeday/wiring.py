"""From a :class:`SessionConfig` to the parts that trade: model, risk gate, broker, book, engine.

Sessions and backtests both build here, so a backtest's orders and fills are a session's:
the same model construction, the same subscriptions, the same stop before the close. The
rules that pick a part (which broker, which account, which market data) live here once.
Nothing here does I/O: brokers connect in ``start``, sources in ``open``.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import models
from models.base import overrides
from tradeday.book import Book
from tradeday.brokers.base import Broker
from tradeday.brokers.simulated import SimulatedBroker
from tradeday.brokers.trade_updates import StreamEndpoint, stream_url
from tradeday.config import SessionConfig
from tradeday.engine import Engine, order_prefix
from tradeday.events import MINUTE_NS, SessionWindow
from tradeday.risk import RiskGate
from tradeday.sources import SOURCES


class Credentials:
    """Alpaca keys; ``repr`` never shows them."""

    __slots__ = ("key_id", "secret_key")

    def __init__(self, key_id: str, secret_key: str) -> None:
        self.key_id = key_id
        self.secret_key = secret_key

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


def needs_credentials(config: SessionConfig) -> bool:
    """Whether this session needs Alpaca keys: for its broker or for its market data."""
    return config.broker.kind == "alpaca" or SOURCES[config.feed.source].needs_keys


def account_of(config: SessionConfig, credentials: Credentials | None) -> str:
    """Which broker account a run trades in: recovery only touches runs of the same account."""
    if config.broker.kind == "simulated":
        return "simulated"
    assert credentials is not None
    digest = hashlib.sha256(credentials.key_id.encode()).hexdigest()[:12]
    return f"{config.broker.alpaca_url}#{digest}"


def trade_updates_endpoint(
    config: SessionConfig, credentials: Credentials, prefix: str | None
) -> StreamEndpoint | None:
    """Where an Alpaca session listens to ``trade_updates``: the hub's stream when its feed
    comes from the hub (the account's one connection; the keys stay in the hub, the session
    names its ``client_order_id`` prefix), else Alpaca's own next to ``alpaca_url``."""
    b = config.broker
    if not b.trade_updates:
        return None
    if config.feed.source != "hub":
        url = b.trade_updates_url or stream_url(b.alpaca_url)
        return StreamEndpoint(url, credentials.key_id, credentials.secret_key)
    from tradeday.hub import DEFAULT_URL, HUB_KEY, SECRET_VAR

    secret = os.environ.get(SECRET_VAR)
    if not secret:
        raise ValueError(
            f"broker.trade_updates through the hub needs the hub's local credential: set "
            f"{SECRET_VAR} (or set broker.trade_updates to false to poll for fills)"
        )
    url = b.trade_updates_url or stream_url(config.feed.url or DEFAULT_URL)
    return StreamEndpoint(url, HUB_KEY, secret, prefix=prefix)


def make_broker(
    config: SessionConfig, credentials: Credentials | None, prefix: str | None = None
) -> Broker:
    """The configured broker, not yet started (no connection, no account check).

    ``prefix`` is the run's ``client_order_id`` prefix: the hub routes this
    session's trade updates by it.
    """
    b = config.broker
    if b.kind == "simulated":
        return SimulatedBroker.from_config(b)
    if credentials is None:
        raise ValueError(
            "broker.kind is 'alpaca' but no Alpaca keys were found: set APCA_API_KEY_ID and "
            "APCA_API_SECRET_KEY, or create the Prefect Secret blocks named in docs/operations.md"
        )
    from tradeday.brokers.alpaca import AlpacaPaperBroker

    return AlpacaPaperBroker(
        credentials.key_id,
        credentials.secret_key,
        base_url=b.alpaca_url,
        trade_updates=trade_updates_endpoint(config, credentials, prefix),
    )


HOOKS = {"t": "on_trade", "q": "on_quote", "b": "on_bar"}  # event kind -> model callback


def handled_kinds(model: models.Model) -> list[str]:
    """The event kinds (``t``, ``q``, ``b``) whose callback the model implements."""
    return [kind for kind, hook in HOOKS.items() if overrides(model, hook)]


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """The market data a session asks for: what its model and its broker use."""

    trades: bool
    quotes: bool
    bars: bool

    @property
    def kinds(self) -> list[str]:
        """The recording's event kinds for these subscriptions (``t``, ``q``, ``b``)."""
        wanted = zip(("t", "q", "b"), (self.trades, self.quotes, self.bars), strict=True)
        return [kind for kind, on in wanted if on]


def subscriptions(model: models.Model, broker: Broker) -> Subscriptions:
    """Trades always (they mark positions); quotes and bars when something uses them."""
    return Subscriptions(
        trades=True,
        quotes=overrides(model, "on_quote") or broker.needs_quotes,
        bars=overrides(model, "on_bar"),
    )


START_LEAD_NS = 5 * MINUTE_NS  # the deployments start sessions at 09:25 ET


def start_ns(window: SessionWindow, tick_clock: bool) -> int:
    """The tick time a session starts at: the wall clock live; in a replay the scheduled
    start, five minutes before the open, so ``before_open`` orders meet Alpaca's cutoffs."""
    return window.open_ns - START_LEAD_NS if tick_clock else time.time_ns()


def stop_at_ns(config: SessionConfig, window: SessionWindow) -> int:
    """When the session stops trading: ``close_buffer_minutes`` before the close."""
    return window.close_ns - int(config.close_buffer_minutes * MINUTE_NS)


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything that trades in one session, wired together and not yet started."""

    model: models.Model
    book: Book
    risk: RiskGate
    broker: Broker
    engine: Engine
    subscriptions: Subscriptions


def build(
    config: SessionConfig,
    window: SessionWindow,
    *,
    run_id: str,
    credentials: Credentials | None = None,
    tick_clock: bool = True,
    broker: Broker | None = None,
) -> Parts:
    """Model, book, risk gate, broker and engine for ``config`` in ``window``.

    ``broker``, when given, is one to keep trading in (a multi-day backtest's account).
    ``tick_clock`` says the events are not on the wall clock (a replay): a broker that
    stamps fills with the wall clock then has them restamped with tick time.
    """
    name = config.model.name
    model = models.get(name)(config.model, config.symbols)
    book = Book(config.broker.starting_cash)
    risk = RiskGate(config.risk, book)
    if broker is None:
        broker = make_broker(config, credentials, prefix=order_prefix(run_id))
    engine = Engine(
        run_id,
        model,
        broker,
        risk,
        book,
        model_name=name,
        stop_at_ns=stop_at_ns(config, window),
        fills_on_tick_time=tick_clock and not broker.tick_time,
    )
    return Parts(model, book, risk, broker, engine, subscriptions(model, broker))
