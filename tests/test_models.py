"""Each model on tiny synthetic sequences, and its params refused with the field named."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest
from pydantic import ValidationError

import models
from models.base import Model
from models.ma_crossover import MaCrossover, MaCrossoverParams
from models.mean_reversion import MeanReversion, MeanReversionParams
from models.moody_trader import MoodyTrader, MoodyTraderParams
from models.opening_momentum import OpeningMomentum, OpeningMomentumParams
from models.rolling import Rolling, units
from tradeday.calendar import session_window
from tradeday.config import ConfigError, parse_session_config
from tradeday.events import NS_PER_S, Bar, Order, Side, Trade, datetime_to_ns

MIN = 60 * NS_PER_S
WINTER = session_window(date(2024, 1, 2))  # EST: 14:30-21:00 UTC
SUMMER = session_window(date(2013, 9, 3))  # EDT: 13:30-20:00 UTC
EARLY = session_window(date(2026, 11, 27))  # closes 13:00 New York = 18:00 UTC


def utc(day: date, hh: int, mm: int, ss: int = 0) -> int:
    return datetime_to_ns(datetime.combine(day, time(hh, mm, ss), tzinfo=UTC))


def drive(model: Model, events: list[tuple[str, int, float]], start: int = 0) -> list[tuple]:
    """Feed (symbol, ts, price) trades, applying every order as filled at once."""
    position: dict[str, int] = {}
    out = []
    for symbol, ts, price in events:
        for order in model.on_trade(Trade(symbol, ts, price, 1), position.get(symbol, start)):
            position[symbol] = position.get(symbol, start) + order.signed_qty
            out.append((order.symbol, order.side.value, order.qty, ts, order.tag))
    return out


# -- opening momentum ----------------------------------------------------------------------


def test_opening_momentum_buys_above_threshold_then_exits_before_close():
    m = OpeningMomentum(OpeningMomentumParams(position_size=7, threshold_pct=1.0), ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    orders = drive(
        m,
        [
            ("X", o - MIN, 90.0),  # pre-market: ignored, not the open price
            ("X", o, 100.0),  # the open
            ("X", o + 29 * MIN, 105.0),  # before the decision time
            ("X", o + 30 * MIN, 101.01),  # +1.01% > 1%: buy
            ("X", o + 31 * MIN, 80.0),  # decided once only
            ("X", WINTER.close_ns - 15 * MIN, 99.0),  # exit
            ("X", WINTER.close_ns - 14 * MIN, 99.0),
        ],
    )
    assert orders == [
        ("X", "buy", 7, o + 30 * MIN, "momentum long"),
        ("X", "sell", 7, WINTER.close_ns - 15 * MIN, "exit"),
    ]


def test_opening_momentum_shorts_at_or_below_threshold_per_symbol():
    m = OpeningMomentum(OpeningMomentumParams(position_size=3), ["X", "Y"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    orders = drive(
        m,
        [
            ("X", o, 100.0),
            ("Y", o + 1, 50.0),
            ("X", o + 30 * MIN, 101.0),  # exactly +1%: not more than 1%, so short
            ("Y", o + 45 * MIN, 49.0),
        ],
    )
    assert orders == [
        ("X", "sell", 3, o + 30 * MIN, "momentum short"),
        ("Y", "sell", 3, o + 45 * MIN, "momentum short"),
    ]


def test_opening_momentum_on_bars_uses_the_bar_open():
    m = OpeningMomentum(OpeningMomentumParams(position_size=1), ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    assert m.on_bar(Bar("X", o, 100.0, 100.0, 100.0, 100.0, 1), 0) == ()
    # the 30-minute bar opens at +2% though it closes lower: the open is the price at T
    (order,) = m.on_bar(Bar("X", o + 30 * MIN, 102.0, 102.0, 95.0, 95.0, 1), 0)
    assert (order.side, order.qty) == (Side.BUY, 1)


def test_models_refuse_events_before_on_start():
    m = OpeningMomentum(OpeningMomentumParams(), ["X"])
    with pytest.raises(RuntimeError, match="on_start"):
        m.on_trade(Trade("X", 1, 1.0, 1), 0)


# -- moody trader --------------------------------------------------------------------------


def test_moody_trader_follows_new_york_time_of_day_in_winter():
    m = MoodyTrader(MoodyTraderParams(lot_size=5), ["X"])
    m.on_start(WINTER)
    d = WINTER.day
    orders = drive(
        m,
        [
            ("X", utc(d, 14, 29), 1.0),  # before the open
            ("X", utc(d, 14, 30), 1.0),  # 09:30 New York: cheerful
            ("X", utc(d, 16, 59, 59), 1.0),
            ("X", utc(d, 17, 0), 1.0),  # 12:00 New York (EST = UTC-5): grumpy
            ("X", utc(d, 20, 44), 1.0),
            ("X", utc(d, 20, 45), 1.0),  # 15 minutes before the close: calm
            ("X", utc(d, 20, 50), 1.0),
        ],
    )
    assert orders == [
        ("X", "buy", 5, utc(d, 14, 30), "cheerful"),
        ("X", "sell", 10, utc(d, 17, 0), "grumpy"),
        ("X", "buy", 5, utc(d, 20, 45), "calm"),
    ]


def test_moody_trader_uses_daylight_saving_time_in_summer():
    m = MoodyTrader(MoodyTraderParams(lot_size=1, mood_swing="13:15"), ["X"])
    m.on_start(SUMMER)
    d = SUMMER.day
    orders = drive(m, [("X", utc(d, 17, 14), 1.0), ("X", utc(d, 17, 15), 1.0)])
    assert orders == [
        ("X", "buy", 1, utc(d, 17, 14), "cheerful"),
        ("X", "sell", 2, utc(d, 17, 15), "grumpy"),  # 13:15 EDT = 17:15 UTC
    ]


def test_moody_trader_on_an_early_close_skips_an_empty_afternoon():
    m = MoodyTrader(MoodyTraderParams(lot_size=1, mood_swing="12:50"), ["X"])
    m.on_start(EARLY)  # closes 13:00 New York: calm from 12:45, before the 12:50 swing
    d = EARLY.day
    orders = drive(m, [("X", utc(d, 14, 30), 1.0), ("X", utc(d, 17, 45), 1.0)])
    assert orders == [
        ("X", "buy", 1, utc(d, 14, 30), "cheerful"),
        ("X", "sell", 1, utc(d, 17, 45), "calm"),
    ]


def test_moody_trader_sizes_from_the_filled_position():
    m = MoodyTrader(MoodyTraderParams(lot_size=5), ["X"])
    m.on_start(WINTER)
    # the morning buy was refused somewhere: the afternoon order still lands on -5
    assert drive(m, [("X", utc(WINTER.day, 17, 0), 1.0)]) == [
        ("X", "sell", 5, utc(WINTER.day, 17, 0), "grumpy")
    ]


# -- mean reversion ------------------------------------------------------------------------


def test_mean_reversion_enters_beyond_entry_z_and_exits_inside_exit_z():
    p = MeanReversionParams(trade_size=2, lookback=5, entry_z=1.5, exit_z=0.5)
    m = MeanReversion(p, ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    prices = [10, 10, 10, 10, 9, 10, 11, 10, 10]
    orders = drive(m, [("X", o + i, float(x)) for i, x in enumerate(prices)])
    # window [10,10,10,10,9]: z(9) = (9-9.8)/0.4 = -2.0 -> long
    # window [10,10,10,9,10]: z(10) = 0.5 -> still long (exit needs z >= -0.5: it is) -> exit
    # window [10,10,9,10,11]: z(11) = 1.0/0.632 = 1.58 -> short
    # window [10,9,10,11,10]: z(10) = 0 -> exit
    assert orders == [
        ("X", "buy", 2, o + 4, "long"),
        ("X", "sell", 2, o + 5, "exit"),
        ("X", "sell", 2, o + 6, "short"),
        ("X", "buy", 2, o + 7, "exit"),
    ]


def test_mean_reversion_flips_on_one_observation_and_closes_out():
    p = MeanReversionParams(trade_size=1, lookback=5, entry_z=1.5, exit_z=0.0, flat_minutes=10)
    m = MeanReversion(p, ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    prices = [10, 10, 10, 10, 9, 12]
    orders = drive(m, [("X", o + i, float(x)) for i, x in enumerate(prices)])
    orders += drive(m, [("X", WINTER.close_ns - 10 * MIN, 10.0)], start=-1)
    assert orders == [
        ("X", "buy", 1, o + 4, "long"),
        ("X", "sell", 2, o + 5, "short"),  # z(12) = 1.86: exit and enter short at once
        ("X", "buy", 1, WINTER.close_ns - 10 * MIN, "close out"),
    ]


def test_mean_reversion_is_silent_on_a_flat_window_and_warms_up_from_bars():
    m = MeanReversion(MeanReversionParams(lookback=5, entry_z=1.5, exit_z=0.5), ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    assert drive(m, [("X", o + i, 10.0) for i in range(8)]) == []
    warm = MeanReversion(MeanReversionParams(lookback=5, entry_z=1.5, exit_z=0.5), ["X"])
    warm.warmup([Bar("X", o - (5 - i) * MIN, 10, 10, 10, 10.0, 1) for i in range(4)])
    warm.on_start(WINTER)
    assert drive(warm, [("X", o, 9.0)]) == [("X", "buy", 10, o, "long")]


def test_rolling_zscore_is_exact():
    r = Rolling(4)
    for price in (1.1, 1.2, 1.3, 1.4, 1.5):
        r.push(units(price))
    assert (r.sum, r.full) == (units(1.2) + units(1.3) + units(1.4) + units(1.5), True)
    assert r.zscore(units(1.5)) == pytest.approx((1.5 - 1.35) / 0.111803398875, rel=1e-9)


# -- moving-average crossover --------------------------------------------------------------


def test_ma_crossover_trades_only_on_crossings():
    p = MaCrossoverParams(shares=3, fast_window=2, slow_window=4)
    m = MaCrossover(p, ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    prices = [10, 10, 10, 11, 12, 12, 12, 10, 9, 9, 10, 12]
    orders = drive(m, [("X", o + i, float(x)) for i, x in enumerate(prices)])
    # i=3: fast 10.5 > slow 10.25 arms (up); i=7: fast 11 < slow 11.5 -> cross down
    # i=11: fast 11 > slow 10 -> cross up
    assert orders == [
        ("X", "sell", 3, o + 7, "cross down"),
        ("X", "buy", 6, o + 11, "cross up"),
    ]


def test_ma_crossover_without_shorts_goes_flat_and_closes_out():
    p = MaCrossoverParams(shares=3, fast_window=1, slow_window=2, allow_short=False)
    m = MaCrossover(p, ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    orders = drive(m, [("X", o + i, float(x)) for i, x in enumerate([10, 9, 10, 11, 10])])
    orders += drive(m, [("X", WINTER.close_ns - 15 * MIN, 10.0)], start=0)
    assert orders == [
        ("X", "buy", 3, o + 2, "cross up"),
        ("X", "sell", 3, o + 4, "cross down"),
    ]


def test_ma_crossover_equal_averages_keep_the_trend():
    m = MaCrossover(MaCrossoverParams(shares=1, fast_window=1, slow_window=2), ["X"])
    m.on_start(WINTER)
    o = WINTER.open_ns
    # 10,11 arms up; 11 (equal averages) keeps up; 10 crosses down; 10 equal; 11 up
    prices = [10, 11, 11, 10, 10, 11]
    assert drive(m, [("X", o + i, float(x)) for i, x in enumerate(prices)]) == [
        ("X", "sell", 1, o + 3, "cross down"),
        ("X", "buy", 2, o + 5, "cross up"),
    ]


# -- params --------------------------------------------------------------------------------


def test_every_seed_model_is_registered_with_volume_modulo_first():
    assert models.names() == [
        "buy_close_sell_open",
        "ma_crossover",
        "mean_reversion",
        "moody_trader",
        "opening_momentum",
        "volume_modulo",
    ]
    assert [c.model_fields["name"].default for c in models.params_classes()][:6] == [
        "volume_modulo",
        "opening_momentum",
        "moody_trader",
        "mean_reversion",
        "ma_crossover",
        "buy_close_sell_open",
    ]


def ui_tab(value: dict, schemas: list[dict]) -> int:
    """The Prefect 3.9.1 v2 form's tab for a saved object value (its schema-form bundle): the
    first union branch whose properties hold the most of the value's keys; 0 when none do."""
    best, most = 0, 0
    for i, schema in enumerate(schemas):
        overlap = len(set(value) & set(schema.get("properties", {})))
        if overlap > most:
            best, most = i, overlap
    return best


def test_every_model_has_fields_of_its_own_so_the_ui_picks_the_right_tab():
    """Shared fields (``flat_minutes``) are fine while each model keeps fields no other has."""
    classes = models.params_classes()
    schemas = [cls.model_json_schema() for cls in classes]
    for i, cls in enumerate(classes):
        name = cls.model_fields["name"].default
        assert cls.__doc__ and cls.model_config.get("title"), name
        assert all(info.title for f, info in cls.model_fields.items() if f != "name"), name
        others = {f for other in classes if other is not cls for f in other.model_fields}
        assert set(cls.model_fields) - others, f"{name} has no field of its own"
        assert ui_tab(cls().model_dump(mode="json"), schemas) == i, name


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"name": "opening_momentum", "position_size": 0},
            "model.position_size: Input should be greater than 0",
        ),
        (
            {"name": "opening_momentum", "threshold_pct": -1},
            "model.threshold_pct: Input should be greater than or equal to 0",
        ),
        (
            {"name": "opening_momentum", "quantity": 5},
            "model.quantity: Extra inputs are not permitted",
        ),
        (
            {"name": "moody_trader", "mood_swing": "08:00"},
            "model.mood_swing: Value error, must be a New York time of day after 09:30",
        ),
        (
            {"name": "moody_trader", "mood_swing": "noon"},
            "model.mood_swing: String should match pattern",
        ),
        (
            {"name": "moody_trader", "mood_swing": "25:00"},
            "model.mood_swing: Value error, '25:00' is not a time of day (HH:MM)",
        ),
        (
            {"name": "moody_trader", "flat_minutes": 400},
            "model.flat_minutes: Input should be less than or equal to 360",
        ),
        (
            {"name": "mean_reversion", "lookback": 2},
            "model.lookback: Input should be greater than or equal to 5",
        ),
        (
            {"name": "mean_reversion", "entry_z": 1.0, "exit_z": 1.0},
            "model.exit_z: Value error, must be less than entry_z (1.0)",
        ),
        (
            {"name": "ma_crossover", "fast_window": 20, "slow_window": 20},
            "model.slow_window: Value error, must be greater than fast_window (20)",
        ),
        (
            {"name": "ma_crossover", "shares": "many"},
            "model.shares: Input should be a valid integer",
        ),
    ],
)
def test_bad_model_params_are_refused_with_the_field_named(model, message):
    with pytest.raises(ConfigError) as err:
        parse_session_config({"model": model})
    assert message in str(err.value)


# -- flat before the close: one parameter, one meaning ------------------------------------

FLAT_MODELS = ("opening_momentum", "moody_trader", "mean_reversion", "ma_crossover")


def test_flat_minutes_is_the_same_field_in_every_model_that_has_it():
    fields = {
        name: cls.model_json_schema()["properties"].get("flat_minutes")
        for cls in models.params_classes()
        if (name := cls.model_fields["name"].default)
    }
    assert {n for n, f in fields.items() if f} == set(FLAT_MODELS)
    assert all(fields[n] == fields["ma_crossover"] for n in FLAT_MODELS)
    assert fields["ma_crossover"] == {
        "default": 15,
        "minimum": 0,
        "maximum": 360,
        "title": "Flat before the close (minutes)",
        "description": "From this many minutes before the close: hold 0 and send no opening orders",
        "type": "integer",
    }


def holding_before_flat(name: str) -> tuple[Model, list[tuple[str, int, float]]]:
    """The model with ``flat_minutes=30`` and WINTER trades that leave it holding a position
    before then (opening momentum long 1, moody short 1, mean reversion long 1, crossover
    short 1)."""
    o = WINTER.open_ns
    if name == "opening_momentum":
        p = OpeningMomentumParams(position_size=1, decision_minutes=1, flat_minutes=30)
        return OpeningMomentum(p, ["X"]), [("X", o, 100.0), ("X", o + MIN, 200.0)]
    if name == "moody_trader":
        p = MoodyTraderParams(lot_size=1, flat_minutes=30)
        return MoodyTrader(p, ["X"]), [("X", o, 1.0), ("X", utc(WINTER.day, 18, 0), 1.0)]
    if name == "mean_reversion":
        p = MeanReversionParams(trade_size=1, lookback=5, entry_z=1.5, exit_z=0.0, flat_minutes=30)
        prices = [10, 10, 10, 10, 9]
        return MeanReversion(p, ["X"]), [("X", o + i, float(x)) for i, x in enumerate(prices)]
    p = MaCrossoverParams(shares=1, fast_window=1, slow_window=2, flat_minutes=30)
    prices = [10, 11, 10]
    return MaCrossover(p, ["X"]), [("X", o + i, float(x)) for i, x in enumerate(prices)]


@pytest.mark.parametrize("name", FLAT_MODELS)
def test_flat_minutes_before_the_close_every_model_holds_0_and_opens_nothing(name):
    model, before = holding_before_flat(name)
    model.on_start(WINTER)
    flat_ns = WINTER.close_ns - 30 * MIN
    opened = drive(model, before)
    held = sum(qty if side == "buy" else -qty for _, side, qty, _, _ in opened)
    assert held != 0  # the model holds a position when flat_minutes comes
    assert drive(model, [("X", flat_ns - 1, before[-1][2])], start=held) == []  # last price again
    # from flat_ns: one order to 0, then nothing, whatever the prices would have signalled
    after = [("X", flat_ns + i, float(x)) for i, x in enumerate([10, 5, 20, 1, 30, 2, 40])]
    closing = drive(model, after, start=held)
    assert [(side, qty, ts) for _, side, qty, ts, _ in closing] == [
        ("sell" if held > 0 else "buy", abs(held), flat_ns)
    ]


@pytest.mark.parametrize(
    ("name", "old"),
    [
        ("ma_crossover", "close_out_minutes"),
        ("opening_momentum", "exit_minutes"),
        ("moody_trader", "calm_minutes"),
    ],
)
def test_an_old_name_of_flat_minutes_is_refused_naming_old_and_new(name, old):
    """What a stored deployment parameter or a JSON config from before the rename gets."""
    with pytest.raises(ConfigError) as err:
        parse_session_config({"model": {"name": name, old: 10}})
    assert f"model.{old}: '{old}' is now called 'flat_minutes' (same meaning): rename it" in str(
        err.value
    )
    with pytest.raises(ValidationError, match=f"'{old}' is now called 'flat_minutes'"):
        models.get(name).params_class.model_validate({old: 10, "flat_minutes": 10})
    assert models.get(name).params_class(flat_minutes=10).flat_minutes == 10


def test_good_params_parse_to_the_models_own_class():
    config = parse_session_config({"model": {"name": "moody_trader", "mood_swing": "13:30"}})
    assert isinstance(config.model, MoodyTraderParams)
    assert config.model.mood_swing == "13:30"
    assert parse_session_config(config.model_dump(mode="json")) == config


def test_every_models_defaults_pass_prefects_parameter_schema():
    """What a deployment checks before creating a run (a refusal there is HTTP 409)."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.session import trading_session

    schema = parameter_schema(trading_session).model_dump_for_openapi()
    for name in models.names():
        config = parse_session_config({"model": {"name": name}}).model_dump(mode="json")
        assert validate({"config": config}, schema, raise_on_error=False) == [], name
    bad = parse_session_config({}).model_dump(mode="json")
    bad["model"] = {"name": "moody_trader", "mood_swing": "noon"}
    assert validate({"config": bad}, schema, raise_on_error=False) != []


def test_orders_are_order_values():
    m = OpeningMomentum(OpeningMomentumParams(position_size=1), ["X"])
    m.on_start(WINTER)
    m.on_trade(Trade("X", WINTER.open_ns, 1.0, 1), 0)
    (order,) = m.on_trade(Trade("X", WINTER.open_ns + 30 * MIN, 2.0, 1), 0)
    assert order == Order("X", Side.BUY, 1, tag="momentum long")
