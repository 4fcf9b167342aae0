import ctypes
from typing import Optional, TypedDict

__version__: str

class NativeError(Exception): ...

class _Info(TypedDict):
    size: int
    etag: str
    last_modified_ms: int
    block_size: int

class Client:
    def __init__(
        self,
        endpoint: str,
        *,
        connections: int = 4,
        insecure: bool = False,
        tls_ca: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 2,
        token: Optional[str] = None,
    ) -> None: ...
    @property
    def endpoint(self) -> str: ...
    def read(self, path: str, offset: int = 0, length: Optional[int] = None, if_match: Optional[str] = None) -> bytes: ...
    def _read_into_array(
        self,
        path: str,
        array: ctypes.Array[ctypes.c_char],
        offset: int = 0,
        length: Optional[int] = None,
        if_match: Optional[str] = None,
    ) -> int: ...
    def _forget_after_fork(self) -> None: ...
    def stat(self, path: str) -> _Info: ...
    def server_info(self) -> tuple[str, int, str, Optional[str]]: ...
    def prefetch(self, paths: list[str]) -> int: ...

class Control:
    def __init__(self, endpoint: str, *, token: Optional[str] = None, tls_ca: Optional[str] = None) -> None: ...
    def _forget_after_fork(self) -> None: ...
    def health(self) -> tuple[str, int]: ...
    def ls(self, path: str) -> list[tuple[str, int, str, float]]: ...
    def warm(self, path: str, replicas: int = 1, all_nodes: bool = False) -> tuple[int, int, int, list[tuple[str, str]]]: ...
