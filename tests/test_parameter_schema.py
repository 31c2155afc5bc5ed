"""The deployment parameter schema: Prefect's own check names the field, the form gets bounds.

These call the function Prefect's server runs on ``create_flow_run`` (its 409 text is
``Error creating flow run: `` + this message) on the schema Prefect builds from the flow;
tests/test_deployments.py sends the same values to a real server.
"""

from __future__ import annotations

import re

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate

import models
from flows.session import trading_session
from tradeday.config import SessionConfig


@pytest.fixture(scope="module")
def schema() -> dict:
    return parameter_schema(trading_session).model_dump_for_openapi()


def prefect_refusal(schema: dict, model: dict) -> str:
    try:
        validate({"config": {"model": model}}, schema, raise_on_error=True)
    except ValidationError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"name": "volume_modulo", "quantity": -5},
            "Validation failed for field 'config.model.quantity'. "
            "Failure reason: -5 is less than the minimum of 1",
        ),
        (
            {"name": "moody_trader", "lot_size": 0},
            "Validation failed for field 'config.model.lot_size'. "
            "Failure reason: 0 is less than the minimum of 1",
        ),
        (
            {"name": "opening_momentum", "threshold_pct": 99},
            "Validation failed for field 'config.model.threshold_pct'. "
            "Failure reason: 99 is greater than the maximum of 50",
        ),
        (
            {"name": "moody_trader", "mood_swing": "25:00"},
            "Validation failed for field 'config.model.mood_swing'. Failure reason: '25:00' does not match",
        ),
        (
            {"quantity": -5},  # no name: the default model, like SessionConfig
            "Validation failed for field 'config.model.quantity'.",
        ),
    ],
)
def test_a_bad_value_of_a_known_model_names_the_field(schema, model, message):
    assert prefect_refusal(schema, model).startswith(message)
    with pytest.raises(ValueError):  # and pydantic agrees
        SessionConfig.model_validate({"model": model})


def test_an_unknown_model_lists_the_valid_names(schema):
    names = [cls.model_fields["name"].default for cls in models.params_classes()]
    assert prefect_refusal(schema, {"name": "nope"}) == (
        f"Validation failed for field 'config.model.name'. "
        f"Failure reason: 'nope' is not one of {names}"
    )


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"name": "volume_modulo", "foo": 1}, "foo"),
        ({"name": "ma_crossover", "quantity": 3}, "quantity"),  # another model's field
        ({"name": "volume_modulo", "quantity": -5, "foo": 1}, "foo"),
    ],
)
def test_an_unknown_field_of_a_named_model_is_named_with_the_valid_fields(schema, model, field):
    name = model["name"]
    (own,) = [c for c in models.params_classes() if c.model_fields["name"].default == name]
    assert prefect_refusal(schema, model) == (
        f"Validation failed for field 'config.model.{field}'. Failure reason: "
        f"{model[field]!r} should not be valid under {{'description': 'not a field of the "
        f"{name} model, whose fields are: {', '.join(own.model_fields)}'}}"
    )
    with pytest.raises(ValueError, match=field):  # pydantic agrees
        SessionConfig.model_validate({"model": model})


def test_every_model_with_its_defaults_and_its_own_params_passes(schema):
    for cls in models.params_classes():
        assert prefect_refusal(schema, cls().model_dump(mode="json")) == ""
    assert prefect_refusal(schema, {"name": "ma_crossover", "shares": 3}) == ""
    # another model's field is still refused
    assert prefect_refusal(schema, {"name": "ma_crossover", "quantity": 3}) != ""


def test_the_model_field_stays_one_anyof_tab_per_model_without_discriminator(schema):
    field = schema["definitions"]["SessionConfig"]["properties"]["model"]
    refs = [branch["$ref"].rsplit("/", 1)[1] for branch in field["anyOf"]]
    assert refs == [cls.__name__ for cls in models.params_classes()]
    assert "discriminator" not in field and "oneOf" not in field
    for ref in refs:
        branch = schema["definitions"][ref]
        assert branch["title"] and branch["properties"]["name"]["default"]


def test_integer_bounds_are_inclusive_so_the_form_enforces_them(schema):
    defs = schema["definitions"]
    quantity = defs["VolumeModuloParams"]["properties"]["quantity"]
    assert (quantity["minimum"], "exclusiveMinimum" in quantity) == (1, False)
    assert defs["RiskLimits"]["properties"]["max_order_qty"]["minimum"] == 1
    cash = defs["BrokerConfig"]["properties"]["starting_cash"]  # a float keeps > 0 too
    assert (cash["minimum"], cash["exclusiveMinimum"]) == (0, 0)
    assert prefect_refusal(schema, {"name": "volume_modulo", "quantity": 1}) == ""


def test_mood_swing_pattern_accepts_exactly_what_the_model_accepts(schema):
    """The schema's pattern (what the server checks) and the validator (what the model
    runs with) agree on every minute of the day and on malformed times."""
    pattern = schema["definitions"]["MoodyTraderParams"]["properties"]["mood_swing"]["pattern"]
    times = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(60)]
    for value in [*times, "9:45", "12:00:00", "noon", "24:00", "12:60", ""]:
        try:
            SessionConfig.model_validate({"model": {"name": "moody_trader", "mood_swing": value}})
            accepted = True
        except ValueError:
            accepted = False
        assert (re.search(pattern, value) is not None) == accepted, value
    assert sum(re.search(pattern, t) is not None for t in times) == 6 * 60 + 29  # 09:31-15:59
