"""The JSON API: its routes (a blueprint), the served model, file-location confinement and request reading.

``app.create_app`` wires ``api.routes.bp`` with the dashboard's blueprint.
"""
