"""What each stage does: ingestion, training, scoring, deployment, diagnostics and the API calls."""
