"""Sweeps: planning and validation, figures equal to the same backtest run alone, the DuckDB
rows, and the Prefect flow (a real flow run on the session's test server, real processes)."""

from __future__ import annotations

import json
from datetime import date

import pytest

from tradeday import backtest, history, recording, report, sweep, sweep_report
from tradeday.calendar import session_window
from tradeday.config import ConfigError

SYMBOLS = ["AAPL", "MSFT"]
# 2023-01-16 is Martin Luther King Jr. Day: a closed day inside the range
START, END = date(2023, 1, 13), date(2023, 1, 18)
OPEN_DAYS = [date(2023, 1, 13), date(2023, 1, 17), date(2023, 1, 18)]
GRIDS = {"ma_crossover": {"fast_window": [3, 5]}, "mean_reversion": {"lookback": [20, 30]}}


def small_plan() -> sweep.SweepPlan:
    return sweep.plan(
        models_="ma_crossover,mean_reversion",
        symbols=SYMBOLS,
        start=START,
        end=END,
        grids=GRIDS,
        sweep_id="t3x2x2",
    )


def test_plan_expands_days_models_and_grids_and_skips_the_closed_day():
    plan = small_plan()
    assert [w.day for w in plan.days] == OPEN_DAYS
    assert [(c.day, c.reason) for c in plan.closed] == [
        (date(2023, 1, 16), "Dr. Martin Luther King Jr. Day")
    ]
    assert [c.label for c in plan.combinations] == [
        "ma_crossover(fast_window=3)",
        "ma_crossover(fast_window=5)",
        "mean_reversion(lookback=20)",
        "mean_reversion(lookback=30)",
    ]
    assert plan.sessions == 12
    hashes = {c.params_hash for c in plan.combinations}
    assert len(hashes) == 4
    assert json.loads(plan.combinations[0].params_json)["fast_window"] == 3


def test_a_bad_grid_value_is_refused_naming_combination_and_field():
    with pytest.raises(ConfigError) as info:
        sweep.plan(
            models_="ma_crossover",
            symbols=SYMBOLS,
            start=START,
            end=END,
            grids={"ma_crossover": {"fast_window": [3, 0]}},
        )
    text = str(info.value)
    assert "ma_crossover(fast_window=0): model.fast_window" in text
    assert "fast_window=3" not in text


@pytest.mark.parametrize(
    ("grids", "models_", "expected"),
    [
        ({"ma_crossover": {"fast_window": 3}}, "ma_crossover", "grid.ma_crossover.fast_window"),
        ({"mean_reversion": {"lookback": [5]}}, "ma_crossover", "grid.mean_reversion"),
        ({}, "ma_crossover,nope", "models: unknown 'nope'"),
        ({"ma_crossover": {"fastwindow": [3]}}, "ma_crossover", "model.fastwindow"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(grids, models_, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        sweep.plan(models_=models_, symbols=SYMBOLS, start=START, end=END, grids=grids)


def test_a_model_the_recording_cannot_feed_is_refused_up_front():
    with pytest.raises(ConfigError, match="volume_modulo on 2023-01-13: nothing to replay"):
        sweep.plan(models_="all", symbols=SYMBOLS, start=START, end=END)


def warmed_up_alone(model: dict, day: date, symbols: list[str]) -> backtest.BacktestResult:
    """The backtest of one day, warmed up on the recording's bars before the open as a
    session is (both shipped grid models warm up)."""
    bars = history.recorded(recording.bundled(day), symbols, session_window(day))
    assert bars
    return backtest.run(model, day, symbols, warmup=bars)


def test_every_combination_equals_the_same_backtest_run_alone():
    plan = small_plan()
    for combination in plan.combinations:
        results = sweep.run_combination(combination, plan.days)
        assert [r.session_date for r in results] == OPEN_DAYS
        for r in results:
            alone = warmed_up_alone(
                {"name": combination.model, **combination.grid_values}, r.session_date, SYMBOLS
            )
            assert r.net == alone.book.net()
            assert r.fills == r.trades == len(alone.fills)
            assert r.orders == len(alone.orders)
            assert r.end_position == 0


def test_comparison_figures_from_the_daily_rows():
    frame = sweep.results_frame(
        [
            sweep.DayResult("m", "h1", "{}", date(2023, 1, d), 2, 2, 2, net, 0.0, net, 0, "close")
            for d, net in ((3, 10.0), (4, -30.0), (5, 5.0))
        ]
        + [sweep.DayResult("m", "h2", "{}", date(2023, 1, 3), 1, 1, 1, 1.0, 0.0, 1.0, 0, "close")]
    )
    table = sweep.compare(frame)
    first = table.iloc[0]
    assert (first.params_hash, first.days, first.trades, first.net) == ("h2", 1, 1, 1.0)
    assert bool(first.best) and not bool(table.iloc[1].best)
    h1 = table.iloc[1]
    assert (h1.net, h1.winning_days, h1.max_drawdown) == (-15.0, 2, 30.0)
    assert h1.mean_net == -5.0
    assert h1.std_net == pytest.approx(21.794494717703369)
    assert h1.sharpe == pytest.approx(-5.0 / 21.794494717703369 * 252**0.5)


def test_report_keeps_whole_combinations_and_migrates_a_v3_file(tmp_path):
    path = tmp_path / "reports.duckdb"
    con = report.connect(path, read_only=False)
    # version 3's tables: version 6's without the sweeps (v4, path v6), orders.tif and carried (v5)
    v3 = report.DDL.replace(report.SWEEP_DDL, "").replace(report.CARRIED_DDL, "")
    con.execute(v3.replace(", tif VARCHAR", ""))
    con.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    con.close()
    plan = small_plan()
    sweep_report.start_sweep(path, plan)
    first = sweep.run_combination(plan.combinations[0], plan.days)
    sweep_report.write_combination(path, plan.sweep_id, first)
    sweep_report.write_combination(path, plan.sweep_id, first)  # a rewrite replaces
    sweep_report.finish_sweep(path, plan.sweep_id, "cancelled")
    row, daily = sweep_report.read_sweep(path, plan.sweep_id)
    assert (row["status"], row["done"], row["combinations"]) == ("cancelled", 1, 4)
    assert json.loads(row["closed_days"]) == {"2023-01-16": "Dr. Martin Luther King Jr. Day"}
    assert daily["net"].tolist() == [r.net for r in first]
    con = report.connect(path, read_only=True)
    assert report.schema_version(con) == report.REPORT_SCHEMA_VERSION == 6
    con.close()
    text = sweep_report.sweep_markdown(path, plan.sweep_id)
    assert "(backtest path): cancelled, 1/4 combinations, 3 days" in text
    assert "2023-01-16 Dr. Martin Luther King Jr. Day" in text
    assert "fast_window=3" in text and "**best**" in text


def test_a_v5_file_gains_the_sweep_path_and_keeps_its_sweeps(tmp_path):
    path = tmp_path / "reports.duckdb"
    con = report.connect(path, read_only=False)
    con.execute(report.DDL.replace(",\n    path VARCHAR\n", "\n"))  # version 5's tables
    con.execute("INSERT INTO meta VALUES ('schema_version', '5')")
    con.execute(
        "INSERT INTO sweeps VALUES ('old', now(), 'completed', ['ma_crossover'], ['AAPL'], "
        "['2023-01-13'::DATE], '{}', 1, 1)"
    )
    con.close()
    plan = small_plan()
    sweep_report.start_sweep(path, plan)
    con = report.connect(path, read_only=True)
    assert report.schema_version(con) == 6
    assert con.execute("SELECT sweep_id, path FROM sweeps ORDER BY ALL").fetchall() == [
        ("old", None),
        (plan.sweep_id, "backtest"),
    ]
    con.close()
    assert "**Sweep old** (path not recorded): completed, 1/1" in sweep_report.sweep_markdown(
        path, "old"
    )


def test_sweep_flow_runs_every_combination_as_a_task_and_writes_the_report(
    prefect_harness, tmp_path
):
    from flows.sweep import sweep as sweep_flow

    path = tmp_path / "reports.duckdb"
    state = sweep_flow(
        symbols=SYMBOLS,
        models=["ma_crossover", "mean_reversion"],
        start=START,
        end=END,
        grid=GRIDS,
        report_path=str(path),
        max_workers=2,
        sweep_id="flow3x2x2",
        return_state=True,
    )
    assert state.is_completed()
    row, daily = sweep_report.read_sweep(path, "flow3x2x2")
    assert (row["status"], row["done"], row["combinations"]) == ("completed", 4, 4)
    plan = small_plan()
    expected = [r for c in plan.combinations for r in sweep.run_combination(c, plan.days)]
    got = {(r.params_hash, r.session_date): r.net for r in daily.itertuples()}
    assert got == {(r.params_hash, r.session_date): r.net for r in expected}


def test_cli_refuses_a_bad_grid_before_prefect_starts(monkeypatch):
    from tradeday import cli

    def no_prefect(*_):
        raise AssertionError("Prefect must not start for a refused sweep")

    monkeypatch.setattr(cli, "_offline_prefect_defaults", no_prefect)
    args = ["sweep", "--symbols", "AAPL", "--from", "2023-01-13", "--to", "2023-01-17"]
    with pytest.raises(SystemExit, match=r"ma_crossover\(fast_window=0\): model.fast_window"):
        cli.main(
            [*args, "--models", "ma_crossover", "--grid", '{"ma_crossover": {"fast_window": [0]}}']
        )
    with pytest.raises(SystemExit, match="--grid is not JSON"):
        cli.main([*args, "--grid", "{fast"])


def test_report_sweep_prints_the_comparison_or_names_the_known_sweeps(tmp_path, capsys):
    from tradeday import cli

    path = tmp_path / "reports.duckdb"
    plan = small_plan()
    sweep_report.start_sweep(path, plan)
    for combination in plan.combinations[:2]:
        sweep_report.write_combination(
            path, plan.sweep_id, sweep.run_combination(combination, plan.days)
        )
    assert cli.main(["report", "--sweep", plan.sweep_id, "--report-path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(backtest path): running, 2/4 combinations, 3 days" in out
    assert out.count("| ma_crossover |") == 2 and out.count("**best**") == 1
    with pytest.raises(SystemExit, match=r"no sweep 'nope'.*sweeps there: t3x2x2"):
        cli.main(["report", "--sweep", "nope", "--report-path", str(path)])


@pytest.mark.slow
def test_a_sweep_cancelled_midway_keeps_whole_combinations_and_says_cancelled(
    prefect_harness, tmp_path
):
    """SIGTERM is what Prefect sends a flow process it cancels (docs/architecture.md)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil
    from prefect.settings import PREFECT_API_URL

    path = tmp_path / "reports.duckdb"
    log = tmp_path / "sweep.log"
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    windows = json.dumps({"ma_crossover": {"fast_window": list(range(1, 13))}})
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tradeday.cli", "sweep", "--symbols", "AAPL,MSFT,NVDA,IBM"),
            *("--from", "2023-01-03", "--to", "2023-01-30", "--models", "ma_crossover"),
            *("--grid", windows, "--workers", "1", "--report-path", str(path)),
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 400
        while "1/12 done" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the sweep never finished a combination"
            time.sleep(0.2)
        # the sweep's processes: the CLI's, its flow's and the task runner's worker
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the sweep runs its combinations in worker processes"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"worker processes left after the cancel: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    con = report.connect(path, read_only=True)
    (sweep_id, status, done, total) = con.execute(
        "SELECT sweep_id, status, done, combinations FROM sweeps"
    ).fetchone()
    per_set = con.execute("SELECT params_hash, count(*) FROM sweep_results GROUP BY ALL").fetchall()
    con.close()
    assert (status, total) == ("cancelled", 12), log.read_text()[-3000:]
    assert 1 <= done < 12
    assert len(per_set) == done
    assert all(days == 19 for _, days in per_set)  # whole combinations only
    assert f"cancelled, {done}/12 combinations" in sweep_report.sweep_markdown(path, sweep_id)


def test_a_model_that_holds_overnight_runs_its_days_in_order_like_run_days():
    params = {"close_shares": 10, "max_overnight_position": 10}
    plan = sweep.plan(
        models_="buy_close_sell_open",
        symbols=["AAPL"],
        start=START,
        end=END,
        grids={"buy_close_sell_open": {k: [v] for k, v in params.items()}},
        session={"close_buffer_minutes": 0},
    )
    (combination,) = plan.combinations
    results = sweep.run_combination(combination, plan.days)
    alone = backtest.run_days(
        {"name": "buy_close_sell_open", **params}, START, END, ["AAPL"], close_buffer_minutes=0
    )
    assert [r.session_date for r in results] == [d.window.day for d in alone.days] == OPEN_DAYS
    assert [r.fills for r in results] == [len(d.fills) for d in alone.days]
    assert [r.end_position for r in results] == [10, 10, 10]
    # the nets add up to the account's P&L over the run: nothing counted twice
    last = alone.days[-1].book
    assert sum(r.net for r in results) == pytest.approx(
        sum(d.book.realized - d.book.fees for d in alone.days) + last.unrealized()
    )


# -- the faithful path: the replay server and cpquant's client, as a daily session ---------

FAITHFUL_DAYS = [date(2023, 1, 13), date(2023, 1, 17)]


def order_rows(trades: sweep.DayTrades) -> list[tuple]:
    return [
        (o.symbol, o.side, o.qty, o.ts, o.purpose, o.status, o.filled_qty, o.avg_fill_price)
        for o in trades.orders
    ]


def fill_rows(trades: sweep.DayTrades) -> list[tuple]:
    return [(f.symbol, f.side, f.qty, f.price, f.ts) for f in trades.fills]


def test_the_faithful_path_gives_the_fast_paths_every_order_and_fill():
    """Each day through a real TradingSession: the embedded replay server streams it over a
    websocket to cpquant's client; its ledger rows against the backtest loop's."""
    plan = sweep.plan(
        models_="ma_crossover,mean_reversion",
        symbols=SYMBOLS,
        dates=FAITHFUL_DAYS,
        path="faithful",
    )
    assert plan.path == "faithful"
    for combination in plan.combinations:
        for window in plan.days:
            fast = sweep.backtest_day(combination.config, window)
            faithful = sweep.replay_day(combination.config, window)
            assert len(fast.fills) > 10, (combination.label, window.day)
            assert order_rows(faithful) == order_rows(fast)
            assert fill_rows(faithful) == fill_rows(fast)
            assert faithful.book.net() == fast.book.net()
            assert faithful.book.open_positions() == fast.book.open_positions() == {}
            assert faithful.stop_reason == fast.stop_reason == "close"


def test_the_faithful_path_refuses_what_it_cannot_run_and_a_bad_path():
    with pytest.raises(ConfigError, match="path: 'fast' is not one of backtest, faithful"):
        sweep.plan(models_="ma_crossover", symbols=SYMBOLS, dates=FAITHFUL_DAYS, path="fast")
    with pytest.raises(
        ConfigError, match=r"buy_close_sell_open\(max_overnight_position=10\): may hold 10"
    ):
        sweep.plan(
            models_="buy_close_sell_open",
            symbols=["AAPL"],
            dates=FAITHFUL_DAYS,
            grids={"buy_close_sell_open": {"max_overnight_position": [10]}},
            path="faithful",
        )


@pytest.mark.slow
def test_a_faithful_sweep_flow_writes_the_backtest_paths_figures(prefect_harness, tmp_path):
    from flows.sweep import sweep as sweep_flow

    path = tmp_path / "reports.duckdb"
    grid = {"ma_crossover": {"fast_window": [3, 5]}}
    state = sweep_flow(
        symbols=SYMBOLS,
        models=["ma_crossover"],
        dates=FAITHFUL_DAYS,
        grid=grid,
        report_path=str(path),
        max_workers=2,
        sweep_id="faithful2x2",
        path="faithful",
        return_state=True,
    )
    assert state.is_completed()
    _, daily = sweep_report.read_sweep(path, "faithful2x2")
    plan = sweep.plan(models_="ma_crossover", symbols=SYMBOLS, dates=FAITHFUL_DAYS, grids=grid)
    expected = [r for c in plan.combinations for r in sweep.run_combination(c, plan.days)]
    key = lambda r: (r["params_hash"], r["session_date"])  # noqa: E731
    assert sorted(daily.to_dict("records"), key=key) == sorted(
        sweep.results_frame(expected).to_dict("records"), key=key
    )


# -- the equity PNG of the best sets -------------------------------------------------------


def test_the_equity_png_plots_each_models_best_set_from_the_sweeps_daily_nets(tmp_path):
    path = tmp_path / "reports.duckdb"
    plan = small_plan()
    sweep_report.start_sweep(path, plan)
    for combination in plan.combinations:
        sweep_report.write_combination(
            path, plan.sweep_id, sweep.run_combination(combination, plan.days)
        )
    text = sweep_report.sweep_markdown(path, plan.sweep_id)
    png = tmp_path / "reports-sweep-t3x2x2-equity.png"
    assert f"Equity of each model's best set (PNG, next to the report): {png}\n" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

    # the plotted lines, read from the figure: each model's best set, day by day
    _, daily = sweep_report.read_sweep(path, plan.sweep_id)
    con = report.connect(path, read_only=True)
    nets = con.execute(
        "SELECT model, params_hash, list(net ORDER BY session_date) FROM sweep_results "
        "WHERE sweep_id = ? GROUP BY ALL",
        [plan.sweep_id],
    ).fetchall()
    con.close()
    best = {}
    for model, params_hash, days in nets:
        if model not in best or sum(days) > sum(best[model][1]):
            best[model] = (params_hash, days)
    figure = sweep_report.plot_best_sets(daily, sweep.compare(daily), tmp_path / "again.png")
    lines = {
        line.get_label(): line for line in figure.axes[0].get_lines() if line.get_label()[0] != "_"
    }
    assert len(lines) == 2
    for model, (_, days) in best.items():
        (label,) = [name for name in lines if name.startswith(f"{model}(")]
        assert label.endswith(f": {sum(days):,.2f}")
        assert list(lines[label].get_xdata()) == [0, 1, 2]
        assert list(lines[label].get_ydata()) == pytest.approx(
            [sum(days[: i + 1]) for i in range(3)], abs=1e-9
        )
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [
        d.isoformat() for d in OPEN_DAYS
    ]
