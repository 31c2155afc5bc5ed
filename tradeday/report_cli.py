"""``tradeday report``: the sessions of some days as a table, and their equity curves as a PNG.

Reads the DuckDB report read-only (it waits while a session is writing it), prints the
``daily_summary`` rows and the net P&L per model with rich, and draws each model's
cumulative net P&L minute by minute across the days with matplotlib (Agg, no display).
"""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from tradeday.plots import save_curves
from tradeday.report import ReportError, model_totals, money, open_report, session_summary


def _net(value: float) -> str:
    style = "green" if value > 0 else "red" if value < 0 else ""
    return f"[{style}]{value:,.2f}[/]" if style else f"{value:,.2f}"


def label(model: str, deployment: str) -> str:
    """A session's strategy: the model, and the deployment when it has one."""
    return f"{model} · {deployment}" if deployment else model


def sessions_table(summary: pd.DataFrame) -> Table:
    table = Table(title="Sessions", title_justify="left")
    table.add_column("Date", no_wrap=True)
    table.add_column("Model", no_wrap=True)
    table.add_column("Status")
    for name in ("Trades", "Fees", "Net P&L", "Max DD", "Sharpe", "Win %"):
        table.add_column(name, justify="right", no_wrap=name == "Net P&L")
    for r in summary.itertuples():
        table.add_row(
            f"{r.session_date:%Y-%m-%d}",
            label(r.model, r.deployment),
            r.status,
            f"{r.trades:,}",
            money(r.fees),
            _net(r.net),
            money(r.max_drawdown),
            "" if pd.isna(r.sharpe) else f"{r.sharpe:.2f}",
            "" if pd.isna(r.win_rate) else f"{r.win_rate:.0%}",
        )
    return table


def models_table(summary: pd.DataFrame) -> Table:
    table = Table(title="Net P&L per model", title_justify="left")
    table.add_column("Model", no_wrap=True)
    for name in ("Sessions", "Trades", "Fees", "Net P&L", "Mean", "Winning"):
        table.add_column(name, justify="right", no_wrap=name == "Net P&L")
    for r in model_totals(summary).itertuples():
        table.add_row(
            r.model,
            str(r.sessions),
            f"{r.trades:,}",
            money(r.fees),
            _net(r.net),
            money(r.mean_net),
            f"{r.winning_days}/{r.sessions}",
        )
    return table


def overnight_table(con, summary: pd.DataFrame) -> Table | None:
    """The nights that began in the summary's sessions, per model and symbol, from the
    report's ``overnight_pnl`` view (quantity × (next open − close)); None without any."""
    rows = con.execute(
        "SELECT model, symbol, count(*) AS nights, sum(qty) AS shares, "
        "sum(overnight_pnl) AS pnl FROM overnight_pnl "
        "WHERE open_price IS NOT NULL AND session_id IN (SELECT unnest(?)) "
        "GROUP BY model, symbol ORDER BY model, symbol",
        [summary["session_id"].tolist()],
    ).fetchall()
    if not rows:
        return None
    table = Table(title="Overnight P&L (close to next open)", title_justify="left")
    table.add_column("Model", no_wrap=True)
    table.add_column("Symbol", no_wrap=True)
    for name in ("Nights", "Shares", "Overnight P&L"):
        table.add_column(name, justify="right", no_wrap=True)
    for model, symbol, nights, shares, pnl in rows:
        table.add_row(model, symbol, str(nights), f"{shares:,}", _net(pnl))
    return table


def plot_equity(con, summary: pd.DataFrame, out: Path) -> Path:
    """Each strategy's cumulative net P&L over the summary's sessions, minute by minute.

    Days are laid end to end (overnight gaps removed); a model's curve starts each day
    at its net P&L so far.
    """
    curve = con.execute(
        "SELECT session_date, e.model, deployment, minute, equity "
        "FROM session_equity e JOIN sessions USING (session_id, session_date) "
        "WHERE session_id IN (SELECT unnest(?)) ORDER BY session_date, minute",
        [summary["session_id"].tolist()],
    ).df()
    days = sorted(curve["session_date"].unique())
    offsets: dict[object, int] = {}
    start = 0
    for day in days:
        minutes = curve.loc[curve["session_date"] == day, "minute"]
        offsets[day] = start
        start += int((minutes.max() - minutes.min()).total_seconds() // 60) + 1
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for (model, deployment), rows in curve.groupby(["model", "deployment"], sort=True):
        carried = 0.0
        xs: list[float] = []
        ys: list[float] = []
        for day, day_rows in rows.groupby("session_date", sort=True):
            first = curve.loc[curve["session_date"] == day, "minute"].min()
            xs += list(offsets[day] + (day_rows["minute"] - first).dt.total_seconds() / 60)
            ys += list(carried + day_rows["equity"])
            carried = ys[-1]
            xs.append(float("nan"))  # no line across the night
            ys.append(float("nan"))
        curves[f"{label(model, deployment)}: {carried:,.2f}"] = (xs, ys)
    span = f"{days[0]:%Y-%m-%d}" + (f" to {days[-1]:%Y-%m-%d}" if len(days) > 1 else "")
    ticks = ([offsets[d] for d in days], [f"{d:%Y-%m-%d}" for d in days])
    save_curves(curves, ticks, f"Equity by minute, {span}", out, separators=ticks[0])
    return out


def plot_path(report_path: Path, summary: pd.DataFrame) -> Path:
    """Next to the report: ``<report>-equity-<first day>[_<last day>].png``."""
    first, last = summary["session_date"].min(), summary["session_date"].max()
    span = f"{first:%Y-%m-%d}" + (f"_{last:%Y-%m-%d}" if last != first else "")
    return report_path.with_name(f"{report_path.stem}-equity-{span}.png")


def run(report_path: str | Path, day: date | None = None, last: int = 5) -> int:
    """Print the sessions of ``day`` (or of the last ``last`` session dates) and plot them."""
    # piped or logged output gets whole rows rather than rich's default of 80 columns
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=120 if wide else None)
    report_path = Path(report_path)
    try:
        con = open_report(report_path)
    except ReportError as exc:
        console.print(f"tradeday report: {exc}")
        return 1
    try:
        summary = session_summary(con, dates=[day] if day else None, last=last)
        if summary.empty:
            console.print(f"tradeday report: no sessions in {report_path} for {day or 'any day'}")
            return 1
        png = plot_equity(con, summary, plot_path(report_path, summary))
        nights = overnight_table(con, summary)
    finally:
        con.close()
    console.print(sessions_table(summary))
    console.print(models_table(summary))
    if nights is not None:
        console.print(nights)
    console.print(f"equity plot: {png}")
    return 0
