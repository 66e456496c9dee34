"""The one exception type a stage raises for a failure a person can act on."""


class PipelineError(Exception):
    """A failure with a one-sentence message that names the file, field or setting at fault."""
