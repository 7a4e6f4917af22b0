"""Proxies and CAs from the environment, as the OpenAI SDK takes them (httpx's trust_env), on
both upstream transports: a gateway process behind the tests' own loopback proxy.

Every variable goes to the gateway's environment only, never to this process's.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from openai_grpc_server.fake_upstream import FakeUpstream

from tests.support.process import clean_env, free_port, gateway_process, list_models

TRANSPORTS = ("aiohttp", "httpx")
# Both transports are covered here explicitly: the suite's httpx re-run (scripts/test.sh) skips it.
pytestmark = pytest.mark.skipif(
    os.environ.get("OPENAI_GRPC_TEST_TRANSPORT", "aiohttp") != "aiohttp", reason="covers both transports"
)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        dst.close()


class _Relay:
    """A loopback TCP server whose connections are handled by `handle`; closes them on exit."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class LoopbackProxy(_Relay):
    """An HTTP proxy: CONNECT tunnels, and absolute-form requests forwarded one per connection."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, _, headers = head.partition(b"\r\n")
        method, target, version = request_line.decode().split(" ")
        self.seen.append((method, target))
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            assert url.hostname and url.port, target
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
            path = url.path + (f"?{url.query}" if url.query else "")
            kept = [
                h
                for h in headers.split(b"\r\n")
                if h and not h.lower().startswith((b"connection:", b"proxy-connection:", b"keep-alive:"))
            ]
            # Origin-form to the server; one request per connection keeps the forwarding honest.
            up_writer.write(
                b"\r\n".join([f"{method} {path} {version}".encode(), *kept, b"Connection: close", b"", b""])
            )
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


class TlsFront(_Relay):
    """https://127.0.0.1:port in front of a plain-HTTP upstream."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self._upstream_port = upstream_port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 (openssl CLI): (ca, cert, key)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=openai-grpc test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True, timeout=30)
    return ca, cert, key


@pytest.fixture
async def proxy() -> AsyncIterator[LoopbackProxy]:
    p = LoopbackProxy()
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def https_upstream(fake: FakeUpstream, certs: tuple[Path, Path, Path]) -> AsyncIterator[str]:
    _, cert, key = certs
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    front = TlsFront(fake.port)
    await front.start(tls)
    yield f"https://127.0.0.1:{front.port}/v1"
    await front.stop()


def gateway_env(base_url: str, transport: str, **extra: str) -> dict[str, str]:
    return clean_env(
        OPENAI_API_KEY="sk-proxy-test",
        OPENAI_BASE_URL=base_url,
        OPENAI_GRPC_UPSTREAM_TRANSPORT=transport,
        OPENAI_GRPC_RETRY_MAX_RETRIES="0",
        **extra,
    )


async def list_models_through(env: dict[str, str]) -> grpc.StatusCode:
    port = free_port()
    async with gateway_process("--port", str(port), "--host", "127.0.0.1", env=env):
        try:
            await list_models(port)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("transport", "var"), [("aiohttp", "HTTP_PROXY"), ("httpx", "http_proxy"), ("aiohttp", "all_proxy")]
)
async def test_http_upstream_through_the_proxy(
    fake: FakeUpstream, proxy: LoopbackProxy, transport: str, var: str
) -> None:
    fake.reset()
    env = gateway_env(fake.base_url, transport, **{var: proxy.url})
    assert await list_models_through(env) == grpc.StatusCode.OK
    assert proxy.seen == [("GET", f"{fake.base_url}/models")]
    assert len(fake.requests) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "bypass",
    [{"NO_PROXY": "127.0.0.1"}, {"no_proxy": "localhost,127.0.0.1"}, {"OPENAI_GRPC_TRUST_ENV": "false"}],
    ids=["NO_PROXY", "no_proxy", "trust_env-false"],
)
async def test_no_proxy_or_trust_env_false_goes_direct(
    fake: FakeUpstream, proxy: LoopbackProxy, transport: str, bypass: dict[str, str]
) -> None:
    fake.reset()
    env = gateway_env(fake.base_url, transport, HTTP_PROXY=proxy.url, HTTPS_PROXY=proxy.url, **bypass)
    assert await list_models_through(env) == grpc.StatusCode.OK
    assert proxy.seen == []
    assert len(fake.requests) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_https_upstream_through_connect_trusting_ssl_cert_file(
    fake: FakeUpstream,
    proxy: LoopbackProxy,
    https_upstream: str,
    certs: tuple[Path, Path, Path],
    transport: str,
) -> None:
    fake.reset()
    ca = str(certs[0])
    env = gateway_env(https_upstream, transport, HTTPS_PROXY=proxy.url, SSL_CERT_FILE=ca)
    assert await list_models_through(env) == grpc.StatusCode.OK
    assert proxy.seen == [("CONNECT", urlsplit(https_upstream).netloc)]
    assert len(fake.requests) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ssl_cert_file_is_what_trusts_the_private_ca(
    fake: FakeUpstream, https_upstream: str, certs: tuple[Path, Path, Path], transport: str
) -> None:
    fake.reset()
    ca = str(certs[0])
    # Ignored when trust_env is off: the bundled CAs do not know the private one.
    env = gateway_env(https_upstream, transport, SSL_CERT_FILE=ca, OPENAI_GRPC_TRUST_ENV="false")
    assert await list_models_through(env) == grpc.StatusCode.UNAVAILABLE
    assert len(fake.requests) == 0
    del env["OPENAI_GRPC_TRUST_ENV"]
    assert await list_models_through(env) == grpc.StatusCode.OK


@pytest.fixture
def cert_dir(certs: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    """The private CA as an OpenSSL hashed directory."""
    (tmp_path / "ca.pem").write_bytes(certs[0].read_bytes())
    subprocess.run(["openssl", "rehash", str(tmp_path)], check=True, capture_output=True, timeout=30)
    return tmp_path


async def test_ssl_cert_dir_trusts_the_private_ca(
    fake: FakeUpstream, https_upstream: str, cert_dir: Path
) -> None:
    """SSL_CERT_DIR (one CA context serves both transports: one of them is enough)."""
    fake.reset()
    env = gateway_env(https_upstream, "aiohttp", SSL_CERT_DIR=str(cert_dir))
    assert await list_models_through(env) == grpc.StatusCode.OK
    assert len(fake.requests) == 1
