"""What the pipeline stages share: config, the data schema, file helpers, logging, model I/O."""
