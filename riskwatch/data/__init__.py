"""The data: readers of source files and databases, the ingested rows and their batches, data statistics."""
