"""Local Alpaca market-data v2 replay server: tradeday's offline, embedded data source."""

from tradeday.replay.protocol import ERRORS
from tradeday.replay.server import (
    END_OF_REPLAY,
    Faults,
    ReplayServer,
    ReplayStats,
    serve_forever,
)

__all__ = ["END_OF_REPLAY", "ERRORS", "Faults", "ReplayServer", "ReplayStats", "serve_forever"]
