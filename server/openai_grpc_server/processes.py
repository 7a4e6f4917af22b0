"""Process model: the exclusive port claim, the `--workers N` supervisor and its workers' link.

Workers share one port through SO_REUSEPORT and the kernel hands each new connection to one of
them, so a health probe sees one worker. The rules that keep probes honest:

* No worker says SERVING until every worker is listening (the supervisor says when).
* A worker that dies takes the gateway down: the supervisor stops the others (NOT_SERVING, drain
  within the grace) and exits non-zero, and the kubelet (or systemd) restarts it whole.
  Restarting the worker in place was rejected: a crash loop would stay invisible behind SERVING.
* Workers follow their supervisor: when it disappears (even SIGKILL) they drain and exit.

SO_REUSEPORT would also let a second, unrelated gateway join the port silently; `claim_port`
refuses that before anything listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

log = logging.getLogger("openai_grpc.processes")

# The worker's end of its socketpair with the supervisor (an inherited file descriptor).
SUPERVISOR_FD_ENV = "OPENAI_GRPC_SUPERVISOR_FD"
_READY, _SERVE = b"R", b"S"


class PortInUse(Exception):
    """The port cannot be ours; the message is the one line shown to the operator."""


@dataclasses.dataclass
class PortClaim:
    """Held for the life of the process (the lock is released when the process exits)."""

    port: int
    lock: socket.socket | None


def claim_port(host: str, port: int) -> PortClaim:
    """Make sure nothing listens on host:port and no other gateway is about to.

    A probe binds every address of `host` without SO_REUSEPORT: the kernel refuses it while any
    socket listens there (another gateway, or anything else). SO_REUSEADDR keeps a restart from
    failing on the previous run's TIME_WAIT connections. The probe is closed before gRPC binds,
    so two gateways started at the same instant could both pass it: an abstract Unix socket
    named after the address (per network namespace, like ports; released by the kernel when the
    process dies, even on SIGKILL) closes that window.
    """
    bare = host.strip("[]") or None
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((addr[0], port, *addr[2:]))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and len(infos) > 1:
                    continue  # e.g. ::1 of "localhost" on a host without IPv6
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"port {port} on {host} is already in use") from exc
                raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            port = probe.getsockname()[1]
    lock = None
    if sys.platform == "linux":
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0openai-grpc-server/{host}:{port}")
        except OSError as exc:
            lock.close()
            lock = None
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is already claimed by another gateway") from exc
            # Elsewhere (a sandbox without abstract sockets) the probe alone has to do.
    return PortClaim(port, lock)


def exit_code(returncode: int) -> int:
    """A child's status as a shell reports it (128 + signal), never 0 for a failure."""
    if returncode < 0:
        return 128 - returncode
    return returncode or 1


@dataclasses.dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    link: socket.socket
    ready: bool = False


def supervise(cmd: Sequence[str], count: int, on_serving: Callable[[], None]) -> int:
    """Run `count` workers (`cmd`), gate their SERVING, and stop all when one dies.

    Returns the exit code: that of the first worker to die unasked (see `exit_code`), else the
    worst of the workers' after SIGTERM/SIGINT.
    """
    workers: list[_Worker] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signum)

    def reload(signum: int, _frame: object) -> None:
        for w in workers:  # each worker reloads its tenants and key file; nothing stops
            if w.proc.poll() is None:
                w.proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    sel = selectors.DefaultSelector()
    for _ in range(count):
        mine, theirs = socket.socketpair()
        env = {**os.environ, "OPENAI_GRPC_WORKERS": "1", SUPERVISOR_FD_ENV: str(theirs.fileno())}
        proc = subprocess.Popen([*cmd], env=env, pass_fds=(theirs.fileno(),))
        theirs.close()  # the worker's death must show here as end-of-file
        w = _Worker(proc, mine)
        workers.append(w)
        sel.register(mine, selectors.EVENT_READ, w)
        if stopping:  # a signal arrived while spawning
            proc.send_signal(signal.SIGTERM)

    failed: int | None = None
    announced = False
    codes: list[int] = []
    while sel.get_map():
        for key, _ in sel.select():
            w = key.data
            try:
                data = w.link.recv(64)
            except OSError:
                data = b""
            if data:
                w.ready = w.ready or _READY in data
                if not announced and not stopping and all(x.ready for x in workers):
                    announced = True
                    for x in workers:
                        with contextlib.suppress(OSError):
                            x.link.sendall(_SERVE)
                    on_serving()
                continue
            sel.unregister(w.link)
            w.link.close()
            code = w.proc.wait()
            codes.append(code)
            if not stopping:
                stopping, failed = True, code
                log.error(
                    "worker exited; stopping the gateway so it restarts whole",
                    extra={"pid": w.proc.pid, "exit_code": exit_code(code)},
                )
                for x in workers:
                    if x.proc.poll() is None:
                        x.proc.send_signal(signal.SIGTERM)
    if failed is not None:
        return exit_code(failed)
    worst = max(codes, key=abs, default=0)
    return exit_code(worst) if worst else 0


def follow_supervisor(
    fd: int, set_serving: Callable[[], Coroutine[Any, Any, None]], stop: asyncio.Event
) -> None:
    """Worker side: report ready, go SERVING when the supervisor says so, stop when it is gone."""
    loop = asyncio.get_running_loop()
    link = socket.socket(fileno=fd)
    link.setblocking(False)
    switching: set[asyncio.Task[None]] = set()  # the reader keeps the link and its task alive

    def readable() -> None:
        try:
            data = link.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # never serve unsupervised: no one would notice us dying
            loop.remove_reader(fd)
            link.close()
            stop.set()
            return
        if _SERVE in data:
            task = loop.create_task(set_serving())
            switching.add(task)
            task.add_done_callback(switching.discard)

    loop.add_reader(fd, readable)
    link.send(_READY)
