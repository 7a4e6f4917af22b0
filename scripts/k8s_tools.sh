#!/usr/bin/env bash
# Installs the tools that render the deployment manifests, pinned, into .venv/bin, once:
# kustomize and helm built from the Go module proxy (Go's module and build caches keep
# reruns instant). The Kubernetes schemas they are validated against come with the Python
# package kubernetes-validate (pinned in requirements/constraints.txt, installed by bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.8.2   # v5.8.3 needs Go 1.27
HELM_VERSION=v3.22.0

bin=$PWD/.venv/bin
mkdir -p "$bin"
if ! command -v go >/dev/null; then
  echo "k8s_tools: Go is required to build kustomize and helm (https://go.dev/doc/install)" >&2
  exit 1
fi

install_tool() {  # name module version
  local name=$1 module=$2 version=$3 stamp="$bin/.$1-version"
  if [ -x "$bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    return
  fi
  echo "k8s_tools: building $name $version (go install $module@$version)" >&2
  GOBIN=$bin GOFLAGS=-buildvcs=false go install "$module@$version"
  echo "$version" > "$stamp"
}

install_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
install_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
