#!/usr/bin/env bash
# Build shardcache's container image with podman, from this machine's release build (no base
# image is pulled): build the release binaries, assemble a root (stripped binaries, the
# shared libraries they link, CA certificates, an unprivileged user), then `podman build`.
#
#   scripts/image.sh [TAG]        # default tag: localhost/shardcache:dev
#
# CONTAINERS_CONF defaults to deploy/containers.conf (runc; explicit ulimits).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/shardcache:dev}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/containers.conf}

cargo build --release --bin shardcache --bin cachectl
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

context="$target_dir/image"
root="$context/root"
rm -rf "$context"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/var/lib" "$root/var/cache" "$root/tmp" "$context/empty"
for bin in shardcache cachectl; do
  strip -o "$root/usr/local/bin/$bin" "$target_dir/release/$bin"
done
# The C libraries the binaries link (and the dynamic loader), at the paths ldd names.
for lib in $(ldd "$target_dir/release/shardcache" "$target_dir/release/cachectl" |
  grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
shardcache:x:65532:65532:shardcache:/var/lib/shardcache:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
shardcache:x:65532:
GROUP
# A /tmp. The user's own directories are made by the Containerfile (COPY makes what it copies
# root's, but a directory it creates takes --chown).
chmod 1777 "$root/tmp"
cp Containerfile "$context/"

podman build -q -f "$context/Containerfile" -t "$tag" "$context"
podman image inspect "$tag" --format '{{.Id}} {{.Size}}'
