"""The anchors area's errors: one hierarchy, so callers can catch `AnchorSetError` for any anchor-set trouble."""

from __future__ import annotations


class AnchorSetError(ValueError):
    """A bad, corrupt, incomplete or mismatched anchor set; the message says what to change."""


class StoreError(AnchorSetError):
    """The store could not be used (bad key or URI, missing bucket, denied access, unreachable endpoint)."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""
