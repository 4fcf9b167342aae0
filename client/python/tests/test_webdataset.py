"""WebDataset reads shardcache:// URLs through the handler `import shardcache` registers."""

import pytest

import shardcache
from conftest import need


@pytest.fixture
def default_server(server, monkeypatch):
    monkeypatch.setenv("SHARDCACHE_DATA", server.endpoint)
    shardcache.set_default_client(None)
    yield server
    shardcache.set_default_client(None)


def test_webdataset_brace_urls(default_server):
    wds = need("webdataset")
    ds = wds.WebDataset("shardcache://ds/wds/shard-{000000..000003}.tar", shardshuffle=False)
    samples = list(ds)
    assert len(samples) == 40
    keys = [s["__key__"] for s in samples]
    assert keys == [f"s{s:02d}-{n:03d}" for s in range(4) for n in range(10)]
    assert samples[13]["txt"] == b"shard 1 sample 3"
    assert samples[13]["cls"] == b"13"


def test_webdataset_in_a_torch_dataloader(default_server):
    wds = need("webdataset")
    torch = need("torch")
    ds = (
        wds.WebDataset(
            "shardcache://ds/wds/shard-{000000..000003}.tar",
            shardshuffle=False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
        )
        .decode()
        .to_tuple("cls", "txt")
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=60)
    got = sorted(int(c) for c, _ in loader)
    assert got == list(range(40))


def test_an_unknown_object_says_so(default_server):
    wds = need("webdataset")
    ds = wds.WebDataset("shardcache://ds/wds/missing.tar", shardshuffle=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        list(ds)
