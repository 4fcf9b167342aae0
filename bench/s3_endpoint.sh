#!/usr/bin/env bash
# The S3-compatible endpoint beside nginx's proxy_cache in front of the same S3 origin, on
# loopback, in one run:
#
#   bench/s3_endpoint.sh [SECONDS]       # needs nginx and wrk (apt-get install nginx-light wrk)
#
# Hot: a 64 MiB object, cached by both, fetched over and over by 8 HTTP connections (wrk, 2
# threads) for SECONDS (default 10) per run, runs alternating shardcache / nginx three times
# each; the medians of the throughputs and their ratio. Cold: 8 clients ask for one uncached
# 64 MiB object at once through the endpoint; the origin GETs it made, beside the block count.
# The origin is moto's S3 server (.venv/bin/moto_server, from scripts/test.sh's first venv).
# Everything binds 127.0.0.1 and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
command -v nginx >/dev/null && command -v wrk >/dev/null ||
  { echo "needs nginx and wrk: apt-get install nginx-light wrk" >&2; exit 1; }
moto=.venv/bin/moto_server
[ -x "$moto" ] || { echo "needs $moto: run ./scripts/test.sh once (it makes .venv)" >&2; exit 1; }
cargo build -q --release --bin shardcache
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
origin_port=$(port) s3_port=$(port) data_port=$(port) admin_port=$(port) nginx_port=$(port)

(cd "$work" && exec "$OLDPWD/$moto" -H 127.0.0.1 -p "$origin_port" >/dev/null 2>&1) &
pids+=($!)
python3 - "$origin_port" <<'PY'
import sys, time, urllib.request, random
port = sys.argv[1]
base = f"http://127.0.0.1:{port}"
for _ in range(100):
    try:
        urllib.request.urlopen(f"{base}/moto-api/", timeout=1).read(); break
    except OSError:
        time.sleep(0.1)
# Public objects: nginx passes requests to the origin unsigned.
put = lambda url, data: urllib.request.urlopen(urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream", "x-amz-acl": "public-read"})).read()
put(f"{base}/bench", b"")
rng = random.Random(1)
for name in ["hot.bin", "cold.bin"]:
    put(f"{base}/bench/{name}", rng.randbytes(64 << 20))
PY

AWS_ENDPOINT_URL="http://127.0.0.1:$origin_port" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true RUST_LOG=warn \
  "$target_dir/release/shardcache" serve --dataset bench=s3://bench/ --ram-cache 1GiB \
  --listen "127.0.0.1:$data_port" --admin-listen "127.0.0.1:$admin_port" --control-listen off \
  --s3-listen "127.0.0.1:$s3_port" --s3-anonymous >"$work/shardcache.log" 2>&1 &
server_pid=$!
pids+=($server_pid)

mkdir -p "$work/nginx/cache" "$work/nginx/logs"
cat >"$work/nginx.conf" <<NGINX
worker_processes auto;
# The workers write the cache under this run's private directory.
user root;
pid $work/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=shards:16m max_size=2g inactive=1h use_temp_path=off;
  client_body_temp_path $work/nginx/tmp-body;
  proxy_temp_path $work/nginx/tmp-proxy;
  fastcgi_temp_path $work/nginx/tmp-fcgi;
  uwsgi_temp_path $work/nginx/tmp-uwsgi;
  scgi_temp_path $work/nginx/tmp-scgi;
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://127.0.0.1:$origin_port;
      proxy_http_version 1.1;
      proxy_cache shards;
      proxy_cache_valid 200 1h;
      proxy_cache_lock on;
      proxy_cache_key \$uri;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work/nginx" -e "$work/nginx/logs/error.log"

wait_http() {
  for _ in $(seq 200); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "$1 never answered" >&2
  exit 1
}
wait_http "http://127.0.0.1:$admin_port/readyz"
# Warm both caches with the hot object (and check they serve the same bytes).
want=$(curl -sf "http://127.0.0.1:$origin_port/bench/hot.bin" | sha256sum | cut -d' ' -f1)
for url in "http://127.0.0.1:$s3_port/bench/hot.bin" "http://127.0.0.1:$nginx_port/bench/hot.bin"; do
  for _ in 1 2; do
    got=$(curl -sf "$url" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$url served other bytes" >&2; exit 1; }
  done
done

# wrk's Transfer/sec in MiB/s.
rate() {
  wrk -t2 -c8 -d"${seconds}s" --timeout 30s "$1" | awk '/Transfer\/sec/ {
    v = $2; u = substr(v, length(v) - 1); n = substr(v, 1, length(v) - 2) + 0
    if (u == "GB") n *= 1024; else if (u == "KB") n /= 1024; else if (u != "MB") n = substr(v, 1, length(v) - 1) / 1048576
    printf "%.1f", n }'
}
ours=() theirs=()
for run in 1 2 3; do
  ours+=("$(rate "http://127.0.0.1:$s3_port/bench/hot.bin")")
  theirs+=("$(rate "http://127.0.0.1:$nginx_port/bench/hot.bin")")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
m_ours=$(median "${ours[@]}") m_theirs=$(median "${theirs[@]}")

# The native protocol beside them: 8 threads of the Python package's read_into (TCP), each
# into its own 64 MiB buffer, over and over for the same time.
native=""
if [ -x .venv-wheel/bin/python ]; then
  native=$(.venv-wheel/bin/python - "127.0.0.1:$data_port" "$seconds" <<'PY'
import sys, threading, time
import shardcache
endpoint, seconds = sys.argv[1], float(sys.argv[2])
size = 64 << 20
done = [0] * 8
def reader(i):
    client = shardcache.Client(endpoint)
    buf = bytearray(size)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert client.read_into("bench/hot.bin", buf) == size
        done[i] += size
start = time.monotonic()
threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(f"{sum(done) / (time.monotonic() - start) / 2**20:.1f}")
PY
  )
fi

# Cold: 8 clients at once for one uncached object; the origin GETs it made.
gets() {
  curl -sf "http://127.0.0.1:$admin_port/metrics" |
    awk '/^shardcache_origin_requests_total\{op="get"\}/ { print $2 }'
}
before=$(gets)
want_cold=$(curl -sf "http://127.0.0.1:$origin_port/bench/cold.bin" | sha256sum | cut -d' ' -f1)
cold=()
for i in $(seq 8); do
  (got=$(curl -sf "http://127.0.0.1:$s3_port/bench/cold.bin" | sha256sum | cut -d' ' -f1)
   [ "$got" = "$want_cold" ] || { echo "client $i: wrong bytes" >&2; exit 1; }) &
  cold+=($!)
done
for p in "${cold[@]}"; do wait "$p"; done
after=$(gets)
blocks=16

echo "hot 64 MiB, 8 connections, ${seconds}s a run (MiB/s): shardcache S3 ${ours[*]}; nginx proxy_cache ${theirs[*]}"
echo "median: shardcache ${m_ours} MiB/s, nginx ${m_theirs} MiB/s, ratio $(python3 -c "print(f'{$m_ours / $m_theirs:.2f}')")"
[ -n "$native" ] && echo "native protocol (Python read_into, 8 threads): ${native} MiB/s; S3 endpoint / native $(python3 -c "print(f'{$m_ours / $native:.2f}')")"
echo "cold 64 MiB (${blocks} blocks of 4 MiB), 8 clients at once: $((${after%.*} - ${before%.*})) origin GETs"
echo "shardcache peak RSS: $(awk '/VmHWM/ {printf "%d MiB", $2 / 1024}' "/proc/$server_pid/status") (RAM tier 1 GiB, 128 MiB cached)"
