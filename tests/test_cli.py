"""The command line explains itself: help on every option, models, the calendar, refusals."""

from __future__ import annotations

import pytest
import typer

import models
from tradeday.cli import app, main


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps help text at the terminal width


def test_every_command_and_option_has_help():
    group = typer.main.get_command(app)
    assert set(group.commands) >= {
        "demo",
        "run",
        "models",
        "calendar",
        "replay-server",
        "record",
        "serve",
        "report",
    }
    for name, command in group.commands.items():
        assert command.help and len(command.help) > 20, name
        for param in command.params:
            assert param.help and len(param.help) > 10, f"{name} {param.name}"


def test_top_level_and_serve_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "The ``tradeday`` command." not in out
    assert "calendar" in out and "models" in out
    assert main(["serve", "--help"]) == 0
    assert "PREFECT_API_URL" in capsys.readouterr().out
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "default 2013-09-03" in out and "default ES for a 2013 day" in out


def test_models_lists_each_registered_model_with_params_defaults_and_bounds(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for cls in models.params_classes():
        name = cls.model_fields["name"].default
        assert f"{name}  ({cls.model_config['title']})" in out
        for field in set(cls.model_fields) - {"name"}:
            default = cls.model_fields[field].default
            assert any(
                line.strip().startswith(f"{field} ") and f"default {default!r}" in line
                for line in out.splitlines()
            ), field
    lines = out.splitlines()
    assert "  quantity      integer, default 5, > 0: Shares per order" in lines
    assert any(
        line.startswith("  decision_minutes  integer, default 30, ≥ 1, ≤ 360") for line in lines
    )


def test_calendar_names_holidays_and_early_closes_in_new_york_and_utc(capsys):
    assert main(["calendar", "--from", "2026-11-25", "--to", "2026-11-30"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "2026-11-25 Wed  09:30-16:00 New York (EST)  14:30-21:00 UTC",
        "2026-11-26 Thu  closed: Thanksgiving",
        "2026-11-27 Fri  09:30-13:00 New York (EST)  14:30-18:00 UTC  early close",
        "2026-11-30 Mon  09:30-16:00 New York (EST)  14:30-21:00 UTC",
    ]
    assert main(["calendar", "--from", "2026-03-09", "--to", "2026-03-09"]) == 0
    assert "(EDT)  13:30-20:00 UTC" in capsys.readouterr().out


def test_calendar_refuses_a_range_that_ends_before_it_starts(capsys):
    assert main(["calendar", "--from", "2026-03-09", "--to", "2026-03-01"]) == 2
    assert "--to" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("day", "reason"),
    [("2026-11-26", "(Thanksgiving)"), ("2023-01-16", "Martin Luther King Jr. Day)")],
)
def test_demo_says_the_market_is_closed_before_looking_for_a_recording(tmp_path, day, reason):
    ledger = tmp_path / "l.sqlite"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--date", day, "--ledger-url", f"sqlite:///{ledger}"])
    assert f"market closed {day} " in str(exc.value) and reason in str(exc.value)
    assert "recording" not in str(exc.value)
    assert not ledger.exists()


def test_a_bad_date_names_the_option(capsys):
    assert main(["demo", "--date", "2026-13-01"]) == 2
    err = capsys.readouterr().err
    assert "--date" in err and "2026-13-01" in err


def test_report_refuses_date_and_last_together(capsys):
    assert main(["report", "--date", "2023-01-05", "--last", "3"]) == 2
    assert "not both" in capsys.readouterr().err


def test_params_and_config_that_are_not_json_are_named(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--params", "{quantity: 3}"])
    assert "--params is not JSON" in str(exc.value)
    bad = tmp_path / "session.json"
    bad.write_text("{oops")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--config", str(bad)])
    assert f"--config {bad} is not JSON" in str(exc.value)


def test_demo_on_a_day_without_a_recording_lists_bundled_and_live_days(tmp_path, monkeypatch):
    monkeypatch.setenv("TRADEDAY_LIVE_RECORDINGS", str(tmp_path / "live"))
    ledger = tmp_path / "ledger.sqlite"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--date", "2024-06-05", "--ledger-url", f"sqlite:///{ledger}"])
    text = str(exc.value)
    assert text.startswith("tradeday: --date 2024-06-05: no recording for 2024-06-05; bundled")
    assert f"live days recorded by the hub under {tmp_path / 'live'}" in text
    assert not ledger.exists()
