"""Python `read_into` of 64 MiB objects into a preallocated numpy buffer, beside the Rust
client reading the same objects into a Rust buffer, in the same process and run.

    cargo build --release -p shardcache-server --bin shardcache
    VIRTUAL_ENV=$PWD/.venv .venv/bin/maturin develop --release -m client/python/Cargo.toml
    .venv/bin/python bench/python_read_into.py
"""

import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import shardcache

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get("SHARDCACHE_BIN", str(REPO / "target" / "release" / "shardcache"))
OBJECTS, SIZE, ROUNDS, REPS = 4, 64 << 20, 5, 7


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    with tempfile.TemporaryDirectory() as root:
        data = pathlib.Path(root) / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(OBJECTS):
            (data / f"obj-{i}").write_bytes(rng.integers(0, 256, SIZE, dtype=np.uint8).tobytes())
        port = free_port()
        proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
             "--dataset", f"ds=file://{data}", "--ram-cache", "1GiB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 20
            while True:
                try:
                    client = shardcache.Client(f"127.0.0.1:{port}")
                    break
                except ConnectionError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
            paths = [f"ds/obj-{i}" for i in range(OBJECTS)]
            buf = np.empty(SIZE, dtype=np.uint8)
            for p in paths:  # warm the RAM tier
                assert client.read_into(p, buf) == SIZE
            total = OBJECTS * ROUNDS * SIZE
            py, rust = [], []
            def run_py():
                t = time.perf_counter()
                for _ in range(ROUNDS):
                    for p in paths:
                        client.read_into(p, buf)
                py.append(total / (time.perf_counter() - t) / 1e9)

            def run_rust():
                rust.append(total / client._native._bench_read_into(paths, ROUNDS, SIZE) / 1e9)

            # Alternate which side goes first, so neither always meets the warmer machine.
            for rep in range(REPS):
                for run in ((run_py, run_rust) if rep % 2 == 0 else (run_rust, run_py)):
                    run()
            assert buf.tobytes()[:64] == (data / paths[-1].split("/")[1]).read_bytes()[:64]
        finally:
            proc.terminate()
            proc.wait(10)
    py_m, rust_m = statistics.median(py), statistics.median(rust)
    print(f"objects: {OBJECTS} x 64 MiB, {ROUNDS} rounds, median of {REPS}; python {sys.version.split()[0]}")
    print()
    print("| run | GB/s |")
    print("|---|---:|")
    print(f"| Rust client read_into (Rust buffer) | {rust_m:.2f} |")
    print(f"| Python read_into (numpy buffer) | {py_m:.2f} |")
    print()
    print(f"runs (GB/s): python {[round(x, 2) for x in py]}, rust {[round(x, 2) for x in rust]}")
    print()
    print(f"| ratio | value | target |\n|---|---:|---|\n| Python / Rust | {py_m / rust_m:.2f} | >= 0.80 |")


if __name__ == "__main__":
    main()
