#!/usr/bin/env bash
# Every test of the project: the Rust workspace (unit, integration, the binaries, the origin
# conformance suite against s3s-fs, moto and Azurite), then the Python package against the real
# server binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test programs from outside Cargo: a Python virtual environment (the package's build and test
# tools, and moto's S3 server), and Azurite's blob service from the npm registry.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "maturin==1.16.0" pytest numpy fsspec "moto[server]==5.2.5"
if [ ! -x .emulators/node_modules/.bin/azurite-blob ]; then
  npm install --prefix .emulators --no-audit --no-fund --loglevel=error azurite@3.37.0
fi
# A missing emulator fails its tests instead of skipping them.
export SHARDCACHE_REQUIRE_EMULATORS=1

cargo test --workspace --all-features
cargo build -p shardcache-server --bin shardcache

# Python: the package built in place into the virtual environment.
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop -q -m client/python/Cargo.toml
.venv/bin/python -m pytest -q client/python/tests
