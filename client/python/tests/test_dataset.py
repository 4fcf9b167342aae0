import collections
import pickle

import pytest

from shardcache import Client, ShardDataset, split_shards

SHARDS = [f"ds/train/shard-{i:06d}.bin" for i in range(6)]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (2, 3), (3, 4), (4, 2)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_split_covers_every_shard_exactly_once_per_epoch(world, workers, shuffle):
    shards = [f"s{i}" for i in range(23)]
    for epoch in range(3):
        seen = collections.Counter()
        for rank in range(world):
            for worker in range(workers):
                seen.update(split_shards(shards, epoch=epoch, seed=7, shuffle=shuffle, rank=rank,
                                         world=world, worker=worker, workers=workers))
        assert seen == collections.Counter(shards), "overlap or gap"


def test_epochs_reshuffle_deterministically():
    shards = [f"s{i}" for i in range(50)]
    order = lambda epoch, seed=1: split_shards(shards, epoch=epoch, seed=seed, shuffle=True,
                                               rank=0, world=1, worker=0, workers=1)
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0, seed=1) != order(0, seed=2)
    assert sorted(order(3)) == sorted(shards)
    with pytest.raises(ValueError):
        split_shards(shards, epoch=0, seed=0, shuffle=False, rank=2, world=2, worker=0, workers=1)


def test_dataset_reads_its_share(server, monkeypatch):
    client = Client(server.endpoint)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = ShardDataset(client, SHARDS, shuffle=True, seed=3, decode=lambda path, data: (path, data))
        ds.set_epoch(1)
        for path, data in ds:
            assert data == server.files[path[len("ds/"):]]
            seen.append(path)
    assert sorted(seen) == sorted(SHARDS)


def test_raw_streams_and_pickling(server):
    ds = ShardDataset(server.endpoint, ["ds/train/shard-000004.bin"])
    ds2 = pickle.loads(pickle.dumps(ds))
    [(path, f)] = list(ds2)
    with f:
        assert f.read() == server.files["train/shard-000004.bin"]
    assert len(ds2) == 1


def test_torch_dataloader_workers_split_without_overlap(server):
    torch = pytest.importorskip("torch")
    ds = ShardDataset(server.endpoint, SHARDS, shuffle=True, seed=0, decode=lambda p, d: p)
    loader = torch.utils.data.DataLoader(ds, num_workers=2, batch_size=None)
    assert sorted(loader) == sorted(SHARDS)


def test_prefetch_hints(server):
    client = Client(server.endpoint)
    assert client.prefetch(SHARDS) == len(SHARDS)
    assert client.prefetch([]) == 0
    ds = ShardDataset(client, SHARDS, prefetch=2, decode=lambda p, d: len(d))
    assert sum(ds) == sum(len(server.files[s[len("ds/"):]]) for s in SHARDS)
