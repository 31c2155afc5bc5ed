"""Positions, cash and P&L from fills, with average-cost accounting.

One :class:`Book` per session (run and model): the engine keeps it on the feed thread,
the report rebuilds it from the ledger's fills, so both agree to the cent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Position:
    """A signed position and its average cost; realized P&L excludes fees."""

    qty: int = 0
    avg_price: float = 0.0
    realized: float = 0.0
    fees: float = 0.0
    trades: int = 0
    turnover: float = 0.0
    wins: int = 0
    closes: int = 0

    def apply(self, signed_qty: int, price: float, fee: float = 0.0) -> float:
        """Apply one fill; return the P&L it realized (before fees)."""
        self.trades += 1
        self.turnover += abs(signed_qty) * price
        self.fees += fee
        qty = self.qty
        if qty == 0 or (qty > 0) == (signed_qty > 0):
            total = qty + signed_qty
            self.avg_price = (self.avg_price * abs(qty) + price * abs(signed_qty)) / abs(total)
            self.qty = total
            return 0.0
        closing = min(abs(signed_qty), abs(qty))
        direction = 1 if qty > 0 else -1
        realized = (price - self.avg_price) * closing * direction
        self.realized += realized
        self.closes += 1
        if realized > 0:
            self.wins += 1
        remaining = qty + signed_qty
        if remaining == 0:
            self.avg_price = 0.0
        elif (remaining > 0) != (qty > 0):
            self.avg_price = price  # flipped: the rest opens a new position at this price
        self.qty = remaining
        return realized

    def unrealized(self, mark: float) -> float:
        return (mark - self.avg_price) * self.qty if self.qty else 0.0


class Book:
    """All positions of one session, plus cash."""

    def __init__(self, starting_cash: float = 0.0) -> None:
        self.starting_cash = starting_cash
        self.cash = starting_cash
        self.positions: dict[str, Position] = {}
        self.marks: dict[str, float] = {}

    def position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position()
        return pos

    def carry(self, symbol: str, qty: int, avg_price: float, mark: float) -> None:
        """Open the session holding ``qty`` at cost ``avg_price`` from an earlier session.

        Not a trade: no turnover, no fee; selling it realizes the move from that cost.
        """
        position = self.position(symbol)
        position.qty, position.avg_price = qty, avg_price
        self.cash -= qty * avg_price
        self.marks[symbol] = mark

    def qty(self, symbol: str) -> int:
        pos = self.positions.get(symbol)
        return pos.qty if pos is not None else 0

    def apply_fill(self, symbol: str, signed_qty: int, price: float, fee: float = 0.0) -> float:
        self.cash -= signed_qty * price + fee
        # the market's last price stays the mark (a fill may be at an older bar open, or at
        # the bid/ask with slippage); the fill price marks only a symbol with no price yet
        self.marks.setdefault(symbol, price)
        return self.position(symbol).apply(signed_qty, price, fee)

    @property
    def realized(self) -> float:
        return sum(p.realized for p in self.positions.values())

    @property
    def fees(self) -> float:
        return sum(p.fees for p in self.positions.values())

    def unrealized(self, marks: dict[str, float] | None = None) -> float:
        marks = marks if marks is not None else self.marks
        return sum(p.unrealized(marks.get(s, p.avg_price)) for s, p in self.positions.items())

    def net(self, marks: dict[str, float] | None = None) -> float:
        """Realized + unrealized - fees: what the session made if it closed at the marks.

        One pass: the kill switch asks after every fill and every move of a held price.
        """
        marks = marks if marks is not None else self.marks
        total = 0.0
        for symbol, p in self.positions.items():
            total += p.realized - p.fees
            if p.qty:
                total += (marks.get(symbol, p.avg_price) - p.avg_price) * p.qty
        return total

    def open_positions(self) -> dict[str, int]:
        return {s: p.qty for s, p in self.positions.items() if p.qty}

    def gross_exposure(self, marks: dict[str, float] | None = None) -> float:
        marks = marks if marks is not None else self.marks
        return sum(abs(p.qty) * marks.get(s, p.avg_price) for s, p in self.positions.items())
