"""The monitoring decision (drift, retraining, the gate) and the alerts it sends."""
