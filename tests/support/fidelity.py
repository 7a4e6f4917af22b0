"""Schema fidelity: do the proto messages carry exactly the properties the OpenAPI spec documents?

For every RPC bound to an endpoint (via `google.api.http`) the request message is compared with
the endpoint's path and query parameters plus its request body schema, and the response message
(or, for a server stream, the element type of its `events`) with the 200 response schema. The
comparison recurses into every typed sub-message; `Struct`/`Value` are free-form leaves.

Rules checked (see protos/STYLE.md):
- every spec property has a field (or a `oneof` of that name, for JSON unions), unless the
  message lists it as `reserved "name";` with a comment saying why (a deliberate omission);
- no field is invented (`extra` excepted);
- scalar presence: a property that is required and not nullable carries
  `[(google.api.field_behavior) = REQUIRED]`; every other scalar is proto3 `optional`.

Run `python -m tests.contract.fidelity [DOMAIN ...]` for a per-RPC report.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable

from google.protobuf import descriptor_pb2

from tests.support import specmodel
from tests.support.protomodel import (
    EXTRA_FIELD,
    ProtoModel,
    Rpc,
    is_json_value,
    is_list_wrapper,
    is_required,
    load_model,
)
from tests.support.specmodel import Schema

FDP = descriptor_pb2.FieldDescriptorProto
SCALAR_TYPES = set(range(1, 19)) - {FDP.TYPE_MESSAGE, FDP.TYPE_GROUP}


@dataclasses.dataclass
class Report:
    rpc: Rpc
    tier: str
    matched: int = 0
    expected: int = 0
    findings: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def ratio(self) -> float:
        return 1.0 if self.expected == 0 else self.matched / self.expected


def _json_names(m: descriptor_pb2.DescriptorProto) -> dict[str, list[FDP]]:
    """JSON key -> proto fields carrying it (a real oneof contributes its own name)."""
    out: dict[str, list[FDP]] = {}
    for f in m.field:
        if f.name == EXTRA_FIELD:
            continue
        if f.HasField("oneof_index") and not f.proto3_optional:
            out.setdefault(m.oneof_decl[f.oneof_index].name, []).append(f)
        else:
            out.setdefault(_json_key(f), []).append(f)
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _json_key(f: FDP) -> str:
    """An explicit `json_name` names the JSON key; else the field name."""
    return f.json_name if f.json_name and f.json_name != _camel(f.name) else f.name


def _is_map(model: ProtoModel, f: FDP) -> bool:
    m = model.messages.get(f.type_name)
    return m is not None and m.options.map_entry


class Checker:
    def __init__(self, model: ProtoModel, report: Report) -> None:
        self.model = model
        self.report = report
        self.seen: set[tuple[str, frozenset[str], frozenset[str]]] = set()

    def message(
        self,
        type_name: str,
        props: dict[str, Schema],
        required: set[str],
        where: str,
        *,
        skip: Iterable[str] = (),
    ) -> None:
        key = (type_name, frozenset(props), frozenset(required))
        if key in self.seen:
            return
        self.seen.add(key)
        m = self.model.messages[type_name]
        names = _json_names(m)
        reserved = set(m.reserved_name)
        skip = set(skip)
        for prop in props:
            if prop in skip:
                continue
            self.report.expected += 1
            if prop in names or prop in reserved:
                self.report.matched += 1
            else:
                self.report.findings.append(f"{where}: missing field for spec property '{prop}'")
        for name, fields in names.items():
            if name not in props:
                self.report.findings.append(f"{where}: field '{name}' is not in the spec")
                continue
            self._presence(m, name, fields, props[name], name in required, where)
            for f in fields:
                self._recurse(f, props[name], f"{where}.{name}")

    def _presence(
        self,
        m: descriptor_pb2.DescriptorProto,
        name: str,
        fields: list[FDP],
        schema: Schema,
        required: bool,
        where: str,
    ) -> None:
        if len(fields) != 1:
            return  # a JSON union (oneof): presence is the oneof's
        f = fields[0]
        if f.label == FDP.LABEL_REPEATED or f.type not in SCALAR_TYPES:
            return
        must_require = required and not specmodel.is_nullable(schema)
        if must_require and not is_required(f):
            self.report.findings.append(
                f"{where}.{name}: required by the spec: mark it (google.api.field_behavior) = REQUIRED"
            )
        elif not must_require and not f.proto3_optional:
            self.report.findings.append(
                f"{where}.{name}: optional or nullable in the spec: declare it proto3 `optional`"
            )

    def _recurse(self, f: FDP, schema: Schema, where: str) -> None:
        """Check a field's message type against the property's schema (arrays by their items)."""
        if f.type != FDP.TYPE_MESSAGE or is_json_value(f.type_name) or _is_map(self.model, f):
            return
        if f.label == FDP.LABEL_REPEATED and not is_list_wrapper(self.model, f.type_name):
            items = specmodel.item_schemas(schema)
            if not items:
                self.report.findings.append(f"{where}: repeated in the proto, not an array in the spec")
                return
            schema, where = {"anyOf": items}, where + "[]"
        self._recurse_into(f, schema, where)

    def _recurse_into(self, f: FDP, schema: Schema, where: str) -> None:
        if f.type != FDP.TYPE_MESSAGE or is_json_value(f.type_name) or _is_map(self.model, f):
            return
        if is_list_wrapper(self.model, f.type_name):
            # `...List` wrappers are bare arrays: their element is checked against the items.
            inner = self.model.messages[f.type_name].field[0]
            items = specmodel.item_schemas(schema)
            self._recurse_into(inner, {"anyOf": items} if items else schema, where + "[]")
            return
        shape = specmodel.object_shape(schema)
        if shape is None:
            self.report.findings.append(f"{where}: a message in the proto, but no object in the spec")
            return
        self.message(f.type_name, shape[0], shape[1], where)


def envelope_field(model: ProtoModel, type_name: str) -> FDP | None:
    """The one resource field of an envelope response, or None (see protos/STYLE.md)."""
    m = model.messages[type_name]
    if len(m.field) != 1:
        return None
    f = m.field[0]
    if f.label == FDP.LABEL_REPEATED or f.type != FDP.TYPE_MESSAGE or is_json_value(f.type_name):
        return None
    return f


def _request_shape(rpc: Rpc, op: Schema, path_item: Schema) -> tuple[dict[str, Schema], set[str], str | None]:
    params = {specmodel.field_name(n): p for n, p in specmodel.parameters(op, path_item).items()}
    props: dict[str, Schema] = {n: p.get("schema", {}) for n, p in params.items()}
    required = {n for n, p in params.items() if p.get("required") or p.get("in") == "path"}
    content_type = None
    body_ct = "multipart/form-data" if rpc.client_streaming else "application/json"
    body = specmodel.request_body_schema(op, body_ct)
    if body is None and not rpc.client_streaming:
        body = specmodel.request_body_schema(op, "multipart/form-data")
        content_type = "multipart/form-data" if body is not None else None
    else:
        content_type = body_ct if body is not None else None
    if body is not None:
        shape = specmodel.object_shape(body)
        if shape:
            props.update(shape[0])
            required |= shape[1]
    return props, required, content_type


def check_rpc(model: ProtoModel, rpc: Rpc, tier: str) -> Report:
    report = Report(rpc, tier)
    assert rpc.http is not None
    path_item = specmodel.load_spec()["paths"].get(rpc.http.path)
    if path_item is None or rpc.http.method.lower() not in path_item:
        report.findings.append(f"{rpc.http.method} {rpc.http.path} is not in openapi.yaml")
        return report
    op = path_item[rpc.http.method.lower()]
    checker = Checker(model, report)
    props, required, _ = _request_shape(rpc, op, path_item)
    req_type = rpc.input_type
    skip: set[str] = set()
    if rpc.client_streaming:
        # First message: metadata; then file chunks carrying the binary properties.
        req = model.messages[req_type]
        meta = [f for f in req.field if f.name == "metadata" and f.type == FDP.TYPE_MESSAGE]
        if not meta:
            report.findings.append(f"{req.name}: a client stream needs a `metadata` message field")
            return report
        req_type = meta[0].type_name
        skip = {n for n, s in props.items() if specmodel.is_binary(s)}
    checker.message(req_type, props, required, model.messages[req_type].name, skip=skip)

    out = model.messages[rpc.output_type]
    types = specmodel.response_content_types(op)
    if rpc.server_streaming:
        events = specmodel.response_schema(op, "text/event-stream")
        ev_fields = [f for f in out.field if f.name == "events"]
        if events is not None and ev_fields:
            checker._recurse(ev_fields[0], {"type": "array", "items": events}, f"{out.name}.events")
        elif ev_fields:
            report.notes.append("the spec has no text/event-stream schema: events not checked")
        else:
            report.notes.append("binary stream: not compared")
        return report
    schema = specmodel.response_schema(op, "application/json")
    if schema is None:
        report.notes.append(f"response is {types or 'empty'}: not compared")
        return report
    shape = specmodel.object_shape(schema)
    if shape is None:
        report.notes.append("response is not an object: not compared")
        return report
    envelope = envelope_field(model, rpc.output_type)
    if envelope is not None:
        checker._recurse_into(envelope, schema, f"{out.name}.{envelope.name}")
    else:
        checker.message(rpc.output_type, shape[0], shape[1], out.name)
    return report


def run(domains: set[str] | None = None) -> list[Report]:
    model = load_model()
    tiers = {(e.method, e.path): e.tier for e in specmodel.load_endpoints()}
    domain_of = {(e.method, e.path): e.domain for e in specmodel.load_endpoints()}
    reports = []
    for rpc in model.rpcs:
        if rpc.http is None:
            continue
        key = (rpc.http.method, rpc.http.path)
        if domains and domain_of.get(key) not in domains:
            continue
        reports.append(check_rpc(model, rpc, tiers.get(key, "extra")))
    return reports


def summarize(reports: list[Report], out: object = sys.stdout) -> None:
    for tier in ("seed", "beyond", "extra"):
        rs = [r for r in reports if r.tier == tier]
        if not rs:
            continue
        matched = sum(r.matched for r in rs)
        expected = sum(r.expected for r in rs)
        pct = 100.0 * matched / expected if expected else 100.0
        bad = sum(1 for r in rs if not r.ok)
        print(
            f"{tier}: {len(rs)} RPCs, {matched}/{expected} spec properties ({pct:.1f}%), "
            f"{bad} RPCs with findings",
            file=out,
        )  # type: ignore[call-overload]


def main(argv: list[str]) -> int:
    reports = run(set(argv) or None)
    for r in reports:
        assert r.rpc.http is not None
        status = "OK " if r.ok else "BAD"
        print(
            f"{status} {r.tier:6} {r.rpc.http.method:6} {r.rpc.http.path:60} "
            f"{r.rpc.service}/{r.rpc.name} {r.matched}/{r.expected}"
        )
        for f in r.findings:
            print(f"      - {f}")
        for n in r.notes:
            print(f"      . {n}")
    summarize(reports)
    return 0 if all(r.ok for r in reports if r.tier == "seed") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
