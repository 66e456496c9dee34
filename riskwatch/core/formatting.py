"""How the system writes values for people: one format for a moment in time, wherever it is shown."""

from __future__ import annotations


def format_timestamp(stamp: str) -> str:
    """A stored UTC time (``2026-12-07T18:03:24Z``) as people read it: ``2026-12-07 18:03:24``."""
    return stamp.replace("T", " ").removesuffix("Z")
