"""Thin Prefect tasks over the engine: each is one visible step of a session in the UI."""
