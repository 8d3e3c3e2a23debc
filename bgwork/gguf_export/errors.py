"""The one error of the export: a checkpoint that cannot be exported, or a file that failed verification."""


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported, or a file that failed verification; the message says which."""
