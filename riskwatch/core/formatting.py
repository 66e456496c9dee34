"""How the system writes values for people, wherever they are shown (the pages, the report, the history's
table): a dash for a value that is unknown, percentages, fixed decimals, thousands separators, and one format
for a moment in time."""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeGuard

DASH = "\u2013"  # shown where a value is unknown, missing or damaged


def is_number(value: Any) -> TypeGuard[float]:
    """Whether a value can be shown as a number: a finite int or float, never a bool. numpy's numbers register
    as ``numbers.Real``, so they count too without this module importing numpy (the history table is printed
    by a command that loads no data library)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def format_percent(value: Any, digits: int = 1) -> str:
    """A share between 0 and 1 as a percentage: ``0.1234`` as ``12.3%``."""
    return f"{value * 100:.{digits}f}%" if is_number(value) else DASH


def format_decimals(value: Any, digits: int) -> str:
    """A number to a fixed number of decimals: a score as ``0.631``."""
    return f"{value:.{digits}f}" if is_number(value) else DASH


def format_grouped(value: Any, digits: int = 0) -> str:
    """A number with thousands separators: ``12,345``."""
    return f"{value:,.{digits}f}" if is_number(value) else DASH


def format_timestamp(stamp: str) -> str:
    """A stored UTC time (``2026-12-07T18:03:24Z``) as people read it: ``2026-12-07 18:03:24``."""
    return stamp.replace("T", " ").removesuffix("Z")


def format_time(stamp: str | None) -> str:
    """A stored UTC time as people read it, or a dash when there is none."""
    return format_timestamp(str(stamp)) if stamp else DASH
