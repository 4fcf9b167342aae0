"""A Client made (and used) before a fork works in the child: os.fork, multiprocessing with
fork, spawn and forkserver, and a real PyTorch DataLoader over each of them."""

import multiprocessing as mp
import os
import select

import pytest

import shardcache
from conftest import need
from shardcache import Client, ShardDataset

PATH = "ds/train/shard-000005.bin"
SHARDS = [f"ds/train/shard-{i:06d}.bin" for i in range(6)]


def in_child(fn, timeout=30.0):
    """Run `fn()` in a forked child; its return value (bytes) comes back, or the test fails
    when the child hangs, dies or raises."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            out = fn()
            os.write(w, b"ok:" + out)
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            os.write(w, f"error:{type(e).__name__}: {e}".encode())
        finally:
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail(f"the forked child hung for {timeout}s")
    chunks = []
    while True:
        chunk = os.read(r, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    out = b"".join(chunks)
    assert out.startswith(b"ok:"), out.decode(errors="replace")
    return out[3:]


def test_a_client_used_before_fork_reads_in_the_child(server):
    c = Client(server.endpoint)
    want = server.files["train/shard-000005.bin"]
    assert c.read(PATH) == want  # connections and runtime threads exist now
    assert in_child(lambda: c.read(PATH)) == want
    assert c.read(PATH) == want, "and the parent goes on"


@pytest.mark.parametrize("kind", ["tcp", "local"])
def test_a_client_never_used_before_fork_and_file_objects(server, kind):
    c = Client(server.endpoint if kind == "tcp" else server.socket)
    f = c.open(PATH)
    head = f.read(100)
    want = server.files["train/shard-000005.bin"]
    assert in_child(lambda: Client(server.endpoint).read(PATH)) == want
    assert in_child(lambda: c.read(PATH, 10, 20)) == want[10:30]
    assert in_child(lambda: head + f.read()) == want, "an open file object goes on in the child"


def test_a_fork_of_a_fork(server):
    c = Client(server.endpoint)
    c.read(PATH, 0, 10)
    want = server.files["train/shard-000005.bin"][:10]
    assert in_child(lambda: in_child(lambda: c.read(PATH, 0, 10))) == want


def _read_with_global(path):
    return len(_CLIENT.read(path))


_CLIENT = None


def _read_with(client, path):
    return len(client.read(path))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pools(server, method):
    ctx = mp.get_context(method)
    client = Client(server.endpoint)
    client.read(PATH, 0, 1)
    want = [len(server.files[p[len("ds/"):]]) for p in SHARDS]
    global _CLIENT
    _CLIENT = client  # fork workers inherit it (made before the pool), others get it pickled
    with ctx.Pool(2) as pool:
        if method == "fork":
            got = pool.map_async(_read_with_global, SHARDS).get(timeout=60)
        else:
            got = pool.starmap_async(_read_with, [(client, p) for p in SHARDS]).get(timeout=60)
    assert got == want


def decode_len(path, data):
    return path, len(data)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_torch_dataloader_with_persistent_pinned_workers(server, method):
    torch = need("torch")
    client = Client(server.endpoint)
    client.read(PATH, 0, 1)  # used in the parent before the workers start
    want = {p: server.files[p[len("ds/"):]] for p in SHARDS}
    for decode in (None, decode_len):
        ds = ShardDataset(client, SHARDS, shuffle=True, seed=1, decode=decode)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            num_workers=4,
            persistent_workers=True,
            pin_memory=True,
            multiprocessing_context=method,
            timeout=60,
        )
        for epoch in range(2):
            ds.set_epoch(epoch)
            items = list(loader)
            if decode is None:
                # The default items, bytes, crossed the worker queue.
                assert sorted(p for p, _ in items) == sorted(SHARDS)
                for path, data in items:
                    assert bytes(data) == want[path], path
            else:
                # pin_memory hands tuples back as lists.
                assert sorted(tuple(i) for i in items) == sorted((p, len(d)) for p, d in want.items())
        del loader


def test_streams_are_refused_in_dataloader_workers(server):
    torch = need("torch")
    ds = ShardDataset(server.endpoint, SHARDS, stream=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, timeout=60)
    with pytest.raises(TypeError, match="cannot cross"):
        list(loader)


def test_the_default_client_is_per_process(server, monkeypatch):
    monkeypatch.setenv("SHARDCACHE_DATA", server.endpoint)
    shardcache.set_default_client(None)
    c = shardcache.default_client()
    assert c.endpoint == server.endpoint
    want = server.files["train/shard-000001.bin"]
    assert in_child(lambda: shardcache.default_client().read("ds/train/shard-000001.bin")) == want


def test_many_forks_of_clients_in_every_state(server):
    """Workers fork while the parent's clients sit idle in every state: used, never used, with a
    control plane. Each child must read within its deadline."""
    used = Client(server.endpoint)
    used.read(PATH)
    with_control = Client(server.endpoint, token=server.token)
    with_control.ls("ds/train/")
    unused = Client(server.endpoint)
    want = server.files["train/shard-000005.bin"]
    for _ in range(10):
        assert in_child(lambda: unused.read(PATH, 0, 100) + used.read(PATH, 5, 10), timeout=15) == want[:100] + want[5:15]
    assert in_child(lambda: str(len(with_control.ls("ds/train/"))).encode(), timeout=15) == str(
        len([k for k in server.files if k.startswith("train/")])
    ).encode()
