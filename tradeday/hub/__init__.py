"""The local market-data hub: one upstream Alpaca connection shared by many sessions."""

from tradeday.hub.server import DEFAULT_URL, HUB_KEY, SECRET_VAR, Hub, HubStats

__all__ = ["DEFAULT_URL", "HUB_KEY", "SECRET_VAR", "Hub", "HubStats"]
