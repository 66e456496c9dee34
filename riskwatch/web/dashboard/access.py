"""Who may see the pages: a sign-in form for the API's token, a signed session cookie, CSRF tokens on forms.

Cookies are signed with a key made from the server's random secret (riskwatch/web/guard.py: created once beside the
deployment, shared by every gunicorn worker), so a cookie tells nothing about the token and cannot be forged
offline; the token is mixed in, so changing it signs everybody out. A signed-in cookie names a session that
lives on the server: signing out ends it there, and one unused for ``api.session_idle_hours`` expires, so a
copied cookie stops working too. Wrong tokens are logged and, past a few, make the address wait. The token
itself never goes into a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, Request, Response, abort, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue

from riskwatch.web.dashboard import DASHBOARD_STATE, bp
from riskwatch.web.guard import ACCESS_STATE, AccessStore, WebAccess, client_key, count_failure, refuse_if_waiting

SESSION_KEY_LABEL = b"risk-dashboard-session"
OPEN_ENDPOINTS = ("dashboard.sign_in", "dashboard.static")
SESSION_ID = "session"
CSRF = "csrf"


def session_secret(server_secret: bytes, token: str | None) -> bytes:
    """The key that signs session cookies: the server's random secret with the token mixed in."""
    return hmac.new(server_secret, SESSION_KEY_LABEL + (token or "").encode(), hashlib.sha256).digest()


def access_store() -> AccessStore:
    access: WebAccess = current_app.extensions[ACCESS_STATE]
    return access.store


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
    # Browsers read a backslash as a slash ("/\\evil" as "//evil"); no control character belongs in a path.
    unsafe = "\\" in target or any(ord(character) < 0x20 or ord(character) == 0x7F for character in target)
    if unsafe or parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("dashboard.overview")
    return target


def is_signed_in() -> bool:
    """No token is asked for, or the cookie names a session live on the server (asked once per request)."""
    if api_token() is None:
        return True
    if "signed_in" not in g:
        session_id = session.get(SESSION_ID)
        g.signed_in = isinstance(session_id, str) and access_store().is_live(session_id)
    return bool(g.signed_in)


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, the signer built only for a request that sends cookies.

    Flask builds it for every request (about 20 µs, a test serialisation included); the JSON API's requests
    carry no cookie, and a request without one gets a new empty session either way.
    """

    def open_session(self, app: Flask, incoming: Request) -> SecureCookieSession | None:
        if app.secret_key and not incoming.environ.get("HTTP_COOKIE"):
            return self.session_class()
        return super().open_session(app, incoming)


@bp.record_once
def configure_sessions(state) -> None:  # noqa: ANN001 (Flask's BlueprintSetupState)
    app: Flask = state.app
    token = app.extensions[DASHBOARD_STATE][1]
    access: WebAccess = app.extensions[ACCESS_STATE]
    app.secret_key = session_secret(access.secret, token)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="risk_dashboard",
        # A signed-in cookie's signature is not accepted after the idle time either (Flask's default: 31 days);
        # it is re-signed on every page, so only an unused one runs out.
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=access.store.idle_seconds),
    )
    app.session_interface = CookieSessions()


@bp.before_request
def require_sign_in() -> ResponseReturnValue | None:
    if request.method == "POST":
        check_csrf()
    if request.endpoint in OPEN_ENDPOINTS or is_signed_in():
        return None
    return redirect(url_for("dashboard.sign_in", next=requested_target()))


def requested_target() -> str:
    """The path and query asked for, as sent: gunicorn's raw request line keeps an id's %2F, which the decoded
    path has lost (``a%2F..%2Fb`` would come back as ``a/../b``, and a browser would shorten it)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    return raw if isinstance(raw, str) and raw.startswith("/") else request.full_path.rstrip("?")


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
    if token is None or (request.method == "GET" and is_signed_in()):
        return redirect(target)
    error = None
    if request.method == "POST":
        store, address = access_store(), client_key(request.remote_addr)
        refuse_if_waiting(store, address)
        given = request.form.get("token", "")
        if hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode()):
            store.forget_failures(address)
            session.clear()
            session[SESSION_ID] = store.start_session()
            session[CSRF] = secrets.token_urlsafe(32)
            session.permanent = True  # re-signed on each page, so the signature's age is the idle time too
            return redirect(target)
        count_failure(store, address, "dashboard sign-in")
        error = "That token is not the one this dashboard was given; check it and try again."
    status = 401 if error else 200
    return render_template("sign_in.html", error=error, next=target), status


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    session_id = session.get(SESSION_ID)
    if isinstance(session_id, str):
        access_store().end_session(session_id)  # a copy of the cookie no longer signs anyone in
    session.clear()
    return redirect(url_for("dashboard.sign_in"))
