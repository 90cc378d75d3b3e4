"""Exceptions users see. Each carries a message meant to be printed as is."""


class SegsearchError(Exception):
    """Base class for errors with a user-facing message."""

    exit_code = 1


class ConfigError(SegsearchError):
    """Bad settings or arguments (exit code 2)."""

    exit_code = 2


class WeightsUnavailable(SegsearchError):
    """A checkpoint is missing and cannot be downloaded (offline, 404...)."""

    exit_code = 2


class ChecksumMismatch(SegsearchError):
    """A downloaded or placed checkpoint does not match its SHA-256."""

    exit_code = 2


class QueryError(SegsearchError):
    """A query or request that cannot be answered as asked (an unknown predicate, a relation
    between objects that do not exist, unknown segment ids): HTTP 422, exit code 2."""

    exit_code = 2


class NotFoundError(QueryError):
    """A named thing (concept, segment) does not exist: HTTP 404."""


class StorageError(SegsearchError):
    """SQL or vector store unreachable or inconsistent (exit code 3)."""

    exit_code = 3


class ImageError(ValueError):
    """An input image cannot be used; the message says why (recorded as the failure reason)."""


class ImageTooLarge(ImageError):
    """Pixel count above the configured cap (decompression-bomb guard)."""


class Stop(BaseException):
    """Ends an index run early from inside it (a cancelled server job, raised before an image's
    model work or after an outcome is recorded). A BaseException, like KeyboardInterrupt, so that
    the per-image error handling cannot take it for a failure of the image. Images already written
    stay indexed; the ones in flight stay pending and the next run redoes them."""
