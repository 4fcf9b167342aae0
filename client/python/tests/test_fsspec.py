import tarfile

import fsspec
import pytest


def test_fsspec_open_and_tarfile(server):
    with fsspec.open("shardcache://ds/train/samples.tar", "rb", endpoint=server.endpoint) as f:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            names = tar.getnames()
            assert names == [f"{n:04d}.txt" for n in range(5)]
            assert tar.extractfile("0002.txt").read() == b"sample 2\n" * 3


def test_fsspec_filesystem_is_registered(server):
    fs = fsspec.filesystem("shardcache", endpoint=server.endpoint)
    info = fs.info("shardcache://ds/train/shard-000003.bin")
    assert info["size"] == 256 * 1024 and info["type"] == "file"
    assert fs.cat_file("ds/train/shard-000003.bin", start=10, end=20) == server.files["train/shard-000003.bin"][10:20]
    assert fs.cat_file("ds/train/shard-000003.bin", start=-4) == server.files["train/shard-000003.bin"][-4:]
    with pytest.raises(FileNotFoundError):
        fs.info("ds/train/none.bin")
    # Listing goes to the control plane the server names; this one wants a token.
    with pytest.raises(PermissionError, match="bearer token"):
        fs.ls("ds/train")
    listed = fsspec.filesystem(
        "shardcache", endpoint=server.endpoint, token=server.token, skip_instance_cache=True
    )
    names = listed.ls("ds/train", detail=False)
    assert names == sorted(f"ds/{k}" for k in server.files if k.startswith("train/") and "/" not in k[len("train/") :])
    entry = next(e for e in listed.ls("ds/train") if e["name"] == "ds/train/shard-000003.bin")
    assert entry["type"] == "file" and entry["size"] == 256 * 1024
    top = listed.ls("ds", detail=True)
    assert {"name": "ds/train", "size": 0, "type": "directory"} in top
    with pytest.raises(FileNotFoundError):
        listed.ls("ds/nothing-here")
    with pytest.raises(PermissionError):
        fs.open("ds/train/shard-000003.bin", "wb")


def test_fsspec_defaults_mirror_cachectl(server, monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text(server.token + "\n")
    monkeypatch.setenv("SHARDCACHE_DATA", server.endpoint)
    monkeypatch.setenv("SHARDCACHE_TOKEN_FILE", str(token))
    fs = fsspec.filesystem("shardcache", skip_instance_cache=True)
    assert fs.endpoint == server.endpoint
    assert "ds/train/shard-000003.bin" in fs.ls("ds/train", detail=False)
    with fsspec.open("shardcache://ds/train/shard-000002.bin", "rb") as f:
        assert f.read() == server.files["train/shard-000002.bin"]
