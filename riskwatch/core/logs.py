"""Logging set-up, called once from each script's ``main()``."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from riskwatch.core.errors import describe_os_error

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def setup_logging(verbosity: int = 0) -> None:
    """Log to stderr: INFO by default, DEBUG with ``-v``, WARNING with ``-q``."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT, datefmt=DATE_FORMAT, force=True)


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file that, when it cannot be written (a full disk), says so once on stderr, not per record.

    logging's default prints a traceback for every record it fails to write; the run's own
    messages still reach stderr, so one line saying the file is behind is what a person needs.
    """

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self.failed:
            self.failed = True
            reason = sys.exc_info()[1]
            said = describe_os_error(reason) if isinstance(reason, OSError) else type(reason).__name__
            sys.stderr.write(f"the log file {self.baseFilename} cannot be written ({said}); logging to stderr only\n")


def add_log_file(path: Path, max_bytes: int, backups: int) -> Path:
    """Also log to a rotating file (INFO and above, whatever stderr shows); return its path.

    The file is rotated at ``max_bytes`` and ``backups`` old files are kept, so a job that runs
    unattended for months never fills the disk.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = LogFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    for existing in root.handlers:  # stderr keeps its own level
        if existing.level == logging.NOTSET:
            existing.setLevel(root.level)
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    return path
