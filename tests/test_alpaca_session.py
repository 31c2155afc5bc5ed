"""A whole session with ``broker.kind="alpaca"``: real Prefect flow runs, the replay feed over
a real websocket, and orders over real HTTP to the project's Alpaca-compatible test server
(tests/alpaca_server.py), through alpaca-py's TradingClient."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import StateType

from flows.maintenance import flatten_now
from flows.session import SessionFailed, session_result, trading_session
from tests.alpaca_server import AlpacaTestServer
from tradeday import recording
from tradeday.config import parse_session_config
from tradeday.ledger import Ledger
from tradeday.records import CarryStatus, OrderStatus
from tradeday.wiring import Credentials, account_of

DAY = date(2013, 9, 3)
KEY, SECRET = "fake-key-session-01", "session-test-secret"
PRICE = 1646.5
FIXTURE = (
    Path(__file__).resolve().parent / "fixtures" / "es-2013-09-03-open.parquet"
)  # 5,000 trades

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)


@pytest.fixture
def server() -> Iterator[AlpacaTestServer]:
    srv = AlpacaTestServer(
        key_id=KEY, secret_key=SECRET, fill_price={"ES": PRICE}, buying_power=1e9, allow_short=True
    )
    yield srv
    srv.stop()


def config(server: AlpacaTestServer, rec: Path, session_paths: dict, **broker: Any):
    return parse_session_config(
        {
            "model": {"name": "volume_modulo"},
            "symbols": ["ES"],
            "feed": {"recording": str(rec)},
            "broker": {"kind": "alpaca", "alpaca_url": server.url, **broker},
            **session_paths,
        }
    )


def model_sides(rec: Path) -> list[str]:
    """volume_modulo's orders, from the recording's sizes alone."""
    sizes = recording.load(rec, kinds=["t"]).column("size").to_pylist()
    return ["sell" if s % 17 == 0 else "buy" for s in sizes if s % 17 == 0 or s % 31 == 0]


def buy_foreign(server: AlpacaTestServer, qty: int) -> None:
    """Another model's position in the same account, placed straight through alpaca-py."""
    client = TradingClient(KEY, SECRET, paper=True, url_override=server.url)
    client.submit_order(
        MarketOrderRequest(
            symbol="ES",
            qty=qty,
            side=OrderSide.BUY,
            time_in_force=TimeInForce.DAY,
            client_order_id="other-model-1",
        )
    )


def signed(orders: list[dict], prefix: str) -> int:
    return sum(
        int(o["filled_qty"]) * (1 if o["side"] == "buy" else -1)
        for o in orders
        if o["client_order_id"].startswith(prefix)
    )


def test_session_trades_through_alpaca_and_flattens_only_its_own_positions(
    keys, server, session_paths
):
    buy_foreign(server, 7)
    state = trading_session(
        config=config(server, FIXTURE, session_paths), session_date=DAY, return_state=True
    )
    result = state.result()

    assert state.is_completed(), state  # flat: the flow run stays Completed
    assert (result["status"], result["final_positions"]) == ("completed", {})
    run_id = result["run_id"]
    sides = model_sides(FIXTURE)
    net = sum(5 if s == "buy" else -5 for s in sides)
    at_server = [o for o in server.orders if o["client_order_id"].startswith(f"{run_id}-")]
    # An order that takes the account (the other model's 7 plus this session's) across zero
    # is sent in two legs at Alpaca: the first 2 sells take it to -3 via -2 and +2.
    legs: dict[str, list[dict]] = {}
    for o in at_server:
        legs.setdefault(o["client_order_id"].split("-leg")[0], []).append(o)
    assert sides[:2] == ["sell", "sell"]
    assert [(int(o["qty"]), o["position_intent"]) for o in legs[f"{run_id}-2"]] == [
        (2, "sell_to_close"),
        (3, "sell_to_open"),
    ]
    # deterministic ids: the run, then the sequence; the model's orders, then one flatten
    assert list(legs) == [f"{run_id}-{n}" for n in range(1, len(sides) + 2)]
    assert [parts[0]["side"] for parts in legs.values()] == [*sides, "buy" if net < 0 else "sell"]
    assert [sum(int(o["qty"]) for o in parts) for parts in legs.values()] == [5] * len(sides) + [
        abs(net)
    ]
    assert all(o["status"] == "filled" for o in at_server)
    assert signed(server.orders, f"{run_id}-") == 0  # nothing of the session's is left
    assert server.positions == {"ES": 7}  # the other model's position is untouched
    assert ("DELETE", "/v2/positions") not in server.requests

    ledger = Ledger(session_paths["ledger_url"])
    orders = ledger.orders(run_id)
    fills = ledger.fills(run_id)
    run = ledger.run(run_id)
    ledger.close()
    assert sorted(o.client_order_id for o in orders) == sorted(legs)
    assert all(o.status == "filled" and o.avg_fill_price == PRICE for o in orders)
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    cfg = config(server, FIXTURE, session_paths)
    assert (run.broker, run.account) == ("alpaca", account_of(cfg, Credentials(KEY, SECRET)))


def test_a_session_that_cannot_flatten_ends_its_flow_run_failed(keys, server, session_paths):
    """The venue refuses the flatten (a halt after the model's orders): NOT FLAT is a
    Failed flow run whose message says why, and the summary is published all the same."""
    sides = model_sides(FIXTURE)
    server.halt_after_orders = len(sides)
    state = trading_session(
        config=config(server, FIXTURE, session_paths), session_date=DAY, return_state=True
    )
    left = {"ES": sum(5 if s == "buy" else -5 for s in sides)}
    result = session_result(state)
    assert result is not None and (result["status"], result["final_positions"]) == (
        "failed",
        left,
    )
    reason = f"NOT FLAT after 10 s: {left}"
    assert state.is_failed() and reason in state.message, state
    with pytest.raises(SessionFailed, match="NOT FLAT"):
        state.result()  # what a plain Python call of the flow raises
    assert server.positions == left
    assert [o["side"] for o in server.orders] == sides  # the flatten never reached the book

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        summaries = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["session-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
        )
    assert flow_run.state is not None and flow_run.state.type is StateType.FAILED
    assert flow_run.state.message == state.message
    (summary,) = summaries
    assert "| Status | failed |" in str(summary.data), summary.data
    with Ledger(session_paths["ledger_url"]) as ledger:
        run = ledger.run(result["run_id"])
    assert run is not None and (run.status, run.message) == ("failed", result["message"])
    assert reason in run.message


def test_a_session_that_owns_the_account_closes_everything_in_it(keys, server, session_paths):
    buy_foreign(server, 7)
    result = trading_session(
        config=config(server, FIXTURE, session_paths, owns_account=True), session_date=DAY
    )
    assert (result["status"], result["final_positions"]) == ("completed", {})
    assert result["message"] == "ended at end of data; closed the whole account (1 positions)"
    # its own positions closed with its own orders first, then DELETE /v2/positions
    assert signed(server.orders, f"{result['run_id']}-") == 0
    assert ("DELETE", "/v2/positions") in server.requests
    assert server.positions == {}


def test_refusals_403_are_recorded_as_rejections(keys, session_paths):
    lots = 1  # buying power for one buy of 5; no shorting
    with AlpacaTestServer(
        key_id=KEY, secret_key=SECRET, fill_price={"ES": PRICE}, buying_power=lots * 5 * PRICE
    ) as server:
        result = trading_session(config=config(server, FIXTURE, session_paths), session_date=DAY)
    # the test server's rules, replayed independently: cash for buys, shares for sells
    cash, held, expected = lots * 5 * PRICE, 0, []
    for side in model_sides(FIXTURE):
        if side == "buy" and cash >= 5 * PRICE:
            cash, held = cash - 5 * PRICE, held + 5
            expected.append(("buy", "filled", ""))
        elif side == "buy":
            expected.append(("buy", "rejected", "insufficient buying power"))
        elif held >= 5:
            cash, held = cash + 5 * PRICE, held - 5
            expected.append(("sell", "filled", ""))
        else:
            expected.append(
                (
                    "sell",
                    "rejected",
                    f"insufficient qty available for order (requested: 5, available: {held})",
                )
            )
    if held:
        expected.append(("sell", "filled", ""))  # the flatten
    rejected = sum(1 for e in expected if e[1] == "rejected")
    assert rejected > 10 and any(e[0] == "buy" and e[1] == "rejected" for e in expected)

    ledger = Ledger(session_paths["ledger_url"])
    orders = ledger.orders(result["run_id"])
    ledger.close()
    seq = sorted(orders, key=lambda o: int(o.client_order_id.rsplit("-", 1)[1]))
    assert [(o.side, o.status, o.reason) for o in seq] == expected
    assert result["counters"]["rejections"] == rejected
    assert (result["status"], result["final_positions"]) == ("completed", {})


def test_refusals_422_are_recorded_as_rejections(keys, session_paths):
    with AlpacaTestServer(key_id=KEY, secret_key=SECRET, fill_price={"SPY": 400.0}) as server:
        result = trading_session(config=config(server, FIXTURE, session_paths), session_date=DAY)
        assert server.orders == []  # ES is not an asset there: nothing was booked
    ledger = Ledger(session_paths["ledger_url"])
    orders = ledger.orders(result["run_id"])
    ledger.close()
    assert len(orders) == len(model_sides(FIXTURE))
    assert {(o.status, o.reason) for o in orders} == {("rejected", "asset 'ES' not found")}
    assert result["counters"]["rejections"] == len(orders)
    assert (result["status"], result["fills"], result["final_positions"]) == ("completed", 0, {})


def test_a_flatten_after_the_close_is_queued_then_confirmed_at_the_next_open(
    keys, server, session_paths
):
    """The market closes after the model's orders (a live session ending after hours):
    Alpaca queues the flatten for the next open. The run says so instead of flat or NOT
    FLAT, flatten-now while it is queued sends nothing, and after the open it confirms the
    fill from the broker: the ledger gets it and the run's book is flat."""
    sides = model_sides(FIXTURE)
    server.close_after_orders = len(sides)
    net = sum(5 if s == "buy" else -5 for s in sides)
    assert net
    result = trading_session(config=config(server, FIXTURE, session_paths), session_date=DAY)
    run_id = result["run_id"]
    flatten = f"{run_id}-{len(sides) + 1}"
    assert (result["status"], result["final_positions"]) == ("completed", {"ES": net})
    assert result["message"].startswith(
        f"ended at end of data; flatten queued for the next open: {{'ES': {-net}}}"
    ), result["message"]
    assert "NOT FLAT" not in result["message"]
    ids = [o["client_order_id"] for o in server.orders]
    assert ids == [f"{run_id}-{n}" for n in range(1, len(sides) + 2)]
    assert server.orders[-1]["status"] == "new" and server.positions == {"ES": net}
    with Ledger(session_paths["ledger_url"]) as ledger:
        (row,) = ledger.carried()
        assert (row.status, row.qty, row.from_run_id) == (CarryStatus.QUEUED, net, run_id)
        assert row.message == f"flatten queued for the next open ({flatten})"
        assert ledger.take_carried("volume_modulo", "alpaca", row.account, "r2", 0) == []

    paths = {k: session_paths[k] for k in ("ledger_url", "report_path")}
    broker = {"kind": "alpaca", "alpaca_url": server.url}
    flatten_now(broker=broker, include_carried=True, **paths)  # still queued: nothing sent
    assert [o["client_order_id"] for o in server.orders] == ids
    with Ledger(session_paths["ledger_url"]) as ledger:
        assert ledger.carried()[0].status is CarryStatus.QUEUED

    server.open_market()
    assert server.positions == {}
    flatten_now(broker=broker, **paths)  # as the next session's recover step does
    assert [o["client_order_id"] for o in server.orders] == ids  # never a second close
    with Ledger(session_paths["ledger_url"]) as ledger:
        (row,) = ledger.carried()
        assert (row.status, row.message) == (CarryStatus.CLOSED, "closed by flatten-now")
        fills = ledger.fills(run_id)
        assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
        (last,) = [f for f in fills if f.client_order_id == flatten]
        assert (last.side, last.qty, last.price) == ("sell" if net > 0 else "buy", abs(net), PRICE)
        (order,) = [o for o in ledger.orders(run_id) if o.client_order_id == flatten]
        assert (order.status, order.filled_qty) == (OrderStatus.FILLED, abs(net))
        ((symbol, qty),) = [(p.symbol, p.qty) for p in ledger.positions(run_id)]
        assert (symbol, qty) == ("ES", 0)
