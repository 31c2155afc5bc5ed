"""The session's one parameter object, validated before anything starts.

This is what a Prefect deployment's parameter form shows: the model is a plain ``Union``
of the registered models' params classes (one tab per model in the UI, no
discriminator: see docs/architecture.md), everything else a nested, frozen pydantic model
with bounds, so a bad value is refused by the schema before a run is created and by
:func:`parse_session_config` with the field named when called from code or the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

import models


def form_bounds(schema: dict[str, Any], *_: Any) -> None:
    """Give every exclusive bound an inclusive twin the Prefect form can enforce.

    The v2 run form sets a number input's ``min``/``max`` from ``minimum``/``maximum``
    only, so pydantic's ``gt=0`` (``exclusiveMinimum``) let a negative lot size be typed.
    For integers ``> k`` is exactly ``>= k+1``, so it is replaced; floats keep the
    exclusive bound (the server still refuses 0) and gain the inclusive one for the form.
    """
    for prop in schema.get("properties", {}).values():
        for each in prop.get("anyOf", [prop]):
            integer = each.get("type") == "integer"
            for exclusive, inclusive, step in (
                ("exclusiveMinimum", "minimum", 1),
                ("exclusiveMaximum", "maximum", -1),
            ):
                if exclusive in each and inclusive not in each:
                    bound = each.pop(exclusive) if integer else each[exclusive]
                    each[inclusive] = bound + step if integer else bound


FROZEN = ConfigDict(frozen=True, extra="forbid", json_schema_extra=form_bounds)

_param_classes = tuple(models.params_classes())
ModelChoice = Union[_param_classes] if len(_param_classes) > 1 else _param_classes[0]  # noqa: UP007


DEFAULT_MODEL: str = _param_classes[0].model_fields["name"].default


class ModelFieldSchema:
    """The model field's JSON schema, shaped so Prefect's 409 names the field at fault.

    Prefect checks a run's parameters with jsonschema and reports its ``best_match``. For
    an ``anyOf`` that descends into the branches only when one error there is deeper than
    all others; pydantic's ``name: const`` fails at ``model.name`` in every other branch,
    so those tie and the 409 says only "not valid under any of the given schemas". Here
    each branch refuses the *other* models' names at its own level instead (``if`` name is
    another model's, ``then: false``), which leaves the chosen model's bad field the
    deepest error; and an ``enum`` of every name beside the ``anyOf`` makes an unknown
    model fail with the valid names listed. A named model's unknown field fails one level
    deeper, at the field, saying whose fields are valid: its ``not`` sits in the branch's
    ``else`` (the name is its own), so the other branches, refused by ``then: false``, add no
    tie at that depth; ``additionalProperties: false`` stays for the form and nameless
    configs. The ``anyOf`` itself stays: the UI's one tab per model depends on it
    (docs/architecture.md).
    """

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        names = [cls.model_fields["name"].default for cls in _param_classes]
        for ref in schema.get("anyOf", [schema]):
            branch = handler.resolve_ref_schema(ref)
            form_bounds(branch)
            own = branch["properties"]["name"].pop("const")
            others = [name for name in names if name != own]
            fields = ", ".join(branch["properties"])
            unknown = {"description": f"not a field of the {own} model, whose fields are: {fields}"}
            own_fields_only = {
                "if": {"required": ["name"]},
                "then": {
                    "properties": dict.fromkeys(branch["properties"], True),
                    "additionalProperties": {"not": unknown},
                },
            }
            if others:
                branch["if"] = {"properties": {"name": {"enum": others}}, "required": ["name"]}
                branch["then"] = False
                branch["else"] = own_fields_only
            else:
                branch.update(own_fields_only)
        return {**schema, "properties": {"name": {"enum": names}}}


class FeedConfig(BaseModel):
    """Where ticks come from. Keys never go here: they come from the environment or a Secret block."""

    model_config = ConfigDict(FROZEN, title="Feed")

    source: Literal["replay", "iex", "sip", "test", "hub"] = Field(
        "replay",
        title="Source",
        description="replay: the embedded replay server on recorded data; iex/sip/test: Alpaca's live streams; "
        "hub: the local `tradeday hub` sharing the account's one stream (docs/hub.md)",
    )
    recording: str | None = Field(
        None,
        title="Recording",
        description=(
            "Parquet recording to replay (default: the bundled recording, else the hub's "
            "live recording, of the session date)"
        ),
    )
    speed: float | None = Field(
        None,
        gt=0,
        title="Replay speed",
        description="Multiple of real time; empty = as fast as possible",
    )
    url: str | None = Field(
        None,
        title="Stream URL",
        description="Override the stream URL (for hub: where `tradeday hub` listens, default ws://127.0.0.1:8766)",
    )
    stale_after_s: float = Field(
        30.0,
        gt=0,
        title="Stale after (s)",
        description="Reconnect when no frame arrives for this long",
    )
    batch: int = Field(100, ge=1, le=10_000, title="Replay messages per frame")


class BrokerConfig(BaseModel):
    """Where orders go: the built-in simulator, or Alpaca paper when keys are configured."""

    model_config = ConfigDict(FROZEN, title="Broker")

    kind: Literal["simulated", "alpaca"] = Field("simulated", title="Broker")
    starting_cash: float = Field(10_000_000.0, gt=0, title="Starting cash")
    latency_ms: float = Field(0.0, ge=0, title="Simulated latency (ms, tick time)")
    slippage_bps: float = Field(0.0, ge=0, title="Simulated slippage (bps)")
    commission_per_share: float = Field(0.0, ge=0, title="Commission per share")
    max_participation: float | None = Field(
        None,
        gt=0,
        le=1,
        title="Max share of a print (simulated)",
        description="An order fills at most this share of each trade's size (bar's volume); "
        "the rest fills on later prints. Empty = orders fill whole",
    )
    alpaca_url: str = Field("https://paper-api.alpaca.markets", title="Alpaca trading API URL")
    owns_account: bool = Field(
        False,
        title="Owns the account",
        description="Flatten by closing every position in the account, not just this session's",
    )
    trade_updates: bool = Field(
        False,
        title="Fills from trade_updates",
        description="Take Alpaca fills from the trade_updates stream (through the hub when "
        "feed.source is 'hub'), polling only to reconcile; off (default): poll for fills",
    )
    trade_updates_url: str | None = Field(
        None,
        title="trade_updates URL",
        description="Override the stream URL (default: alpaca_url's /stream, or the hub's "
        "/stream when feed.source is 'hub')",
    )

    @field_validator("trade_updates_url")
    @classmethod
    def _websocket_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise ValueError(
                f"{value!r} is not a websocket URL: use wss://host/stream (or ws:// for a "
                "local server), or leave it empty for the default"
            )
        return value


class RiskLimits(BaseModel):
    """Checked for every order between the model and the broker."""

    model_config = ConfigDict(FROZEN, title="Risk limits")

    max_order_qty: int = Field(1_000, gt=0, title="Max order quantity")
    max_position: int = Field(10_000, gt=0, title="Max position per symbol")
    max_gross_notional: float = Field(50_000_000.0, gt=0, title="Max gross notional")
    capital: float = Field(
        10_000_000.0, gt=0, title="Allocated capital", description="Cash this model may commit"
    )
    max_orders_per_minute: int = Field(600, gt=0, title="Max orders per minute")
    max_daily_loss: float = Field(
        100_000.0,
        gt=0,
        title="Max daily loss",
        description="Kill switch: flatten and stop for the day",
    )
    max_ledger_outage_minutes: float = Field(
        10.0,
        gt=0,
        title="Max ledger outage (minutes)",
        description="After the ledger refuses writes this long, only orders that reduce a "
        "position pass; the rows wait in memory, then in the local journal",
    )


class SessionConfig(BaseModel):
    """Everything a trading session needs: the model and its params, and where data and orders go."""

    model_config = ConfigDict(FROZEN, title="Session")

    model: Annotated[ModelChoice, Field(title="Model"), ModelFieldSchema()] = Field(  # type: ignore[valid-type]
        default_factory=lambda: _param_classes[0](), title="Model"
    )
    symbols: list[str] = Field(["ES"], min_length=1, title="Symbols")
    feed: FeedConfig = Field(default_factory=FeedConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    risk: RiskLimits = Field(default_factory=RiskLimits)
    close_buffer_minutes: float = Field(5.0, ge=0, le=120, title="Stop before the close (minutes)")
    heartbeat_seconds: float = Field(60.0, gt=0, title="Heartbeat log every (s)")
    ledger_url: str = Field("sqlite:///data/ledger.sqlite", title="Ledger database URL")
    report_path: str = Field("data/reports.duckdb", title="DuckDB report file")

    @field_validator("model", mode="wrap")
    @classmethod
    def _known_model(cls, value: Any, handler: Any) -> Any:
        """Validate against the named model only, so errors name the model's own field."""
        if isinstance(value, models.ModelParams):
            return value
        if not isinstance(value, dict):
            return handler(value)
        name = value.get("name", DEFAULT_MODEL)
        if name not in models.names():
            raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(models.names())}")
        return models.get(name).params_class.model_validate(value)

    @field_validator("symbols")
    @classmethod
    def _upper_symbols(cls, value: list[str]) -> list[str]:
        cleaned = [s.strip().upper() for s in value]
        if any(not s for s in cleaned):
            raise ValueError("symbols must not be empty strings")
        return cleaned


class ConfigError(ValueError):
    """A bad session parameter, with every offending field named."""


def parse_session_config(data: Any) -> SessionConfig:
    """Validate raw parameters into a :class:`SessionConfig` or raise :class:`ConfigError`."""
    if isinstance(data, SessionConfig):
        return data
    try:
        return SessionConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        lines.append(f"{where or 'config'}: {err['msg']}")
    return "invalid session parameters:\n  " + "\n  ".join(lines)
