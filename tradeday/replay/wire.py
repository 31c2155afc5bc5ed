"""Alpaca market-data v2 wire encoding: recording rows to JSON or msgpack message bytes.

Each data message is encoded on its own, once per format, so a frame for any subscription
is just the chosen messages joined: ``[`` + ``,``-joined JSON + ``]``, or a msgpack array
header + the concatenated msgpack maps. Per-client filtering then costs a list slice.

JSON is built column-wise with Arrow string kernels (a block of 4096 rows at a time), not
a dict per row: that is what lets one server thread outrun cpquant's client. Numbers are
written the way Alpaca's Go encoder writes them (``1646``, not ``1646.0``); strings go
through orjson once per distinct value, so escaping is exact. msgpack clients (alpaca-py)
get a dict per row, packed by msgpack with ``t`` as a Timestamp ext (type -1).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgpack
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tradeday.events import NS_PER_S

KIND_CODES = {"t": 0, "q": 1, "b": 2}


class Format(StrEnum):
    """Frame encoding negotiated by the client's ``Content-Type`` handshake header."""

    JSON = "json"
    MSGPACK = "msgpack"


def rfc3339(ts: int) -> str:
    """``2013-09-03T13:30:00.040000000Z``: RFC 3339, nine fractional digits, as Alpaca sends."""
    seconds = np.datetime_as_string(np.datetime64(ts // NS_PER_S, "s"), unit="s")
    return f"{seconds}.{ts % NS_PER_S:09d}Z"


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch for a ``...Z`` timestamp as produced by ``rfc3339``."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = int(np.datetime64(head, "s").astype("int64"))
    return seconds * NS_PER_S + int((frac or "0").ljust(9, "0")[:9])


def timestamp(ts: int, fmt: Format) -> str | msgpack.Timestamp:
    """The ``t`` field: RFC 3339 text in JSON, a msgpack Timestamp (ext type -1) in msgpack."""
    if fmt is Format.MSGPACK:
        return msgpack.Timestamp.from_unix_nano(ts)
    return rfc3339(ts)


def frame(messages: list[dict[str, Any]], fmt: Format) -> bytes:
    """A frame from message dicts (``t`` already typed for ``fmt``); control messages go
    out as arrays of one, like Alpaca's."""
    if fmt is Format.MSGPACK:
        return msgpack.packb(messages, datetime=False)
    return orjson.dumps(messages)


def join(items: list[bytes], fmt: Format) -> bytes:
    """One frame from individually encoded messages."""
    if fmt is Format.JSON:
        return b"[" + b",".join(items) + b"]"
    n = len(items)
    if n < 16:
        header = bytes((0x90 | n,))
    elif n < 1 << 16:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(items)


class Block:
    """Rows ``[start, stop)`` of a recording, encoded lazily per format for the tape."""

    def __init__(self, table: pa.Table, start: int, stop: int) -> None:
        self.start = start
        self.table = table.slice(start, stop - start).combine_chunks()
        self.ts: np.ndarray = self.table["ts"].to_numpy()
        kinds = self.table["kind"].to_numpy(zero_copy_only=False)
        self.kind_codes = np.select([kinds == k for k in KIND_CODES], list(KIND_CODES.values()))
        self._encoded: dict[Format, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self.ts)

    def encoded(self, fmt: Format) -> list[bytes]:
        """Per-message bytes in ``fmt``, built on first use (most runs need only one format)."""
        items = self._encoded.get(fmt)
        if items is None:
            if fmt is Format.JSON:
                items = _json_messages(self.table)
            else:
                pack = msgpack.Packer(datetime=False).pack  # one per block: not thread-safe
                items = [pack(m) for m in messages(self.table, fmt)]
            self._encoded[fmt] = items
        return items

    def select(self, wanted: dict[str, dict[str, None]]) -> np.ndarray | None:
        """Row offsets a subscription takes (sorted), or None when it takes every row."""
        mask: pa.Array | None = None
        for kind, symbols in wanted.items():
            if not symbols:
                continue
            take = pc.equal(self.table["kind"], kind)
            if "*" not in symbols:
                chosen = pc.is_in(self.table["symbol"], value_set=pa.array(list(symbols)))
                take = pc.and_(take, chosen)
            mask = take if mask is None else pc.or_(mask, take)
        if mask is None:
            return np.empty(0, dtype="int64")
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        return None if len(rows) == len(self) else rows

    def message(self, j: int, fmt: Format, ts: int | None = None) -> dict[str, Any]:
        """Row ``j`` as a message dict, optionally stamped with another time."""
        (message,) = messages(self.table.slice(j, 1), fmt)
        if ts is not None:
            message["t"] = timestamp(ts, fmt)
        return message


def messages(table: pa.Table, fmt: Format) -> list[dict[str, Any]]:
    """Alpaca message dicts for recording rows, ``t`` typed for ``fmt``."""
    n = len(table)
    col = {  # all-null columns (e.g. quote fields in a trades file) skip the Arrow round trip
        name: [None] * n if table[name].null_count == n else _finite(table[name]).to_pylist()
        for name in table.column_names
    }
    stamp = msgpack.Timestamp.from_unix_nano if fmt is Format.MSGPACK else rfc3339
    out: list[dict[str, Any]] = []
    for i, kind in enumerate(col["kind"]):
        head = {"T": kind, "S": col["symbol"][i]}
        if kind == "t":
            body = {
                "i": col["trade_id"][i],
                "x": col["exchange"][i],
                "p": col["price"][i],
                "s": col["size"][i],
                "c": col["conditions"][i] or [],
                "z": col["tape"][i],
            }
        elif kind == "q":
            body = {
                "bx": col["bid_exchange"][i],
                "bp": col["bid_price"][i],
                "bs": col["bid_size"][i],
                "ax": col["ask_exchange"][i],
                "ap": col["ask_price"][i],
                "as": col["ask_size"][i],
                "c": col["conditions"][i] or [],
                "z": col["tape"][i],
            }
        else:
            body = {
                "o": col["open"][i],
                "h": col["high"][i],
                "l": col["low"][i],
                "c": col["close"][i],
                "v": col["volume"][i],
                "n": col["trade_count"][i],
                "vw": col["vwap"][i],
            }
        out.append({**head, **body, "t": stamp(col["ts"][i])})
    return out


def _finite(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """NaN and infinities as null: JSON has no such numbers, and both formats must agree."""
    if not pa.types.is_floating(column.type):
        return column
    return pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))


# Field order per kind, as Alpaca sends them: (wire key, recording column).
FIELDS = {
    "t": (
        ("i", "trade_id"),
        ("x", "exchange"),
        ("p", "price"),
        ("s", "size"),
        ("c", "conditions"),
        ("z", "tape"),
    ),
    "q": (
        ("bx", "bid_exchange"),
        ("bp", "bid_price"),
        ("bs", "bid_size"),
        ("ax", "ask_exchange"),
        ("ap", "ask_price"),
        ("as", "ask_size"),
        ("c", "conditions"),
        ("z", "tape"),
    ),
    "b": (
        ("o", "open"),
        ("h", "high"),
        ("l", "low"),
        ("c", "close"),
        ("v", "volume"),
        ("n", "trade_count"),
        ("vw", "vwap"),
    ),
}


def _json_messages(table: pa.Table) -> list[bytes]:
    """Each row as one JSON object, built column-wise; rows keep their order."""
    n = len(table)
    items: list[bytes] = [b""] * n
    stamps = _json_stamps(table["ts"].to_numpy())
    kinds = table["kind"]
    for kind, fields in FIELDS.items():
        mask = pc.equal(kinds, kind)
        count = pc.sum(mask).as_py() or 0
        if not count:
            continue
        part = table if count == n else table.filter(mask)
        parts: list[Any] = [f'{{"T":"{kind}","S":', _json_values(part["symbol"])]
        for key, column in fields:
            parts += [f',"{key}":', _json_values(part[column])]
        parts += [',"t":', stamps if count == n else stamps.filter(mask), "}"]
        encoded = pc.binary_join_element_wise(*parts, "").cast(pa.binary()).to_pylist()
        if count == n:
            return encoded
        for row, item in zip(
            np.flatnonzero(mask.to_numpy(zero_copy_only=False)), encoded, strict=True
        ):
            items[row] = item
    return items


def _json_stamps(ts: np.ndarray) -> pa.Array:
    """Quoted RFC 3339 strings; whole seconds are formatted once per distinct second."""
    seconds, index = np.unique(ts // NS_PER_S, return_inverse=True)
    text = pa.array(np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s"))
    frac = pc.utf8_lpad(pc.cast(pa.array(ts % NS_PER_S), pa.string()), 9, "0")
    return pc.binary_join_element_wise('"', text.take(pa.array(index)), ".", frac, 'Z"', "")


def _json_values(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """JSON text for each value of a column; null (and NaN/inf, as orjson does) as ``null``."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if len(array) == array.null_count:
        text = pa.nulls(len(array), pa.string())
    elif pa.types.is_floating(kind):
        finite = pc.if_else(pc.is_finite(array), array, pa.scalar(None, kind))
        text = pc.cast(finite, pa.string())
    elif pa.types.is_integer(kind):
        text = pc.cast(array, pa.string())
    elif pa.types.is_list(kind):
        text = pa.array([orjson.dumps(v or []).decode() for v in array.to_pylist()], pa.string())
    else:
        encoded = array.dictionary_encode()
        values = [orjson.dumps(v).decode() for v in encoded.dictionary.to_pylist()]
        text = pa.array(values, pa.string()).take(encoded.indices)
    return pc.fill_null(text, "[]" if pa.types.is_list(kind) else "null")
