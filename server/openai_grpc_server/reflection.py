"""Server reflection (grpc.reflection.v1 and v1alpha) that serves the contract as it is written.

grpcio-reflection re-serialises descriptors from Python's descriptor pool, which keeps no source
info, so `grpcurl describe` would print none of the contract's documentation; it also speaks only
v1alpha. This servicer answers from the FileDescriptorSet the stubs ship (`openai_grpc.binpb`,
generated with `--include_source_info`), and from the default pool for the few files outside it
(health, reflection itself). Both protocol versions share one wire format and one answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as pb

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)
CONTRACT_RESOURCE = ("openai_grpc.v1", "openai_grpc.binpb")

Request = pb.ServerReflectionRequest
Response = pb.ServerReflectionResponse


def contract_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The contract and every file it imports, with comments, as the stubs package ships them.

    The contract's JSON names are OpenAI's own (snake_case): its fields say so in `json_name`,
    so grpcurl prints `chat_completion`, as the README and OpenAI's JSON do, not protoc's
    default `chatCompletion` (grpcurl reads both spellings in requests either way)."""
    package, name = CONTRACT_RESOURCE
    data = resources.files(package).joinpath(name).read_bytes()
    files = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    for file in files:
        if file.package == package:
            for message in file.message_type:
                _snake_json_names(message)
    return files


def _snake_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.json_name = field.name
    for nested in message.nested_type:
        _snake_json_names(nested)


def _v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, derived from v1alpha: the messages are identical."""
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    fdp.name = "grpc/reflection/v1/reflection.proto"
    fdp.package = "grpc.reflection.v1"
    for msg in fdp.message_type:
        for field in msg.field:
            field.type_name = field.type_name.replace(old, new)
    for method in fdp.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    return fdp


class DescriptorIndex:
    """File name -> serialized FileDescriptorProto, and symbol / extension -> file name."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.deps: dict[str, list[str]] = {}
        self.symbols: dict[str, str] = {}
        self.extensions: dict[str, dict[int, str]] = {}

    def add(self, fdp: descriptor_pb2.FileDescriptorProto) -> None:
        if fdp.name in self.files:
            return
        self.files[fdp.name] = fdp.SerializeToString()
        self.deps[fdp.name] = list(fdp.dependency)
        prefix = f"{fdp.package}." if fdp.package else ""
        for msg in fdp.message_type:
            self._message(fdp.name, prefix, msg)
        for enum in fdp.enum_type:
            self._enum(fdp.name, prefix, enum)
        for ext in fdp.extension:
            self._extension(fdp.name, prefix, ext)
        for svc in fdp.service:
            self.symbols[prefix + svc.name] = fdp.name
            for method in svc.method:
                self.symbols[f"{prefix}{svc.name}.{method.name}"] = fdp.name

    def add_from_pool(self, file: FileDescriptor) -> None:
        """A file of the default pool (no source info there) and, first, what it imports."""
        for dep in file.dependencies:
            self.add_from_pool(dep)
        fdp = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(fdp)
        self.add(fdp)

    def _message(self, file: str, prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
        full = prefix + msg.name
        self.symbols[full] = file
        for field in msg.field:
            self.symbols[f"{full}.{field.name}"] = file
        for nested in msg.nested_type:
            self._message(file, f"{full}.", nested)
        for enum in msg.enum_type:
            self._enum(file, f"{full}.", enum)
        for ext in msg.extension:
            self._extension(file, f"{full}.", ext)

    def _enum(self, file: str, prefix: str, enum: descriptor_pb2.EnumDescriptorProto) -> None:
        self.symbols[prefix + enum.name] = file
        for value in enum.value:  # enum values are siblings of their enum in protobuf's scoping
            self.symbols[prefix + value.name] = file

    def _extension(self, file: str, prefix: str, ext: descriptor_pb2.FieldDescriptorProto) -> None:
        self.symbols[prefix + ext.name] = file
        self.extensions.setdefault(ext.extendee.lstrip("."), {})[ext.number] = file

    def closure(self, name: str, sent: set[str]) -> list[bytes]:
        """`name` and the files it imports, transitively, leaving out those already sent."""
        out: list[bytes] = []
        todo = [name]
        while todo:
            current = todo.pop()
            if current in sent or current not in self.files:
                continue
            sent.add(current)
            out.append(self.files[current])
            todo.extend(self.deps[current])
        return out


def build_index(extra_files: Iterable[FileDescriptor] = ()) -> DescriptorIndex:
    index = DescriptorIndex()
    for fdp in contract_files():
        index.add(fdp)
    index.add(_v1_reflection_file())
    for file in [pb.DESCRIPTOR, *extra_files]:
        index.add_from_pool(file)
    return index


class ReflectionServicer:
    def __init__(self, service_names: Iterable[str], index: DescriptorIndex) -> None:
        self._services = sorted({*service_names, *SERVICE_NAMES})
        self._index = index

    async def info(
        self, requests: AsyncIterator[Request], _context: grpc.aio.ServicerContext[Request, Response]
    ) -> AsyncIterator[Response]:
        sent: set[str] = set()  # each file travels once per stream; the client keeps it
        async for request in requests:
            yield self.answer(request, sent)

    def answer(self, request: Request, sent: set[str]) -> Response:
        kind = request.WhichOneof("message_request")
        index = self._index
        file: str | None = None
        if kind == "list_services":
            return Response(
                original_request=request,
                list_services_response=pb.ListServiceResponse(
                    service=[pb.ServiceResponse(name=s) for s in self._services]
                ),
            )
        if kind == "file_by_filename":
            file = request.file_by_filename if request.file_by_filename in index.files else None
        elif kind == "file_containing_symbol":
            file = index.symbols.get(request.file_containing_symbol)
        elif kind == "file_containing_extension":
            ext = request.file_containing_extension
            file = index.extensions.get(ext.containing_type, {}).get(ext.extension_number)
        elif kind == "all_extension_numbers_of_type":
            # A known message without extensions has none (an empty answer, as grpc-go's server
            # gives): NOT_FOUND here makes grpcurl give up decoding `Any` error details.
            known = request.all_extension_numbers_of_type in index.symbols
            numbers = index.extensions.get(request.all_extension_numbers_of_type, {} if known else None)
            if numbers is not None:
                return Response(
                    original_request=request,
                    all_extension_numbers_response=pb.ExtensionNumberResponse(
                        base_type_name=request.all_extension_numbers_of_type, extension_number=sorted(numbers)
                    ),
                )
        else:
            return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "unknown reflection request")
        if file is None:
            return _error(request, grpc.StatusCode.NOT_FOUND, f"{kind} not found")
        # A file asked for again (another describe on this stream) is sent again, alone.
        protos = index.closure(file, sent) or [index.files[file]]
        return Response(
            original_request=request,
            file_descriptor_response=pb.FileDescriptorResponse(file_descriptor_proto=protos),
        )


def _error(request: Request, code: grpc.StatusCode, message: str) -> Response:
    value: int = code.value[0]
    return Response(
        original_request=request, error_response=pb.ErrorResponse(error_code=value, error_message=message)
    )


def add_to_server(
    server: grpc.aio.Server, service_names: Iterable[str], extra_files: Iterable[FileDescriptor] = ()
) -> None:
    """Serves reflection v1 and v1alpha for `service_names` (and reflection itself)."""
    servicer = ReflectionServicer(service_names, build_index(extra_files))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.info,
        request_deserializer=Request.FromString,
        response_serializer=Response.SerializeToString,
    )
    methods = {"ServerReflectionInfo": handler}
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, methods) for name in SERVICE_NAMES]
    )
