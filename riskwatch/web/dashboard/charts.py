"""Charts drawn on the server as SVG: they need no JavaScript and no library, and hovering a point shows
its value (each point carries a <title>). Every chart also has a caption; the pages pair it with a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 76, 16, 16, 40
PALETTE = ("series-a", "series-b", "series-c", "series-d")


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float | None]
    style: str = "series-a"


@dataclass(frozen=True)
class Mark:
    """A vertical line at one x position, such as a deployment."""

    index: int
    label: str
    style: str = "mark-deploy"


@dataclass(frozen=True)
class Chart:
    title: str
    labels: list[str]  # one per x position
    series: list[Series]
    y_label: str
    reference: tuple[float, str] | None = None  # a horizontal line: value, what it is
    marks: list[Mark] = field(default_factory=list)
    bars: bool = False
    y_format: str = ""  # empty: as many decimals as the range needs
    x_label: str = ""  # what the x positions are, written under their labels; empty: nothing written

    def format_value(self, value: float) -> str:
        return (self.y_format or "{:.3f}").format(value)


def y_range(chart: Chart) -> tuple[float, float]:
    values = [v for s in chart.series for v in s.values if v is not None and math.isfinite(v)]
    if chart.reference is not None:
        values.append(chart.reference[0])
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if chart.bars:
        low = min(0.0, low)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.08
    if chart.bars:
        return low, high + pad
    return (max(low - pad, 0.0) if low >= 0 else low - pad), high + pad


def tick_step(low: float, high: float) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) that cuts the range into about six parts."""
    raw = (high - low) / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(factor * magnitude for factor in (1, 2, 2.5, 5, 10) if factor * magnitude >= raw * 0.999)


def y_ticks(low: float, high: float) -> list[float]:
    """The values of the grid lines: the multiples of a round step within the range."""
    step = tick_step(low, high)
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [round(step * number, 12) + 0.0 for number in range(first, last + 1)]  # + 0.0: no "-0"


def tick_format(chart: Chart, ticks: list[float]) -> str:
    """The chart's own format, or one with just enough decimals to write its round ticks exactly."""
    if chart.y_format:
        return chart.y_format
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    digits = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * max(1.0, step)), 6)
    return f"{{:,.{digits}f}}"


@dataclass(frozen=True)
class Frame:
    """Where a chart's values land on the drawing: the value range and the width of one label's slot."""

    low: float
    high: float
    step: float
    ticks: list[float]

    @property
    def plot_height(self) -> float:
        return HEIGHT - TOP - BOTTOM

    def x_at(self, index: int) -> float:
        return LEFT + self.step * (index + 0.5)

    def y_at(self, value: float) -> float:
        return TOP + self.plot_height * (1 - (value - self.low) / (self.high - self.low))


def render_chart(chart: Chart) -> Markup:
    """The chart as inline SVG markup (role img, labelled by its title)."""
    low, high = y_range(chart)
    frame = Frame(low, high, (WIDTH - LEFT - RIGHT) / max(len(chart.labels), 1), y_ticks(low, high))
    title_id = f"chart-{abs(hash(chart.title)) % 10**8}"
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{title_id}" '
        f'preserveAspectRatio="xMidYMid meet"><title id="{title_id}">{escape(chart.title)}</title>',
        *draw_axes(chart, frame),
        *draw_marks(chart, frame),
    ]
    for number, series in enumerate(chart.series):
        parts += draw_series(chart, frame, series, number)
    parts.append("</svg>")
    return Markup("".join(parts))


def draw_axes(chart: Chart, frame: Frame) -> list[str]:
    """Grid lines with their values, every n-th label under the slots, and the axes' names."""
    ticks = tick_format(chart, frame.ticks)
    parts = []
    for level in frame.ticks:
        y = frame.y_at(level)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{ticks.format(level)}</text>'
        )
    every = max(1, math.ceil(len(chart.labels) / 10))
    for index, label in enumerate(chart.labels):
        if index % every == 0:
            parts.append(
                f'<text class="tick" x="{frame.x_at(index):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    middle = TOP + frame.plot_height / 2
    parts.append(
        f'<text class="axis" x="12" y="{middle:.1f}" transform="rotate(-90 12 {middle:.1f})" '
        f'text-anchor="middle">{escape(chart.y_label)}</text>'
    )
    if chart.x_label:
        centre = LEFT + (WIDTH - LEFT - RIGHT) / 2
        parts.append(
            f'<text class="axis" x="{centre:.1f}" y="{HEIGHT - 4}" text-anchor="middle">{escape(chart.x_label)}</text>'
        )
    return parts


def draw_marks(chart: Chart, frame: Frame) -> list[str]:
    """The vertical marks (deployments, retrainings) and the horizontal reference line, each with its tooltip."""
    parts = []
    for mark in chart.marks:
        x = frame.x_at(mark.index)
        parts.append(
            f'<line class="{mark.style}" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + frame.plot_height}">'
            f"<title>{escape(mark.label)}</title></line>"
        )
    if chart.reference is not None:
        level, what = chart.reference
        y = frame.y_at(level)
        parts.append(
            f'<line class="reference" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}">'
            f"<title>{escape(what)}: {chart.format_value(level)}</title></line>"
        )
    return parts


def draw_series(chart: Chart, frame: Frame, series: Series, number: int) -> list[str]:
    """One series: a bar per value, or a line through points; missing and non-finite values are left out."""
    width = frame.step * 0.8 / max(len(chart.series), 1)
    parts, points = [], []
    for index, value in enumerate(series.values):
        if value is None or not math.isfinite(value):
            continue
        tip = f"{escape(series.name)}, {escape(chart.labels[index])}: {chart.format_value(value)}"
        if chart.bars:
            x = frame.x_at(index) - frame.step * 0.4 + width * number
            top, base = frame.y_at(max(value, 0.0)), frame.y_at(max(frame.low, 0.0))
            parts.append(
                f'<rect class="{series.style}" x="{x:.1f}" y="{top:.1f}" width="{max(width, 1):.1f}" '
                f'height="{max(base - top, 0.5):.1f}"><title>{tip}</title></rect>'
            )
        else:
            points.append((frame.x_at(index), frame.y_at(value), tip))
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
        parts.append(f'<polyline class="{series.style} line" points="{path}"/>')
        radius = 3 if len(points) <= 120 else 1.5
        for x, y, tip in points:
            parts.append(
                f'<circle class="{series.style}" cx="{x:.1f}" cy="{y:.1f}" r="{radius}"><title>{tip}</title></circle>'
            )
    return parts
