"""How the report writes values: numbers, percentages, times, and text that wraps or must not."""

from __future__ import annotations

from xml.sax.saxutils import escape

from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfbase.pdfmetrics import stringWidth

from riskwatch.core.formatting import DASH, format_decimals, format_grouped, is_number
from riskwatch.core.formatting import format_time as format_stored_time


def format_number(value: float | int | None) -> str:
    """Thousands separators; whole numbers without decimals, others with 1 to 3 as the size suits."""
    if not is_number(value):
        return DASH
    size = abs(float(value))
    if size.is_integer():
        return f"{value:,.0f}"
    if size >= 1000:
        return f"{value:,.1f}"
    if size >= 1:
        return f"{value:,.2f}"
    return f"{value:.3f}"


def format_metric(value: float | None) -> str:
    """A score between 0 and 1 to four decimals."""
    return format_decimals(value, 4)


def format_missing(percent: float | None) -> str:
    """A percentage of missing values: plain 0 when none, never rounded down to 0 when some."""
    if percent is None:
        return DASH
    if percent == 0:
        return "0"
    if percent < 0.01:
        return "<0.01%"
    return f"{percent:,.2f}%"


def format_time(stamp: str | None) -> str:
    """An ISO 8601 UTC time as '2026-11-20 23:17:30 UTC'."""
    return format_stored_time(stamp) + " UTC" if stamp else DASH


def format_seconds(value: float | None) -> str:
    return format_grouped(value, 2)


def breakable(name: str) -> str:
    """Paragraph markup of a column name that wraps after its last underscore, to fit a narrow column."""
    head, underscore, tail = name.rpartition("_")
    return f"{escape(head)}_<br/>{escape(tail)}" if underscore else escape(name)


def ellipsize(text: str, width: float, style: ParagraphStyle) -> str:
    """``text`` cut in the middle with an ellipsis to fit ``width`` points in ``style``; as it is when it fits.

    The start and the end stay, so two long ids that differ at either end still read apart.
    """
    if stringWidth(text, style.fontName, style.fontSize) <= width:
        return text
    for keep in range(len(text) - 1, 1, -1):
        tail = keep // 3
        shown = f"{text[: keep - tail]}\u2026{text[len(text) - tail :]}"
        if stringWidth(shown, style.fontName, style.fontSize) <= width:
            return shown
    return "\u2026"


def nowrap(text: str) -> str:
    """Text whose spaces do not break a line (for times and numbers with units in running text)."""
    return text.replace(" ", "\u00a0")
