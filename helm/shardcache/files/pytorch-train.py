"""A PyTorch-style trainer reading tar shards through its shardcache sidecar.

The shards under SHARDS (DATASET/PREFIX) are listed through the sidecar, split over ranks and
DataLoader workers by shardcache's ShardDataset (no overlap, no gap) and reshuffled every
epoch; each worker reads its shards through the sidecar's local socket (SHARDCACHE_DATA) and
yields the samples of each tar. The model step is left out: the script prints what the loader
delivered each epoch, and a digest of the samples that is the same every epoch.
"""

import hashlib
import io
import os
import tarfile
import time

from torch.utils.data import DataLoader

import shardcache
from shardcache import ShardDataset


def samples(path, data):
    """The files of one tar shard, as (name, bytes)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(f"{path}/{m.name}", tar.extractfile(m).read()) for m in tar if m.isfile()]


def main():
    prefix = os.environ["SHARDS"]
    epochs = int(os.environ.get("EPOCHS", "1"))
    workers = int(os.environ.get("WORKERS", "2"))
    client = shardcache.Client()  # SHARDCACHE_DATA: the sidecar's socket
    dataset = prefix.split("/", 1)[0]
    shards = sorted(f"{dataset}/{o.key}" for o in client.ls(prefix) if o.key.endswith(".tar"))
    if not shards:
        raise SystemExit(f"no .tar shards under {prefix}")
    loader_data = ShardDataset(client, shards, shuffle=True, seed=0, decode=samples, flatten=True)
    loader = DataLoader(loader_data, batch_size=None, num_workers=workers)
    for epoch in range(epochs):
        loader_data.set_epoch(epoch)
        started = time.monotonic()
        count, size, digests = 0, 0, []
        for name, payload in loader:
            count += 1
            size += len(payload)
            digests.append(hashlib.sha256(name.encode() + b"\0" + payload).digest())
        took = max(time.monotonic() - started, 1e-9)
        digest = hashlib.sha256(b"".join(sorted(digests))).hexdigest()
        print(f"epoch {epoch}: {count} samples from {len(shards)} shards, {size} bytes in "
              f"{took:.2f} s ({size / took / 2**20:.1f} MiB/s), samples sha256 {digest}", flush=True)


if __name__ == "__main__":
    main()
