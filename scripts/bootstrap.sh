#!/usr/bin/env bash
# Installs everything the gateway and its tests need, idempotently, into this checkout:
# .venv/ (pinned Python packages), client_stubs/typescript/node_modules (npm ci) and, when
# missing, the Debian packages for Node.js, Go, redis-server and the container image test; then
# the pinned stub generators (scripts/gen_stubs.sh --tools: .venv/stubgen, protoc-gen-go and
# protoc-gen-go-grpc in .venv/bin). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v openssl >/dev/null || need_apt+=(openssl)  # test certificates (TLS fault and proxy tests)
# The image test (scripts/image.sh): podman with runc, a Debian base built by debootstrap.
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
for p in podman runc debootstrap uidmap:newuidmap fuse-overlayfs slirp4netns; do
  have "${p#*:}" || need_apt+=("${p%%:*}")
done
command -v go >/dev/null || need_apt+=(golang-go)
# Real Redis for the shared rate-limit tests and benchmark (started by the tests themselves).
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "bootstrap: installing Debian packages: ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: Python 3.11 or newer is required ($($PY --version 2>&1) found)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv

# Reinstall only when the dependency declarations change.
stamp=.venv/.openai-grpc-stamp
want=$(cat pyproject.toml client_stubs/python/pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python packages into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # The stubs are their own distribution; the gateway depends on it (one resolve for both).
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ./client_stubs/python -e '.[dev]'
  echo "$want" > "$stamp"
fi

ts=client_stubs/typescript
tstamp=$ts/node_modules/.openai-grpc-stamp
twant=$(sha256sum "$ts/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$tstamp" 2>/dev/null)" != "$twant" ]; then
  echo "bootstrap: installing TypeScript toolchain (npm ci)" >&2
  (cd "$ts" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$twant" > "$tstamp"
fi

# kustomize and helm (pinned, built from the Go module proxy) for the deployment tests.
scripts/k8s_tools.sh
scripts/gen_stubs.sh --tools
# The benchmark's Go driving side (bench/driver): its modules, so the build the benchmark tests
# start (bench.driver, into bench/.bin) needs no network.
GO=$(command -v go || echo /usr/local/go/bin/go)
if [ -x "$GO" ]; then (cd bench/driver && "$GO" mod download); fi
