"""Peek at a ledger another process is writing, for tests that wait on a running session."""

from __future__ import annotations

from sqlalchemy import create_engine, text


def fill_count(url: str) -> int:
    """Fills in the ledger so far; 0 until the session has created its tables."""
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(text("SELECT count(*) FROM fills")).scalar_one()
    except Exception:  # tables not created yet
        return 0
    finally:
        engine.dispose()
