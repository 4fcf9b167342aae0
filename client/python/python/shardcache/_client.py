"""The Client and its file objects."""

import ctypes
import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

from . import _shardcache
from ._errors import ShardcacheError, translate


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except _shardcache.NativeError as e:
        raise translate(e) from None


@dataclass(frozen=True)
class ObjectEntry:
    """An object under a prefix, and how much of it the cluster holds."""

    key: str
    size: int
    etag: str
    cached_fraction: float


@dataclass(frozen=True)
class WarmResult:
    """What a warm did: objects and bytes now cached, of which bytes were cached already."""

    objects: int
    bytes: int
    bytes_already_cached: int


@dataclass(frozen=True)
class ObjectInfo:
    """Version and shape of an object."""

    size: int
    etag: str
    last_modified_ms: int
    block_size: int


class Client:
    """A connection to a shardcache server.

    ``endpoint`` is ``host:port`` (TCP), ``quic://host:port``, or a Unix socket path (the local
    shared-memory path of a sidecar). Calls release the GIL while they wait on I/O, so loader
    threads run in parallel. A Client can be shared by threads; DataLoader worker processes
    should each make their own (ShardDataset does).

    ``control`` (``host:port`` of a node's control plane, usually 7072) enables ``ls`` and
    ``warm``; ``token`` is its bearer token when the cluster requires one.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        connections: int = 4,
        insecure: bool = False,
        tls_ca: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 2,
        control: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        self.endpoint = endpoint
        self._options = dict(
            connections=connections, insecure=insecure, tls_ca=tls_ca, timeout=timeout, retries=retries
        )
        self._control_options = dict(control=control, token=token)
        with _translated():
            self._native = _shardcache.Client(endpoint, **self._options)
        self._control = None
        if control is not None:
            with _translated():
                self._control = _shardcache.Control(control, token=token, tls_ca=tls_ca)

    def __reduce__(self):
        # Pickled into worker processes as "connect again there", never as a live connection.
        return (_reconnect, (self.endpoint, {**self._options, **self._control_options}))

    def __repr__(self) -> str:
        return f"shardcache.Client({self.endpoint!r})"

    def read(self, path: str, offset: int = 0, length: Optional[int] = None, *, if_match: Optional[str] = None) -> bytes:
        """Bytes of ``path`` (``DATASET/KEY``) from ``offset``, to the end when ``length`` is None."""
        with _translated():
            return self._native.read(path, offset, length, if_match)

    def read_into(self, path: str, buf, offset: int = 0, *, if_match: Optional[str] = None) -> int:
        """Read into any writable, C-contiguous buffer (bytearray, numpy array, memoryview of a
        pinned region) from ``offset``, up to its size. Returns the bytes written (fewer only at
        the end of the object)."""
        view = memoryview(buf)
        if view.readonly:
            raise TypeError("read_into needs a writable buffer")
        if not view.c_contiguous:
            raise TypeError("read_into needs a C-contiguous buffer")
        view = view.cast("B")
        n = view.nbytes
        if n == 0:
            return 0
        # Exporting the buffer through ctypes pins it (its owner cannot resize it) while the
        # native client writes into its memory with the GIL released.
        holder = (ctypes.c_char * n).from_buffer(view)
        try:
            with _translated():
                return self._native._read_into_address(path, ctypes.addressof(holder), n, offset, if_match)
        finally:
            del holder
            view.release()

    def prefetch(self, paths) -> int:
        """Tell the server these objects come next, in this order, so it loads them into its
        cache ahead of the reads. Returns how many it queued (0 when it is busy)."""
        with _translated():
            return self._native.prefetch(list(paths))

    def stat(self, path: str) -> ObjectInfo:
        """Size and version of an object."""
        with _translated():
            return ObjectInfo(**self._native.stat(path))

    def _need_control(self, what: str):
        if self._control is None:
            raise ShardcacheError(
                f"{what} needs the control plane: Client(endpoint, control='host:7072')"
            )
        return self._control

    def ls(self, prefix: str) -> List[ObjectEntry]:
        """Objects under ``DATASET/PREFIX`` with their size and the fraction the cluster
        holds."""
        control = self._need_control("ls")
        with _translated():
            return [ObjectEntry(*row) for row in control.ls(prefix)]

    def warm(self, prefix: str, *, replicas: int = 1, all_nodes: bool = False) -> WarmResult:
        """Load ``DATASET/PREFIX`` into the cluster and wait until it is done. Blocks already
        cached are skipped, so calling it again after an interruption finishes the rest. Any
        object that failed raises ShardcacheError listing the failures."""
        control = self._need_control("warm")
        with _translated():
            objects, nbytes, skipped, failures = control.warm(prefix, replicas, all_nodes)
        if failures:
            listed = "; ".join(f"{p}: {m}" for p, m in failures)
            raise ShardcacheError(f"warm of {prefix} had {len(failures)} failures: {listed}")
        return WarmResult(objects, nbytes, skipped)

    def open(self, path: str, buffering: int = 4 * 1024 * 1024) -> io.BufferedReader:
        """A binary file object (read, readinto, seek, tell, context manager) over the object's
        current version: if the object changes while it is open, reads fail with
        VersionChangedError instead of mixing versions."""
        raw = ShardFile(self, path)
        return io.BufferedReader(raw, buffer_size=max(buffering, 1))


def _reconnect(endpoint, options):
    return Client(endpoint, **options)


class ShardFile(io.RawIOBase):
    """Raw, seekable file object over one object version (wrap in io.BufferedReader)."""

    def __init__(self, client: Client, path: str) -> None:
        super().__init__()
        self._client = client
        self.name = path
        self.info = client.stat(path)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._pos >= self.info.size:
            return 0
        view = memoryview(b).cast("B")
        want = min(view.nbytes, self.info.size - self._pos)
        n = self._client.read_into(self.name, view[:want], self._pos, if_match=self.info.etag or None)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self.info.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    @property
    def size(self) -> int:
        return self.info.size
