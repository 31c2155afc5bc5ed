"""Equity curves as a PNG (matplotlib's Agg canvas, no display): the one drawing routine
behind ``tradeday report``'s minute curves and a sweep's best parameter sets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def save_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ticks: tuple[Sequence[float], Sequence[str]],
    title: str,
    out: Path,
    separators: Sequence[float] = (),
) -> Figure:
    """One line per ``label: (xs, ys)`` (a NaN breaks a line), day ``ticks`` under the x
    axis, thin vertical ``separators``; written to ``out``, the figure returned."""
    fig = Figure(figsize=(11, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for x in separators:
        ax.axvline(x, color="0.85", linewidth=0.8)
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, linewidth=1.2, label=label)
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set_xticks(list(ticks[0]), list(ticks[1]), rotation=30)
    ax.set_ylabel("cumulative net P&L")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out)
    return fig
