# Sourced by the image scripts: picks the container engine and the flags that make it work on
# plain hosts (no systemd, cgroup v1, no overlay-in-overlay). Sets ENGINE, BUILD_FLAGS, RUN_FLAGS.
# CONTAINER_ENGINE=docker|podman forces a choice; otherwise podman wins when both exist.

ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v podman >/dev/null; then ENGINE=podman
  elif command -v docker >/dev/null; then ENGINE=docker
  else
    echo "no container engine: install podman (scripts/bootstrap.sh does) or docker" >&2
    exit 1
  fi
fi
command -v "$ENGINE" >/dev/null || { echo "$ENGINE is not installed" >&2; exit 1; }

ENGINE_GLOBAL=()
BUILD_FLAGS=()
if [ "$ENGINE" = podman ]; then
  # chroot isolation builds without nested namespaces/cgroups (works in VMs and CI runners);
  # runc + cgroupfs run containers without a systemd cgroup manager or crun.
  BUILD_FLAGS=(--isolation chroot)
  command -v runc >/dev/null && ENGINE_GLOBAL+=(--runtime runc)
  ENGINE_GLOBAL+=(--cgroup-manager cgroupfs)
fi

# `engine ARGS...` runs the engine with the global flags it needs here.
engine() { "$ENGINE" "${ENGINE_GLOBAL[@]}" "$@"; }
