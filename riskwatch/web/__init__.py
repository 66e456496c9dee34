"""What people and programs reach over HTTP: the app, the JSON API and the dashboard."""
