"""Client of the shardcache training-data cache.

    import shardcache
    c = shardcache.Client("127.0.0.1:7070")          # or a Unix socket path
    data = c.read("imagenet/train/shard-000001.tar")
    n = c.read_into("imagenet/train/shard-000001.tar", buf, offset=0)
    with c.open("imagenet/train/shard-000001.tar") as f: ...
    ds = shardcache.ShardDataset(c, shards, shuffle=True, seed=0)
    c = shardcache.Client("127.0.0.1:7070", control="127.0.0.1:7072")
    c.warm("imagenet/train/"); c.ls("imagenet/train/")

Every byte is checked against the CRC32C the server sent with it before it is returned.
"""

from ._client import Client, ObjectEntry, ObjectInfo, ShardFile, WarmResult
from ._errors import (
    ChecksumError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServerBusyError,
    ShardcacheConnectionError,
    ShardcacheError,
    ShardcacheTimeoutError,
    VersionChangedError,
)
from ._shardcache import __version__
from .dataset import ShardDataset, split_shards

__all__ = [
    "ChecksumError",
    "Client",
    "InvalidRequestError",
    "NotFoundError",
    "ObjectEntry",
    "ObjectInfo",
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
    "split_shards",
]
