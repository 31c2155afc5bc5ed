"""Bad parameters are refused before a session starts, with the field named."""

from __future__ import annotations

import pytest

from tradeday.cli import main
from tradeday.config import ConfigError, SessionConfig, parse_session_config


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": {"name": "nope"}}, "model: Value error, unknown model 'nope'; choose one of:"),
        (
            {"model": {"name": "volume_modulo", "quantity": -5}},
            "model.quantity: Input should be greater than 0",
        ),
        (
            {"model": {"name": "volume_modulo", "qty": 5}},
            "model.qty: Extra inputs are not permitted",
        ),
        ({"risk": {"max_position": 0}}, "risk.max_position: Input should be greater than 0"),
        (
            {"feed": {"source": "nasdaq"}},
            "feed.source: Input should be 'replay', 'iex', 'sip', 'test' or 'hub'",
        ),
        ({"symbols": []}, "symbols: List should have at least 1 item"),
    ],
)
def test_bad_parameters_name_the_field(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_session_config(raw)
    assert message in str(err.value)


def test_defaults_are_the_seed_model():
    config = parse_session_config({})
    assert config.model.name == "volume_modulo"
    assert (config.model.sell_modulus, config.model.buy_modulus, config.model.quantity) == (
        17,
        31,
        5,
    )
    assert config.feed.source == "replay" and config.broker.kind == "simulated"


def test_config_is_frozen():
    config = SessionConfig()
    with pytest.raises(Exception, match="frozen"):
        config.symbols = ["X"]  # type: ignore[misc]


def test_cli_refuses_unknown_model_before_starting(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--model", "nope", "--ledger-url", f"sqlite:///{tmp_path}/l.sqlite"])
    assert "unknown model 'nope'" in str(exc.value)
    assert not (tmp_path / "l.sqlite").exists()


def test_cli_refuses_negative_quantity(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "demo",
                "--params",
                '{"quantity": -1}',
                "--ledger-url",
                f"sqlite:///{tmp_path}/l.sqlite",
            ]
        )
    assert "model.quantity: Input should be greater than 0" in str(exc.value)


def test_credentials_never_show_in_repr_or_str():
    from tradeday.session import Credentials

    creds = Credentials("fake-key-example-123456", "secret-example-value-0123456789")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "fake-key" not in text and "secret" not in text


def test_cli_refuses_an_old_name_of_flat_minutes_naming_the_new_one(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "demo",
                "--model",
                "moody_trader",
                "--params",
                '{"calm_minutes": 20}',
                "--ledger-url",
                f"sqlite:///{tmp_path}/l.sqlite",
            ]
        )
    assert "model.calm_minutes: 'calm_minutes' is now called 'flat_minutes'" in str(exc.value)
    assert not (tmp_path / "l.sqlite").exists()


@pytest.mark.slow
def test_a_run_with_an_old_name_of_flat_minutes_fails_before_anything_starts(
    prefect_harness, session_paths, tmp_path
):
    """A deployment's stored parameters from before the rename reach the flow like these: the
    flow run's own parameter validation (a real Prefect run) fails it, naming both fields."""
    from flows.session import trading_session

    config = {"model": {"name": "opening_momentum", "exit_minutes": 20}, **session_paths}
    state = trading_session(config=config, session_date="2013-09-03", return_state=True)
    assert state.is_failed()
    assert (
        "config.model.exit_minutes: 'exit_minutes' is now called 'flat_minutes' (same meaning)"
        in state.message
    )
    assert list(tmp_path.iterdir()) == []  # no ledger, no report: nothing ran
