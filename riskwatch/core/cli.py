"""The command-line frame every stage script shares: common flags and one-sentence failures."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

from riskwatch.core.config import CONFIG_ENV_VAR, Config, load_config
from riskwatch.core.errors import PipelineError, describe_os_error
from riskwatch.core.logs import setup_logging
from riskwatch.core.timings import record_stage_timings

log = logging.getLogger("pipeline")


def add_logging_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more detail")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="log warnings and errors only")
    return parser


def build_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config``, ``-v`` and ``-q``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ${CONFIG_ENV_VAR}, else config.json in the project folder)",
    )
    return add_logging_flags(parser)


def run_stage(stage: str, args: argparse.Namespace, work: Callable[[Config], object]) -> int:
    """Load the config and run ``work`` with it, as ``run_command`` does; record how long it took when it succeeded."""

    def timed() -> object:
        config = load_config(args.config)
        started = time.perf_counter()
        result = work(config)
        record_stage_timings(config.output_model_path, {stage: time.perf_counter() - started}, f"{stage}.py")
        return result

    return run_command(stage, args, timed)


def run_command(stage: str, args: argparse.Namespace, work: Callable[[], object]) -> int:
    """Set up logging and run ``work``; map failures to one logged sentence.

    Returns the process exit code: 0 done, 1 failed, 130 interrupted.
    """
    setup_logging(args.verbose - args.quiet)
    try:
        work()
    except PipelineError as exc:
        log.error("%s failed: %s", stage, exc)
        return 1
    except KeyboardInterrupt:
        log.error("%s interrupted; outputs of earlier runs are untouched", stage)
        return 130
    except OSError as exc:
        log.error("%s failed: %s", stage, describe_os_error(exc))
        return 1
    except Exception as exc:  # an unforeseen fault still ends in one sentence, with detail on -v
        log.error("%s failed unexpectedly: %s: %s (run with -v for the traceback)", stage, type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        return 1
    return 0
