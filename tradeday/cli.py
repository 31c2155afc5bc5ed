"""The ``tradeday`` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import date, datetime, time
from pathlib import Path

DEMO_DATE = date(2013, 9, 3)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def _offline_prefect_defaults() -> None:
    """Quiet, offline-safe Prefect settings unless the user chose otherwise.

    SIGTERM becomes ``SystemExit``: inside a flow Prefect turns it into a
    ``TerminationSignal`` (the session flattens in its ``finally``) and then re-delivers it
    here, so the process still exits, but through ``atexit``, which stops the temporary
    Prefect server instead of orphaning it.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # a first start migrates a new database and compiles Prefect: slow on a busy 2-core box
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _session_config(args: argparse.Namespace):
    from tradeday.config import ConfigError, parse_session_config

    raw: dict = json.loads(Path(args.config).read_text()) if getattr(args, "config", None) else {}
    if args.model:
        model = raw.get("model") or {}
        if model.get("name") != args.model:
            model = {"name": args.model}
        raw["model"] = model
    if getattr(args, "params", None):
        raw["model"] = {**raw.get("model", {}), **json.loads(args.params)}
    for key in ("ledger_url", "report_path"):
        if getattr(args, key, None):
            raw[key] = getattr(args, key)
    if getattr(args, "symbols", None):
        raw["symbols"] = args.symbols.split(",")
    try:
        return parse_session_config(raw)
    except ConfigError as exc:
        sys.exit(f"tradeday: {exc}")


def cmd_demo(args: argparse.Namespace) -> int:
    _offline_prefect_defaults()
    from tradeday import recording

    day = date.fromisoformat(args.date) if args.date else DEMO_DATE
    if not args.symbols:
        args.symbols = "ES" if day.year == 2013 else "AAPL,MSFT,NVDA,IBM"
    config = _session_config(args)
    if config.feed.recording is None and day not in recording.bundled_days():
        days = ", ".join(d.isoformat() for d in recording.bundled_days())
        sys.exit(f"tradeday: --date {day} has no bundled recording; recorded days: {days}")
    from flows.session import trading_session

    print(f"tradeday demo: replaying {day} ({','.join(config.symbols)}) with {config.model.name}…")
    state = trading_session(config=config, session_date=day, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict) or "run_id" not in result:
        print(f"session ended: {state.name}: {state.message or result}")
        return 0 if state.is_completed() else 1
    flat = "flat" if not result["final_positions"] else result["final_positions"]
    position = 0 if not result["final_positions"] else sum(result["final_positions"].values())
    from tradeday.report import shell_command

    report = result["report_path"]
    print(
        f"""
  date            {result["session_date"]}
  model           {result["model"]}  ({result["status"]}: {result["message"]})
  ticks processed {result["ticks"]:,}  (skipped {result["skipped"]:,})
  orders          {result["orders"]:,}
  fills           {result["fills"]:,}
  risk rejections {result["risk_rejections"]:,}
  broker rejects  {result["counters"].get("rejections", 0):,}
  final position  {position}  ({flat})
  realized P&L    {result["realized"]:,.2f}
  net P&L         {result["net"]:,.2f}
  report          {report}
                  ({result["report"]})

Query it in the DuckDB shell, read-only (.quit when done: while it is open, sessions defer
their reports):
  {shell_command(report)}
"""
    )
    return 0 if result["status"] == "completed" and position == 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    _offline_prefect_defaults()
    config = _session_config(args)
    from flows.session import trading_session

    day = date.fromisoformat(args.date) if args.date else None
    state = trading_session(config=config, session_date=day, return_state=True)
    print(f"{state.name}: {state.message or ''}")
    result = state.result(raise_on_failure=False)
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0 if state.is_completed() else 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve every deployment in prefect.yaml from this process (docs/operations.md)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        sys.exit(
            "tradeday serve: no Prefect server configured; start one with `prefect server start` "
            "and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )
    import deployments

    deployments.serve(limit=args.limit)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tradeday.config import SessionConfig
    from tradeday.report_cli import run

    path = args.report_path or SessionConfig.model_fields["report_path"].default
    day = date.fromisoformat(args.date) if args.date else None
    return run(path, day=day, last=args.last)


def cmd_replay_server(args: argparse.Namespace) -> int:
    from tradeday.calendar import EXCHANGE_TZ
    from tradeday.events import datetime_to_ns
    from tradeday.replay.server import serve_forever

    start_ns = None
    if args.start:
        if not args.date:
            sys.exit("tradeday: --start needs --date (the recording's day, America/New_York)")
        local = datetime.combine(date.fromisoformat(args.date), time.fromisoformat(args.start))
        start_ns = datetime_to_ns(local.replace(tzinfo=EXCHANGE_TZ))
    serve_forever(args.data, port=args.port, speed=args.speed, start_ns=start_ns)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from tradeday.calendar import MarketClosed
    from tradeday.record import record_day

    key_id, secret = os.environ.get("APCA_API_KEY_ID"), os.environ.get("APCA_API_SECRET_KEY")
    if not key_id or not secret:
        sys.exit(
            "tradeday: recording needs Alpaca keys: set APCA_API_KEY_ID and APCA_API_SECRET_KEY"
        )
    day = date.fromisoformat(args.date)
    out = args.out or f"data/recordings/{day.isoformat()}.parquet"
    try:
        path, counts = record_day(
            day,
            args.symbols.split(","),
            out,
            key_id=key_id,
            secret_key=secret,
            feed=args.feed,
            base_url=args.data_url,
        )
    except MarketClosed as closed:
        sys.exit(f"tradeday: {closed}")
    for what, n in counts.items():
        print(f"{what}: {n:,}")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tradeday", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def session_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--date", help="session date YYYY-MM-DD (America/New_York)")
        p.add_argument("--model", help="registered model name")
        p.add_argument("--params", help="model params as JSON, e.g. '{\"quantity\": 10}'")
        p.add_argument("--symbols", help="comma-separated symbols")
        p.add_argument("--config", help="JSON file with the whole session parameter")
        p.add_argument("--ledger-url", dest="ledger_url", help="SQLAlchemy URL of the ledger")
        p.add_argument("--report-path", dest="report_path", help="DuckDB report file")

    demo = sub.add_parser("demo", help="replay a recorded day end to end and print a summary")
    session_args(demo)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run one trading_session flow with the given parameters")
    session_args(run)
    run.set_defaults(func=cmd_run)

    rs = sub.add_parser("replay-server", help="serve a recording over the Alpaca stream protocol")
    rs.add_argument("--data", required=True, help="Parquet recording")
    rs.add_argument("--port", type=int, default=8765)
    rs.add_argument(
        "--speed", type=float, default=None, help="× real time; default: as fast as read"
    )
    rs.add_argument("--date", help="with --start: the day to start on (YYYY-MM-DD)")
    rs.add_argument("--start", help="start at this time of day, America/New_York (HH:MM)")
    rs.set_defaults(func=cmd_replay_server)

    rec = sub.add_parser("record", help="record a day of trades and minute bars from Alpaca")
    rec.add_argument("--date", required=True, help="session date YYYY-MM-DD")
    rec.add_argument("--symbols", required=True, help="comma-separated symbols")
    rec.add_argument("--feed", choices=["iex", "sip"], default="iex")
    rec.add_argument("--out", help="Parquet file (default data/recordings/DATE.parquet)")
    rec.add_argument("--data-url", dest="data_url", help="an Alpaca-compatible data API URL")
    rec.set_defaults(func=cmd_record)

    serve = sub.add_parser("serve", help="serve all deployments (prefect.yaml) from one process")
    serve.add_argument("--limit", type=int, default=None, help="max concurrent flow runs")
    serve.set_defaults(func=cmd_serve)

    report = sub.add_parser(
        "report", help="print the sessions in the DuckDB report and plot their equity (PNG)"
    )
    when = report.add_mutually_exclusive_group()
    when.add_argument("--date", help="the sessions of one date YYYY-MM-DD")
    when.add_argument("--last", type=int, default=5, help="the last N session dates (default 5)")
    report.add_argument("--report-path", dest="report_path", help="DuckDB report file")
    report.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
