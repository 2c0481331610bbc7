"""Errors pilestore raises. Each message says where (file, line or byte offset), what is wrong and what to do."""


class PilestoreError(Exception):
    """Base class: the CLI turns these into a one-line error and exit status 1."""


class SourceError(PilestoreError):
    """A source file cannot be read as a whole: missing, not zstd nor JSON lines, truncated or corrupt."""


class LineError(PilestoreError):
    """One bad line of a source; ingest skips and counts it, or fails on it under --strict."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class StoreNotFoundError(PilestoreError):
    """No store at the path given."""


class IncompleteStoreError(PilestoreError):
    """A directory holds a store whose ingest never finished (no manifest.json)."""


class StoreFormatError(PilestoreError):
    """A store's files do not match the format: unreadable manifest, index or partition."""


class CorruptDocumentError(StoreFormatError):
    """A document's stored bytes do not give back the text whose checksum the store recorded."""


class StoreLockedError(PilestoreError):
    """Another pilestore command is writing to the store."""
