"""The model interface (version 2).

A model is a class with a frozen pydantic ``Params`` and pure callbacks. The engine calls
the callbacks on the feed thread, in event order, on tick time; whatever they return is
sent to the risk gate, never straight to a broker. ``position`` is the model's own signed
position in the event's symbol, as the engine's book knows it after every fill so far.

Version 2 adds what a model may want to hear about its own orders, ``on_fill`` and
``on_reject``, ``before_open`` for orders sent before the open, and
:class:`~tradeday.events.Cancel` among what callbacks return. A
version 1 model is a version 2 model that overrides neither hook, so both are accepted;
the engine calls a hook only when the model overrides it, so the others pay nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from tradeday.events import Bar, Fill, Intent, Order, Quote, SessionWindow, Trade, buy, sell

INTERFACE_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
NO_ORDERS: tuple[Order, ...] = ()


def move(symbol: str, delta: int, tag: str = "") -> Sequence[Order]:
    """The one order that changes a position by ``delta`` (none for 0)."""
    if delta > 0:
        return (buy(symbol, delta, tag=tag),)
    if delta < 0:
        return (sell(symbol, -delta, tag=tag),)
    return NO_ORDERS


def flat_minutes_field() -> Any:
    """The one "be flat before the close" parameter, so every model that has it means the same."""
    return Field(
        15,
        ge=0,
        le=360,
        title="Flat before the close (minutes)",
        description="From this many minutes before the close: hold 0 and send no opening orders",
    )


class ModelParams(BaseModel):
    """Base of every model's parameters: immutable, and unknown fields are an error.

    Subclasses declare ``name: Literal["their_name"] = "their_name"``; that literal is the
    name users choose the model by in the Prefect UI and the CLI. ``renamed`` maps a field's
    old names to its new one, so a stored deployment parameter or a JSON config that still
    uses an old name is refused with both names, not as an anonymous extra field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    renamed: ClassVar[Mapping[str, str]] = {}

    name: str

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_fields(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "renamed_field",
                    "'{old}' is now called '{new}' (same meaning): rename it",
                    {"old": old, "new": new},
                ),
                loc=(old,),
                input=data[old],
            )
            for old, new in cls.renamed.items()
            if old in data
        ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


P = TypeVar("P", bound=ModelParams)


class Model(Generic[P]):
    """Subclass, set ``params_class``, override the callbacks you need, and ``register``."""

    params_class: ClassVar[type[ModelParams]]
    interface_version: ClassVar[int] = INTERFACE_VERSION

    def __init__(self, params: P, symbols: Sequence[str]) -> None:
        self.params = params
        self.symbols = tuple(symbols)

    def warmup(self, history: Sequence[Bar]) -> None:
        """Bars from before the open (recorded in replay, REST history live)."""

    def on_start(self, window: SessionWindow) -> None:
        """The session's open and close, before the first event."""

    def on_trade(self, trade: Trade, position: int) -> Sequence[Intent]:
        return NO_ORDERS

    def on_quote(self, quote: Quote, position: int) -> Sequence[Intent]:
        return NO_ORDERS

    def on_bar(self, bar: Bar, position: int) -> Sequence[Intent]:
        return NO_ORDERS

    def before_open(self, window: SessionWindow, positions: Mapping[str, int]) -> Sequence[Intent]:
        """At the session's start, after ``on_start``: ``positions`` are what the model holds
        from its last session (empty unless it holds overnight). Orders for the opening
        auction (``opg``) go here: Alpaca refuses them from 09:28 ET."""
        return NO_ORDERS

    def on_fill(self, fill: Fill, position: int) -> Sequence[Intent]:
        """One fill (or part) of this model's own order; ``position`` already includes it."""
        return NO_ORDERS

    def on_reject(self, order: Order, reason: str) -> Sequence[Intent]:
        """The risk gate or the broker refused this model's ``order``; ``reason`` says why."""
        return NO_ORDERS


def overnight_allowance(params: ModelParams | Mapping[str, Any]) -> int:
    """The position per symbol a model may hold past its session's end (0: it ends flat).

    A model declares it with a ``max_overnight_position`` field in its params; ``params``
    may also be their dict as the ledger keeps them (a run's ``params``).
    """
    if isinstance(params, Mapping):
        return int(params.get("max_overnight_position", 0) or 0)
    return int(getattr(params, "max_overnight_position", 0))


def overrides(model: Model, hook: str) -> bool:
    """Whether ``model`` overrides ``hook`` (``on_quote``, ``on_fill``, ``warmup``, ...).

    What a model does not override costs nothing: no subscription, no call.
    """
    default = getattr(Model, hook)
    return getattr(type(model), hook, default) is not default  # duck-typed models lack some
