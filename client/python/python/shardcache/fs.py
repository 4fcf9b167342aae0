"""fsspec filesystem ``shardcache://DATASET/KEY`` (registered as an fsspec entry point).

    fsspec.open("shardcache://imagenet/train/shard-000001.tar", endpoint="127.0.0.1:7070")

Reads, seeks and ``info`` are supported; listing directories needs the control plane and is
not available yet (``ls`` raises NotImplementedError saying so).
"""

from fsspec.spec import AbstractFileSystem

from ._client import Client
from ._errors import NotFoundError


class ShardcacheFileSystem(AbstractFileSystem):
    protocol = "shardcache"
    root_marker = ""

    def __init__(self, endpoint: str = "127.0.0.1:7070", **kwargs):
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self._client = Client(endpoint)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("shardcache://"):
            path = path[len("shardcache://") :]
        return path.strip("/")

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        try:
            i = self._client.stat(path)
        except NotFoundError:
            raise FileNotFoundError(path) from None
        return {"name": path, "size": i.size, "type": "file", "etag": i.etag, "block_size": i.block_size}

    def ls(self, path, detail=True, **kwargs):
        raise NotImplementedError("listing needs the shardcache control plane, which is not available yet")

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise PermissionError("shardcache is read-only")
        return self._client.open(self._strip_protocol(path))

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            size = self.info(path)["size"]
            start = start + size if start < 0 else start
            end = end + size if end is not None and end < 0 else end
        length = None if end is None else max(end - start, 0)
        return self._client.read(path, start, length)
