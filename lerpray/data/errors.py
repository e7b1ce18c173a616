"""The data package's errors: each message names the file, pole or setting and says what to change."""

from __future__ import annotations

__all__ = ["CorpusError", "DataError"]


class DataError(ValueError):
    """Text data is missing, unreadable, empty or malformed."""


class CorpusError(DataError):
    """A pole corpus could not be built or read (a source, a corpora config or a built corpora folder)."""
