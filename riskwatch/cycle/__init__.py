"""The monitoring job's run: new data, drift, retraining, the gated deployment, in order."""
