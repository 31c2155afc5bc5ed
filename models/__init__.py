"""Trading models: pure classes that turn market data into order intents.

A model imports nothing but ``tradeday.events`` (value types) and pydantic: no Prefect,
no broker, no clock. See docs/models.md for the interface and how to add one.
"""

from models.base import Model, ModelParams
from models.registry import get, names, params_classes, register

__all__ = ["Model", "ModelParams", "get", "names", "params_classes", "register"]
