#!/usr/bin/env bash
# Builds a Python 3.11 base image from Debian bookworm packages (debootstrap, minbase) and imports
# it into the container engine as localhost/openai-grpc-base:bookworm. For hosts that cannot
# reach Docker Hub (python:3.11-slim): `BASE_IMAGE=localhost/openai-grpc-base:bookworm`.
#
# Cached twice: the engine keeps the image (skipped when its recipe label matches) and the root
# filesystem tarball stays in ${XDG_CACHE_HOME:-~/.cache}/openai-grpc/ for re-imports.
# Needs root (or sudo) for debootstrap. Usage: scripts/debian_base.sh [TAG]; FORCE=1 rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/engine.sh
. scripts/lib/engine.sh

TAG=${1:-localhost/openai-grpc-base:bookworm}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

# The mirror apt already uses (deb822 or one-line format), else Debian's CDN.
mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && u && $0 ~ /(^| )'"$SUITE"'( |$)/ {print u; exit} /^$/ {u=""}' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  uri=$(awk '$1=="deb" && $3=="'"$SUITE"'" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${DEBIAN_MIRROR:-$(mirror)}

# The recipe: a change to the suite, the packages or the steps (bump STEPS) rebuilds; the mirror
# does not.
STEPS=1
recipe=$(printf '%s\n' "$SUITE" "$PACKAGES" "$STEPS" | sha256sum | cut -c1-16)
label=org.openai-grpc.base-recipe

if [ "${FORCE:-0}" != 1 ] && \
   [ "$(engine image inspect --format "{{ index .Config.Labels \"$label\" }}" "$TAG" 2>/dev/null)" = "$recipe" ]; then
  echo "debian_base: $TAG is up to date" >&2
  exit 0
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/openai-grpc
tarball=$cache/debian-$SUITE-python-$recipe.tar
mkdir -p "$cache"
if [ "${FORCE:-0}" = 1 ] || [ ! -s "$tarball" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
  command -v debootstrap >/dev/null || { echo "debian_base: debootstrap is missing (scripts/bootstrap.sh installs it)" >&2; exit 1; }
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap '"${SUDO[@]}" rm -rf "$root"' EXIT
  echo "debian_base: debootstrap $SUITE from $MIRROR" >&2
  "${SUDO[@]}" debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
  # Smaller and reproducible-ish: no package caches, lists, docs or man pages.
  "${SUDO[@]}" rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
  "${SUDO[@]}" tar --numeric-owner -C "$root" -cf "$tarball.$$.tmp" .
  "${SUDO[@]}" chown "$(id -u):$(id -g)" "$tarball.$$.tmp"
  mv "$tarball.$$.tmp" "$tarball"
  # Older tarballs of other recipes are dead weight.
  find "$cache" -maxdepth 1 -name "debian-$SUITE-python-*.tar" ! -name "$(basename "$tarball")" -delete
fi

engine import \
  --change "LABEL $label=$recipe" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$TAG" >/dev/null
echo "debian_base: imported $TAG ($(du -h "$tarball" | cut -f1) root filesystem)" >&2
