"""The monitoring job's crontab line and the environment file it sources (``make cronjob``)."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from riskwatch.core.config import PROJECT_ROOT, Config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import write_text_atomic

log = logging.getLogger("fullprocess")

CRON_LOG_FILE = "cron.log"
CRON_ENV_FILE = "fullprocess.env"  # beside the config: what the cron job exports before each run (the API token)
CRON_SCHEDULE = "*/10 * * * *"


def cron_env_path(config: Config) -> Path:
    """The environment file the cron job sources before each run: beside the config, mode 0600, never committed."""
    return config.path.parent / CRON_ENV_FILE


def cron_line(config: Config, python: Path | None = None) -> str:
    """The crontab line: every 10 minutes, in the project folder, with the project's Python, appending to the log.

    The config is named by its absolute path, so the job runs the config it was written for
    whatever chose it (``--config``, ``$RISK_CONFIG``). The run's secrets (the API token) come
    from the environment file it sources when it is there (``set -a`` exports what it sets), never
    from the command line, which any user of the machine can read. ``%`` is escaped: cron turns it into a newline.
    """
    project = PROJECT_ROOT
    env_file = cron_env_path(config)
    places = (
        ("the config file", config.path),
        ("the project folder", project),
        ("the log", config.log_path),
        ("the environment file", env_file),
    )
    for what, path in places:
        if "\n" in str(path) or "\r" in str(path):
            raise PipelineError(f"{what} {str(path)!r} holds a line break; cron reads one job per line, so move it")
    if python is None:
        venv_python = project / ".venv" / "bin" / "python"
        python = venv_python if venv_python.exists() else Path(sys.executable).absolute()
    command = [shlex.quote(str(python)), "fullprocess.py", "--quiet", "--config", shlex.quote(str(config.path))]
    cron_log = shlex.quote(str(config.log_path.parent / CRON_LOG_FILE))
    mkdir = f"mkdir -p {shlex.quote(str(config.log_path.parent))}"
    # A missing file must not stop the job before it can record and alert (dash's "." ends the shell): the run
    # goes on without it, and calls the API refuses without the token fail the run, which alerts.
    env = shlex.quote(str(env_file))
    source = f"if [ -r {env} ]; then set -a; . {env}; set +a; fi"
    run = f"{{ {source}; {' '.join(command)}; }} >> {cron_log} 2>&1"
    line = f"{CRON_SCHEDULE} cd {shlex.quote(str(project))} && {mkdir} && {run}"
    return line.replace("%", "\\%")


def write_cron_env(config: Config) -> Path:
    """Create the cron job's environment file, mode 0600, if there is none; never touch one that exists.

    Warns when an existing one may be read by other users: it holds the API token.
    """
    path = cron_env_path(config)
    text = (
        "# The environment of fullprocess.py under cron: cronjob.txt sources this file before each run.\n"
        "# Keep it mode 0600 (only you can read it) and out of version control. When the API has a token,\n"
        "# give the same one here, or the run's calls to the API after a deployment are refused (401):\n"
        f"# {config.api.token_env}=the-token\n"
    )
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s may be read by other users and holds the API token; run: chmod 600 %s", path, path)
        return path
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def write_cronjob(config: Config, target: Path) -> Path:
    """Write ``cronjob.txt`` for this checkout (and its environment file if there is none); install it with crontab."""
    env_file = write_cron_env(config)
    text = (
        f"# fullprocess.py every 10 minutes for the checkout at {PROJECT_ROOT}.\n"
        "# Written by `make cronjob`; install with `crontab cronjob.txt` (replaces your crontab) or\n"
        "# `(crontab -l; cat cronjob.txt) | crontab -`. Warnings and errors go to the cron log below;\n"
        f"# everything is in the rotating log {config.log_path}.\n"
        f"# Secrets (the API token: {config.api.token_env}=...) go in {env_file} (mode 0600), which the job sources.\n"
        f"{cron_line(config)}\n"
    )
    return write_text_atomic(target, text)
