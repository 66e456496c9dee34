"""The gunicorn settings every way of starting the server shares: ``app.py`` and ``gunicorn.conf.py`` read them here.

Imports nothing heavy: gunicorn's master reads this through ``gunicorn.conf.py`` before gevent patches a worker.
"""

from __future__ import annotations

# The access log names the path but neither the query string nor a Basic user name: either may hold a secret.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
WORKER_CLASSES = ("gevent", "sync")
WORKER_CONNECTIONS = 1000  # open connections a worker holds at once, slow ones included
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_WORKERS = 2  # one per core
PROCESS_NAME = "risk-api"
# On a stop or restart, a worker still holding a connection after this long is ended: the API's requests take
# milliseconds, so what is left then is a slow or idle client (gunicorn waits 30 s by default).
GRACEFUL_SECONDS = 10


def gunicorn_settings(worker_class: str = WORKER_CLASSES[0]) -> dict[str, object]:
    """gunicorn's settings by name, bind and worker count aside.

    Workers are gevent's: a sync worker holds one connection at a time, so a client that sends its headers
    slowly holds a whole worker (gunicorn's documentation says sync workers need a buffering proxy in front for
    that reason). With gevent each connection waits in its own greenlet. ``sync`` is for a deployment behind a
    buffering proxy (nginx) that absorbs slow clients.
    """
    return {
        "worker_class": worker_class,
        "worker_connections": WORKER_CONNECTIONS,
        "graceful_timeout": GRACEFUL_SECONDS,
        "proc_name": PROCESS_NAME,
        "control_socket_disable": True,
        "access_log_format": ACCESS_LOG_FORMAT,
    }


def bind_address(host: str, port: int) -> str:
    """gunicorn's ``bind`` for ``host`` and ``port`` (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
