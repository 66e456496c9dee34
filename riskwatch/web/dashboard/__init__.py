"""The dashboard: the pages a person opens in a browser, under ``/dashboard``, beside the JSON API in the same app.

``create_app`` registers ``bp`` and keeps ``(watcher, token)`` in ``app.extensions[DASHBOARD_STATE]``:
the pages answer with the model the API serves and sign people in with the API's token.
"""

from flask import Blueprint

DASHBOARD_STATE = "risk_dashboard"
URL_PREFIX = "/dashboard"  # the JSON API owns the paths at the root

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
    url_prefix=URL_PREFIX,
)

# The modules below attach their routes and hooks to ``bp``; they are imported for that alone.
from riskwatch.web.dashboard import access, views  # noqa: E402, F401
