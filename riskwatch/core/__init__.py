"""Errors, files, config, the data schema, logging and the command-line frame: what every layer uses."""
