"""What the stages leave behind and read back: typed records, artifacts, runs and the run history store."""
