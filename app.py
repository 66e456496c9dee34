"""The stakeholders' API: predictions, scores, summary statistics and diagnostics, as JSON.

This file is the command line and the WSGI entry (``gunicorn 'app:create_app()'``, ``gunicorn app:app``);
the work is in ``riskwatch.web.app``.
"""

from typing import Any

from riskwatch.web import app as _application
from riskwatch.web.app import create_app, main

__all__ = ["create_app", "main"]


def __getattr__(name: str) -> Any:
    """``app.app`` (``gunicorn app:app``, a classic ``wsgi.py``): built on first use, once."""
    if name == "app":
        return _application.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
