"""Run trading sessions, list models and market days, replay and record data, serve deployments.

Every command and option says what it does and its default: tradeday COMMAND --help.
"""

# Heavy imports (Prefect, the engine) happen inside the commands, so help does not wait for them.

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from time import time_ns
from typing import Annotated, Any

import typer

DEMO_DATE = date(2013, 9, 3)
DEMO_SYMBOLS_2013 = "ES"
DEMO_SYMBOLS_OTHER = "AAPL,MSFT,NVDA,IBM"

app = typer.Typer(
    name="tradeday",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # a rich traceback would print local variables (keys)
    context_settings={"help_option_names": ["-h", "--help"]},
)

DAY = ["%Y-%m-%d"]


def day_option(flag: str, help: str) -> Any:
    """A YYYY-MM-DD date option, no default shown: every date option's one definition."""
    return typer.Option(flag, formats=DAY, metavar="YYYY-MM-DD", help=help, show_default=False)


class DataFeed(StrEnum):
    iex = "iex"
    sip = "sip"


# Options shared by `demo` and `run`: one definition, one help text.
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Registered model name (`tradeday models` lists them); default: the --config "
        "file's, else volume_modulo.",
        show_default=False,
    ),
]
ParamsOpt = Annotated[
    str | None,
    typer.Option(
        help="""Model params as JSON, merged over the model's defaults, e.g. '{"quantity": 10}'.""",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        help="JSON file with the whole session parameter (the other options override it).",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]
LedgerOpt = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL of the ledger; default sqlite:///data/ledger.sqlite.",
        show_default=False,
    ),
]
ReportOpt = Annotated[
    str | None,
    typer.Option(help="DuckDB report file; default data/reports.duckdb.", show_default=False),
]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def _offline_prefect_defaults(log_level: str) -> None:
    """Offline-safe Prefect settings unless the user chose otherwise.

    SIGTERM becomes ``SystemExit``: inside a flow Prefect turns it into a
    ``TerminationSignal`` (the session flattens in its ``finally``) and then re-delivers it
    here, so the process still exits, but through ``atexit``, which stops the temporary
    Prefect server instead of orphaning it.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", log_level)
    # a first start migrates a new database and compiles Prefect: slow on a busy 2-core box
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@contextmanager
def _progress_bar(what: str) -> Iterator[Callable[[float], None]]:
    """A bar on the terminal (stderr) for a fraction 0..1; nothing when output is piped."""
    if not sys.stderr.isatty():
        yield lambda fraction: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeElapsedColumn

    with Progress(
        f"[bold]{what}",
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=1.0)
        yield lambda fraction: progress.update(task, completed=fraction)


def _session_config(
    *,
    config: Path | None,
    model: str | None,
    params: str | None,
    symbols: str | None,
    ledger_url: str | None,
    report_path: str | None,
):
    from tradeday.config import ConfigError, parse_session_config

    try:
        raw: dict = json.loads(config.read_text()) if config else {}
    except json.JSONDecodeError as exc:
        sys.exit(f"tradeday: --config {config} is not JSON: {exc}")
    if model:
        chosen = raw.get("model") or {}
        if chosen.get("name") != model:
            chosen = {"name": model}
        raw["model"] = chosen
    if params:
        try:
            overrides = json.loads(params)
        except json.JSONDecodeError as exc:
            sys.exit(
                f"tradeday: --params is not JSON ({exc}); e.g. --params '{{\"quantity\": 10}}'"
            )
        raw["model"] = {**raw.get("model", {}), **overrides}
    if ledger_url:
        raw["ledger_url"] = ledger_url
    if report_path:
        raw["report_path"] = report_path
    if symbols:
        raw["symbols"] = symbols.split(",")
    try:
        return parse_session_config(raw)
    except ConfigError as exc:
        sys.exit(f"tradeday: {exc}")


def _use_running_prefect_server(api: str = "http://127.0.0.1:4200/api") -> None:
    """Use a local Prefect server already up (`prefect server start`, `make ui`) unless one
    is configured: starting a temporary one is most of the demo's time (9-15 s)."""
    import urllib.request

    if os.environ.get("PREFECT_API_URL"):
        return
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=0.5) as reply:
            if reply.status == 200:
                os.environ["PREFECT_API_URL"] = api
                print(f"tradeday demo: using the Prefect server at {api}")
    except OSError:
        pass  # none running: Prefect starts a temporary one


@app.command()
def demo(
    date_: Annotated[
        datetime | None,
        day_option(
            "--date", help=f"Recorded day to replay YYYY-MM-DD; default {DEMO_DATE} (ES futures)."
        ),
    ] = None,
    model: ModelOpt = None,
    params: ParamsOpt = None,
    symbols: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated symbols; default {DEMO_SYMBOLS_2013} for a 2013 day, "
            f"else {DEMO_SYMBOLS_OTHER}.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    ledger_url: LedgerOpt = None,
    report_path: ReportOpt = None,
    first: Annotated[
        datetime | None,
        day_option(
            "--from",
            help="First day of a range of recorded days to replay in order (with --to), "
            "carrying what the model holds overnight; instead of --date.",
        ),
    ] = None,
    last: Annotated[
        datetime | None,
        day_option("--to", help="Last day of the range (inclusive); with --from."),
    ] = None,
) -> None:
    """Replay a recorded day offline end to end (replay server, simulated broker) and print a summary."""
    from tradeday.calendar import MarketClosed, session_window

    if first or last:
        if not (first and last) or date_:
            sys.exit("tradeday: give --from and --to together, and no --date, to replay a range")
        _demo_range(
            first.date(), last.date(), model, params, symbols, config, ledger_url, report_path
        )
        return
    day = date_.date() if date_ else DEMO_DATE
    try:
        session_window(day)
    except MarketClosed as closed:
        sys.exit(f"tradeday: {closed}: no session to replay; `tradeday calendar` lists sessions")
    _offline_prefect_defaults("WARNING")
    _use_running_prefect_server()
    from tradeday import recording

    symbols = symbols or (DEMO_SYMBOLS_2013 if day.year == 2013 else DEMO_SYMBOLS_OTHER)
    session = _session_config(
        config=config,
        model=model,
        params=params,
        symbols=symbols,
        ledger_url=ledger_url,
        report_path=report_path,
    )
    if session.feed.recording is None:
        try:
            recording.recorded(day)
        except LookupError as missing:
            sys.exit(f"tradeday: --date {day}: {missing}")
    if session.feed.recording is not None and day not in recording.days(session.feed.recording):
        days = ", ".join(d.isoformat() for d in recording.days(session.feed.recording))
        sys.exit(
            f"tradeday: --date {day} is not in {session.feed.recording} (it holds {days or 'nothing'})"
        )
    from flows.session import session_result, trading_session
    from tasks.ui import watch_progress

    print(
        f"tradeday demo: replaying {day} ({','.join(session.symbols)}) with {session.model.name}…"
    )
    with _progress_bar("session") as advance, watch_progress(advance):
        state = trading_session(config=session, session_date=day, return_state=True)
    result = session_result(state)
    if result is None or "run_id" not in result:
        print(
            f"session ended: {state.name}: {state.message or state.result(raise_on_failure=False)}"
        )
        raise typer.Exit(0 if state.is_completed() else 1)
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
    raise typer.Exit(0 if result["status"] == "completed" and position == 0 else 1)


def _demo_range(
    first: date,
    last: date,
    model: str | None,
    params: str | None,
    symbols: str | None,
    config: Path | None,
    ledger_url: str | None,
    report_path: str | None,
) -> None:
    """``demo --from --to``: the replay-range flow, then one line per day and the nights."""
    _offline_prefect_defaults("WARNING")
    _use_running_prefect_server()
    session = _session_config(
        config=config,
        model=model,
        params=params,
        symbols=symbols or (DEMO_SYMBOLS_2013 if first.year == 2013 else DEMO_SYMBOLS_OTHER),
        ledger_url=ledger_url,
        report_path=report_path,
    )
    from flows.replay_range import replay_range_flow
    from tradeday import replay_range
    from tradeday.config import ConfigError
    from tradeday.report import shell_command

    try:
        replay_range.plan(session, first, last)  # refuse a bad range before Prefect starts
    except ConfigError as exc:
        sys.exit(f"tradeday: {exc}")
    print(
        f"tradeday demo: replaying {first} to {last} ({','.join(session.symbols)}) with {session.model.name}…"
    )
    state = replay_range_flow(first=first, last=last, config=session, return_state=True)
    result = state.result(raise_on_failure=False)
    data = result if isinstance(result, dict) else {}
    for day, reason in data.get("closed", {}).items():
        print(f"  {day}  skipped: market closed ({reason})")
    for r in data.get("sessions", []):
        held = r["carried"] or "nothing"
        print(
            f"  {r['session_date']}  {r['status']:9}  net {r['net']:>12,.2f}  held overnight {held}"
        )
    if data.get("stopped") or not state.is_completed():
        print(f"stopped: {data.get('stopped') or state.message}")
    print(
        f"\nOvernight P&L and the range's summary, read-only in the DuckDB shell:\n"
        f"  {shell_command(session.report_path)} -c 'FROM overnight_pnl' -c 'FROM multi_day_summary'"
    )
    raise typer.Exit(0 if state.is_completed() else 1)


@app.command()
def run(
    date_: Annotated[
        datetime | None,
        day_option(
            "--date", help="Session date YYYY-MM-DD (America/New_York); default today in New York."
        ),
    ] = None,
    model: ModelOpt = None,
    params: ParamsOpt = None,
    symbols: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated symbols; default the --config file's, else ES.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    ledger_url: LedgerOpt = None,
    report_path: ReportOpt = None,
) -> None:
    """Run one trading_session flow (live or replay, as the config says), logging at INFO.

    Without PREFECT_API_URL, Prefect starts a temporary local server for this run.
    """
    _offline_prefect_defaults("INFO")
    session = _session_config(
        config=config,
        model=model,
        params=params,
        symbols=symbols,
        ledger_url=ledger_url,
        report_path=report_path,
    )
    from flows.session import session_result, trading_session

    day = date_.date() if date_ else None
    started_ns = time_ns()
    try:
        state = trading_session(config=session, session_date=day, return_state=True)
    except Exception as exc:  # Prefect's engine, e.g. the API gone when it sets the final state
        print(f"the Prefect flow run did not finish cleanly: {type(exc).__name__}: {exc}")
        prefect_ok = False
    else:
        print(f"{state.name}: {state.message or ''}")
        result = session_result(state)
        if result is not None:
            print(json.dumps(result, indent=2, default=str))
        prefect_ok = state.is_completed()
    traded = _ledger_status(session.ledger_url, started_ns)
    if traded is None:  # no session was recorded (a closed day, a refusal): Prefect's word
        raise typer.Exit(0 if prefect_ok else 1)
    if prefect_ok != (traded == "completed"):
        print(f"the ledger says this session ended {traded}; that is the exit status")
    raise typer.Exit(0 if traded == "completed" else 1)


def _ledger_status(ledger_url: str, since_ns: int) -> str | None:
    """The final status of the session this process ran, from the ledger: what the exit code
    reports, since the Prefect state can fail to be set when the API is down (issue 13)."""
    from tradeday.ledger import Ledger

    try:
        with Ledger(ledger_url) as ledger:
            mine = [
                r
                for r in ledger.runs()
                if r.pid == os.getpid()
                and r.host == socket.gethostname()
                and r.started_ns >= since_ns
            ]
    except Exception:  # the ledger unreachable: its rows are journaled; Prefect's state stands
        return None
    return mine[-1].status if mine and mine[-1].status != "running" else None


@app.command()
def models() -> None:
    """List the registered models: each one's params with type, default, bounds and description."""
    from tradeday.model_catalog import describe_models

    print(describe_models())


@app.command("calendar")
def calendar_(
    from_: Annotated[
        datetime | None,
        day_option("--from", help="First day YYYY-MM-DD; default today in New York."),
    ] = None,
    to: Annotated[
        datetime | None,
        day_option("--to", help="Last day YYYY-MM-DD; default two weeks on."),
    ] = None,
) -> None:
    """NYSE sessions in New York time and UTC, holidays by name, early closes."""
    from tradeday.calendar import EXCHANGE_TZ, MarketClosed, exchange_today, trading_days

    start = from_.date() if from_ else exchange_today()
    end = to.date() if to else start + timedelta(days=14)
    if end < start:
        raise typer.BadParameter(f"{end} is before --from {start}", param_hint="'--to'")
    if (end - start).days > 3660:
        raise typer.BadParameter("at most ten years at a time", param_hint="'--to'")
    for day in trading_days(start, end):
        if isinstance(day, MarketClosed):
            print(f"{day.day:%Y-%m-%d %a}  closed: {day.reason}")
            continue
        ny_open, ny_close = (t.astimezone(EXCHANGE_TZ) for t in (day.open, day.close))
        note = "  early close" if day.early_close else ""
        print(
            f"{day.day:%Y-%m-%d %a}  {ny_open:%H:%M}-{ny_close:%H:%M} New York "
            f"({ny_open:%Z})  {day.open:%H:%M}-{day.close:%H:%M} UTC{note}"
        )


@app.command("replay-server")
def replay_server(
    data: Annotated[
        Path, typer.Option(help="Parquet recording to serve.", exists=True, dir_okay=False)
    ],
    port: Annotated[int, typer.Option(help="TCP port to listen on (on --host).")] = 8765,
    speed: Annotated[
        float | None,
        typer.Option(
            help="Multiple of real time; default as fast as the client reads.", show_default=False
        ),
    ] = None,
    date_: Annotated[
        datetime | None,
        day_option("--date", help="With --start: the recording's day to start on YYYY-MM-DD."),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="Start at this time of day, America/New_York (HH:MM); needs --date.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; a non-loopback one needs --allow-remote.")
    ] = "127.0.0.1",
    allow_remote: Annotated[
        bool, typer.Option(help="Allow binding a non-loopback --host (anyone there can connect).")
    ] = False,
    key: Annotated[
        str, typer.Option(help="Key clients must authenticate with (402 auth failed otherwise).")
    ] = "replay",
    secret: Annotated[
        str,
        typer.Option(
            envvar="TRADEDAY_REPLAY_SECRET",
            help="Secret clients must authenticate with; also from TRADEDAY_REPLAY_SECRET.",
        ),
    ] = "replay",
    max_connections: Annotated[
        int,
        typer.Option(
            min=1, help="Authenticated connections at once; more get 406, as on Alpaca's plans."
        ),
    ] = 1,
    symbol_limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Distinct symbols a connection may subscribe to; more get 405. Default: no limit.",
            show_default=False,
        ),
    ] = None,
    auth_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds a client has to authenticate (404 after).")
    ] = 10.0,
    batch: Annotated[int, typer.Option(min=1, help="Data messages per websocket frame.")] = 100,
    drop_after: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Fault: after data message N, cut the TCP connection (the client sees 1006).",
            show_default=False,
        ),
    ] = None,
    drop_every: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Fault: cut again every M messages after --drop-after (alone: first at M).",
            show_default=False,
        ),
    ] = None,
    silent_after: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Fault: after data message N, send nothing for --silent-for seconds "
            "(a stale connected stream).",
            show_default=False,
        ),
    ] = None,
    silent_for: Annotated[
        float, typer.Option(min=0.0, help="Fault: seconds of silence after --silent-after.")
    ] = 0.0,
    malformed_after: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Fault: after data message N, send one bad frame per --malformed.",
            show_default=False,
        ),
    ] = None,
    malformed: Annotated[
        list[str] | None,
        typer.Option(
            help="Fault: the bad frame, repeatable: truncated (default), unknown_type, "
            "missing_fields or non_monotonic.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a recording over Alpaca's market-data stream protocol (any Alpaca client connects).

    With the limits and faults below it rehearses Alpaca's own: one connection (406), a
    symbol limit (405), drops, silent streams and bad frames.
    """
    from typing import get_args

    from tradeday.calendar import EXCHANGE_TZ
    from tradeday.events import datetime_to_ns
    from tradeday.replay.server import Faults, Malformed, serve_forever

    start_ns = None
    if start:
        if not date_:
            raise typer.BadParameter(
                "--start needs --date (the recording's day, America/New_York)",
                param_hint="'--start'",
            )
        try:
            at = time.fromisoformat(start)
        except ValueError:
            raise typer.BadParameter(f"{start!r} is not HH:MM", param_hint="'--start'") from None
        local = datetime.combine(date_.date(), at)
        start_ns = datetime_to_ns(local.replace(tzinfo=EXCHANGE_TZ))
    kinds = tuple(malformed or ["truncated"])
    if bad := [k for k in kinds if k not in get_args(Malformed)]:
        raise typer.BadParameter(
            f"{bad[0]!r} is not one of {', '.join(get_args(Malformed))}",
            param_hint="'--malformed'",
        )
    if malformed and malformed_after is None:
        raise typer.BadParameter(
            "--malformed needs --malformed-after N", param_hint="'--malformed'"
        )
    if silent_for and silent_after is None:
        raise typer.BadParameter("--silent-for needs --silent-after N", param_hint="'--silent-for'")
    faults = Faults(drop_after, drop_every, silent_after, silent_for, malformed_after, kinds)
    serve_forever(
        data,
        port=port,
        speed=speed,
        start_ns=start_ns,
        host=host,
        allow_remote=allow_remote,
        key=key,
        secret=secret,
        max_connections=max_connections,
        symbol_limit=symbol_limit,
        auth_timeout=auth_timeout,
        batch=batch,
        faults=faults,
    )


@app.command(
    add_help_option=False,  # --help goes to the hub's own parser, with the options
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def hub(ctx: typer.Context) -> None:
    """Share the account's one Alpaca market-data stream among local sessions (docs/hub.md).

    Its options live in tradeday/hub/main.py: `tradeday hub --help` lists them.
    """
    from tasks.credentials import alpaca_credentials
    from tradeday.hub.main import main as hub_main

    raise typer.Exit(hub_main(ctx.args, alpaca_credentials))


@app.command()
def record(
    date_: Annotated[
        datetime,
        typer.Option(
            "--date",
            formats=DAY,
            metavar="YYYY-MM-DD",
            help="Session date YYYY-MM-DD (America/New_York).",
        ),
    ],
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols, e.g. SPY,QQQ.")],
    feed: Annotated[
        DataFeed, typer.Option(help="Alpaca data feed: iex (free plans) or sip.")
    ] = DataFeed.iex,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Parquet file; default data/recordings/DATE.parquet.", show_default=False
        ),
    ] = None,
    data_url: Annotated[
        str | None,
        typer.Option(
            help="An Alpaca-compatible data API URL; default Alpaca's.", show_default=False
        ),
    ] = None,
) -> None:
    """Record a day of trades and minute bars from Alpaca's data API (keys from APCA_API_KEY_ID/APCA_API_SECRET_KEY)."""
    from tradeday.calendar import MarketClosed
    from tradeday.record import record_day

    key_id, secret = os.environ.get("APCA_API_KEY_ID"), os.environ.get("APCA_API_SECRET_KEY")
    if not key_id or not secret:
        sys.exit(
            "tradeday: recording needs Alpaca keys: set APCA_API_KEY_ID and APCA_API_SECRET_KEY"
        )
    day = date_.date()
    try:
        with _progress_bar("recording") as advance:
            path, counts = record_day(
                day,
                symbols.split(","),
                out or f"data/recordings/{day.isoformat()}.parquet",
                key_id=key_id,
                secret_key=secret,
                feed=feed.value,
                base_url=data_url,
                progress=advance,
            )
    except MarketClosed as closed:
        sys.exit(f"tradeday: {closed}")
    for what, n in counts.items():
        print(f"{what}: {n:,}")
    print(f"wrote {path}")


class Label(StrEnum):
    start = "start"
    end = "end"


@app.command()
def convert(
    csv: Annotated[
        Path, typer.Argument(help="CSV of trades or bars.", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option(help="Parquet recording to write.")],
    symbol: Annotated[
        str | None,
        typer.Option(
            help="Symbol for every row; default the CSV's symbol column.", show_default=False
        ),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option(
            help="Whose wall clock times without a UTC offset are, e.g. America/New_York; "
            "required for such times.",
            show_default=False,
        ),
    ] = None,
    label: Annotated[
        Label, typer.Option(help="Bars only: is a bar stamped at its start or its end?")
    ] = Label.start,
    interval: Annotated[
        str, typer.Option(help="Bars only: the bar length, subtracted when --label end.")
    ] = "1min",
    unit: Annotated[
        str, typer.Option(help="Integer times only: epoch unit, one of s, ms, us, ns.")
    ] = "ns",
) -> None:
    """Convert a CSV of trades or bars into a recording that demo, run and backtests replay.

    Trades need a time column (ts, time, timestamp or datetime), price and size; bars the
    time column and open, high, low, close, volume (or o, h, l, c, v). docs/data.md.
    """
    from tradeday import recording

    try:
        if recording.csv_kind(csv) == "trades":
            table = recording.from_csv(csv, symbol=symbol, tz=tz, unit=unit)
        else:
            table = recording.from_bars_csv(
                csv, symbol=symbol, tz=tz, label=label.value, interval=interval, unit=unit
            )
        path = recording.write(table, out)
    except ValueError as exc:
        sys.exit(f"tradeday convert: {exc}")
    kinds = {"t": "trades", "b": "bars"}
    counts = table.group_by("kind").aggregate([("ts", "count")]).to_pylist()
    what = ", ".join(f"{row['ts_count']:,} {kinds[row['kind']]}" for row in counts)
    days = ", ".join(d.isoformat() for d in recording.days(path))
    symbols = ",".join(sorted(set(table["symbol"].to_pylist())))
    print(f"wrote {path}: {what} of {symbols} on {days} (New York dates)")


@app.command()
def serve(
    limit: Annotated[
        int | None,
        typer.Option(help="Max concurrent flow runs; default no limit.", show_default=False),
    ] = None,
    prefect_yaml: Annotated[
        Path | None,
        typer.Option(
            help="The deployments file; default the repository's prefect.yaml.",
            show_default=False,
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Serve every deployment in prefect.yaml from this process until Ctrl-C.

    Needs a running Prefect server and PREFECT_API_URL pointing at it, e.g.
    `prefect server start` in one terminal, then
    PREFECT_API_URL=http://127.0.0.1:4200/api tradeday serve in another (docs/operations.md);
    or `tradeday ui` (make ui) for both. Parameter edits made in the UI survive a restart
    unless the deployment's prefect.yaml entry changed since.
    """
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        sys.exit(
            "tradeday serve: no Prefect server configured; start one with `prefect server start` "
            "and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )
    import deployments

    deployments.serve(limit=limit, path=prefect_yaml or deployments.PREFECT_YAML)


@app.command()
def ui(
    port: Annotated[
        int | None,
        typer.Option(
            envvar="PREFECT_SERVER_API_PORT",
            help="Port on 127.0.0.1; default 4200 if free, else any free port.",
            show_default=False,
        ),
    ] = None,
    prefect_yaml: Annotated[
        Path | None,
        typer.Option(
            help="The deployments file; default the repository's prefect.yaml.",
            show_default=False,
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """The Prefect UI with tradeday's deployments, in one command (make ui).

    Starts a Prefect server on 127.0.0.1 (its home PREFECT_HOME, default data/prefect),
    serves the deployments and automations on it (tradeday serve), prints the UI's URL, and
    stops both on Ctrl-C or SIGTERM.
    """
    from deployments.ui import run_ui

    home = Path(os.environ.get("PREFECT_HOME") or "data/prefect").resolve()
    raise typer.Exit(run_ui(port, home, prefect_yaml.resolve() if prefect_yaml else None))


def _days_option(value: str | None, flag: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint=flag) from None


@app.command()
def sweep(
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols, e.g. AAPL,MSFT.")],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="YYYY-MM-DD", help="First day of the range.", show_default=False
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="YYYY-MM-DD",
            help="Last day of the range (inclusive).",
            show_default=False,
        ),
    ] = None,
    dates: Annotated[
        str | None,
        typer.Option(help="Comma-separated days instead of --from/--to.", show_default=False),
    ] = None,
    models: Annotated[str, typer.Option(help="Comma-separated model names, or all.")] = "all",
    grid: Annotated[
        str | None,
        typer.Option(
            help='Per-model lists of values, JSON: \'{"ma_crossover": {"fast_window": [3, 5]}}\'.',
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Combinations run at once (processes).", min=1)] = 2,
    path: Annotated[
        str,
        typer.Option(
            help="backtest (no feed) or faithful (the replay server and cpquant's client, "
            "as a daily session); both give the same fills."
        ),
    ] = "backtest",
    report_path: ReportOpt = None,
) -> None:
    """Replay days × models × parameter grids as one Prefect flow and print the comparison."""
    from tradeday import sweep as sweeps
    from tradeday.config import ConfigError, SessionConfig

    start, end = _days_option(from_, "'--from'"), _days_option(to, "'--to'")
    days = [_days_option(d.strip(), "'--dates'") for d in dates.split(",")] if dates else None
    if days and (start or end):
        raise typer.BadParameter("give --dates or --from/--to, not both", param_hint="'--dates'")
    if not days and not (start and end):
        raise typer.BadParameter("give --from and --to, or --dates", param_hint="'--from'")
    try:
        grids = json.loads(grid) if grid else {}
    except json.JSONDecodeError as exc:
        sys.exit(
            f'tradeday: --grid is not JSON ({exc}); e.g. --grid \'{{"ma_crossover": {{"fast_window": [3, 5]}}}}\''
        )
    symbol_list = [s for s in symbols.split(",") if s.strip()]
    try:  # validate everything before Prefect starts
        plan = sweeps.plan(
            models_=models,
            symbols=symbol_list,
            start=start,
            end=end,
            dates=days,
            grids=grids,
            path=path,
        )
    except (ConfigError, ValueError) as exc:
        sys.exit(f"tradeday: {exc}")
    path = report_path or SessionConfig.model_fields["report_path"].default
    print(
        f"tradeday sweep {plan.sweep_id}: {len(plan.combinations)} combinations × "
        f"{len(plan.days)} days = {plan.sessions} sessions"
    )
    for closed in plan.closed:
        print(f"  skipping {closed.day}: market closed ({closed.reason})")
    _offline_prefect_defaults("WARNING")
    from flows.sweep import sweep as sweep_flow
    from tasks.ui import watch_progress
    from tradeday.sweep_report import sweep_markdown

    with _progress_bar("sweep") as advance, watch_progress(advance):
        state = sweep_flow(
            symbols=symbol_list,
            models=models,
            start=start,
            end=end,
            dates=days,
            grid=grids,
            report_path=path,
            max_workers=workers,
            sweep_id=plan.sweep_id,
            path=plan.path,
            return_state=True,
        )
    print(sweep_markdown(path, plan.sweep_id))
    print(
        f"again: tradeday report --sweep {plan.sweep_id}"
        + (f" --report-path {path}" if report_path else "")
    )
    raise typer.Exit(0 if state.is_completed() else 1)


@app.command()
def automations() -> None:
    """Create (or replace) tradeday's automations on the Prefect server, as `tradeday serve` does.

    For the work-pool recipe: run it after `prefect deploy --all` (docs/scaling.md).
    TRADEDAY_NOTIFY_BLOCK names the notification block for alerts (docs/operations.md).
    """
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        sys.exit("tradeday automations: set PREFECT_API_URL to the Prefect server's API")
    from deployments.automations import apply_automations

    for name in apply_automations():
        print(f"automation: {name}")


@app.command()
def report(
    date_: Annotated[
        datetime | None,
        day_option("--date", help="The sessions of one date YYYY-MM-DD (instead of --last)."),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option(help="The last N session dates; default 5.", min=1, show_default=False),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="A sweep's comparison, by its id (tradeday sweep prints it).", show_default=False
        ),
    ] = None,
    report_path: ReportOpt = None,
) -> None:
    """Print the sessions in the DuckDB report and plot their equity (PNG next to the report)."""
    from tradeday.config import SessionConfig
    from tradeday.report_cli import run as print_report

    if date_ and last is not None:
        raise typer.BadParameter("give --date or --last, not both", param_hint="'--last'")
    path = report_path or SessionConfig.model_fields["report_path"].default
    if sweep:
        from tradeday.report import ReportError
        from tradeday.sweep_report import sweep_markdown

        try:
            print(sweep_markdown(path, sweep))
        except ReportError as exc:
            sys.exit(f"tradeday: {exc}")
        raise typer.Exit(0)
    raise typer.Exit(print_report(path, day=date_.date() if date_ else None, last=last or 5))


def main(argv: list[str] | None = None) -> int:
    """The console script, callable from Python: returns the exit status.

    A refusal (``sys.exit("tradeday: ...")``) still raises ``SystemExit`` with its message.
    """
    try:
        app(args=argv, prog_name="tradeday")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise


if __name__ == "__main__":
    sys.exit(main())
