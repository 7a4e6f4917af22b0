"""The Go driving side (bench/driver): build it on first use, and say where it is.

`python -m bench.driver` builds `bench/.bin/benchdriver` (git-ignored) with the Go toolchain
on PATH or /usr/local/go/bin/go, when the binary is missing or older than its sources.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH / "driver"
BIN = BENCH / ".bin" / "benchdriver"
STUBS = BENCH.parent / "client_stubs" / "go"


def go_tool() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    for cand in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def _newest_source() -> float:
    newest = 0.0
    for root in (SRC, STUBS):
        for p in root.rglob("*"):
            if p.suffix in (".go", ".mod", ".sum"):
                newest = max(newest, p.stat().st_mtime)
    return newest


def ensure(log: Path | None = None) -> Path:
    """The built binary, building it first when needed; RuntimeError says why it cannot be."""
    if BIN.exists() and BIN.stat().st_mtime >= _newest_source():
        return BIN
    go = go_tool()
    if go is None:
        raise RuntimeError("the Go toolchain is not installed (scripts/bootstrap.sh installs it)")
    BIN.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    tmp = BIN.with_name(BIN.name + ".tmp")  # then renamed: a running driver is never overwritten
    res = subprocess.run(
        [go, "build", "-trimpath", "-o", str(tmp), "."],
        cwd=SRC,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"go build of bench/driver failed:\n{(res.stdout + res.stderr)[-2000:]}")
    os.replace(tmp, BIN)
    return BIN


def version() -> str:
    go = go_tool()
    if go is None:
        return "not installed"
    try:
        return subprocess.run([go, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


if __name__ == "__main__":
    try:
        print(ensure())
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
