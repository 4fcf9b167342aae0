"""A real shardcache server (the `shardcache` binary) on loopback for the Python tests."""

import io
import os
import pathlib
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from typing import Dict

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = os.environ.get("SHARDCACHE_BIN", str(REPO / "target" / "debug" / "shardcache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_bytes(i: int, size: int) -> bytes:
    return bytes((j * 31 + i * 7) % 251 for j in range(size))


@dataclass
class Server:
    endpoint: str
    socket: str
    data: pathlib.Path
    control: str
    token: str
    files: Dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail(f"{BIN} is missing: build it with `cargo build -p shardcache-server --bin shardcache`")
    root = tmp_path_factory.mktemp("sc")
    data = root / "data"
    (data / "train").mkdir(parents=True)
    files = {}
    for i, size in enumerate([0, 1, 1000, 256 * 1024, 3 * 256 * 1024 + 5, 2_000_000]):
        key = f"train/shard-{i:06d}.bin"
        files[key] = shard_bytes(i, size)
        (data / key).write_bytes(files[key])
    # A tar shard, as WebDataset writes them.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in range(5):
            payload = f"sample {n}\n".encode() * (n + 1)
            info = tarfile.TarInfo(f"{n:04d}.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    files["train/samples.tar"] = buf.getvalue()
    (data / "train/samples.tar").write_bytes(files["train/samples.tar"])

    port, admin, control = free_port(), free_port(), free_port()
    sock = str(root / "sc.sock")
    token = "py-test-token"
    (root / "token").write_text(token + "\n")
    proc = subprocess.Popen(
        [
            BIN, "serve",
            "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin}",
            "--control-listen", f"127.0.0.1:{control}",
            "--control-token-file", str(root / "token"),
            "--dataset", f"ds=file://{data}",
            "--local-socket", sock,
            "--block-size", "256KiB",
            "--ram-cache", "256MiB",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            if os.path.exists(sock):
                break
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("the shardcache server did not start")
        time.sleep(0.05)
    yield Server(
        endpoint=f"127.0.0.1:{port}",
        socket=sock,
        data=data,
        control=f"127.0.0.1:{control}",
        token=token,
        files=files,
    )
    proc.terminate()
    proc.wait(timeout=10)
