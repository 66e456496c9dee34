"""The dashboard: the pages a person opens in a browser, beside the JSON API, in the same Flask app.

``create_app`` registers ``bp`` and keeps ``(watcher, token)`` in ``app.extensions[DASHBOARD_STATE]``:
the pages answer with the model the API serves and sign people in with the API's token.
"""

from flask import Blueprint

DASHBOARD_STATE = "risk_dashboard"

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)

# The modules below attach their routes and hooks to ``bp``; they are imported for that alone.
from dashboard import access, views  # noqa: E402, F401
