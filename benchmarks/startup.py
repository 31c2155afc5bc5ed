"""Start-up: from the ``trading_session`` flow's start to the first tick processed.

A Prefect server is already running (started here on a temp home, like a deployment's
server). Each round is a fresh Python process that imports the flow, then calls
``trading_session`` on the first 20,000 trades of the recorded day: "flow start" is that
call (flow run created, calendar, recovery, ledger, replay server, cpquant connect and
subscribe all count), "first tick" the moment the engine has processed its first frame of trades (stamped
by a wrapper this process installs; the product code has no timing in it). The cold
figure adds the interpreter and the imports. Times are wall-clock ``time.time()``, so
they compare across the two processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ES_DAY, Row, es_window, prefect_env, prefect_server, print_report
from benchmarks.common import workdir as make_workdir

TARGET_S = 5.0
SPAWN_VAR = "TRADEDAY_BENCH_SPAWNED_AT"


def write_config(tmp: Path, trades: int = 20_000) -> Path:
    """A session config replaying the first ``trades`` trades of the day at full speed."""
    from tradeday import recording

    window = es_window()
    table = recording.load(recording.bundled(ES_DAY), start_ns=window.open_ns)
    recording.write(table.slice(0, trades), tmp / "open.parquet")
    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(tmp / "open.parquet")},
        "ledger_url": f"sqlite:///{tmp / 'ledger.sqlite'}",
        "report_path": str(tmp / "reports.duckdb"),
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return path


def child(config_path: str) -> None:
    """Runs in the measured process: import, stamp the first tick, run the flow once."""
    spawned_at = float(os.environ[SPAWN_VAR])
    from flows.session import trading_session
    from tradeday.config import parse_session_config
    from tradeday.engine import Engine

    imported_at = time.time()
    first_tick: list[float] = []
    on_events = Engine.on_events

    def stamped(self: Engine, events: list) -> None:
        on_events(self, events)
        if not first_tick and self.stats.events:
            first_tick.append(time.time())

    Engine.on_events = stamped  # type: ignore[method-assign]
    config = parse_session_config(json.loads(Path(config_path).read_text()))
    called_at = time.time()
    state = trading_session(config=config, session_date=ES_DAY, return_state=True)
    if not state.is_completed() or not first_tick:
        raise SystemExit(f"flow ended {state.name}: {state.message}")
    print(
        json.dumps(
            {
                "imports": imported_at - spawned_at,
                "flow_to_tick": first_tick[0] - called_at,
                "spawn_to_tick": first_tick[0] - spawned_at,
                "flow_total": time.time() - called_at,
            }
        )
    )


def measure(rounds: int) -> list[dict[str, float]]:
    results = []
    with make_workdir() as tmp, prefect_server(tmp) as api:
        config = write_config(tmp)
        env = prefect_env(tmp / "prefect-home", api)
        for _ in range(rounds):
            env[SPAWN_VAR] = repr(time.time())
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.startup", "--child", str(config)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"start-up child failed:\n{out.stdout}\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def run(quick: bool = False) -> list[Row]:
    results = measure(1 if quick else 3)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in results)

    spread = ", ".join(f"{r['flow_to_tick']:.2f}" for r in results)
    warm = median("flow_to_tick")
    return [
        Row(
            "start-up",
            "flow call → first tick",
            warm,
            "s",
            f"< {TARGET_S:g}",
            warm < TARGET_S,
            f"median of {len(results)} ({spread}); Prefect server running",
        ),
        Row(
            "start-up",
            "process spawn → first tick",
            median("spawn_to_tick"),
            "s",
            note="cold: + interpreter and imports",
        ),
        Row("start-up", "imports (prefect, tradeday)", median("imports"), "s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
    else:
        print_report(run(args.quick))


if __name__ == "__main__":
    main()
