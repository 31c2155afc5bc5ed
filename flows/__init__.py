"""Prefect flows: orchestration only; the work happens in tasks/ and the tradeday engine."""
