"""A sweep's rows in the DuckDB report: the ``sweeps`` and ``sweep_results`` tables (schema v4; v6 records the path).

Each write is one transaction that migrates the file first, and a combination's days go in
together: a sweep stopped midway (cancelled, crashed) holds whole combinations only, and
its ``sweeps`` row says how many of how many are done and why it stopped. Rewriting a
combination replaces its rows. Reads go through :func:`tradeday.report.open_report`. The
equity PNG of each model's best set is written next to the report (a Prefect artifact cannot
embed a local file, so the comparison names its path as plain text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd
from matplotlib.figure import Figure

from tradeday import report
from tradeday.plots import save_curves
from tradeday.sweep import DayResult, SweepPlan, compare, results_frame

RESULT_COLUMNS = list(DayResult.__dataclass_fields__)


@contextmanager
def _transaction(path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = report.shell_readable(report.connect(path, read_only=False), path)
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            report.migrate(con)
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()


def start_sweep(path: str | Path, plan: SweepPlan) -> None:
    """Record a sweep as running, before its first combination."""
    closed = {c.day.isoformat(): c.reason for c in plan.closed}
    with _transaction(path) as con:
        con.execute("DELETE FROM sweeps WHERE sweep_id = ?", [plan.sweep_id])
        con.execute(
            "INSERT INTO sweeps VALUES (?, now(), 'running', ?, ?, ?, ?, ?, 0, ?)",
            [
                plan.sweep_id,
                sorted({c.model for c in plan.combinations}),
                list(plan.combinations[0].config.symbols),
                [w.day for w in plan.days],
                json.dumps(closed),
                len(plan.combinations),
                plan.path,
            ],
        )


def write_combination(path: str | Path, sweep_id: str, results: Sequence[DayResult]) -> None:
    """One combination's days, all together, and the sweep's count of done combinations."""
    frame = results_frame(results).rename(columns={"params_json": "params"})
    frame.insert(0, "sweep_id", sweep_id)
    with _transaction(path) as con:
        con.execute(
            "DELETE FROM sweep_results WHERE sweep_id = ? AND params_hash IN (SELECT unnest(?))",
            [sweep_id, sorted(set(frame["params_hash"]))],
        )
        con.register("frame", frame)
        con.execute("INSERT INTO sweep_results BY NAME SELECT * FROM frame")
        con.unregister("frame")
        con.execute(
            "UPDATE sweeps SET done = (SELECT count(DISTINCT params_hash) FROM sweep_results "
            "WHERE sweep_id = ?) WHERE sweep_id = ?",
            [sweep_id, sweep_id],
        )


def finish_sweep(path: str | Path, sweep_id: str, status: str) -> None:
    """Mark a sweep ``completed``, ``cancelled`` or ``failed``."""
    with _transaction(path) as con:
        con.execute("UPDATE sweeps SET status = ? WHERE sweep_id = ?", [status, sweep_id])


def read_sweep(path: str | Path, sweep_id: str) -> tuple[dict, pd.DataFrame]:
    """The sweep's row and its per-day results (columns of :class:`DayResult`)."""
    con = report.open_report(path)
    try:
        row = con.execute("SELECT * FROM sweeps WHERE sweep_id = ?", [sweep_id]).df()
        if row.empty:
            known = [
                r[0]
                for r in con.execute("SELECT sweep_id FROM sweeps ORDER BY created_at").fetchall()
            ]
            raise report.ReportError(
                f"no sweep {sweep_id!r} in {path}; sweeps there: {', '.join(known) or 'none'}"
            )
        daily = con.execute(
            "SELECT * EXCLUDE (sweep_id) FROM sweep_results WHERE sweep_id = ? "
            "ORDER BY model, params_hash, session_date",
            [sweep_id],
        ).df()
    finally:
        con.close()
    daily = daily.rename(columns={"params": "params_json"})
    daily["session_date"] = pd.to_datetime(daily["session_date"]).dt.date
    return row.iloc[0].to_dict(), daily[RESULT_COLUMNS]


def swept(params_json: str) -> str:
    """A parameter set as ``field=value, ...`` (the model's name left out)."""
    return ", ".join(f"{k}={v}" for k, v in json.loads(params_json).items() if k != "name")


def best_curves(daily: pd.DataFrame, table: pd.DataFrame) -> dict[str, list[tuple[object, float]]]:
    """Each model's best set (``table`` from :func:`compare`): its (day, cumulative net)
    after every day, keyed ``model(params)``."""
    curves = {}
    for best in table[table["best"]].itertuples():
        rows = daily[daily["params_hash"] == best.params_hash].sort_values("session_date")
        cumulative = rows["net"].astype(float).cumsum()
        curves[f"{best.model}({swept(best.params)})"] = list(
            zip(rows["session_date"], cumulative, strict=True)
        )
    return curves


def equity_png_path(report_path: str | Path, sweep_id: str) -> Path:
    """Next to the report: ``<report>-sweep-<id>-equity.png``."""
    report_path = Path(report_path)
    return report_path.with_name(f"{report_path.stem}-sweep-{sweep_id}-equity.png")


def plot_best_sets(daily: pd.DataFrame, table: pd.DataFrame, out: Path) -> Figure:
    """The equity PNG: cumulative net per day, one line per model's best parameter set."""
    days = sorted(set(daily["session_date"]))
    at = {day: i for i, day in enumerate(days)}
    curves = {
        f"{name}: {points[-1][1]:,.2f}": ([at[d] for d, _ in points], [v for _, v in points])
        for name, points in best_curves(daily, table).items()
    }
    ticks = (range(len(days)), [f"{d:%Y-%m-%d}" for d in days])
    span = f"{days[0]:%Y-%m-%d} to {days[-1]:%Y-%m-%d}" if days else "no days"
    return save_curves(curves, ticks, f"Best parameter set per model, net by day, {span}", out)


def comparison_markdown(sweep: dict, table: pd.DataFrame, png: Path | None = None) -> str:
    """The comparison artifact: one row per model and parameter set, the best set per model
    in bold, and where the equity PNG is; what ``tradeday report --sweep ID`` prints too."""
    closed = json.loads(sweep["closed_days"] or "{}")
    path = "path not recorded" if pd.isna(sweep["path"]) else f"{sweep['path']} path"
    lines = [
        f"**Sweep {sweep['sweep_id']}** ({path}): {sweep['status']}, {sweep['done']}/"
        f"{sweep['combinations']} combinations, {len(sweep['days'])} days"
        + (
            " (closed: " + ", ".join(f"{d} {why}" for d, why in closed.items()) + ")"
            if closed
            else ""
        ),
        "",
        "| Model | Params | Days | Trades | Net | Mean/day | Std/day | Sharpe | Max drawdown "
        "| Winning days | Best |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.model} | {swept(r.params)} | {r.days} | {r.trades:,} | {report.money(r.net)} "
            f"| {report.money(r.mean_net)} | {report.money(r.std_net)} "
            f"| {'' if pd.isna(r.sharpe) else f'{r.sharpe:.2f}'} | {report.money(r.max_drawdown)} "
            f"| {r.winning_days}/{r.days} | {'**best**' if r.best else ''} |"
        )
    if png is not None:
        lines += ["", f"Equity of each model's best set (PNG, next to the report): {png}"]
    return "\n".join(lines) + "\n"


def sweep_markdown(path: str | Path, sweep_id: str) -> str:
    """:func:`comparison_markdown` of a sweep read back from the report, with its equity
    PNG (re)drawn next to the report when a combination is done."""
    sweep, daily = read_sweep(path, sweep_id)
    table = compare(daily)
    png = None
    if not daily.empty:
        png = equity_png_path(path, sweep_id).resolve()
        plot_best_sets(daily, table, png)
    return comparison_markdown(sweep, table, png)
