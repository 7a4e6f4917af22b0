"""The contract covers OpenAI's surface exactly, follows the style rules, and its stubs are in sync."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from openai_grpc_server import routes

from tests.support import fidelity, specmodel
from tests.support.protomodel import EXTRA_FIELD, EXTRA_NUMBER, ROOT, load_model, query_fields

VENV_BIN = Path(sys.executable).parent


def test_every_listed_endpoint_is_served_by_an_rpc() -> None:
    model = load_model()
    bound = {(r.http.method, r.http.path) for r in model.rpcs if r.http}
    missing = [f"{e.method} {e.path}" for e in specmodel.load_endpoints() if (e.method, e.path) not in bound]
    assert not missing, f"endpoints without an RPC: {missing}"
    assert len(specmodel.load_endpoints()) == 92


def test_every_annotated_route_exists_in_openapi() -> None:
    paths = specmodel.load_spec()["paths"]
    wrong = [
        f"{r.service}/{r.name}: {r.http.method} {r.http.path}"
        for r in load_model().rpcs
        if r.http and r.http.method.lower() not in paths.get(r.http.path, {})
    ]
    assert not wrong, wrong


def test_every_rpc_has_an_http_rule() -> None:
    assert all(r.http is not None for r in load_model().rpcs)


def test_required_names_callers_rely_on() -> None:
    rpcs = {(r.service, r.name) for r in load_model().rpcs}
    expected = {
        "ModelsService": ["ListModels", "GetModel", "DeleteModel"],
        "ChatService": ["CreateChatCompletion", "StreamChatCompletion"],
        "EmbeddingsService": ["CreateEmbedding"],
        "FilesService": ["UploadFile", "ListFiles", "GetFile", "DeleteFile", "DownloadFileContent"],
        "BatchesService": ["CreateBatch", "GetBatch", "CancelBatch", "ListBatches"],
        "ModerationsService": ["CreateModeration"],
    }
    for service, names in expected.items():
        for name in names:
            assert (service, name) in rpcs, f"{service}/{name}"
    services = {s for s, _ in rpcs}
    for svc in (
        "ImagesService",
        "AudioService",
        "FineTuningService",
        "AssistantsService",
        "ThreadsService",
        "VectorStoresService",
        "ResponsesService",
        "ConversationsService",
        "UploadsService",
        "CompletionsService",
    ):
        assert svc in services


def test_streaming_endpoints_have_a_server_streaming_twin() -> None:
    model = load_model()
    by_route: dict[tuple[str, str], list[str]] = {}
    for r in model.rpcs:
        assert r.http is not None
        by_route.setdefault((r.http.method, r.http.path), []).append(r.name)
        if r.server_streaming:
            out = model.messages[r.output_type]
            assert [f.name for f in out.field] in (["events"], ["chunk"]), r.name
    for path in (
        "/chat/completions",
        "/responses",
        "/threads/runs",
        "/threads/{thread_id}/runs",
        "/threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
        "/completions",
    ):
        names = by_route[("POST", path)]
        assert any(n.startswith("Stream") for n in names) and any(
            n.startswith(("Create", "Submit")) for n in names
        ), (path, names)


def test_uploads_are_client_streams_with_metadata_first() -> None:
    model = load_model()
    uploads = [r for r in model.rpcs if r.client_streaming]
    assert {r.name for r in uploads} >= {
        "UploadFile",
        "CreateImageEdit",
        "CreateImageVariation",
        "CreateTranscription",
        "CreateTranslation",
        "AddUploadPart",
    }
    for r in uploads:
        req = model.messages[r.input_type]
        assert [f.name for f in req.field][:2] == ["metadata", "chunk"], r.name


def test_every_object_message_carries_extra() -> None:
    model = load_model()
    missing = []
    for f in model.contract_files():
        for m in f.message_type:
            names = {x.name for x in m.field}
            is_wrapper = m.name.endswith("List") and len(m.field) == 1
            is_envelope = m.name.endswith("Response") and len(m.field) == 1
            is_stream_frame = m.name.endswith("Request") and "payload" in {o.name for o in m.oneof_decl}
            if is_wrapper or is_envelope or is_stream_frame or m.name in ("FileChunk", "BinaryChunk"):
                continue
            extra = [x for x in m.field if x.name == EXTRA_FIELD]
            if not extra or extra[0].number != EXTRA_NUMBER:
                missing.append(m.name)
            assert "extra" in names or m.name in missing
    assert not missing, f"messages without `google.protobuf.Struct extra = 1000`: {missing}"


def test_schema_fidelity(capsys: pytest.CaptureFixture[str]) -> None:
    reports = fidelity.run()
    with capsys.disabled():
        print()
        fidelity.summarize(reports)
    seed = [r for r in reports if r.tier == "seed"]
    assert seed, "no seed RPC was checked"
    bad = [f"{r.rpc.name}: {f}" for r in seed for f in r.findings]
    assert not bad, "\n".join(bad)
    matched = sum(r.matched for r in seed)
    expected = sum(r.expected for r in seed)
    assert expected > 2000 and matched == expected


def test_buf_lint_and_format() -> None:
    buf = str(VENV_BIN / "buf")
    lint = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [buf, "format", "--exit-code", "-d", "--path", "protos/openai_grpc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_generated_stubs_are_reproducible(tmp_path: Path) -> None:
    """Regenerating from the protos in a clean copy of the tree changes nothing."""
    if not (ROOT / "client_stubs/typescript/node_modules/.bin/protoc-gen-es").exists():
        pytest.fail("run `npm ci` in client_stubs/typescript first (the test command does)")
    copy = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules"
        ),
    )
    os.symlink(ROOT / "client_stubs/typescript/node_modules", copy / "client_stubs/typescript/node_modules")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/gen_stubs.sh"], cwd=copy, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    diff = subprocess.run(
        [
            "diff",
            "-r",
            "-q",
            "-x",
            "node_modules",
            "-x",
            "__pycache__",
            str(ROOT / "client_stubs"),
            str(copy / "client_stubs"),
        ],
        capture_output=True,
        text=True,
    )
    assert diff.returncode == 0, f"stubs differ from the protos; run scripts/gen_stubs.sh\n{diff.stdout}"


def test_typescript_stubs_typecheck() -> None:
    ts = ROOT / "client_stubs/typescript"
    tsc = ts / "node_modules/.bin/tsc"
    assert tsc.exists(), "run `npm ci` in client_stubs/typescript first (the test command does)"
    proc = subprocess.run(
        [str(tsc), "-p", "tsconfig.json", "--noEmit"], cwd=ts, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tests_read_only_the_vendored_spec() -> None:
    assert specmodel.OPENAPI.is_relative_to(ROOT / "spec")
    assert (ROOT / "spec/LICENSE").exists()


def test_query_fields_are_the_spec_query_parameters() -> None:
    """Query versus body comes from the spec's `in: query`: every query parameter is a field the
    route table sends in the query string, under the key the official SDK uses, and nothing else is."""
    model = load_model()
    paths = specmodel.load_spec()["paths"]
    wrong = []
    for rpc in model.rpcs:
        assert rpc.http is not None
        path_item = paths[rpc.http.path]
        op = path_item[rpc.http.method.lower()]
        spec = {
            specmodel.field_name(n): specmodel.query_wire_name(p)
            for n, p in specmodel.parameters(op, path_item).items()
            if p.get("in") == "query"
            and specmodel.field_name(n) not in model.messages[rpc.input_type].reserved_name
        }
        if rpc.client_streaming:
            if spec:
                wrong.append(f"{rpc.name}: an upload with query parameters {sorted(spec)}")
            continue
        ours = query_fields(model, rpc)
        if ours != spec:
            wrong.append(f"{rpc.name}: query {ours} but the spec has {spec}")
    assert not wrong, "\n".join(wrong)


def test_stream_options_are_asked_for_only_where_the_spec_has_them() -> None:
    """The gateway adds `stream_options.include_usage` where the contract has that option; the
    spec must have it on exactly those endpoints (Chat and Completions, not Responses)."""
    checked = 0
    for route in routes.load_routes():
        if route.kind is not routes.Kind.EVENTS:
            continue
        body = specmodel.request_body_schema(
            specmodel.operation(route.http_method, route.path_template), "application/json"
        )
        shape = specmodel.object_shape(body) if body else None
        options = shape[0].get("stream_options") if shape else None
        option_shape = specmodel.object_shape(options) if options else None
        spec_has = option_shape is not None and "include_usage" in option_shape[0]
        assert route.behaviour.stream_usage == spec_has, route.full_method
        checked += spec_has
    assert checked == 2  # StreamChatCompletion, StreamCompletion
