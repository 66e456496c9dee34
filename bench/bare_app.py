"""The yardsticks for what the API's checks cost per request, served with the API's gunicorn settings.

``bare``: a bare Flask app whose ``POST /prediction`` parses the JSON body and answers a constant (no host
check, no token, no safety headers, no body middleware, no model): what is left is gunicorn, gevent, Flask and
orjson, which the API pays too. ``checks``: the API's own app from ``create_app``, every check in place, with
the /prediction view replaced by the bare one: the checks' price without the answer's production.
``bench.bench_api --price-of-checks`` starts both beside the API.

    .venv/bin/python -m bench.bare_app --port 8001
    .venv/bin/python -m bench.bare_app --port 8002 --checks config.json [--code /path/to/other/checkout]

Nothing of the project is imported before ``--code`` is on the path, so an older checkout's app can be measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, request

CONSTANT_ANSWER = b'{"model_version":"v0","rows":1,"predictions":[{"label":0,"probability":0.5}]}'
PREDICTION_ENDPOINT = "api.prediction"  # the API's /prediction view, as its blueprint names it


def answer_constant() -> Response:
    """``POST /prediction`` of the bare app: the JSON body parsed, a constant answered."""
    orjson.loads(request.get_data())
    return Response(CONSTANT_ANSWER, mimetype="application/json")


def create_bare_app() -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/prediction", "prediction", answer_constant, methods=["POST"])
    app.add_url_rule("/health", "health", lambda: Response(b'{"status":"ok"}', mimetype="application/json"))
    return app


def create_checked_app(config_path: Path, code: Path | None = None) -> Flask:
    """The API's app (token from the environment, as ``app.py`` reads it) with the bare /prediction view.

    ``code``: the checkout it comes from; one from before the ``riskwatch`` package has ``create_app`` in app.py.
    """
    if code is not None and not (code / "riskwatch").is_dir():
        from app import create_app  # type: ignore[attr-defined,unused-ignore]
    else:
        from riskwatch.web.app import create_app

    app = create_app(config_path)
    app.view_functions[PREDICTION_ENDPOINT] = answer_constant
    return app


def build_yardstick_server(port: int, workers: int, checks: Path | None, code: Path | None = None) -> Any:
    """gunicorn serving the bare app (or, with ``checks``, the checked one) with the settings ``app.py`` gives
    the API (gevent workers, ...)."""
    from gunicorn.app.base import BaseApplication

    from riskwatch.web.api.gunicorn_settings import DEFAULT_HOST, bind_address, gunicorn_settings

    class YardstickServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", bind_address(DEFAULT_HOST, port))
            self.cfg.set("workers", workers)
            for name, value in gunicorn_settings().items():
                self.cfg.set(name, value)

        def load(self) -> Flask:
            return create_bare_app() if checks is None else create_checked_app(checks, code)

    return YardstickServer()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the bare Flask app (or the API's checks around its view).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2, as app.py's)")
    parser.add_argument("--checks", type=Path, help="serve the API's app for this config, with the bare view")
    parser.add_argument("--code", type=Path, help="the checkout whose app and settings to use (default this one)")
    args = parser.parse_args(argv)
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
    build_yardstick_server(args.port, args.workers, args.checks, args.code and args.code.resolve()).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
