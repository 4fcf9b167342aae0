import ctypes
import pickle
import threading

import numpy as np
import pytest

import shardcache
from shardcache import (
    Client,
    InvalidRequestError,
    NotFoundError,
    ShardcacheConnectionError,
    ShardcacheError,
)


@pytest.fixture(params=["tcp", "local"])
def client(request, server):
    return Client(server.endpoint if request.param == "tcp" else server.socket)


def test_reads_are_byte_exact(client, server):
    for key, want in server.files.items():
        path = f"ds/{key}"
        assert client.read(path) == want
        assert client.stat(path).size == len(want)
        if len(want) > 10:
            assert client.read(path, 3, 7) == want[3:10]
            assert client.read(path, len(want) - 2) == want[-2:]
            assert client.read(path, 1, 10 * len(want)) == want[1:]


def test_read_into_any_writable_buffer(client, server):
    want = server.files["train/shard-000005.bin"]
    path = "ds/train/shard-000005.bin"
    ba = bytearray(len(want))
    assert client.read_into(path, ba) == len(want)
    assert bytes(ba) == want
    arr = np.zeros(1000, dtype=np.uint8)
    assert client.read_into(path, arr, offset=500, length=1000) == 1000
    assert arr.tobytes() == want[500:1500]
    f32 = np.zeros(256, dtype=np.float32)  # 1024 bytes, any dtype works
    assert client.read_into(path, f32, offset=4, length=1024) == 1024
    assert f32.tobytes() == want[4:1028]
    big = bytearray(len(want) + 100)
    view = memoryview(big)[50:]
    assert client.read_into(path, view) == len(want), "the whole object, in a larger buffer"
    assert bytes(big[50 : 50 + len(want)]) == want
    tail = bytearray(100)
    assert client.read_into(path, tail, offset=len(want) - 10, length=100) == 10, "fewer at the end"
    # Too small for the rest of the object: an error, not a silent short read.
    small = bytearray(1000)
    with pytest.raises(InvalidRequestError, match="buffer holds 1000") as e:
        client.read_into(path, small)
    assert isinstance(e.value, ValueError)
    assert bytes(small) == bytes(1000), "nothing is written"
    with pytest.raises(ValueError):
        client.read_into(path, small, length=1001)
    with pytest.raises(TypeError):
        client.read_into(path, b"read-only bytes")
    with pytest.raises(TypeError):
        client.read_into(path, np.zeros((10, 10), dtype=np.uint8)[:, ::2])


def test_native_read_into_takes_a_ctypes_array_never_an_address(client, server):
    want = server.files["train/shard-000005.bin"]
    path = "ds/train/shard-000005.bin"
    native = client._native
    assert not hasattr(native, "_read_into_address")

    class PosingAsAnArray:
        __class__ = property(lambda self: ctypes.c_char * 10)

    assert isinstance(PosingAsAnArray(), ctypes.Array)
    for not_an_array in (
        id(bytearray(10)),
        bytearray(10),
        memoryview(bytearray(10)),
        ctypes.c_int(5),
        ctypes.pointer(ctypes.c_char()),
        PosingAsAnArray(),
    ):
        with pytest.raises(TypeError, match="ctypes array"):
            native._read_into_array(path, not_an_array, 0, 10, None)
    arr = (ctypes.c_char * 10)()
    assert native._read_into_array(path, arr, 3, 10, None) == 10
    assert arr.raw == want[3:13]
    words = (ctypes.c_uint32 * 4)()  # the size comes from ctypes: 16 bytes
    assert native._read_into_array(path, words, 0, 16, None) == 16
    assert bytes(words) == want[:16]
    with pytest.raises(shardcache._shardcache.NativeError, match="more than the buffer's 16 bytes"):
        native._read_into_array(path, words, 0, 17, None)
    # An empty buffer: nothing read with length 0; without a length the object must fit.
    assert client.read_into(path, bytearray(), length=0) == 0
    with pytest.raises(InvalidRequestError):
        client.read_into(path, bytearray())


def test_file_objects_read_seek_tell(client, server):
    want = server.files["train/shard-000004.bin"]
    with client.open("ds/train/shard-000004.bin") as f:
        assert f.read(10) == want[:10]
        assert f.tell() == 10
        f.seek(256 * 1024 - 3)
        assert f.read(6) == want[256 * 1024 - 3 : 256 * 1024 + 3]
        f.seek(-5, 2)
        assert f.read() == want[-5:]
        f.seek(0)
        buf = bytearray(100)
        assert f.readinto(buf) == 100 and bytes(buf) == want[:100]
        f.seek(0)
        assert f.read() == want


def test_errors_map_to_python_exceptions(client):
    with pytest.raises(FileNotFoundError) as e:
        client.read("ds/train/missing.bin")
    assert isinstance(e.value, NotFoundError) and isinstance(e.value, ShardcacheError)
    assert "missing.bin" in str(e.value)
    with pytest.raises(FileNotFoundError, match="unknown dataset"):
        client.stat("nope/x")
    with pytest.raises(ValueError, match=r"'\.\.'") as e:
        client.read("ds/../etc/passwd")
    assert isinstance(e.value, InvalidRequestError)
    with pytest.raises(InvalidRequestError, match="past the end"):
        client.read("ds/train/shard-000002.bin", 10_000)


def test_connection_errors():
    with pytest.raises(ConnectionError) as e:
        Client("127.0.0.1:1")
    assert isinstance(e.value, ShardcacheConnectionError)
    with pytest.raises(ValueError):
        Client("not an endpoint")
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", timeout=0)


def test_threads_read_in_parallel_and_clients_pickle(server):
    client = Client(server.endpoint)
    want = server.files["train/shard-000005.bin"]
    results = []

    def work():
        for _ in range(5):
            results.append(client.read("ds/train/shard-000005.bin") == want)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 20
    again = pickle.loads(pickle.dumps(client))
    assert again.read("ds/train/shard-000002.bin") == server.files["train/shard-000002.bin"]
    assert repr(again) == f"shardcache.Client({server.endpoint!r})"
    assert shardcache.__version__


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory, server):
    """A server whose data plane requires an access token (the same token opens its control plane)."""
    from conftest import start_server, stop

    root = tmp_path_factory.mktemp("sc-guarded")
    token = "py-access-token-7c21d9e4"
    (root / "tokens").write_text(f"{token} ds\n")
    s = start_server(root, server.data, ["--access-tokens", str(root / "tokens")], token=token)
    s.files = server.files
    yield s
    stop(s)


@pytest.mark.parametrize("transport", ["tcp", "local"])
def test_access_tokens_are_sent_and_refusals_raise_permission_errors(guarded_server, transport, monkeypatch):
    endpoint = guarded_server.endpoint if transport == "tcp" else guarded_server.socket
    key = "train/shard-000002.bin"
    want = guarded_server.files[key]
    with pytest.raises(shardcache.PermissionDeniedError, match="requires an access token"):
        Client(endpoint).read(f"ds/{key}")
    with pytest.raises(PermissionError, match="--access-tokens"):
        Client(endpoint, token="py-access-token-7c21d9e5").read(f"ds/{key}")
    c = Client(endpoint, token=guarded_server.token)
    assert c.read(f"ds/{key}") == want
    buf = bytearray(len(want))
    assert c.read_into(f"ds/{key}", buf) == len(want) and bytes(buf) == want
    # A pickled client (a spawn worker's) keeps its token.
    assert pickle.loads(pickle.dumps(c)).read(f"ds/{key}", 0, 10) == want[:10]
    # SHARDCACHE_TOKEN_FILE, as cachectl reads it.
    token_file = guarded_server.data.parent / "token-env"
    token_file.write_text(guarded_server.token + "\n")
    monkeypatch.setenv("SHARDCACHE_TOKEN_FILE", str(token_file))
    assert Client(endpoint).read(f"ds/{key}") == want
