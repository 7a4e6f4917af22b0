"""Processes under test: start, pin, pause, stop, and read their CPU and memory from /proc.

CPU is utime+stime of /proc/<pid>/stat summed over the live process tree (a gateway with
worker processes counts whole), RSS is VmRSS of /proc/<pid>/status summed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def have_taskset() -> bool:
    return any((Path(p) / "taskset").exists() for p in os.environ.get("PATH", "").split(os.pathsep))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        rest = data[data.rfind(b")") + 2 :].split()
        out.setdefault(int(rest[1]), []).append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    """pid and every live descendant."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])  # fields 14 and 15: utime, stime
    return total / CLK_TCK


def memory_kb(pids: Sequence[int]) -> tuple[int, int]:
    """(VmRSS, VmHWM) summed over these processes, in KiB."""
    rss = hwm = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            continue
    return rss, hwm


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


@dataclasses.dataclass
class Snapshot:
    at: float  # time.monotonic()
    cpu_s: float
    rss_kb: int
    hwm_kb: int


def snapshot(pids: Sequence[int]) -> Snapshot:
    rss, hwm = memory_kb(pids)
    return Snapshot(time.monotonic(), cpu_seconds(pids), rss, hwm)


class Proc:
    """One long-lived process of the benchmark (fake upstream, gateway, litellm)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cpus: str | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cpus = cpus
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log: BinaryIO | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def command(self) -> list[str]:
        if self.cpus is not None:
            return ["taskset", "-c", self.cpus, *self.argv]
        return list(self.argv)

    def start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # taskset execs the command, so the pid is the server's own.
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def tree(self) -> list[int]:
        return process_tree(self.pid) if self.alive() else []

    def snapshot(self, pids: Sequence[int] | None = None) -> Snapshot:
        return snapshot(self.tree() if pids is None else pids)

    def pause(self) -> None:
        """SIGSTOP the tree so an idle server cannot take CPU from the one being measured."""
        if self.alive() and not self.paused:
            for pid in self.tree():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive() and self.paused:
            for pid in self.tree():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 8.0) -> None:
        if self.proc is None:
            return
        if self.alive():
            self.resume()
            pids = self.tree()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
            # Whatever is left of this tree (only pids we started) is killed by pid.
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
        if self._log is not None:
            self._log.close()
            self._log = None


async def wait_port(port: int, proc: Proc, within: float) -> None:
    """Until 127.0.0.1:port accepts a connection; fails early if the process died."""
    deadline = time.monotonic() + within
    while True:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except (TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{proc.name} did not listen on {port} within {within:.0f}s:\n{proc.log_tail()}"
                ) from None
            await asyncio.sleep(0.1)


def machine_info() -> dict[str, object]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    return {
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "clk_tck": CLK_TCK,
    }


def package_versions(names: Sequence[str], python: str | None = None) -> dict[str, str | None]:
    """Installed versions, read in this interpreter or (for another venv) in `python`."""
    if python is None:
        from importlib import metadata  # noqa: PLC0415

        out: dict[str, str | None] = {}
        for n in names:
            try:
                out[n] = metadata.version(n)
            except metadata.PackageNotFoundError:
                out[n] = None
        return out
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    try:
        res = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60)
        import json  # noqa: PLC0415

        parsed: dict[str, str | None] = json.loads(res.stdout)
        return parsed
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return dict.fromkeys(names)


def git_revision(repo: Path) -> dict[str, object]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "server"))}


def current_python() -> str:
    return sys.executable
