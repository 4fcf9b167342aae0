#!/usr/bin/env bash
# Run docs/quickstart.md: every ```bash block, in order, in one shell, as a reader would paste
# them. Only the ports and the scratch directory are moved (through the variables and the
# SHARDCACHE_* settings the commands already honour), so the run does not collide with a
# server already running on the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
work=$(mktemp -d)
script="$work/quickstart-commands.sh"
python3 - "$script" <<'PY'
import re, sys
text = open("docs/quickstart.md", encoding="utf-8").read()
blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
assert blocks, "no bash blocks in docs/quickstart.md"
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.write("set -euo pipefail\n")
    for i, b in enumerate(blocks, 1):
        f.write(f"echo '--- quickstart step {i}'\n{b}\n")
PY

export QUICKSTART_DIR="$work/run"
export S3_PORT=$(free_port)
data=$(free_port) control=$(free_port) admin=$(free_port)
export SHARDCACHE_LISTEN="127.0.0.1:$data" SHARDCACHE_CONTROL_LISTEN="127.0.0.1:$control"
export SHARDCACHE_ADMIN_LISTEN="127.0.0.1:$admin" SHARDCACHE_DATA="127.0.0.1:$data"
unset SHARDCACHE_CONTROL SHARDCACHE_TOKEN_FILE

# Whatever the commands left running stops with the run, and the scratch directory (its virtual
# environment with PyTorch takes gigabytes) goes with it.
cleanup() {
  pkill -P $$ >/dev/null 2>&1 || true
  for pat in "moto_server -H 127.0.0.1 -p $S3_PORT" "shardcache serve --dataset imagenet"; do
    pkill -f "$pat" >/dev/null 2>&1 || true
  done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

if ! bash "$script"; then
  echo "quickstart failed; the server's log:" >&2
  cat "$QUICKSTART_DIR/server.log" >&2 2>/dev/null || true
  exit 1
fi
echo "quickstart: every command ran"
