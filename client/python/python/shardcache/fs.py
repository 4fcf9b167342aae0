"""fsspec filesystem ``shardcache://DATASET/KEY`` (registered as an fsspec entry point).

    fsspec.open("shardcache://imagenet/train/shard-000001.tar")

The defaults are cachectl's: the data plane at ``endpoint=`` (else ``SHARDCACHE_DATA``, else
``127.0.0.1:7070``), listings through the control plane that server names (``control=`` or
``SHARDCACHE_CONTROL`` to give it, ``token=`` or ``SHARDCACHE_TOKEN_FILE`` for its token).
Reads, seeks, ``info`` and ``ls`` are supported; it is read-only.
"""

from fsspec.spec import AbstractFileSystem

from ._client import Client
from ._errors import NotFoundError


class ShardcacheFileSystem(AbstractFileSystem):
    protocol = "shardcache"
    root_marker = ""

    def __init__(self, endpoint=None, control=None, token=None, **kwargs):
        super().__init__(**kwargs)
        self._client = Client(endpoint, control=control, token=token)
        self.endpoint = self._client.endpoint

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
        path = self._strip_protocol(path)
        dataset, _, rest = path.partition("/")
        prefix = rest + "/" if rest else ""
        out = {}
        for e in self._client.ls(f"{dataset}/{prefix}"):
            head, sep, _ = e.key[len(prefix) :].partition("/")
            if sep:
                name = f"{dataset}/{prefix}{head}"
                out.setdefault(name, {"name": name, "size": 0, "type": "directory"})
            else:
                name = f"{dataset}/{e.key}"
                out[name] = {
                    "name": name,
                    "size": e.size,
                    "type": "file",
                    "etag": e.etag,
                    "cached_fraction": e.cached_fraction,
                }
        if not out:
            raise FileNotFoundError(path)
        items = sorted(out.values(), key=lambda x: x["name"])
        return items if detail else [i["name"] for i in items]

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
