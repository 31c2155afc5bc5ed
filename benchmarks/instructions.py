"""CPU instructions per trade of the hot path, counted by valgrind: the same on any load.

CPU time on a shared 2-vCPU VM moves with the other processes (caches, frequency, steal),
so a code change worth 5 % is invisible in it; an instruction count is repeatable to a few
parts in ten thousand whatever the load. A child Python runs under ``valgrind
--tool=callgrind`` with instrumentation off (imports and set-up at a few times native
speed), and turns it on only around each measured way through a tiny C helper compiled
here from valgrind's own ``callgrind.h`` client requests (cc and valgrind's headers are
needed; nothing of it is in the product). Each way first sees warm-up frames, then the
measured ones; figures are instructions per trade:

- ``json.loads``: the throughput baseline's handler, the yardstick;
- ``decoder alone``: :class:`tradeday.decode.Decoder` with an engine that does nothing;
- ``decoder + engine``: the decoder feeding a real engine built by ``wiring.build`` (the
  ``volume_modulo`` model, risk gate, simulated broker, book), what ``hotpath`` times.

Not in ``make bench``'s suite (it needs valgrind and takes minutes): run it alone,
``.venv/bin/python -m benchmarks.instructions``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

WARMUP = 20
"""Frames each way handles before it is counted: caches filled, as in a long session."""

_HELPER = r"""
#include <valgrind/callgrind.h>
void counting_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void counting_off(const char *name) {
    CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS_AT(name);
}
"""


def _frames(stream: str, measured: int) -> list[str]:
    from benchmarks.hotpath import es_frames, synthetic_frames

    needed = (WARMUP + measured) * 100
    return es_frames(100, needed) if stream == "es" else synthetic_frames(needed)


def _ways() -> dict[str, Callable[[], Callable[[str], object]]]:
    """Each way to handle a frame, built fresh for each stream."""
    from benchmarks.common import es_window, session_config
    from tradeday import wiring
    from tradeday.decode import Decoder

    def decoder_alone() -> Callable[[str], object]:
        return Decoder(lambda events: None, lambda msg: None).feed

    def decoder_engine() -> Callable[[str], object]:
        config = session_config("ws://unused", Path(tempfile.gettempdir()))
        parts = wiring.build(config, es_window(), run_id="instructions")
        return Decoder(parts.engine.on_events, lambda msg: None).feed

    return {
        "json.loads": lambda: json.loads,
        "decoder alone": decoder_alone,
        "decoder + engine": decoder_engine,
    }


def child(frames_path: str, helper: str) -> None:
    """Under valgrind: each stream, each way, counted between the helper's two calls."""
    lib = ctypes.CDLL(helper)
    lib.counting_off.argtypes = [ctypes.c_char_p]
    streams = orjson.loads(Path(frames_path).read_bytes())
    for stream, frames in streams.items():
        warm, measured = frames[:WARMUP], frames[WARMUP:]
        for name, make in _ways().items():
            handle = make()
            for raw in warm:
                handle(raw)
            lib.counting_on()
            for raw in measured:
                handle(raw)
            lib.counting_off(f"{stream}|{name}".encode())


def count(measured: int) -> dict[tuple[str, str], float]:
    """Instructions per trade of each (stream, way)."""
    with tempfile.TemporaryDirectory(prefix="tradeday-instr-") as tmp:
        source = Path(tmp, "helper.c")
        source.write_text(_HELPER)
        helper = Path(tmp, "helper.so")
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", helper, source], check=True)
        streams = {stream: _frames(stream, measured) for stream in ("es", "synthetic")}
        trades = {s: sum(f.count('"T":"t"') for f in fr[WARMUP:]) for s, fr in streams.items()}
        frames_path = Path(tmp, "frames.json")
        frames_path.write_bytes(orjson.dumps(streams))
        out = Path(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--child",
                str(frames_path),
                str(helper),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        figures = {}
        for dump in Path(tmp).glob("callgrind.out.*"):
            text = dump.read_text()
            trigger = re.search(r"^desc: Trigger: Client Request: (.*)$", text, re.M)
            totals = re.search(r"^totals: (\d+)", text, re.M)
            if trigger and totals:
                stream, way = trigger.group(1).split("|")
                figures[stream, way] = int(totals.group(1)) / trades[stream]
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300, help="measured frames of 100 trades")
    parser.add_argument("--child", nargs=2, metavar=("FRAMES", "HELPER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    figures = count(args.frames)
    print(f"CPU instructions per trade, {args.frames} frames of 100 after {WARMUP} warm-up")
    print(f"{'way':<18}{'ES day':>12}{'synthetic':>12}")
    for way in ("json.loads", "decoder alone", "decoder + engine"):
        es, synthetic = figures["es", way], figures["synthetic", way]
        print(f"{way:<18}{es:>12,.0f}{synthetic:>12,.0f}")


if __name__ == "__main__":
    main()
