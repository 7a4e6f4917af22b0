#!/usr/bin/env bash
# Builds the gateway image and smoke-tests it the way Kubernetes runs it: started with --demo
# (embedded fake upstream, no key), read-only root filesystem (no tmpfs either), all capabilities
# dropped, no new privileges, gRPC port published on 127.0.0.1 only. Checks: health SERVING, a
# unary and a streaming call with grpcurl, the process runs as a non-root user, the root
# filesystem refuses writes, the install holds no dev packages and the MIT LICENSE, SIGTERM
# drains and exits 0.
#
# Usage: scripts/image.sh [--build-only]
#   CONTAINER_ENGINE  podman | docker (default: podman when installed, else docker)
#   BASE_IMAGE        base of both stages (default python:3.11-slim). "debian" builds and uses
#                     the local Debian bookworm base (scripts/debian_base.sh); the default falls
#                     back to it when it cannot be pulled (no Docker Hub).
#   IMAGE             tag to build (default openai-grpc:<version from pyproject.toml>)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/engine.sh
. scripts/lib/engine.sh

say() { echo "image: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
IMAGE=${IMAGE:-openai-grpc:$VERSION}
DEBIAN_BASE=localhost/openai-grpc-base:bookworm
DEFAULT_BASE=python:3.11-slim

base=${BASE_IMAGE:-$DEFAULT_BASE}
if [ "$base" = debian ]; then
  scripts/debian_base.sh "$DEBIAN_BASE"
  base=$DEBIAN_BASE
elif ! engine image inspect "$base" >/dev/null 2>&1 && ! timeout 300 "$ENGINE" pull -q "$base" >/dev/null 2>&1; then
  [ -z "${BASE_IMAGE:-}" ] || die "cannot pull BASE_IMAGE=$base"
  say "$base cannot be pulled; using the local Debian base instead"
  scripts/debian_base.sh "$DEBIAN_BASE"
  base=$DEBIAN_BASE
fi

# pip in the build trusts the CAs this host trusts (TLS-intercepting proxies), via a build secret.
ca=""
for f in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$f" ] && [ -r "$f" ]; then ca=$f; break; fi
done
secret=()
[ -z "$ca" ] || secret=(--secret "id=ca-bundle,src=$ca")

say "building $IMAGE on $base with $ENGINE"
previous=$(engine image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
start=$SECONDS
# `created` is the source commit's time, so rebuilding one commit reuses every cached layer.
engine build "${BUILD_FLAGS[@]}" "${secret[@]}" \
  --build-arg "BASE_IMAGE=$base" \
  --build-arg "VERSION=$VERSION" \
  --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  --build-arg "CREATED=$(git show -s --format=%cI HEAD 2>/dev/null || echo unknown)" \
  -t "$IMAGE" . >&2
say "built $IMAGE in $((SECONDS - start)) s"
# The image this tag named before is now untagged: drop it unless something still uses it.
if [ -n "$previous" ] && [ "$previous" != "$(engine image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  engine rmi "$previous" >/dev/null 2>&1 || true
fi
[ "${1:-}" != --build-only ] || exit 0

# ---- smoke test -------------------------------------------------------------------------------
GRPCURL=${GRPCURL:-$(command -v grpcurl || echo .venv/bin/grpcurl)}
if [ ! -x "$GRPCURL" ]; then scripts/bootstrap.sh; GRPCURL=.venv/bin/grpcurl; fi

# Explicit limits: the engine's defaults may exceed this host's hard limits and fail the start.
limit() { local hard; hard=$(ulimit -H "$1"); [ "$hard" = unlimited ] || [ "$hard" -gt "$2" ] && hard=$2; echo "$hard"; }
nofile=$(limit -n 65536)
nproc=$(limit -u 4096)

run_flags=(--read-only --cap-drop ALL --security-opt no-new-privileges
  --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" -p 127.0.0.1::50051)
# podman mounts tmpfs on /tmp and /run under --read-only; Kubernetes' readOnlyRootFilesystem does not.
[ "$ENGINE" != podman ] || run_flags+=(--read-only-tmpfs=false)

name=openai-grpc-smoke-$$
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then say "container log:"; engine logs "$name" 2>&1 | tail -n 30 >&2 || true; fi
  engine rm -f "$name" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
engine run -d --name "$name" "${run_flags[@]}" "$IMAGE" --demo >/dev/null
addr=$(engine port "$name" 50051/tcp | head -n1)
addr=127.0.0.1:${addr##*:}
grpc() { "$GRPCURL" -plaintext -max-time 10 "$@"; }

for _ in $(seq 60); do
  health=$(grpc "$addr" grpc.health.v1.Health/Check 2>&1 || true)
  case $health in *'"SERVING"'*) break ;; esac
  [ "$(engine inspect --format '{{.State.Running}}' "$name")" = true ] || die "the container exited at start"
  sleep 1
done
case $health in *'"SERVING"'*) say "ok: health SERVING on $addr" ;; *) die "health: $health" ;; esac

chat='"model":"gpt-4o-mini","messages":[{"role":"user","content_text":"hi"}]'
out=$(grpc -d "{$chat}" "$addr" openai_grpc.v1.ChatService/CreateChatCompletion) || die "unary call: $out"
case $out in *'"chat_completion"'*chatcmpl-*) say "ok: unary ChatService/CreateChatCompletion" ;; *) die "unary: $out" ;; esac

out=$(grpc -d "{$chat,\"stream_options\":{\"include_usage\":true}}" "$addr" \
  openai_grpc.v1.ChatService/StreamChatCompletion) || die "stream call: $out"
chunks=$(grep -c '"chat.completion.chunk"' <<<"$out" || true)
[ "$chunks" -ge 2 ] && grep -q '"usage"' <<<"$out" || die "stream: $out"
say "ok: stream ChatService/StreamChatCompletion ($chunks chunks with usage)"

uid=$(engine exec "$name" sh -c 'grep "^Uid:" /proc/1/status' | awk '{print $2, $3, $4, $5}')
for u in $uid; do [ "$u" != 0 ] || die "the gateway runs as root (Uid: $uid)"; done
say "ok: runs as uid ${uid%% *} (non-root)"

[ "$(engine inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name")" = true ] || die "root filesystem is writable"
if engine exec "$name" sh -c 'touch /opt/venv/.probe || touch /tmp/.probe' 2>/dev/null; then
  die "a write to the root filesystem succeeded"
fi
say "ok: read-only root filesystem"

# The Deployment's preStop hook is `sleep`: it must exist in the image.
engine exec "$name" sleep 0 || die "no sleep binary for the preStop hook"

engine exec "$name" python3 -c '
import importlib.metadata as m, importlib.util as u, sys
d = m.distribution("openai-grpc")
problems = [f"dev package {n} installed" for n in ("pytest", "grpc_tools", "mypy", "ruff") if u.find_spec(n)]
if d.metadata["License-Expression"] != "MIT" or not [f for f in d.files or () if f.name == "LICENSE"]:
    problems.append("no MIT LICENSE in the package metadata")
sys.exit("; ".join(problems) or None)' || die "package contents"
say "ok: server install only (no dev packages), MIT LICENSE in its metadata"

engine kill --signal TERM "$name" >/dev/null
code=$(timeout 60 "$ENGINE" "${ENGINE_GLOBAL[@]}" wait "$name" | tail -n1) || die "no exit within 60 s of SIGTERM"
[ "$code" = 0 ] || die "exit code $code after SIGTERM"
say "ok: SIGTERM drained and exited 0"
say "smoke test passed: $IMAGE"
