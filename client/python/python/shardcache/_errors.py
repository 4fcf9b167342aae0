"""Exceptions: one base class, ShardcacheError, and subclasses that are also the builtin
exception a Python caller would catch (FileNotFoundError, TimeoutError, ValueError, ...)."""

from ._shardcache import NativeError


class ShardcacheError(Exception):
    """Base of every shardcache error. ``kind`` names the category; the message is the server's."""

    kind = "client"


class NotFoundError(ShardcacheError, FileNotFoundError):
    """The object or the dataset does not exist."""

    kind = "not_found"


class InvalidRequestError(ShardcacheError, ValueError):
    """A bad key (``..``, empty segment, NUL), a range past the end, a malformed endpoint."""

    kind = "invalid"


class ShardcacheTimeoutError(ShardcacheError, TimeoutError):
    """The server stayed silent past the client's timeout."""

    kind = "timeout"


class ShardcacheConnectionError(ShardcacheError, ConnectionError):
    """The server could not be reached, or the connection was lost."""

    kind = "connection"


class ServerBusyError(ShardcacheError, ConnectionError):
    """The server is at a configured limit; retrying later can succeed."""

    kind = "busy"


class OriginUnavailableError(ShardcacheError, ConnectionError):
    """The object store behind the cache failed or timed out after the server's retries."""

    kind = "unavailable"


class VersionChangedError(ShardcacheError):
    """The object changed at the origin while a read was pinned to its earlier version."""

    kind = "version_changed"


class ChecksumError(ShardcacheError, OSError):
    """Bytes did not match their CRC32C (after retries): never returned as data."""

    kind = "checksum"


class PermissionDeniedError(ShardcacheError, PermissionError):
    """The server refused the caller: a missing or wrong token, or a request only cluster members
    may send."""

    kind = "permission"


_BY_KIND = {
    cls.kind: cls
    for cls in (
        NotFoundError,
        InvalidRequestError,
        ShardcacheTimeoutError,
        ShardcacheConnectionError,
        ServerBusyError,
        OriginUnavailableError,
        VersionChangedError,
        ChecksumError,
        PermissionDeniedError,
    )
}


def translate(err: NativeError) -> ShardcacheError:
    """The ShardcacheError subclass for a native error, carrying the server's message."""
    kind, message = err.args if len(err.args) == 2 else ("client", str(err))
    cls = _BY_KIND.get(kind, ShardcacheError)
    out = cls(message)
    if cls is ShardcacheError:
        out.kind = kind
    return out
