"""The hub's one upstream connection: frames from cpquant's client, split into messages.

The feed thread (:class:`tradeday.feed.StreamFeed`, so the reconnect, backoff and auth
checks are the sessions' own) hands every frame to :class:`Router`, which parses it once,
keeps each data message's JSON bytes for the sessions and passes control messages (auth
and subscription replies, errors) to the feed. Routing to sessions happens on the hub's
event loop, never here: this thread must keep reading whatever a session does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from tradeday.decode import parse_rfc3339_ns
from tradeday.replay.wire import Format

log = logging.getLogger(__name__)

KINDS = ("t", "q", "b")


class Item:
    """One upstream data message, encoded at most once per format whatever the number of
    sessions (and not at all for a session that takes its whole frame: see ``Frame``)."""

    __slots__ = ("_json", "_packed", "kind", "message", "symbol")

    def __init__(self, message: dict[str, Any]) -> None:
        self.kind: str = message["T"]
        self.symbol: str = message["S"]
        self.message = message
        self._json: bytes | None = None
        self._packed: bytes | None = None

    def encoded(self, fmt: Format) -> bytes:
        if fmt is Format.JSON:
            if self._json is None:
                self._json = orjson.dumps(self.message)
            return self._json
        if self._packed is None:  # msgpack sessions (alpaca-py) get ``t`` as a Timestamp ext
            message = dict(self.message)
            with contextlib.suppress(TypeError, ValueError, IndexError):  # passed on as is
                message["t"] = msgpack.Timestamp.from_unix_nano(parse_rfc3339_ns(message["t"]))
            self._packed = msgpack.packb(message, datetime=False)
        return self._packed


@dataclass
class RouterStats:
    frames: int = 0
    messages: int = 0
    malformed_frames: int = 0


class Frame:
    """One upstream frame's data messages, and its JSON text when it held nothing else.

    ``body`` is the frame's messages as they came, without the brackets: a JSON session that
    takes every message of the frame gets these very bytes, no re-encoding.
    """

    __slots__ = ("body", "items", "keys")

    def __init__(self, items: list[Item], body: bytes | None) -> None:
        self.items = items
        self.body = body
        self.keys = {(item.kind, item.symbol) for item in items}
        """The frame's distinct (kind, symbol): routing tests these, not every message."""


class Router:
    """The upstream feed's frame sink: data to ``deliver``, control to ``on_control``."""

    def __init__(
        self,
        deliver: Callable[[Frame], None],
        on_control: Callable[[dict[str, Any]], None],
    ) -> None:
        self.deliver = deliver
        self.on_control = on_control
        self.stats = RouterStats()

    def feed(self, raw: str | bytes) -> None:
        self.stats.frames += 1
        try:
            messages = orjson.loads(raw)
        except orjson.JSONDecodeError:  # a bad frame must not end the hub: count and skip
            self.stats.malformed_frames += 1
            log.warning("hub: skipped a malformed upstream frame (%d bytes)", len(raw))
            return
        if not isinstance(messages, list):
            messages = [messages]
        items: list[Item] = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            if message.get("T") in KINDS and isinstance(message.get("S"), str):
                items.append(Item(message))
            else:
                self.on_control(message)
        if items:
            self.stats.messages += len(items)
            whole = len(items) == len(messages)
            text = raw.encode() if isinstance(raw, str) else raw
            body = text[1:-1] if whole and text[:1] == b"[" and text[-1:] == b"]" else None
            self.deliver(Frame(items, body))
