"""The local market-data hub: one upstream Alpaca connection shared by many sessions."""

from tradeday.hub.server import HUB_KEY, Hub, HubStats

__all__ = ["HUB_KEY", "Hub", "HubStats"]
