"""``tradeday hub``: run the market-data hub in the foreground until SIGTERM or Ctrl-C.

Meant for a supervisor (deployments/systemd/tradeday-hub.service): it logs to stderr, a
heartbeat a minute, and exits non-zero when the upstream refuses it for good (wrong keys,
a plan without the feed, a connection limit that outlasts the retry window), so the
supervisor restarts it and the log says why. The Alpaca keys come from the caller's
``credentials`` loader (the CLI passes ``tasks.credentials.alpaca_credentials``:
environment, then Prefect Secret blocks), so this package imports no Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tradeday import recording
from tradeday.brokers.alpaca import PAPER_URL
from tradeday.brokers.trade_updates import StreamEndpoint, stream_url
from tradeday.feed import ENDPOINTS
from tradeday.hub.recorder import Recorder
from tradeday.hub.server import DEFAULT_PORT, SECRET_VAR, Hub
from tradeday.hub.trade_updates import TradeUpdatesRelay

log = logging.getLogger("tradeday.hub")

HEARTBEAT_S = 60.0
MAKE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tradeday hub",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Hold the account's one Alpaca market-data connection and serve it to "
        "local sessions (feed.source = 'hub'). docs/hub.md",
    )
    p.add_argument("--feed", choices=sorted(ENDPOINTS), default="iex", help="Alpaca stream")
    p.add_argument(
        "--upstream-url",
        help="another Alpaca-compatible stream instead of --feed (a rehearsal: "
        "`tradeday replay-server`, with its key and secret in APCA_API_KEY_ID/APCA_API_SECRET_KEY)",
    )
    p.add_argument(
        "--trading-url",
        help="the Alpaca trading API whose trade_updates stream the hub shares at /stream "
        "(default: Alpaca paper, https://paper-api.alpaca.markets, unless --upstream-url "
        "is given; a rehearsal names its trading test server here)",
    )
    p.add_argument("--no-trade-updates", action="store_true", help="share no trade_updates")
    p.add_argument(
        "--host", default="127.0.0.1", help="listen address (loopback unless --allow-remote)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument(
        "--symbol-limit",
        type=int,
        default=None,
        help="the plan's symbol limit: a session taking the union past it gets 405",
    )
    p.add_argument(
        "--max-pending",
        type=int,
        default=100_000,
        help="messages queued for one session before it is cut with 407 slow client",
    )
    p.add_argument(
        "--record-dir",
        default=str(recording.live_root()),
        help=f"where every streamed day is recorded for replay, a folder per day "
        f"(default ${recording.LIVE_DIR_VAR} or {recording.LIVE_DIR_DEFAULT}, where replays look)",
    )
    p.add_argument("--no-record", action="store_true", help="record nothing")
    p.add_argument(
        "--record-every-s",
        type=float,
        default=60.0,
        help="seconds between recording writes (a kill loses at most this much)",
    )
    p.add_argument(
        "--retry-refused-s",
        type=float,
        default=120.0,
        help="how long a 406 (connection limit) is retried",
    )
    return p


def main(argv: Sequence[str], credentials: Callable[[], Any]) -> int:
    """Parse ``argv``, start the hub, serve until SIGTERM/Ctrl-C; the exit status."""
    args = parser().parse_args(argv)
    secret = os.environ.get(SECRET_VAR, "")
    if not secret:
        sys.exit(
            f"tradeday hub: set {SECRET_VAR}, the local credential sessions authenticate "
            f"with (same value for the hub and the sessions, e.g. in /etc/tradeday/tradeday.env); "
            f"make one with: {MAKE_SECRET}"
        )
    keys = credentials()
    if keys is None:
        sys.exit(
            "tradeday hub: needs Alpaca keys: set APCA_API_KEY_ID and APCA_API_SECRET_KEY, or "
            "create the Prefect Secret blocks alpaca-key-id and alpaca-secret-key"
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)  # a line per connection
    url = args.upstream_url or ENDPOINTS[args.feed]
    trading_url = args.trading_url or (None if args.upstream_url else PAPER_URL)
    trade_updates = (
        None
        if args.no_trade_updates or trading_url is None
        else StreamEndpoint(stream_url(trading_url), keys.key_id, keys.secret_key)
    )
    try:
        hub = Hub(
            url,
            keys.key_id,
            keys.secret_key,
            secret=secret,
            host=args.host,
            port=args.port,
            allow_remote=args.allow_remote,
            max_sessions=args.max_sessions,
            symbol_limit=args.symbol_limit,
            max_pending=args.max_pending,
            retry_refused_s=args.retry_refused_s,
            recorder=None if args.no_record else Recorder(args.record_dir, args.record_every_s),
            trade_updates=trade_updates,
        )
    except ValueError as exc:
        sys.exit(f"tradeday hub: {exc}")
    return serve(hub, url)


def serve(hub: Hub, upstream_url: str) -> int:
    """Run ``hub`` until SIGTERM, Ctrl-C or a fatal upstream error; 1 on the latter."""
    stopped = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set()) if on_main else None
    try:
        with hub:
            log.info("hub on %s, upstream %s; Ctrl-C to stop", hub.url, upstream_url)
            last_beat = time.monotonic()
            with contextlib.suppress(KeyboardInterrupt):
                while not stopped.wait(0.5) and hub.running:
                    if time.monotonic() - last_beat >= HEARTBEAT_S:
                        log.info("heartbeat: %s", heartbeat(hub))
                        last_beat = time.monotonic()
        log.info("hub stopped: %s", heartbeat(hub))
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
    if hub.failure is not None:
        log.error("hub: upstream failed: %s", hub.failure)
        return 1
    return 0


def heartbeat(hub: Hub) -> str:
    s, up = hub.stats, hub.upstream.stats
    union = hub.upstream_subscription()
    return (
        f"sessions={s.active} messages_in={s.messages_in} sent={s.sent} slow_cuts={s.slow_cuts} "
        f"upstream_connects={up.connects} upstream_losses={s.upstream_losses} "
        f"refused={up.refused} symbols={sum(len(v) for v in union.values())}"
        + (f" recorded={hub.recorder.stats.rows}" if hub.recorder is not None else "")
        + (trade_updates_beat(hub.trade_updates) if hub.trade_updates is not None else "")
    )


def trade_updates_beat(relay: TradeUpdatesRelay) -> str:
    s, up = relay.stats, relay.upstream
    return (
        f" trade_updates={'listening' if up.listening else 'down'} "
        f"trade_update_sessions={len(relay.listeners)} routed={s.routed} "
        f"unrouted={s.unrouted} trade_update_drops={up.stats.drops}"
    )
