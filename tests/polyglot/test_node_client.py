"""The TypeScript stubs as an npm package: `npm pack`, installed into a fresh project with its peers
from the npm registry, imported by name (ESM with .d.ts, and CommonJS) by a real Node client."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import pytest
from openai_grpc.v1 import chat_pb2_grpc, models_pb2_grpc
from openai_grpc_server.fake_upstream import FakeUpstream

from tests.support.flaky_servicers import FlakyModels, UnavailableChat
from tests.support.gateway import Gateway
from tests.support.protomodel import ROOT

TS = ROOT / "client_stubs" / "typescript"
PEERS = ("@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node")


async def _run(*cmd: str, cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{out.decode()}\n{err.decode()}"
    return out.decode()


@pytest.fixture(scope="module")
async def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh Node project with the packed stubs and their peers installed, quickstart compiled."""
    tmp = tmp_path_factory.mktemp("node-client")
    packed = json.loads(await _run("npm", "pack", "--json", "--pack-destination", str(tmp), cwd=TS))
    tarball = tmp / packed[0]["filename"]
    shipped = {f["path"] for f in packed[0]["files"]}
    assert {"dist/esm/index.js", "dist/esm/index.d.ts", "dist/cjs/index.js"} <= shipped
    assert not any(p.startswith("src/") for p in shipped)
    app = tmp / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "app", "private": True, "type": "module"}))
    versions = json.loads((TS / "package.json").read_text())["devDependencies"]
    peers = [f"{name}@{versions[name]}" for name in PEERS]
    await _run("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", str(tarball), *peers, cwd=app)
    shutil.copy(TS / "examples/quickstart.ts", app / "quickstart.ts")
    (app / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "target": "ES2022",
                    "module": "NodeNext",
                    "moduleResolution": "NodeNext",
                    "strict": True,
                    "skipLibCheck": False,
                    "typeRoots": [str(TS / "node_modules/@types")],
                    "types": ["node"],
                },
                "files": ["quickstart.ts"],
            }
        )
    )
    # Type-checks against the package's .d.ts, resolved by name through its "exports".
    await _run(str(TS / "node_modules/.bin/tsc"), "-p", "tsconfig.json", cwd=app)
    return app


async def test_node_client_calls_unary_stream_and_reads_error_details(
    project: Path, gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    out = await _run("node", "quickstart.js", gateway.address, cwd=project)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["id"].startswith("chatcmpl")
    assert result["content"]
    assert result["frames"] >= 1 and len(result["streamed"]) > 10
    assert result["code"] == "3"  # INVALID_ARGUMENT, from local validation
    assert result["reason"] == "VALIDATION_FAILED"
    assert result["badFields"] == ["temperature"]
    chat_calls = [r for r in clean_fake.requests if r.path == "/v1/chat/completions"]
    assert len(chat_calls) == 2 and chat_calls[1].json["stream"] is True


async def test_package_loads_with_require_too(project: Path) -> None:
    probe = (
        "const c = require('@openai-grpc/client'); const r = require('@openai-grpc/client/google/rpc');"
        "const names = ['StatusSchema','ErrorInfoSchema','BadRequestSchema','RetryInfoSchema',"
        "'QuotaFailureSchema','PreconditionFailureSchema','ResourceInfoSchema','RequestInfoSchema'];"
        "const missing = names.filter((n) => !r[n]);"
        "if (!c.ChatService || !c.serviceConfig.methodConfig.length || missing.length) "
        "{ console.error(missing); process.exit(1); }"
    )
    await _run("node", "--input-type=commonjs", "-e", probe, cwd=project)


RETRY_PROBE = """
import { createClient, ConnectError } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ChatService, ModelsService, serviceConfigInterceptor } from "@openai-grpc/client";
const transport = createGrpcTransport({
  baseUrl: `http://${process.argv[2]}`,
  interceptors: [serviceConfigInterceptor()],
});
const model = await createClient(ModelsService, transport).getModel({ model: "gpt-4o-mini" });
let code = "";
try {
  await createClient(ChatService, transport).createChatCompletion({ model: "gpt-4o-mini" });
} catch (err) {
  code = String(ConnectError.from(err).code);
}
console.log(JSON.stringify({ id: model.model?.id ?? "", code }));
"""


async def test_interceptor_applies_the_service_config(project: Path) -> None:
    """Connect reads no service config: the package's interceptor retries the read, not the create."""
    models, chat = FlakyModels(), UnavailableChat()  # type: ignore[abstract]  # only the RPCs under test
    server = grpc.aio.server()
    models_pb2_grpc.add_ModelsServiceServicer_to_server(models, server)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(chat, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        (project / "retry.mjs").write_text(RETRY_PROBE)
        out = await _run("node", "retry.mjs", f"127.0.0.1:{port}", cwd=project)
    finally:
        await server.stop(0)
    assert json.loads(out.strip().splitlines()[-1]) == {"id": "gpt-4o-mini", "code": "14"}  # UNAVAILABLE
    assert models.attempts == 2  # retried once on UNAVAILABLE
    assert chat.attempts == 1  # a create is never retried
