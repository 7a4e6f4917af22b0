"""The TypeScript stubs as an npm package: `npm pack`, installed into a fresh project with its peers
from the npm registry, imported by name (ESM with .d.ts, and CommonJS) by a real Node client."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from openai_grpc_server.fake_upstream import FakeUpstream

from tests.contract.protomodel import ROOT
from tests.integration.conftest import Gateway

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
