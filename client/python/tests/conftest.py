"""Real shardcache servers (the `shardcache` binary) on loopback ports for the Python tests."""

import io
import json
import os
import pathlib
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


def server_binary() -> str:
    """SHARDCACHE_BIN, else the debug build in Cargo's target directory (CARGO_TARGET_DIR and
    .cargo/config respected, as `cargo metadata` reports it)."""
    if os.environ.get("SHARDCACHE_BIN"):
        return os.environ["SHARDCACHE_BIN"]
    try:
        meta = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, capture_output=True, check=True, text=True,
        )
        target = pathlib.Path(json.loads(meta.stdout)["target_directory"])
    except (OSError, subprocess.CalledProcessError):
        target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "debug" / "shardcache")


BIN = server_binary()


_NEXT_PORT = [0]


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range.

    A port from bind(0) is in the range the kernel hands to every outgoing
    connection, so it can be taken again before the server binds it.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    high = max(high, 2048)
    low = max(high - 12000, 1024)
    span = high - low
    start = (os.getpid() * 7919) % span
    for _attempt in range(span):
        port = low + (start + _NEXT_PORT[0]) % span
        _NEXT_PORT[0] += 1
        try:
            with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port")


def shard_bytes(i: int, size: int) -> bytes:
    return bytes((j * 31 + i * 7) % 251 for j in range(size))


def tar_bytes(members: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@dataclass
class Server:
    endpoint: str
    socket: str
    data: pathlib.Path
    control: str
    token: str
    files: Dict[str, bytes] = field(default_factory=dict)
    proc: subprocess.Popen = None


def start_server(root: pathlib.Path, data: pathlib.Path, extra: List[str], token: str = None) -> Server:
    """A `shardcache serve` of `data` as dataset `ds` on free ports."""
    port, admin, control = free_port(), free_port(), free_port()
    sock = str(root / f"sc-{port}.sock")
    control_arg = "off" if "--no-control" in extra else f"127.0.0.1:{control}"
    extra = [a for a in extra if a != "--no-control"]
    args = [
        BIN, "serve",
        "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin}",
        "--control-listen", control_arg,
        "--dataset", f"ds=file://{data}",
        "--local-socket", sock,
        "--block-size", "256KiB",
        "--ram-cache", "256MiB",
        *extra,
    ]
    if token is not None:
        (root / f"token-{port}").write_text(token + "\n")
        args += ["--control-token-file", str(root / f"token-{port}")]
    # The server's own environment: nothing of the developer's shell points it elsewhere.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root)}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
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
    return Server(
        endpoint=f"127.0.0.1:{port}", socket=sock, data=data, control=f"127.0.0.1:{control}",
        token=token, proc=proc,
    )


def stop(server: Server) -> None:
    server.proc.terminate()
    server.proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_ambient_endpoints(monkeypatch):
    # Tests name their servers; a developer's SHARDCACHE_* variables must not redirect them.
    for var in ("SHARDCACHE_DATA", "SHARDCACHE_CONTROL", "SHARDCACHE_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail(f"{BIN} is missing: build it with `cargo build --bin shardcache`")
    root = tmp_path_factory.mktemp("sc")
    data = root / "data"
    (data / "train").mkdir(parents=True)
    files = {}
    for i, size in enumerate([0, 1, 1000, 256 * 1024, 3 * 256 * 1024 + 5, 2_000_000]):
        key = f"train/shard-{i:06d}.bin"
        files[key] = shard_bytes(i, size)
        (data / key).write_bytes(files[key])
    # A tar shard, as WebDataset writes them.
    files["train/samples.tar"] = tar_bytes(
        {f"{n:04d}.txt": f"sample {n}\n".encode() * (n + 1) for n in range(5)}
    )
    (data / "train/samples.tar").write_bytes(files["train/samples.tar"])
    # WebDataset shards: samples of a .cls and a .txt member each.
    (data / "wds").mkdir()
    for s in range(4):
        members = {}
        for n in range(10):
            key = f"s{s:02d}-{n:03d}"
            members[f"{key}.cls"] = str(s * 10 + n).encode()
            members[f"{key}.txt"] = f"shard {s} sample {n}".encode()
        name = f"wds/shard-{s:06d}.tar"
        files[name] = tar_bytes(members)
        (data / name).write_bytes(files[name])

    s = start_server(root, data, [], token="py-test-token")
    s.files = files
    yield s
    stop(s)


@pytest.fixture(scope="session")
def other_server(tmp_path_factory, server):
    """A second server (its own process) over the same files."""
    root = tmp_path_factory.mktemp("sc-other")
    s = start_server(root, server.data, [], token=server.token)
    s.files = server.files
    yield s
    stop(s)


@pytest.fixture(scope="session")
def server_without_control(tmp_path_factory, server):
    root = tmp_path_factory.mktemp("sc-plain")
    s = start_server(root, server.data, ["--no-control"])
    s.files = server.files
    yield s
    stop(s)


def need(module: str):
    """Import `module`, or skip the test where it is not installed — unless the run is strict
    (SHARDCACHE_TEST_STRICT=1, as scripts/test.sh sets), where a missing module fails."""
    if os.environ.get("SHARDCACHE_TEST_STRICT") == "1":
        return __import__(module)
    return pytest.importorskip(module)
