"""Sweeps: days × models × parameter grids, planned and validated up front, run on the backtest path.

Plain Python (no Prefect): :func:`plan` expands the days (closed ones kept aside with
their reason), the models and each model's grid into combinations and validates every one
exactly as a session's parameters are, so a bad value is refused, with its combination and
field named, before anything runs. :func:`run_combination` trades one combination over its
days on one of two paths: ``backtest`` (the default, :func:`tradeday.backtest.run_config`:
the engine, risk gate and simulated broker a session uses, no feed) or ``faithful`` (a
:class:`~tradeday.session.TradingSession` per day, the daily flow's session code: the
embedded replay server streams the day to cpquant's client); both warm the model up on the
recording's bars before the open as a session does, so both give a session's fills.
:func:`compare` turns the per-day rows into the comparison users read (flows/sweep.py runs
the combinations as Prefect tasks; docs/research.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

import models
from models.base import overnight_allowance, overrides
from tradeday import backtest, wiring
from tradeday.book import Book
from tradeday.calendar import MarketClosed, session_window, trading_days
from tradeday.config import ConfigError, SessionConfig, parse_session_config
from tradeday.events import Bar, SessionWindow
from tradeday.records import FillRecord, OrderRecord
from tradeday.sources import NoData, ReplaySource

DAILY_ANNUALIZATION = math.sqrt(252)  # Sharpe of daily net P&L, annualised over 252 sessions
# where a combination's sessions run: the backtest loop, or the replay server and cpquant
SweepPath = Literal["backtest", "faithful"]
PATHS: tuple[SweepPath, ...] = ("backtest", "faithful")


@dataclass(frozen=True)
class Combination:
    """One model with one parameter set: what a sweep runs over every open day."""

    config: SessionConfig
    grid_values: dict[str, Any]  # the swept fields only (what tells combinations apart)

    @property
    def model(self) -> str:
        return self.config.model.name

    @property
    def params_json(self) -> str:
        """The model's full params (defaults included), as stable JSON."""
        return json.dumps(self.config.model.model_dump(mode="json"), sort_keys=True)

    @property
    def params_hash(self) -> str:
        """Short digest of :attr:`params_json`: the same parameter set has the same hash in
        every sweep, so results can be compared across sweeps."""
        return hashlib.sha256(self.params_json.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        swept = ", ".join(f"{k}={v}" for k, v in self.grid_values.items())
        return f"{self.model}({swept})" if swept else self.model


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep will run, validated."""

    sweep_id: str
    days: list[SessionWindow]
    closed: list[MarketClosed]
    combinations: list[Combination]
    path: SweepPath = "backtest"

    @property
    def sessions(self) -> int:
        return len(self.days) * len(self.combinations)


@dataclass(frozen=True)
class DayResult:
    """One combination's figures on one day: what the ``sweep_results`` table holds."""

    model: str
    params_hash: str
    params_json: str
    session_date: date
    orders: int
    fills: int
    trades: int  # fills of the model's own orders and the closing flatten alike
    realized: float
    fees: float
    net: float
    end_position: int
    stop_reason: str


def expand_days(
    start: date | None = None, end: date | None = None, dates: Sequence[date] | None = None
) -> tuple[list[SessionWindow], list[MarketClosed]]:
    """The sessions of a range (weekends left out) or of a list of dates, and the closed days
    among them with the calendar's reason."""
    if dates is not None:
        if start is not None or end is not None:
            raise ValueError("give either a date range (start, end) or a list of dates, not both")
        found: list[SessionWindow | MarketClosed] = []
        for day in sorted(set(dates)):
            try:
                found.append(session_window(day))
            except MarketClosed as closed:
                found.append(closed)
    elif start is not None and end is not None:
        found = trading_days(start, end)
    else:
        raise ValueError("a sweep needs its days: start and end, or a list of dates")
    days = [d for d in found if isinstance(d, SessionWindow)]
    closed = [d for d in found if isinstance(d, MarketClosed)]
    return days, closed


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of a ``{field: [values]}`` grid, in field then value order."""
    fields = list(grid)
    return [dict(zip(fields, values, strict=True)) for values in itertools.product(*grid.values())]


def model_names(chosen: str | Sequence[str]) -> list[str]:
    """``"all"``, a comma-separated string or a list, checked against the registry."""
    if isinstance(chosen, str):
        chosen = models.names() if chosen.strip() == "all" else chosen.split(",")
    names = [n.strip() for n in chosen if n.strip()]
    unknown = [n for n in names if n not in models.names()]
    if unknown or not names:
        raise ConfigError(
            f"models: unknown {', '.join(map(repr, unknown)) or 'none given'}; "
            f"choose from {', '.join(models.names())} or 'all'"
        )
    return list(dict.fromkeys(names))


def plan(
    *,
    models_: str | Sequence[str],
    symbols: Sequence[str],
    start: date | None = None,
    end: date | None = None,
    dates: Sequence[date] | None = None,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    session: Mapping[str, Any] | None = None,
    sweep_id: str | None = None,
    path: str = "backtest",
) -> SweepPlan:
    """Expand and validate a whole sweep; raise :class:`ConfigError` naming every bad value.

    ``grids`` maps a model name to ``{field: [values]}``; a model without a grid runs with
    its defaults. ``session`` holds the other session parameters (``risk``, ``broker``,
    ``close_buffer_minutes``, ...), shared by every combination. ``path`` is where the
    sessions run (:data:`PATHS`).
    """
    names = model_names(models_)
    grids = dict(grids or {})
    errors: list[str] = []
    if path not in PATHS:
        errors.append(f"path: {path!r} is not one of {', '.join(PATHS)}")
    for name, grid in grids.items():
        if name not in names:
            errors.append(f"grid.{name}: not among the swept models ({', '.join(names)})")
        elif not isinstance(grid, Mapping):
            errors.append(f"grid.{name}: give an object of field: [values]")
        else:
            for field, values in grid.items():
                if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                    errors.append(f"grid.{name}.{field}: give a non-empty list of values")
    if errors:
        raise ConfigError("invalid sweep:\n  " + "\n  ".join(errors))
    combinations: list[Combination] = []
    for name in names:
        for values in expand_grid(grids.get(name, {})):
            raw = {**(session or {}), "model": {"name": name, **values}, "symbols": list(symbols)}
            try:
                combinations.append(Combination(parse_session_config(raw), values))
            except ConfigError as exc:
                swept = ", ".join(f"{k}={v!r}" for k, v in values.items())
                detail = str(exc).removeprefix("invalid session parameters:\n  ")
                detail = detail.replace("\n  ", "; ")
                errors.append(f"{name}({swept}): {detail}")
    if path == "faithful":
        errors += [
            f"{c.label}: may hold {held} shares overnight, and a session over the replay "
            "server ends flat; run it on path 'backtest'"
            for c in combinations
            if (held := overnight_allowance(c.config.model)) > 0
        ]
    if errors:
        raise ConfigError("invalid sweep:\n  " + "\n  ".join(errors))
    days, closed = expand_days(start, end, dates)
    if not days:
        raise ConfigError("invalid sweep: no open market day among the dates given")
    check_data(combinations, days)
    chosen: SweepPath = "faithful" if path == "faithful" else "backtest"
    return SweepPlan(sweep_id or uuid.uuid4().hex[:12], days, closed, combinations, chosen)


def check_data(combinations: Sequence[Combination], days: Sequence[SessionWindow]) -> None:
    """Refuse, before anything runs, a model whose events the recordings lack on a day
    (a bar recording cannot feed a trades-only model), naming the model and the day."""
    errors = []
    checked: set[tuple[str, tuple[str, ...], date]] = set()
    for combination in combinations:
        config = combination.config
        model = models.get(combination.model)(config.model, config.symbols)
        kinds = tuple(wiring.handled_kinds(model))
        for window in days:
            key = (combination.model, kinds, window.day)
            if key in checked:
                continue
            checked.add(key)
            try:
                ReplaySource(config.feed, window).check(config.symbols, kinds)
            except (NoData, LookupError, FileNotFoundError) as exc:
                errors.append(f"{combination.model} on {window.day.isoformat()}: {exc}")
    if errors:
        raise ConfigError("invalid sweep:\n  " + "\n  ".join(errors))


def run_combination(
    combination: Combination, days: Sequence[SessionWindow], path: SweepPath = "backtest"
) -> list[DayResult]:
    """A combination over its days, in date order, on ``path`` (:data:`PATHS`).

    An intraday model starts every session flat, so its days are independent. A model that
    may hold overnight (``max_overnight_position``) trades its days as
    :func:`tradeday.backtest.run_days` does: one simulated account, what it holds carried
    into the next session; a day's net then starts from the previous day's marks, so the
    nets add up to the whole run's P&L with no move counted twice (backtest path only:
    :func:`plan` refuses it on the faithful path).
    """
    config = combination.config
    ordered = sorted(days, key=lambda w: w.day)
    if overnight_allowance(config.model) == 0:
        trade_day = replay_day if path == "faithful" else backtest_day
        return [_day_result(combination, w, trade_day(config, w), 0.0) for w in ordered]
    results: list[DayResult] = []
    account = None
    carried: dict[str, tuple[int, float, float]] = {}
    for window in ordered:
        result = backtest.run_config(
            config,
            window,
            warmup=warmup_bars(config, window),
            account=account,
            carried=carried,
        )
        opening = sum(qty * (mark - cost) for qty, cost, mark in carried.values())
        results.append(_day_result(combination, window, DayTrades.of(result), opening))
        account, carried = result.broker, result.carried
    return results


@dataclass(frozen=True)
class DayTrades:
    """What one session of a combination did: its orders and fills, its book at the end."""

    orders: list[OrderRecord]
    fills: list[FillRecord]
    book: Book
    stop_reason: str

    @classmethod
    def of(cls, result: backtest.BacktestResult) -> DayTrades:
        return cls(result.orders, result.fills, result.book, result.stop_reason)


def warmup_bars(config: SessionConfig, window: SessionWindow) -> list[Bar]:
    """The recording's bars before the open, when the model warms up: what a session feeds
    its ``warmup``, so the backtest path trades as the session does."""
    model = models.get(config.model.name)(config.model, config.symbols)
    if not overrides(model, "warmup"):
        return []
    return ReplaySource(config.feed, window).history(config.symbols)


def backtest_day(config: SessionConfig, window: SessionWindow) -> DayTrades:
    """One intraday session on the backtest path, warmed up as a session is."""
    return DayTrades.of(backtest.run_config(config, window, warmup=warmup_bars(config, window)))


def replay_day(config: SessionConfig, window: SessionWindow) -> DayTrades:
    """One session on the faithful path: the daily flow's :class:`TradingSession` with the
    embedded replay server streaming the day to cpquant's client.

    Its ledger is a throwaway SQLite file (the rows are read back, then dropped): a
    research session is not a trading run, so it never shows in the trading ledger, in
    crash recovery or in the daily report.
    """
    from tradeday.session import TradingSession  # websockets, cpquant: the faithful path only

    with tempfile.TemporaryDirectory(prefix="tradeday-sweep-") as tmp:
        ledger_url = f"sqlite:///{Path(tmp) / 'ledger.sqlite'}"
        session = TradingSession(config.model_copy(update={"ledger_url": ledger_url}), window)
        status, message = "completed", ""
        try:
            session.run()
        except BaseException as exc:
            status, message = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            session.shutdown(status, message)
            assert session.ledger is not None
            orders = session.ledger.orders(session.run_id)
            fills = session.ledger.fills(session.run_id)
            session.close()
    sequence = lambda o: int(o.client_order_id.rsplit("-", 1)[1])  # noqa: E731
    stop_reason = session.engine.stop_reason or "end of data"
    return DayTrades(sorted(orders, key=sequence), fills, session.book, stop_reason)


def _day_result(
    combination: Combination, window: SessionWindow, result: DayTrades, opening: float
) -> DayResult:
    book = result.book
    return DayResult(
        model=combination.model,
        params_hash=combination.params_hash,
        params_json=combination.params_json,
        session_date=window.day,
        orders=len(result.orders),
        fills=len(result.fills),
        trades=len(result.fills),
        realized=book.realized,
        fees=book.fees,
        net=book.net() - opening,
        end_position=sum(abs(q) for q in book.open_positions().values()),
        stop_reason=result.stop_reason,
    )


def results_frame(results: Sequence[DayResult]) -> pd.DataFrame:
    """Per-day rows as a frame, the columns of :class:`DayResult`."""
    return pd.DataFrame([r.__dict__ for r in results], columns=list(DayResult.__dataclass_fields__))


def compare(daily: pd.DataFrame) -> pd.DataFrame:
    """Per model and parameter set: days, trades, net, mean and std per day, Sharpe, max
    drawdown and winning days; ``best`` marks the highest net of each model.

    Sharpe is mean / sample std of the daily nets times sqrt(252) (None with fewer than two
    days or no variation); max drawdown is the largest fall of the cumulative daily net
    from its running peak, starting at 0.
    """
    rows = []
    for (model, params_hash), group in daily.groupby(["model", "params_hash"], sort=True):
        nets = group.sort_values("session_date")["net"].to_numpy(dtype=float)
        std = float(nets.std(ddof=1)) if len(nets) > 1 else float("nan")
        curve = np.concatenate(([0.0], np.cumsum(nets)))
        rows.append(
            {
                "model": model,
                "params_hash": params_hash,
                "params": group["params_json"].iloc[0],
                "days": len(nets),
                "trades": int(group["trades"].sum()),
                "net": float(nets.sum()),
                "mean_net": float(nets.mean()),
                "std_net": std,
                "sharpe": float(nets.mean()) / std * DAILY_ANNUALIZATION
                if std > 0
                else float("nan"),
                "max_drawdown": float(np.max(np.maximum.accumulate(curve) - curve)),
                "winning_days": int((nets > 0).sum()),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table.assign(best=pd.Series(dtype=bool))
    table = table.sort_values(["model", "net"], ascending=[True, False]).reset_index(drop=True)
    table["best"] = ~table["model"].duplicated()
    return table
