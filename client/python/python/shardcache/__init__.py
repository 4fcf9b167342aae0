"""Client of the shardcache training-data cache.

    import shardcache
    c = shardcache.Client("127.0.0.1:7070")          # or a Unix socket path; default SHARDCACHE_DATA
    data = c.read("imagenet/train/shard-000001.tar")
    n = c.read_into("imagenet/train/shard-000001.tar", buf)   # the whole object; must fit
    with c.open("imagenet/train/shard-000001.tar") as f: ...
    ds = shardcache.ShardDataset(c, shards, shuffle=True, seed=0)   # items: (path, bytes)
    c.warm("imagenet/train/"); c.ls("imagenet/train/")         # the server's control plane

Every byte is checked against the CRC32C the server sent with it before it is returned. A
Client survives fork (PyTorch DataLoader workers) and pickles for spawn/forkserver workers.
Importing the package registers ``shardcache://`` URLs with WebDataset (see ``shardcache.wds``)
and, through an entry point, with fsspec.
"""

from . import wds as _wds
from ._client import (
    Client,
    ObjectEntry,
    ObjectInfo,
    ServerInfo,
    ShardFile,
    WarmResult,
    default_client,
    set_default_client,
)
from ._errors import (
    ChecksumError,
    InvalidRequestError,
    NotFoundError,
    OriginUnavailableError,
    PermissionDeniedError,
    ServerBusyError,
    ShardcacheConnectionError,
    ShardcacheError,
    ShardcacheTimeoutError,
    VersionChangedError,
)
from ._shardcache import __version__
from .dataset import ShardDataset, split_shards

_wds.install()

__all__ = [
    "ChecksumError",
    "Client",
    "InvalidRequestError",
    "NotFoundError",
    "ObjectEntry",
    "ObjectInfo",
    "OriginUnavailableError",
    "ServerInfo",
    "PermissionDeniedError",
    "ServerBusyError",
    "ShardDataset",
    "ShardFile",
    "ShardcacheConnectionError",
    "ShardcacheError",
    "ShardcacheTimeoutError",
    "VersionChangedError",
    "WarmResult",
    "__version__",
    "default_client",
    "set_default_client",
    "split_shards",
]
