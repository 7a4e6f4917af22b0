"""Compile the protos in `protos/` into descriptor protos and index them.

The contract tests work on `FileDescriptorProto`s (not a live descriptor pool) so that they can
check a proto tree before any code is generated from it, and so that custom options
(`google.api.http`, `google.api.field_behavior`) decode through the extensions registered by
`googleapis-common-protos`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2
from openai_grpc.v1 import options_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
CONTRACT_DIR = PROTO_ROOT / "openai_grpc" / "v1"
PACKAGE = "openai_grpc.v1"
EXTRA_FIELD = "extra"
EXTRA_NUMBER = 1000
_PATH_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")

_WELL_KNOWN_JSON = {
    ".google.protobuf.Struct",
    ".google.protobuf.Value",
    ".google.protobuf.ListValue",
}


@dataclasses.dataclass(frozen=True)
class HttpRule:
    method: str
    path: str
    body: str


@dataclasses.dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    input_type: str
    output_type: str
    client_streaming: bool
    server_streaming: bool
    http: HttpRule | None
    comment: str

    @property
    def full_name(self) -> str:
        return f"{PACKAGE}.{self.service}/{self.name}"


def _http_rule(method: descriptor_pb2.MethodDescriptorProto) -> HttpRule | None:
    # googleapis-common-protos types its extensions as plain FieldDescriptors (hence the ignores).
    if not method.options.HasExtension(annotations_pb2.http):  # type: ignore[arg-type]
        return None
    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]  # type: ignore[index]
    kind = rule.WhichOneof("pattern")
    if kind is None or kind == "custom":
        return None
    return HttpRule(kind.upper(), getattr(rule, kind), rule.body)


class ProtoModel:
    """Index of messages and RPCs of a compiled proto tree."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = list(fds.file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.message_files: dict[str, str] = {}
        self.comments: dict[tuple[str, tuple[int, ...]], str] = {}
        self.rpcs: list[Rpc] = []
        for f in self.files:
            prefix = "." + f.package if f.package else ""
            for m in f.message_type:
                self._index_message(prefix, m, f.name)
            for loc in f.source_code_info.location:
                text = (loc.leading_comments or loc.trailing_comments).strip()
                if text:
                    self.comments[(f.name, tuple(loc.path))] = text
        for f in self.files:
            if f.package != PACKAGE:
                continue
            for si, svc in enumerate(f.service):
                for mi, meth in enumerate(svc.method):
                    self.rpcs.append(
                        Rpc(
                            service=svc.name,
                            name=meth.name,
                            input_type=meth.input_type,
                            output_type=meth.output_type,
                            client_streaming=meth.client_streaming,
                            server_streaming=meth.server_streaming,
                            http=_http_rule(meth),
                            comment=self.comments.get((f.name, (6, si, 2, mi)), ""),
                        )
                    )

    def _index_message(self, prefix: str, m: descriptor_pb2.DescriptorProto, file: str) -> None:
        name = f"{prefix}.{m.name}"
        self.messages[name] = m
        self.message_files[name] = file
        for nested in m.nested_type:
            self._index_message(name, nested, file)

    def contract_files(self) -> list[descriptor_pb2.FileDescriptorProto]:
        return [f for f in self.files if f.package == PACKAGE]


def field_behaviors(field: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])  # type: ignore[index]


def is_required(field: descriptor_pb2.FieldDescriptorProto) -> bool:
    return field_behavior_pb2.REQUIRED in field_behaviors(field)


def is_query(field: descriptor_pb2.FieldDescriptorProto) -> bool:
    """Marked `(openai_grpc.v1.query) = true`: a query parameter next to a JSON body."""
    return bool(field.options.Extensions[options_pb2.query])


def query_fields(model: ProtoModel, rpc: Rpc) -> dict[str, str]:
    """Field name -> query key of the fields the route table sends in the query string (as
    server/openai_grpc_server/routes.py does: without a body every non-path field, with one
    the fields marked `(openai_grpc.v1.query)`; lists as `name[]`, maps as `name[key]`, keyed
    here by `name`)."""
    assert rpc.http is not None
    in_path = set(_PATH_PARAM.findall(rpc.http.path))
    out = {}
    for f in model.messages[rpc.input_type].field:
        if f.name == EXTRA_FIELD or f.name in in_path or (rpc.http.body == "*" and not is_query(f)):
            continue
        entry = model.messages.get(f.type_name)
        is_map = entry is not None and entry.options.map_entry
        repeated = f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED and not is_map
        out[f.name] = f.name + "[]" if repeated else f.name
    return out


def is_json_value(type_name: str) -> bool:
    """Free-form JSON: Struct, Value or ListValue."""
    return type_name in _WELL_KNOWN_JSON


def is_list_wrapper(model: ProtoModel, type_name: str) -> bool:
    """A `...List` message with a single repeated field: encoded as a bare JSON array."""
    m = model.messages.get(type_name)
    return (
        m is not None
        and m.name.endswith("List")
        and len(m.field) == 1
        and m.field[0].label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    )


def contract_proto_files(directory: Path = CONTRACT_DIR) -> list[str]:
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in directory.glob("*.proto"))


def compile_protos(files: list[str] | None = None) -> descriptor_pb2.FileDescriptorSet:
    """Run protoc (from grpcio-tools) over `files` (paths relative to protos/)."""
    files = files or contract_proto_files()
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"protoc failed:\n{proc.stderr}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@functools.lru_cache(maxsize=1)
def load_model() -> ProtoModel:
    return ProtoModel(compile_protos())
