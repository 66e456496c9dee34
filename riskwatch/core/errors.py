"""The one exception type a stage raises for a failure a person can act on, and how OS errors are said."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class PipelineError(Exception):
    """A failure with a one-sentence message that names the file, field or setting at fault."""


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
LOW_SPACE_BYTES = 1024 * 1024  # less free space than this where a write failed: the disk is the cause


def says_disk_full(exc: BaseException) -> bool:
    """Whether an error is a full disk: an OSError's errno, or a library (pyarrow) that says it only in words."""
    return (isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS) or "No space left" in str(exc)


def describe_os_error(exc: OSError) -> str:
    """An operating-system error in one sentence; a full disk said as such, with what to do."""
    if says_disk_full(exc):
        where = f" holding {Path(exc.filename).parent}" if exc.filename else ""
        return f"the disk{where} is full; free some space and run again (earlier outputs are untouched)"
    return str(exc)


def disk_is_full(path: Path) -> bool:
    """Whether the disk holding ``path`` (or its nearest existing folder) has almost no free space left."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < LOW_SPACE_BYTES
    except OSError:
        return False
