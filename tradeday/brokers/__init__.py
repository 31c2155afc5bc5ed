"""Brokers: where risk-approved orders go and where fills come from."""
