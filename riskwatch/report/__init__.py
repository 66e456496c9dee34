"""The PDF report and its plots."""
