"""The headers every answer carries: no framing by another site, no reading as another type than the one declared.

Added as WSGI middleware around the whole application, so every answer gets them: the JSON API's, the pages',
the errors', and the refusals of the body middleware, which answer before Flask sees the request. One pass
over the answer's header list; Werkzeug's ``Headers.setdefault`` in an ``after_request`` hook cost several
times that on every request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from riskwatch.web.api.body import Environ, StartResponse, WsgiApp

SAFETY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"))


class SafetyHeaders:
    """WSGI middleware: add each of ``SAFETY_HEADERS`` the answer does not already set."""

    def __init__(self, app: WsgiApp):
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def start_with_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, with_safety_headers(headers), exc_info)

        return self.app(environ, start_with_headers)


def with_safety_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` with each safety header it lacks (a header it sets, in any case, is left as it is)."""
    present = {name.lower() for name, _ in headers}
    return headers + [(name, value) for name, value in SAFETY_HEADERS if name.lower() not in present]
