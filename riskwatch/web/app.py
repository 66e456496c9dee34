"""The stakeholders' API: predictions, scores, summary statistics and diagnostics, as JSON.

Serve it with a real WSGI server, never Flask's development server::

    .venv/bin/python app.py --port 8000 --workers 2          # gunicorn, started from here
    RISK_CONFIG=config.json .venv/bin/gunicorn -w 2 -b 127.0.0.1:8000 'app:create_app()'
    .venv/bin/gunicorn app:app                               # as the classic project's wsgi.py expects

All three run the same gevent workers: gunicorn reads gunicorn.conf.py from the project folder, and it and
``build_server`` take their settings from riskwatch/web/api/gunicorn_settings.py.

The deployed model is loaded once per worker and swapped when ``production_deployment/current``
changes: each request reads that one link, so a newly deployed version is picked up without a
restart, and since a version is complete before the link points at it, no request ever sees a
half-published one. A version that fails to load is logged and the previous one keeps serving.

Endpoints: ``GET``/``POST /prediction`` (``explain``: what drives each risk), ``GET /clients`` (the current
clients, riskiest first, ``?limit=N&offset=M``), ``GET /clients/<corporation>`` (one client),
``GET /scoring``, ``GET /summarystats``, ``GET /diagnostics``,
``GET /history`` (the fullprocess.py runs), ``GET /health``, ``GET /version``. Bad input gets a
4xx JSON error naming the problem. When the environment variable named by ``api.token_env``
(default ``RISK_API_TOKEN``) is set, every endpoint but ``/health`` needs ``Authorization: Bearer <token>``.
The dashboard's pages live under ``/dashboard/`` (``GET /`` redirects there) and sign people in with
the same token. Only the loopback host names and ``api.allowed_hosts`` are answered; wrong tokens are logged
and slowed down per address (riskwatch/web/guard.py).
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import threading
from typing import Any

from flask import Flask, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, ServiceUnavailable, Unauthorized
from werkzeug.middleware.proxy_fix import ProxyFix

from riskwatch.core.cache import FileBackedValue
from riskwatch.core.cli import add_logging_flags
from riskwatch.core.config import CONFIG_ENV_VAR, Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import find_test_files, sha256_file
from riskwatch.core.logs import setup_logging
from riskwatch.state.artifacts import DIAGNOSTICS_FILE, EVALUATION_WINDOW_FILE, FINAL_DATA
from riskwatch.state.records import read_evaluation_window
from riskwatch.web.api.body import WholeBodies
from riskwatch.web.api.gunicorn_settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_WORKERS,
    WORKER_CLASSES,
    bind_address,
    gunicorn_settings,
)
from riskwatch.web.api.headers import SafetyHeaders
from riskwatch.web.api.locations import MIB, LocationReader, allowed_data_places
from riskwatch.web.api.routes import (
    API_STATE,
    ApiState,
    describe_stored_diagnostics,
    json_response,
    read_summary,
)
from riskwatch.web.api.routes import bp as api_bp
from riskwatch.web.dashboard import DASHBOARD_STATE
from riskwatch.web.dashboard import bp as dashboard_bp
from riskwatch.web.guard import (
    ACCESS_STATE,
    WebAccess,
    client_key,
    count_failure,
    is_allowed_host,
    open_access,
    refuse_if_waiting,
    warn_about_weak_token,
)
from riskwatch.web.serving import DeploymentWatcher

log = logging.getLogger("app")

# Query parameters that would carry a secret into every access log and browser history on the way.
TOKEN_PARAMETERS = frozenset({"token", "access_token", "api_key", "apikey", "authorization"})
# Answered without a token: the health check, and the way from the site's root to the dashboard's sign-in.
OPEN_ENDPOINTS = frozenset({"api.health", "root"})


def redirect_to_dashboard() -> ResponseReturnValue:
    """``GET /``: the dashboard's overview, where a person starts."""
    return redirect(url_for("dashboard.overview"))


def create_app(config: Config | str | os.PathLike[str] | None = None, token: str | None = None) -> Flask:
    """The Flask application. ``config``: a Config or a config file (default ``$RISK_CONFIG``, else config.json).

    ``token``: the API token; by default read from the environment variable ``api.token_env`` names.
    Wires the JSON API's blueprint and the dashboard's, each with what it shares in a worker.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    if token is None:
        token = os.environ.get(config.api.token_env)
    token = token or None  # an empty token sets none
    warn_about_weak_token(token, config.api.token_env)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(config.api.max_body_mb * MIB)
    app.config["RISK_CONFIG"] = config
    app.wsgi_app = WholeBodies(app.wsgi_app, int(config.api.max_body_mb * MIB))  # type: ignore[method-assign]
    if config.api.trusted_proxies:  # the client's address from X-Forwarded-For, as set by that many proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.api.trusted_proxies)  # type: ignore[method-assign]
    api = build_api_state(config)
    try:
        api.watcher.served()  # load the model now, not on a client's first request
    except ServiceUnavailable as exc:
        log.warning("%s", exc.description)
    app.extensions[API_STATE] = api
    app.extensions[ACCESS_STATE] = WebAccess(*open_access(config.prod_deployment_path, config.api.session_idle_hours))
    app.extensions[DASHBOARD_STATE] = (api.watcher, token)  # the pages sign people in with the same token
    app.register_blueprint(api_bp)
    app.register_blueprint(dashboard_bp)
    app.add_url_rule("/", "root", redirect_to_dashboard)
    check_hosts(app, config.api.allowed_hosts, token is not None)
    require_token(app, token)
    add_safety_headers(app)
    answer_errors_as_json(app, config)
    return app


def check_hosts(app: Flask, allowed: tuple[str, ...], token_set: bool) -> None:
    """Answer only requests addressed to this server's names (api.allowed_hosts, and the loopback ones): a page
    on another site cannot read an open API through a DNS name it rebinds to this machine."""

    @app.before_request
    def check_host() -> None:
        host = request.environ.get("HTTP_HOST", "")
        if not is_allowed_host(host, allowed, token_set):
            raise BadRequest(
                f"this server does not answer requests for the host {host[:100]!r}; add it to api.allowed_hosts"
            )


def add_safety_headers(app: Flask) -> None:
    """No answer may be framed by another site or read by a browser as anything but its declared type: the
    headers are added around the whole app, so the body middleware's refusals carry them too."""
    app.wsgi_app = SafetyHeaders(app.wsgi_app)  # type: ignore[method-assign]


def require_token(app: Flask, token: str | None) -> None:
    """Every API endpoint but the open ones needs ``Authorization: Bearer <token>`` when a token is set; a token in
    the URL is refused whether one is set or not (URLs end up in logs). An address that sent too many wrong
    tokens waits, longer after each further one (429 with Retry-After), and each wrong token is logged."""
    expected = token.encode() if token else None

    @app.before_request
    def check_token() -> None:
        asked = request._get_current_object()  # type: ignore[attr-defined]  # once, not through the proxy each time
        if asked.query_string and any(name.lower() in TOKEN_PARAMETERS for name in asked.args):
            raise BadRequest(
                "send the token in the header 'Authorization: Bearer <token>', never in the URL (URLs are logged)"
            )
        if expected is None or asked.endpoint in OPEN_ENDPOINTS or asked.blueprint == dashboard_bp.name:
            return  # the dashboard's pages keep their own signed session
        store = app.extensions[ACCESS_STATE].store
        address = client_key(asked.remote_addr)
        refuse_if_waiting(store, address)
        scheme, _, given = asked.environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("this API needs a token: send the header 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected):
            count_failure(store, address, f"bearer token, {asked.method} {asked.path[:100]}")
            raise Unauthorized("the token sent in 'Authorization: Bearer <token>' is not this API's token")


def answer_errors_as_json(app: Flask, config: Config) -> None:
    """Every error, expected or not, is a JSON object naming the problem; an unexpected one is logged, not shown."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = exc.description
        if isinstance(exc, RequestEntityTooLarge) and message == RequestEntityTooLarge.description:
            message = f"the request body is larger than the {config.api.max_body_mb:g} MiB the API accepts"
        response = json_response({"error": message, "status": exc.code}, exc.code or 500)
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        retry_after = dict(exc.get_headers()).get("Retry-After")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_response(
            {"error": f"internal error ({type(exc).__name__}); see the server log", "status": 500}, 500
        )


def build_api_state(config: Config) -> ApiState:
    """The served model and the answers backed by files, for one worker."""
    return ApiState(
        config=config,
        watcher=DeploymentWatcher(config.prod_deployment_path),
        files=LocationReader(
            config.path.parent,
            allowed_data_places(config),
            int(config.api.max_file_mb * MIB),
            max_whole_bytes=int(config.api.max_body_mb * MIB),  # a JSON array file is parsed whole, as a body is
        ),
        summary=FileBackedValue(lambda: [config.output_folder_path / FINAL_DATA], lambda files: read_summary(files[0])),
        diagnostics=FileBackedValue(
            lambda: [config.output_model_path / DIAGNOSTICS_FILE], lambda files: describe_stored_diagnostics(files[0])
        ),
        test_hashes=FileBackedValue(
            lambda: find_test_files(config.test_data_path),
            lambda files: {path.name: sha256_file(path) for path in files},
        ),
        recent=FileBackedValue(
            lambda: [config.output_model_path / EVALUATION_WINDOW_FILE], lambda files: read_evaluation_window(files[0])
        ),
    )


_built: Flask | None = None
_build_lock = threading.Lock()


def __getattr__(name: str) -> Flask:
    """``app.app``, built on first use: ``gunicorn app:app`` and a classic ``wsgi.py`` (``from app import app``).

    Importing this module builds nothing; the first access of ``app`` builds the application once,
    with the config ``$RISK_CONFIG`` names (else config.json).
    """
    global _built
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _build_lock:
        if _built is None:
            _built = create_app()
    return _built


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def build_server(
    config_path: str | None,
    host: str,
    port: int,
    workers: int,
    access_log: bool = False,
    worker_class: str = WORKER_CLASSES[0],
) -> Any:
    """A gunicorn server for the app (gunicorn is imported here: the test client does not need it).

    Its settings are riskwatch/web/api/gunicorn_settings.py's, the ones ``gunicorn.conf.py`` gives gunicorn's own
    command line: gevent workers, so slow clients cannot hold them (``worker_class="sync"`` only behind a buffering
    proxy), and an access log without query strings.
    """
    from gunicorn.app.base import BaseApplication

    class RiskApiServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", bind_address(host, port))
            self.cfg.set("workers", workers)
            for name, value in gunicorn_settings(worker_class).items():
                self.cfg.set(name, value)
            if access_log:
                self.cfg.set("accesslog", "-")

        def load(self) -> Flask:
            return create_app(config_path)

    return RiskApiServer()


def check_exposure(host: str, token: str | None, open_to_network: bool) -> str | None:
    """Why serving on ``host`` is refused (no token, not loopback, no explicit flag), else None."""
    if token or host in LOOPBACK_HOSTS or open_to_network:
        return None
    return (
        f"no API token is set, so the API may listen on 127.0.0.1 only, not {host}: set a token "
        "(the variable api.token_env names), or pass --open-without-token to serve every endpoint to the network"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the API with gunicorn.")
    parser.add_argument("--config", metavar="PATH", help=f"config file (default: ${CONFIG_ENV_VAR}, else config.json)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"worker processes (default {DEFAULT_WORKERS})"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stdout")
    parser.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default=WORKER_CLASSES[0],
        help="gevent (default): slow clients cannot hold the workers; sync: only behind a buffering proxy (nginx)",
    )
    parser.add_argument(
        "--open-without-token",
        action="store_true",
        help="allow listening on an address other than 127.0.0.1 with no API token set (every endpoint open)",
    )
    args = add_logging_flags(parser).parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    try:
        config = load_config(args.config)  # fail here, in one sentence, rather than in every worker
    except PipelineError as exc:
        log.error("app failed: %s", exc)
        return 1
    token = os.environ.get(config.api.token_env) or None
    refusal = check_exposure(args.host, token, args.open_without_token)
    if refusal is not None:
        log.error("app failed: %s", refusal)
        return 2
    if token is None:
        log.warning(
            "no API token set (%s): every endpoint is open to whoever can reach %s:%d",
            config.api.token_env,
            args.host,
            args.port,
        )
        if args.host not in LOOPBACK_HOSTS and not config.api.allowed_hosts:
            log.warning(
                "api.allowed_hosts is empty, so without a token only requests for 127.0.0.1, localhost or [::1] "
                "are answered: list the names this server is reached by"
            )
    build_server(args.config, args.host, args.port, args.workers, args.access_log, args.worker_class).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
