"""Server reflection, v1 and v1alpha, serves the contract with its documentation."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as pb

from tests.support.gateway import Gateway


async def _ask(
    gw: Gateway, service: str, *requests: pb.ServerReflectionRequest
) -> list[pb.ServerReflectionResponse]:
    call = gw.channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=pb.ServerReflectionRequest.SerializeToString,
        response_deserializer=pb.ServerReflectionResponse.FromString,
    )
    return [r async for r in call(iter(requests), timeout=10)]


def _files(resp: pb.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = {}
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
        out[fdp.name] = fdp
    return out


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_serves_the_protos_with_their_comments(gateway: Gateway, version: str) -> None:
    service = f"grpc.reflection.{version}.ServerReflection"
    listed, by_symbol, by_method, again, missing = await _ask(
        gateway,
        service,
        pb.ServerReflectionRequest(list_services=""),
        pb.ServerReflectionRequest(file_containing_symbol="openai_grpc.v1.ChatService"),
        pb.ServerReflectionRequest(file_containing_symbol="openai_grpc.v1.ModelsService.GetModel"),
        pb.ServerReflectionRequest(file_by_filename="openai_grpc/v1/chat.proto"),
        pb.ServerReflectionRequest(file_containing_symbol="openai_grpc.v1.NoSuchThing"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"openai_grpc.v1.ChatService", "grpc.health.v1.Health", service} <= names
    files = _files(by_symbol)
    chat = files["openai_grpc/v1/chat.proto"]
    # Its imports travel along, once per stream.
    assert {"openai_grpc/v1/common.proto", "google/api/annotations.proto"} <= set(files)
    comments = [loc.leading_comments for loc in chat.source_code_info.location if loc.leading_comments]
    assert len(comments) > 100
    # JSON names are OpenAI's (grpcurl prints `chat_completion`, not `chatCompletion`), nested
    # messages included.
    fields = [f for m in chat.message_type for f in [*m.field, *(g for n in m.nested_type for g in n.field)]]
    assert fields and all(f.json_name == f.name for f in fields)
    assert "openai_grpc/v1/models.proto" in _files(by_method)
    assert set(_files(again)) == {"openai_grpc/v1/chat.proto"}
    assert missing.error_response.error_code == 5  # NOT_FOUND


async def test_reflection_describes_itself_and_health(gateway: Gateway) -> None:
    [v1, health, ext] = await _ask(
        gateway,
        "grpc.reflection.v1.ServerReflection",
        pb.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        pb.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health.Check"),
        pb.ServerReflectionRequest(all_extension_numbers_of_type="google.protobuf.MethodOptions"),
    )
    fdp = _files(v1)["grpc/reflection/v1/reflection.proto"]
    method = fdp.service[0].method[0]
    assert fdp.package == "grpc.reflection.v1"
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert "grpc_health/v1/health.proto" in _files(health)
    assert 72295728 in ext.all_extension_numbers_response.extension_number  # google.api.http


async def test_error_detail_types_resolve_for_grpcurl(gateway: Gateway) -> None:
    """grpcurl decodes a failure's `Any` details through reflection: it looks the type up, then
    asks for its extensions, and gives up on any error, so a known type without extensions must
    answer an empty list (as grpc-go's server does), and only an unknown type NOT_FOUND."""
    found, numbers, unknown = await _ask(
        gateway,
        "grpc.reflection.v1.ServerReflection",
        pb.ServerReflectionRequest(file_containing_symbol="google.rpc.ErrorInfo"),
        pb.ServerReflectionRequest(all_extension_numbers_of_type="google.rpc.BadRequest"),
        pb.ServerReflectionRequest(all_extension_numbers_of_type="no.such.Type"),
    )
    assert "google/rpc/error_details.proto" in _files(found)
    assert numbers.WhichOneof("message_response") == "all_extension_numbers_response"
    assert list(numbers.all_extension_numbers_response.extension_number) == []
    assert unknown.error_response.error_code == 5  # NOT_FOUND
