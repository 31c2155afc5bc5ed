"""Alpaca keys from the environment or Prefect Secret blocks, never from parameters."""

from __future__ import annotations

import os

from tradeday.wiring import Credentials

ENV_KEY_ID = "APCA_API_KEY_ID"
ENV_SECRET = "APCA_API_SECRET_KEY"
BLOCK_KEY_ID = "alpaca-key-id"
BLOCK_SECRET = "alpaca-secret-key"


def alpaca_credentials() -> Credentials | None:
    """Keys from ``APCA_API_KEY_ID``/``APCA_API_SECRET_KEY``, else the Secret blocks ``alpaca-key-id``/``alpaca-secret-key``."""
    key_id, secret = os.environ.get(ENV_KEY_ID), os.environ.get(ENV_SECRET)
    if key_id and secret:
        return Credentials(key_id, secret)
    try:
        from prefect.blocks.system import Secret

        return Credentials(Secret.load(BLOCK_KEY_ID).get(), Secret.load(BLOCK_SECRET).get())
    except (ValueError, KeyError):
        return None
