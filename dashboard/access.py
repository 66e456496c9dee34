"""Who may see the pages: a sign-in form for the API's token, a signed session cookie, CSRF tokens on forms.

The session key is derived from the token with HMAC, so every gunicorn worker signs and reads the
same cookies, and changing the token signs everybody out. The token itself never goes into a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, Response, abort, current_app, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue

from dashboard import DASHBOARD_STATE, bp

SESSION_KEY_LABEL = b"risk-dashboard-session"
OPEN_ENDPOINTS = ("dashboard.sign_in", "dashboard.static")
SIGNED_IN = "signed_in"
CSRF = "csrf"


def session_secret(token: str | None, config_path: str) -> bytes:
    """The key that signs session cookies: from the token when there is one (all workers agree on it)."""
    key = token.encode() if token else config_path.encode()
    return hmac.new(key, SESSION_KEY_LABEL, hashlib.sha256).digest()


def api_token() -> str | None:
    """The token the pages ask for; None (an empty one too) when the API is open."""
    return current_app.extensions[DASHBOARD_STATE][1] or None


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    if CSRF not in session:
        session[CSRF] = secrets.token_urlsafe(32)
    return session[CSRF]


def check_csrf() -> None:
    """Refuse (400) a form whose CSRF token is not this session's."""
    given = request.form.get(CSRF, "")
    expected = session.get(CSRF, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(400, "This form has expired or did not come from this dashboard; reload the page and try again.")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only, never another host."""
    if not target:
        return url_for("dashboard.overview")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("dashboard.overview")
    return target


def is_signed_in() -> bool:
    return api_token() is None or session.get(SIGNED_IN) is True


@bp.record_once
def configure_sessions(state) -> None:  # noqa: ANN001 (Flask's BlueprintSetupState)
    app: Flask = state.app
    watcher_token = app.extensions.get(DASHBOARD_STATE, (None, None))
    config = app.config.get("RISK_CONFIG")
    app.secret_key = session_secret(watcher_token[1], str(getattr(config, "path", "")))
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="risk_dashboard",
    )
    app.session_interface = SecureCookieSessionInterface()


@bp.before_request
def require_sign_in() -> ResponseReturnValue | None:
    if request.method == "POST":
        check_csrf()
    if request.endpoint in OPEN_ENDPOINTS or is_signed_in():
        return None
    return redirect(url_for("dashboard.sign_in", next=request.full_path.rstrip("?")))


PAGE_HEADERS = {
    # Nothing but this site's own files; inline style attributes only (the drivers' bars).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@bp.after_request
def add_page_headers(response: Response) -> Response:
    """Pages hold client data: no framing, no scripts from anywhere, not kept in shared caches."""
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def access_values() -> dict:
    return {"csrf_token": csrf_token, "token_required": api_token() is not None, "signed_in": is_signed_in()}


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    token = api_token()
    target = safe_next(request.values.get("next"))
    if token is None or (request.method == "GET" and session.get(SIGNED_IN) is True):
        return redirect(target)
    error = None
    if request.method == "POST":
        given = request.form.get("token", "")
        if hmac.compare_digest(given.strip().encode(), token.encode()):
            session.clear()
            session[SIGNED_IN] = True
            session[CSRF] = secrets.token_urlsafe(32)
            return redirect(target)
        error = "That token is not the one this dashboard was given; check it and try again."
    status = 401 if error else 200
    return render_template("sign_in.html", error=error, next=target), status


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("dashboard.sign_in"))
