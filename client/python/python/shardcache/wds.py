"""``shardcache://DATASET/KEY`` URLs in WebDataset.

Importing ``shardcache`` registers a handler in WebDataset's ``gopen`` table, so

    wds.WebDataset("shardcache://imagenet/train/shard-{000000..000999}.tar")

reads its shards through the cache, with the process's default client
(:func:`shardcache.default_client`: ``SHARDCACHE_DATA``, default ``127.0.0.1:7070``). WebDataset
itself is imported lazily: the handler is added when ``webdataset.gopen`` is first imported,
so ``import shardcache`` stays cheap where WebDataset is installed but not used.
"""

import importlib.abc
import importlib.machinery
import sys

from ._client import default_client


def gopen_shardcache(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """WebDataset's ``gopen`` handler: a binary file object over the shard."""
    if not mode.startswith("r"):
        raise ValueError(f"{url}: shardcache is read-only")
    path = url[len("shardcache://") :] if url.startswith("shardcache://") else url
    return default_client().open(path.strip("/"), buffering=max(int(bufsize), 1 << 20))


def register(gopen_module) -> None:
    """Add the handler to a loaded ``webdataset.gopen``."""
    gopen_module.gopen_schemes.setdefault("shardcache", gopen_shardcache)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Registers the handler right after ``webdataset.gopen`` is executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "webdataset.gopen":
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        register(module)


def install() -> None:
    if "webdataset.gopen" in sys.modules:
        register(sys.modules["webdataset.gopen"])
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
