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


def test_default_items_are_path_and_bytes_and_pickle(server):
    ds = ShardDataset(server.endpoint, ["ds/train/shard-000004.bin", "ds/train/shard-000002.bin"])
    ds2 = pickle.loads(pickle.dumps(ds))
    items = list(ds2)
    assert items == [(p, server.files[p[len("ds/"):]]) for p in ds.shards]
    # What DataLoader's worker queue does to every item.
    assert pickle.loads(pickle.dumps(items)) == items
    assert len(ds2) == 2


def test_streams_on_request_in_process_only(server):
    ds = ShardDataset(server.endpoint, ["ds/train/shard-000004.bin"], stream=True)
    [(path, f)] = list(ds)
    with f:
        assert f.read() == server.files["train/shard-000004.bin"]
    with pytest.raises(TypeError, match="cannot be pickled|cannot pickle"):
        pickle.dumps(f)
    with pytest.raises(ValueError):
        ShardDataset(server.endpoint, [], stream=True, decode=lambda p, d: d)


def test_len_is_this_ranks_items_per_epoch(server, monkeypatch):
    shards = [f"ds/x-{i}" for i in range(10)]
    assert len(ShardDataset(server.endpoint, shards)) == 10
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert len(ShardDataset(server.endpoint, shards)) == 3
    flat = ShardDataset(server.endpoint, shards, decode=lambda p, d: [d], flatten=True)
    with pytest.raises(TypeError, match="not known"):
        len(flat)



def test_prefetch_hints(server):
    client = Client(server.endpoint)
    assert client.prefetch(SHARDS) == len(SHARDS)
    assert client.prefetch([]) == 0
    ds = ShardDataset(client, SHARDS, prefetch=2, decode=lambda p, d: len(d))
    assert sum(ds) == sum(len(server.files[s[len("ds/"):]]) for s in SHARDS)
