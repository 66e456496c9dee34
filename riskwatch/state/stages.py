"""Named, timed stages of a monitoring run: a failure in one becomes one sentence that names it.

Standard library only: the cron job's no-op run imports it before it knows whether it has work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from riskwatch.core.errors import PipelineError, describe_os_error

log = logging.getLogger("fullprocess")


class StageFailed(Exception):
    """A stage failed; the message is one sentence a person can act on."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage} failed: {message}")
        self.stage = stage
        self.message = message


class StageClock:
    """Times the stages of one run; each stage's seconds are kept under its own name."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage and turn any failure in it into StageFailed naming the stage."""
        started = time.perf_counter()
        try:
            yield
        except StageFailed:
            raise
        except PipelineError as exc:
            raise StageFailed(name, str(exc)) from None
        except OSError as exc:
            raise StageFailed(name, describe_os_error(exc)) from None
        except Exception as exc:  # an unforeseen fault still ends in one sentence naming the stage
            log.debug("traceback of the %s stage", name, exc_info=True)
            raise StageFailed(name, f"{type(exc).__name__}: {exc} (run with -v for the traceback)") from None
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 3)
