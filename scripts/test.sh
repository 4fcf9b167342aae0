#!/usr/bin/env bash
# Every test of the project: the Rust workspace (unit, integration, the binaries), then the
# Python package against the real server binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-features
cargo build -p shardcache-server --bin shardcache

# Python: a virtual environment with the test dependencies, the package built in place.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "maturin==1.16.0" pytest numpy fsspec
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop -q -m client/python/Cargo.toml
.venv/bin/python -m pytest -q client/python/tests
