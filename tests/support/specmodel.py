"""Read the vendored OpenAI OpenAPI contract (`spec/openapi.yaml`) and answer shape questions.

Only the vendored copy is read: a user's clone has no `../shared`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = ROOT / "spec"
OPENAPI = SPEC_DIR / "openapi.yaml"
ENDPOINTS = SPEC_DIR / "endpoints.tsv"

Schema = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    tier: str
    method: str
    path: str
    domain: str


_source = OPENAPI


def use_spec(path: Path) -> None:
    """Read another OpenAPI document from now on (scripts/spec_drift.py compares a newer one)."""
    global _source  # noqa: PLW0603
    _source = path
    load_spec.cache_clear()


@functools.lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with _source.open("rb") as fh:
        spec: dict[str, Any] = yaml.load(fh, Loader=loader)
    for name, schema in spec["components"]["schemas"].items():
        if isinstance(schema, dict) and schema.get("$recursiveAnchor"):
            _bind_recursive_refs(schema, f"#/components/schemas/{name}")
    return spec


def _bind_recursive_refs(node: Any, target: str) -> None:
    """`$recursiveRef: "#"` inside an anchored schema points back at that schema."""
    if isinstance(node, dict):
        if node.get("$recursiveRef") == "#":
            del node["$recursiveRef"]
            node["$ref"] = target
        for v in node.values():
            _bind_recursive_refs(v, target)
    elif isinstance(node, list):
        for v in node:
            _bind_recursive_refs(v, target)


def load_endpoints() -> list[Endpoint]:
    rows: list[Endpoint] = []
    with ENDPOINTS.open() as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if not row or row[0].startswith("#"):
                continue
            rows.append(Endpoint(*row))
    return rows


def deref(schema: Schema) -> Schema:
    spec = load_spec()
    seen = 0
    while "$ref" in schema and seen < 50:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part]
        # Sibling keys next to $ref (description, nullable) stay visible.
        merged = {k: v for k, v in schema.items() if k != "$ref"}
        merged.update(target)
        schema = merged
        seen += 1
    return schema


def operation(method: str, path: str) -> Schema:
    op: Schema = load_spec()["paths"][path][method.lower()]
    return op


def _variants(schema: Schema) -> list[Schema]:
    return [deref(s) for key in ("anyOf", "oneOf") for s in schema.get(key, [])]


def is_nullable(schema: Schema) -> bool:
    schema = deref(schema)
    if schema.get("nullable") is True:
        return True
    t = schema.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    if any(is_nullable(v) for v in _variants(schema)):
        return True
    return any(is_nullable(s) for s in schema.get("allOf", []))


def object_shape(schema: Schema) -> tuple[dict[str, Schema], set[str]] | None:
    """Properties and always-required names of an object schema, across allOf/anyOf/oneOf.

    Variants of a union are merged (their properties united, required names intersected), as
    the protos merge the variants of a discriminated union into one message.
    """
    schema = deref(schema)
    props: dict[str, Schema] = {}
    required: set[str] = set()
    found = False
    if isinstance(schema.get("properties"), dict):
        props.update(schema["properties"])
        required |= set(schema.get("required", []))
        found = True
    for part in schema.get("allOf", []):
        sub = object_shape(part)
        if sub is not None:
            props.update({k: v for k, v in sub[0].items() if k not in props})
            required |= sub[1]
            found = True
    variant_shapes = [s for s in (object_shape(v) for v in _variants(schema)) if s is not None]
    if variant_shapes:
        merged: dict[str, list[Schema]] = {}
        for vp, _ in variant_shapes:
            for k, v in vp.items():
                merged.setdefault(k, []).append(v)
        for k, schemas in merged.items():
            if k not in props:
                # A property several variants define (perhaps with different types) is a union.
                props[k] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        common = set.intersection(*(r for _, r in variant_shapes))
        required |= (
            common
            if len(variant_shapes)
            == len([v for v in _variants(schema) if not _is_null_type(v) and not _is_non_object(v)])
            else set()
        )
        found = True
    if not found:
        return None
    return props, required


def _is_non_object(schema: Schema) -> bool:
    """A scalar or array variant (`"auto"`, a bare id, a list): another member of the oneof,
    so it does not make the object member's required properties optional."""
    schema = deref(schema)
    if schema.get("type") in ("string", "integer", "number", "boolean", "array"):
        return True
    variants = _variants(schema)
    return (
        bool(variants)
        and "properties" not in schema
        and all(_is_non_object(v) or _is_null_type(v) for v in variants)
    )


def _is_null_type(schema: Schema) -> bool:
    return deref(schema).get("type") == "null"


def item_schemas(schema: Schema) -> list[Schema]:
    """Element schemas of an array schema or of the array variants of a union."""
    schema = deref(schema)
    out: list[Schema] = []
    if "items" in schema:
        out.append(deref(schema["items"]))
    for v in _variants(schema):
        out.extend(item_schemas(v))
    for part in schema.get("allOf", []):
        out.extend(item_schemas(part))
    return out


def request_body_schema(op: Schema, content_type: str) -> Schema | None:
    body = op.get("requestBody")
    if not body:
        return None
    content = deref(body).get("content", {})
    entry = content.get(content_type)
    return deref(entry["schema"]) if entry and "schema" in entry else None


def response_schema(op: Schema, content_type: str) -> Schema | None:
    for code in ("200", "201"):
        resp = op.get("responses", {}).get(code)
        if resp is None:
            continue
        content = deref(resp).get("content", {})
        entry = content.get(content_type)
        if entry and "schema" in entry:
            return deref(entry["schema"])
    return None


def response_content_types(op: Schema) -> list[str]:
    for code in ("200", "201"):
        resp = op.get("responses", {}).get(code)
        if resp is not None:
            return list(deref(resp).get("content", {}).keys())
    return []


def parameters(op: Schema, path_item: Schema | None = None) -> dict[str, Schema]:
    """Path and query parameters by name (operation-level wins over path-level)."""
    out: dict[str, Schema] = {}
    for source in ((path_item or {}).get("parameters", []), op.get("parameters", [])):
        for raw in source:
            p = deref(raw)
            if p.get("in") in ("path", "query"):
                out[p["name"]] = p
    return out


def field_name(param: str) -> str:
    """The proto field of a parameter: the spec names some query arrays `include[]`, others
    `include`; both are the field `include` (sent as `include[]`, see `query_wire_name`)."""
    return param.removesuffix("[]")


def query_wire_name(param: Schema) -> str:
    """The key a query parameter is sent under, as OpenAI's SDKs write it: arrays as `name[]`
    (whatever the declared style), everything else under its name."""
    name: str = param["name"]
    if deref(param.get("schema", {})).get("type") == "array" and not name.endswith("[]"):
        return name + "[]"
    return name


def path_parameters(op: Schema) -> set[str]:
    return {n for n, p in parameters(op).items() if p.get("in") == "path"}


def is_binary(schema: Schema) -> bool:
    schema = deref(schema)
    if schema.get("format") == "binary" or schema.get("contentEncoding") == "binary":
        return True
    return any(is_binary(s) for s in item_schemas(schema)) or any(is_binary(v) for v in _variants(schema))
