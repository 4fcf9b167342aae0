"""The Client and its file objects."""

import ctypes
import io
import os
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

from . import _shardcache
from ._errors import InvalidRequestError, ShardcacheError, translate

#: Where a server's data plane listens unless told otherwise (``SHARDCACHE_DATA`` wins), as for
#: ``cachectl``.
DEFAULT_DATA = "127.0.0.1:7070"


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except _shardcache.NativeError as e:
        raise translate(e) from None


# Every live Client, told when this process forks: the child connects again on first use. The
# native side also checks the process id on every call, so a fork that skips these hooks
# (os.fork from C) is caught too.
_live: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live):
        client._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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


@dataclass(frozen=True)
class ServerInfo:
    """Who a server is: its node id, process instance, version, and its control plane as this
    client reaches it (None when it runs without one)."""

    node_id: str
    instance: int
    version: str
    control: Optional[str]


def _token_from_env() -> Optional[str]:
    path = os.environ.get("SHARDCACHE_TOKEN_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as e:
        raise ShardcacheError(f"cannot read SHARDCACHE_TOKEN_FILE {path}: {e}") from None


class Client:
    """A connection to a shardcache server.

    ``endpoint`` is ``host:port`` (TCP), ``quic://host:port``, or a Unix socket path (the local
    shared-memory path of a sidecar); without it, ``SHARDCACHE_DATA`` or ``127.0.0.1:7070``.
    Calls release the GIL while they wait on I/O, so loader threads run in parallel. A Client
    can be shared by threads, and survives ``fork`` (PyTorch DataLoader workers): in a new
    process it connects again on first use. It pickles as "connect again there" for ``spawn``
    and ``forkserver`` workers.

    ``ls`` and ``warm`` use the server's control plane: the one the server names (asked over the
    data plane), or ``control`` (``SHARDCACHE_CONTROL``), which must be the same server's.
    ``token`` (or the file ``SHARDCACHE_TOKEN_FILE`` names) is the bearer token for servers run
    with ``--access-tokens`` (sent once per connection on the data plane) and with
    ``--control-token-file`` (the control plane); a missing or unknown one raises
    PermissionDeniedError.
    """

    def __init__(
        self,
        endpoint: Optional[str] = None,
        *,
        connections: int = 4,
        insecure: bool = False,
        tls_ca: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 2,
        control: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        self.endpoint = endpoint or os.environ.get("SHARDCACHE_DATA") or DEFAULT_DATA
        self._options = dict(
            connections=connections, insecure=insecure, tls_ca=tls_ca, timeout=timeout, retries=retries
        )
        self._control_endpoint = control or os.environ.get("SHARDCACHE_CONTROL") or None
        self._token = token if token is not None else _token_from_env()
        with _translated():
            self._native = _shardcache.Client(self.endpoint, token=self._token, **self._options)
        self._control = None
        _live.add(self)

    def _forget_after_fork(self) -> None:
        self._native._forget_after_fork()
        if self._control is not None:
            self._control._forget_after_fork()

    def __reduce__(self):
        # Pickled into worker processes as "connect again there", never as a live connection.
        options = dict(self._options, control=self._control_endpoint, token=self._token)
        return (_reconnect, (self.endpoint, options))

    def __repr__(self) -> str:
        return f"shardcache.Client({self.endpoint!r})"

    def read(self, path: str, offset: int = 0, length: Optional[int] = None, *, if_match: Optional[str] = None) -> bytes:
        """Bytes of ``path`` (``DATASET/KEY``) from ``offset``, to the end when ``length`` is None."""
        with _translated():
            return self._native.read(path, offset, length, if_match)

    def read_into(
        self, path: str, buf, offset: int = 0, *, length: Optional[int] = None, if_match: Optional[str] = None
    ) -> int:
        """Read into any writable, C-contiguous buffer (bytearray, numpy array, memoryview of a
        pinned region), starting at ``offset`` of the object. Returns the bytes written.

        Without ``length`` the rest of the object must fit: a buffer that is too small raises
        InvalidRequestError (a ValueError) and nothing is read. With ``length``, that many
        bytes are read (fewer only at the end of the object); it must not exceed the buffer."""
        view = memoryview(buf)
        if view.readonly:
            raise TypeError("read_into needs a writable buffer")
        if not view.c_contiguous:
            raise TypeError("read_into needs a C-contiguous buffer")
        view = view.cast("B")
        n = view.nbytes
        if length is not None and length < 0:
            raise InvalidRequestError(f"negative length {length}")
        if n == 0:
            with _translated():
                return self._native._read_into_array(path, (ctypes.c_char * 0)(), offset, length, if_match)
        # Exporting the buffer through ctypes pins it (its owner cannot resize it) while the
        # native client writes into its memory with the GIL released; the native side takes the
        # array's address and size from ctypes.
        holder = (ctypes.c_char * n).from_buffer(view)
        try:
            with _translated():
                return self._native._read_into_array(path, holder, offset, length, if_match)
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

    def server_info(self) -> ServerInfo:
        """Who the server is, and where its control plane listens."""
        with _translated():
            return ServerInfo(*self._native.server_info())

    def _need_control(self, what: str):
        if self._control is not None:
            return self._control
        info = None
        try:
            info = self.server_info()
        except ShardcacheError as e:
            if self._control_endpoint is None:
                raise ShardcacheError(
                    f"{what} needs the control plane, and the server at {self.endpoint} could not be asked where it is ({e}); pass control='HOST:PORT'"
                ) from None
        endpoint = self._control_endpoint
        if endpoint is None:
            if info.control is None:
                raise ShardcacheError(
                    f"{what} needs the control plane, and the server at {self.endpoint} (node {info.node_id}) runs without one (--control-listen)"
                )
            endpoint = info.control
        with _translated():
            control = _shardcache.Control(endpoint, token=self._token, tls_ca=self._options["tls_ca"])
        if info is not None and self._control_endpoint is not None:
            with _translated():
                node, instance = control.health()
            if instance and instance != info.instance:
                raise ShardcacheError(
                    f"control={endpoint} is another server than {self.endpoint}: node {node} answers the control plane, node {info.node_id} the data plane; leave control out and the client asks the data plane"
                )
        self._control = control
        return control

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
        VersionChangedError instead of mixing versions. File objects live in the process that
        opened them (they do not pickle)."""
        raw = ShardFile(self, path)
        return io.BufferedReader(raw, buffer_size=max(buffering, 1))


def _reconnect(endpoint, options):
    return Client(endpoint, **options)


_default: Optional[Client] = None


def default_client() -> Client:
    """The process's shared Client for ``shardcache://`` URLs (fsspec, WebDataset): made on first
    use from ``SHARDCACHE_DATA`` (default ``127.0.0.1:7070``), ``SHARDCACHE_CONTROL`` and
    ``SHARDCACHE_TOKEN_FILE``, or the one given to :func:`set_default_client`."""
    global _default
    if _default is None:
        _default = Client()
    return _default


def set_default_client(client: Optional[Client]) -> None:
    """Use ``client`` for ``shardcache://`` URLs (None: back to the environment's)."""
    global _default
    _default = client


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
        n = self._client.read_into(
            self.name, view[:want], self._pos, length=want, if_match=self.info.etag or None
        )
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

    def __reduce__(self):
        raise TypeError(
            f"a shardcache file object ({self.name}) cannot be pickled: it lives in the process "
            "that opened it; send the path and open it again, or read the bytes first"
        )
