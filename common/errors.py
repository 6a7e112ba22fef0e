"""Domain errors shared by every role.

Invariants:
- `InvariantViolation` marks a bug. It is raised by `invariant()` and never caught.
- Store refusals (`StoreError` subclasses) are named exactly like the S3 error code
  a client sees for them; the frontend's one error boundary maps them by name
  (frontend/s3/errors.py). Both MetadataStore implementations raise them alike.
"""

from __future__ import annotations


class InvariantViolation(Exception):
    """A broken invariant: a bug, never an expected condition."""


def invariant(condition: bool, message: str) -> None:
    """Check an invariant; unlike `assert`, survives `python -O`."""
    if not condition:
        raise InvariantViolation(message)


class StoreError(Exception):
    """A typed refusal of a storage seam (DESIGN §11)."""

    @property
    def code(self) -> str:
        return type(self).__name__


class NoSuchBucket(StoreError):
    pass


class NoSuchKey(StoreError):
    pass


class PreconditionFailed(StoreError):
    pass


class NoSuchUpload(StoreError):
    pass


class InvalidPart(StoreError):
    pass


class InvalidPartOrder(StoreError):
    pass


class EntityTooSmall(StoreError):
    pass


class BucketNotEmpty(StoreError):
    pass


class BucketAlreadyExists(StoreError):
    pass


class BucketAlreadyOwnedByYou(StoreError):
    pass


class Expired(StoreError):
    """The entry was stamped after its `not_after`: it did not apply."""


class WriteExpired(StoreError):
    """A data id the entry introduces is older than MAX_WRITE_AGE (retryable)."""


class OutcomeUnknown(StoreError):
    """The store could not learn the outcome before the deadline (HTTP 503)."""


class BlobNotFound(StoreError):
    """The bytes a record names are gone (a bug or a lost disk set)."""


class BlobCorrupt(StoreError):
    """Bytes failed their checksum and no redundancy could repair them."""


class ServiceUnavailable(StoreError):
    """Too few disks answered to write or read a blob now (HTTP 503: retry later).

    Carries how many shards were needed and how many were written or readable.
    """

    def __init__(self, message: str, *, need: int = 0, got: int = 0) -> None:
        super().__init__(message)
        self.need, self.got = need, got


class InsufficientStorage(ServiceUnavailable):
    """Too few disks had room for a blob: they refused it to keep their reserve for
    compaction (HTTP 507: retrying will not help until space is freed or added)."""
