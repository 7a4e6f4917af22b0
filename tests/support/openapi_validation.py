"""Validate recorded upstream requests against `spec/openapi.yaml` with openapi-core.

The vendored spec is OpenAPI 3.1 but still writes OpenAPI 3.0's `nullable: true`, which 3.1
validators ignore (so a `null` fails `type: string`). `validating_spec()` rewrites those
schemas (and mapping-less discriminators) on a copy when loading; the vendored file is never
edited.

Multipart bodies: openapi-core checks parameters and security; the form itself is read back
into the JSON object its schema describes (text fields typed by the schema, files as a
placeholder: their bytes are not the spec's business) and validated with jsonschema.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from openai_grpc_server.fake_upstream import RecordedRequest
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.request.validators import (
    V31RequestParametersValidator,
    V31RequestSecurityValidator,
)
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.support import specmodel

HOST = "https://api.openai.com"


def fix_for_validation(spec: dict[str, Any]) -> dict[str, Any]:
    """The vendored spec's 3.0-isms, rewritten (in place) so a 3.1 validator reads it as meant.

    - `nullable: true` admits null (see `fix_nullable`); on parameters it is dropped (a query
      value is never null, and openapi-core's parameter styles need a single `type`);
    - `discriminator`s have no `mapping`, so a validator looks for schemas named after the
      values (`#/components/schemas/developer`), which do not exist: they are dropped, the
      `oneOf`/`anyOf` they annotate still decides;
    - `oneOf` becomes `anyOf`: without the discriminator OpenAI's unions overlap (an easy input
      message is also an `Item`), and "exactly one" would reject every such value;
    - `type: string, format: binary` (3.0's file) becomes 3.1's untyped
      `contentMediaType: application/octet-stream`, as the 3.1 migration guide says: a file
      part is bytes, not a string.
    """
    for path_item in spec["paths"].values():
        for op in path_item.values():
            for param in op.get("parameters", []) if isinstance(op, dict) else []:
                _drop_key(param, "nullable")
    _drop_key(spec, "discriminator")
    _rename_key(spec, "oneOf", "anyOf")
    _binary_to_media(spec)
    fixed: dict[str, Any] = fix_nullable(spec)
    return fixed


def _binary_to_media(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("format") == "binary" and node.get("type") == "string":
            del node["type"], node["format"]
            node["contentMediaType"] = "application/octet-stream"
        for value in node.values():
            _binary_to_media(value)
    elif isinstance(node, list):
        for item in node:
            _binary_to_media(item)


def _rename_key(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        if old in node and new not in node:
            node[new] = node.pop(old)
        for value in node.values():
            _rename_key(value, old, new)
    elif isinstance(node, list):
        for item in node:
            _rename_key(item, old, new)


def _drop_key(node: Any, key: str) -> None:
    if isinstance(node, dict):
        node.pop(key, None)
        for value in node.values():
            _drop_key(value, key)
    elif isinstance(node, list):
        for item in node:
            _drop_key(item, key)


def fix_nullable(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` -> a 3.1 schema that admits null (in place)."""
    if isinstance(node, list):
        for item in node:
            fix_nullable(item)
        return node
    if not isinstance(node, dict):
        return node
    for value in node.values():
        fix_nullable(value)
    if node.pop("nullable", None) is True:
        t = node.get("type")
        if isinstance(t, str):
            node["type"] = [t, "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
        elif isinstance(t, list):
            if "null" not in t:
                t.append("null")
        else:
            # No `type` ($ref, allOf, anyOf...): the whole schema or null.
            inner = {k: node.pop(k) for k in list(node) if k not in ("description", "title", "default")}
            node["anyOf"] = [inner, {"type": "null"}]
    return node


@functools.lru_cache(maxsize=1)
def fixed_spec() -> dict[str, Any]:
    return fix_for_validation(copy.deepcopy(specmodel.load_spec()))


@functools.lru_cache(maxsize=1)
def validating_spec() -> OpenAPI:
    """Built once per session: the spec copy with the fixes, no spec self-validation."""
    return OpenAPI.from_dict(fixed_spec(), config=Config(spec_validator_cls=None))


@functools.lru_cache(maxsize=1)
def _parts_validators() -> tuple[V31RequestParametersValidator, V31RequestSecurityValidator]:
    spec = validating_spec().spec
    return V31RequestParametersValidator(spec), V31RequestSecurityValidator(spec)


def _types(schema: Any) -> set[str]:
    schema = _deref(schema)
    t = schema.get("type")
    out = set(t) if isinstance(t, list) else {t} if isinstance(t, str) else set()
    for key in ("anyOf", "allOf"):
        for sub in schema.get(key, []):
            out |= _types(sub)
    return out


def _deref(schema: Any) -> dict[str, Any]:
    while isinstance(schema, dict) and "$ref" in schema:
        target: Any = fixed_spec()
        for part in schema["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        schema = target
    return schema if isinstance(schema, dict) else {}


def _scalar(value: str, schema: Any) -> Any:
    """A form value as the JSON value the schema wants (forms carry only text)."""
    types = _types(schema)
    if "string" in types or not types:
        return value
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    for kind in ("integer", "number"):
        if kind in types:
            try:
                number = float(value)
            except ValueError:
                break
            return int(number) if number.is_integer() else number
    return value


def form_as_json(record: RecordedRequest, schema: Any) -> dict[str, Any]:
    """The multipart fields as the JSON object the form schema describes: `name[]` items as a
    list, `name[key]` as an object, numbers and booleans parsed, files as a placeholder."""
    props = (_deref(schema)).get("properties", {})
    out: dict[str, Any] = {}
    for part in record.multipart or ():
        name = part.name or ""
        value = part.value or ""
        if name.endswith("[]"):
            key = name[:-2]
            items = _deref(props.get(key, {})).get("items", {})
            out.setdefault(key, []).append("<file>" if part.filename is not None else _scalar(value, items))
        elif part.filename is not None:
            out[name] = "<file>"
        elif "[" in name and name.endswith("]"):
            key, _, sub = name[:-1].partition("[")
            sub_props = _deref(props.get(key, {})).get("properties", {})
            out.setdefault(key, {})[sub] = _scalar(value, sub_props.get(sub, {}))
        else:
            out[name] = _scalar(value, props.get(name, {}))
    return out


def _form_violations(record: RecordedRequest, request: _Request) -> list[str]:
    params, security = _parts_validators()
    errors = [_describe(e) for e in (*params.iter_errors(request), *security.iter_errors(request))]
    assert record.route is not None
    method, template = record.route.split(" ", 1)
    body = fixed_spec()["paths"][template][method.lower()]["requestBody"]
    schema = _deref(body)["content"]["multipart/form-data"]["schema"]
    pointer = "#/paths/" + template.replace("~", "~0").replace("/", "~1")
    pointer += f"/{method.lower()}/requestBody/content/multipart~1form-data/schema"
    if "$ref" in body:
        pointer = body["$ref"] + "/content/multipart~1form-data/schema"
    validator = _form_validator(pointer)
    errors += [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(form_as_json(record, schema))
    ]
    return errors


@functools.lru_cache(maxsize=64)
def _form_validator(pointer: str) -> Draft202012Validator:
    # The whole spec is the root document, so the schema's `$ref`s resolve.
    return Draft202012Validator({**fixed_spec(), "$ref": pointer})


@dataclasses.dataclass
class _Request:
    """openapi-core's request protocol over one recorded request (with its path pattern)."""

    method: str
    path: str
    path_pattern: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None
    host_url: str = HOST

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path_pattern


def as_openapi_request(record: RecordedRequest) -> _Request:
    assert record.route is not None, f"{record.method} {record.path} matches no endpoint"
    template = record.route.split(" ", 1)[1]
    body: bytes | None = None
    ctype = (record.content_type or "").lower()
    if record.json is not None:
        body = json.dumps(record.json).encode()
        ctype = "application/json"
    query = ImmutableMultiDict([(k, v) for k, vs in record.query_all.items() for v in vs])
    params = RequestParameters(query=query, header=Headers(record.headers), path=dict(record.params))
    return _Request(
        method=record.method.lower(),
        path=record.path,
        path_pattern="/v1" + template,
        parameters=params,
        content_type=ctype,
        body=body,
    )


def violations(record: RecordedRequest) -> list[str]:
    """What the spec rejects in this request (empty when it conforms)."""
    if record.route is None:
        return [f"{record.method} {record.path}: not an endpoint of the spec"]
    request = as_openapi_request(record)
    if record.multipart is not None:
        return [f"{record.route}: {e}" for e in _form_violations(record, request)]
    result = validating_spec().unmarshal_request(request)
    return [f"{record.route}: {_describe(e)}" for e in result.errors]


def _describe(exc: BaseException) -> str:
    parts = [str(exc)]
    for nested in getattr(exc, "schema_errors", None) or ():
        parts.append(f"{'/'.join(map(str, nested.absolute_path))}: {nested.message}")
    cause = exc.__cause__
    if cause is not None:
        parts.append(_describe(cause))
    return "; ".join(parts)
