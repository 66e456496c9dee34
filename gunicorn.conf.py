"""gunicorn's settings for this project, read by gunicorn from the folder it starts in.

Every documented way of starting the server then runs the same workers as ``app.py``::

    RISK_CONFIG=config.json .venv/bin/gunicorn 'app:create_app()'
    .venv/bin/gunicorn app:app
    .venv/bin/python app.py

gevent workers (slow clients cannot hold them), 1000 connections each, an access log format without query
strings, no control socket, and the project's log format; riskwatch/web/api/gunicorn_settings.py holds the
values for both.
Options on gunicorn's command line (``--bind``, ``--workers``) still win over this file.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the project's modules, whatever gunicorn's chdir

from riskwatch.web.api.gunicorn_settings import (  # noqa: E402
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_WORKERS,
    bind_address,
    gunicorn_settings,
)

settings = gunicorn_settings()
worker_class = settings["worker_class"]
worker_connections = settings["worker_connections"]
proc_name = settings["proc_name"]
control_socket_disable = settings["control_socket_disable"]
access_log_format = settings["access_log_format"]
graceful_timeout = settings["graceful_timeout"]
bind = [bind_address(DEFAULT_HOST, DEFAULT_PORT)]
workers = DEFAULT_WORKERS


def on_starting(server: object) -> None:
    """The project's log lines in every worker, as ``app.py`` sets them up (workers inherit the master's)."""
    from riskwatch.core.logs import setup_logging

    setup_logging()
