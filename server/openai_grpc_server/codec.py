"""Proto <-> OpenAI JSON, driven by the descriptors (rules in protos/STYLE.md).

`json_format` does not fit: it writes int64 as strings, cannot map a JSON union onto a oneof,
and drops unknown keys. This codec builds one plan per message type on first use and then
maps plain Python values (what orjson produces and consumes) field by field:

- a real `oneof` named like a JSON key is a union; the member is chosen by the JSON type;
- `...List` messages with one repeated field are bare JSON arrays;
- unknown keys go into `extra` (field 1000) on decode and are merged back on encode;
- null and absent are the same; a scalar is written when it is set (proto3 `optional`), or
  non-default, or marked `(google.api.field_behavior) = REQUIRED`.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Any, cast

from google.api import field_behavior_pb2
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

FD = descriptor.FieldDescriptor
JSON = Any

EXTRA = "extra"
JSON_WKT = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
_INT_TYPES = {
    FD.TYPE_INT64,
    FD.TYPE_INT32,
    FD.TYPE_UINT64,
    FD.TYPE_UINT32,
    FD.TYPE_SINT64,
    FD.TYPE_SINT32,
    FD.TYPE_FIXED64,
    FD.TYPE_FIXED32,
    FD.TYPE_SFIXED64,
    FD.TYPE_SFIXED32,
}
FLOAT_TYPES = {FD.TYPE_DOUBLE, FD.TYPE_FLOAT}
_TEXT = {FD.TYPE_STRING, FD.TYPE_BYTES}
_INT_RANGE = {
    **dict.fromkeys((FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((FD.TYPE_UINT64, FD.TYPE_FIXED64), (0, 2**64 - 1)),
    **dict.fromkeys((FD.TYPE_UINT32, FD.TYPE_FIXED32), (0, 2**32 - 1)),
}


def message_type(f: FD) -> descriptor.Descriptor:
    mt = f.message_type
    assert mt is not None, f.full_name
    return mt


def descriptor_of(msg: Message) -> descriptor.Descriptor:
    return cast(descriptor.Descriptor, msg.DESCRIPTOR)


class CodecError(ValueError):
    """A JSON value does not fit the proto field it names."""


def _kind_of(value: JSON) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "null"


def is_list_wrapper(desc: descriptor.Descriptor) -> bool:
    return (
        desc.name.endswith("List")
        and len(desc.fields) == 1
        and desc.fields[0].is_repeated
        and desc.full_name not in JSON_WKT
    )


def envelope_field(desc: descriptor.Descriptor) -> FD | None:
    """The resource field of an envelope response (`GetModelResponse { Model model = 1; }`)."""
    if len(desc.fields) != 1:
        return None
    f = desc.fields[0]
    if f.is_repeated or f.type != FD.TYPE_MESSAGE:
        return None
    if message_type(f).full_name in JSON_WKT or message_type(f).GetOptions().map_entry:
        return None
    return f


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def json_key(f: FD) -> str:
    """The OpenAI key of a field: its name, or an explicit `json_name`."""
    return f.json_name if f.json_name != _camel(f.name) else f.name


def _enum(f: FD) -> descriptor.EnumDescriptor:
    et = f.enum_type
    assert et is not None, f.full_name
    return et


def _required(f: FD) -> bool:
    behaviors: list[int] = f.GetOptions().Extensions[field_behavior_pb2.field_behavior]  # type: ignore[index]
    return field_behavior_pb2.REQUIRED in behaviors


def _element_kind(f: FD) -> str:
    """JSON kind of one value of field `f` (for choosing a union member)."""
    if f.type == FD.TYPE_MESSAGE:
        mt = message_type(f)
        if mt.full_name == "google.protobuf.Value":
            return "any"
        if mt.full_name == "google.protobuf.ListValue" or is_list_wrapper(mt):
            return "list"
        return "object"
    if f.type == FD.TYPE_BOOL:
        return "bool"
    if f.type in _INT_TYPES or f.type in FLOAT_TYPES:
        return "number"
    return "string"


def _list_element_kind(f: FD) -> str:
    """For a list-wrapper member: the JSON kind of its elements."""
    inner = message_type(f).fields[0] if is_list_wrapper(message_type(f)) else None
    if inner is None:
        return "any"
    return _element_kind(inner)


@dataclasses.dataclass
class _Union:
    name: str
    members: list[FD]

    def pick(self, value: JSON) -> FD | None:
        kind = _kind_of(value)
        if kind == "list":
            first = _kind_of(value[0]) if value else None
            lists = [m for m in self.members if _element_kind(m) == "list"]
            for m in lists:
                if first is None or _list_element_kind(m) in (first, "any"):
                    return m
            return lists[0] if lists else self._any()
        for m in self.members:
            if _element_kind(m) == kind:
                return m
        return self._any()

    def _any(self) -> FD | None:
        for m in self.members:
            if _element_kind(m) == "any":
                return m
        return None


# How `encode` writes the value of a set field (by its kind, computed once per field).
_OUT_PLAIN, _OUT_MESSAGE, _OUT_LIST, _OUT_MESSAGES, _OUT_MAP, _OUT_CONVERTED, _OUT_EXTRA = range(7)


@dataclasses.dataclass
class _Plan:
    desc: descriptor.Descriptor
    fields: dict[str, FD]
    unions: dict[str, _Union]
    required: frozenset[str]
    has_extra: bool
    wrapper: bool
    # Field number -> (JSON key, how to write it) for the fields `ListFields` reports as set.
    out: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)
    # Required fields written even when unset (a required 0, false or empty list is a value).
    out_required: tuple[tuple[str, FD], ...] = ()
    # JSON key -> (field name, Python type, range) of scalar fields, for a type-exact fast path.
    scalars: dict[str, tuple[str, type, tuple[int, int] | None]] = dataclasses.field(default_factory=dict)


def _out_kind(f: FD) -> int:
    if f.name == EXTRA:
        return _OUT_EXTRA
    if f.type == FD.TYPE_MESSAGE:
        if f.is_repeated:
            return _OUT_MAP if message_type(f).GetOptions().map_entry else _OUT_MESSAGES
        return _OUT_MESSAGE
    if f.type in (FD.TYPE_BYTES, FD.TYPE_ENUM):
        return _OUT_CONVERTED
    return _OUT_LIST if f.is_repeated else _OUT_PLAIN


def _scalar_fast(f: FD) -> tuple[type, tuple[int, int] | None] | None:
    if f.is_repeated or f.type == FD.TYPE_MESSAGE:
        return None
    if f.type == FD.TYPE_STRING:
        return str, None
    if f.type == FD.TYPE_BOOL:
        return bool, None
    if f.type in _INT_TYPES:
        return int, _INT_RANGE[f.type]
    if f.type in FLOAT_TYPES:
        return float, None
    return None


_plans: dict[str, _Plan] = {}
_plans_by_class: dict[type[Message], _Plan] = {}


def _plan_of(msg: Message) -> _Plan:
    """The plan of a message, found by its class (cheaper than by descriptor name per call)."""
    plan = _plans_by_class.get(type(msg))
    if plan is None:
        plan = _plans_by_class[type(msg)] = plan_for(descriptor_of(msg))
    return plan


def plan_for(desc: descriptor.Descriptor) -> _Plan:
    plan = _plans.get(desc.full_name)
    if plan is not None:
        return plan
    fields: dict[str, FD] = {}
    unions: dict[str, _Union] = {}
    for oneof in desc.oneofs:
        synthetic = len(oneof.fields) == 1 and oneof.fields[0].has_presence and oneof.name.startswith("_")
        if not synthetic:
            unions[oneof.name] = _Union(oneof.name, list(oneof.fields))
    in_union = {f.name for u in unions.values() for f in u.members}
    for f in desc.fields:
        if f.name != EXTRA and f.name not in in_union:
            fields[json_key(f)] = f
    required = frozenset(f.name for f in desc.fields if _required(f))
    out = {f.number: (json_key(f), _out_kind(f)) for f in fields.values()}
    for u in unions.values():
        out.update({m.number: (u.name, _out_kind(m)) for m in u.members})
    if EXTRA in desc.fields_by_name:
        extra = desc.fields_by_name[EXTRA]
        out[extra.number] = (EXTRA, _OUT_EXTRA)
    out_required = tuple(
        (key, f)
        for key, f in fields.items()
        if f.name in required
        and (f.is_repeated or (f.type != FD.TYPE_MESSAGE and not f.has_presence and f.type not in _TEXT))
    )
    scalars = {}
    for key, f in fields.items():
        fast = _scalar_fast(f)
        if fast is not None:
            scalars[key] = (f.name, *fast)
    plan = _Plan(
        desc=desc,
        fields=fields,
        unions=unions,
        required=required,
        has_extra=EXTRA in desc.fields_by_name,
        wrapper=is_list_wrapper(desc),
        out=out,
        out_required=out_required,
        scalars=scalars,
    )
    _plans[desc.full_name] = plan
    return plan


# --- JSON -> proto ---------------------------------------------------------------------------


def _scalar(f: FD, value: JSON) -> Any:
    t = f.type
    if t == FD.TYPE_STRING:
        if isinstance(value, str):
            return value
        raise CodecError(f"{f.name}: expected a string")
    if t == FD.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise CodecError(f"{f.name}: expected a boolean")
    if t in _INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{f.name}: expected an integer")
        if isinstance(value, float) and not value.is_integer():
            raise CodecError(f"{f.name}: expected an integer")
        lo, hi = _INT_RANGE[t]
        if not lo <= value <= hi:
            raise CodecError(f"{f.name}: {value} is out of range")
        return int(value)
    if t in FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{f.name}: expected a number")
        return float(value)
    if t == FD.TYPE_BYTES:
        if isinstance(value, str):
            return base64.b64decode(value)
        raise CodecError(f"{f.name}: expected base64 text")
    if t == FD.TYPE_ENUM:
        if isinstance(value, str):
            return _enum(f).values_by_name[value].number
        return int(value)
    raise CodecError(f"{f.name}: unsupported field type {t}")


def _decode_wkt(value: JSON, target: Message) -> None:
    try:
        json_format.ParseDict(value, target)
    except json_format.ParseError as exc:
        raise CodecError(str(exc)) from exc


def decode_into(value: JSON, msg: Message, *, strict: bool = False) -> None:
    """Fill `msg` from the JSON value (an object, or an array for a list wrapper).

    `strict` (upstream answers): a field that holds objects (a message, or a list of them) given
    another JSON type is a CodecError: the answer's structure is not the contract's. A scalar of
    another type still lands in `extra` (OpenAI widens scalars: its own example sends the
    `search_query` list as one string), and so do unknown keys."""
    plan = _plan_of(msg)
    if plan.desc.full_name in JSON_WKT:
        _decode_wkt(value, msg)
        return
    if plan.wrapper:
        if not isinstance(value, list):
            raise CodecError(f"{plan.desc.name}: expected an array")
        _set_repeated(msg, plan.desc.fields[0], value, strict)
        return
    if not isinstance(value, dict):
        raise CodecError(f"{plan.desc.name}: expected an object")
    extra: dict[str, JSON] | None = None
    scalars = plan.scalars
    for key, item in value.items():
        if item is None:
            continue
        fast = scalars.get(key)
        if fast is not None and type(item) is fast[1]:
            # The common case, a scalar of exactly its field's type: set it without the checks
            # below (an int within range; anything else takes the general path).
            bounds = fast[2]
            if bounds is None or bounds[0] <= cast(int, item) <= bounds[1]:
                setattr(msg, fast[0], item)
                continue
        target = plan.fields.get(key)
        if target is None and key in plan.unions:
            target = plan.unions[key].pick(item)
        if target is not None:
            try:
                set_field(msg, target, item, strict=strict)
                continue
            except CodecError:
                if (strict and _structural(target)) or not plan.has_extra:
                    raise
                # A value of an unexpected type is kept whole in `extra`, not half in the field.
                msg.ClearField(target.name)
        if plan.has_extra:
            if extra is None:
                extra = {}
            extra[key] = item
    if extra:
        getattr(msg, EXTRA).update(extra)


def _structural(f: FD) -> bool:
    return f.type == FD.TYPE_MESSAGE and message_type(f).full_name not in JSON_WKT


def set_field(msg: Message, f: FD, value: JSON, *, strict: bool = False) -> None:
    if f.is_repeated:
        if f.type == FD.TYPE_MESSAGE and message_type(f).GetOptions().map_entry:
            _set_map(msg, f, value, strict)
        else:
            if not isinstance(value, list):
                raise CodecError(f"{f.name}: expected an array")
            _set_repeated(msg, f, value, strict)
        return
    if f.type == FD.TYPE_MESSAGE:
        sub = getattr(msg, f.name)
        decode_into(value, sub, strict=strict)
        if not sub.ListFields() and hasattr(msg, "SetInParent"):
            sub.SetInParent()  # `{}` is present, not absent
        return
    setattr(msg, f.name, _scalar(f, value))


def _set_repeated(msg: Message, f: FD, values: list[JSON], strict: bool = False) -> None:
    target = getattr(msg, f.name)
    if f.type == FD.TYPE_MESSAGE:
        for item in values:
            decode_into(item if item is not None else {}, target.add(), strict=strict)
        return
    if f.type in FLOAT_TYPES:
        # Embeddings: thousands of numbers, converted in C by protobuf (which also takes a JSON
        # true as 1.0); a value it rejects (a string) falls through to the per-item path.
        try:
            target.extend(values)
            return
        except (TypeError, ValueError):
            del target[:]
    target.extend(_scalar(f, v) for v in values)


def _set_map(msg: Message, f: FD, value: JSON, strict: bool = False) -> None:
    if not isinstance(value, dict):
        raise CodecError(f"{f.name}: expected an object")
    target = getattr(msg, f.name)
    vf = message_type(f).fields_by_name["value"]
    for k, v in value.items():
        if v is None:
            continue
        if vf.type == FD.TYPE_MESSAGE:
            decode_into(v, target[k], strict=strict)
        else:
            target[k] = _scalar(vf, v)


def from_json(value: JSON, cls: Callable[[], Message]) -> Message:
    msg = cls()
    decode_into(value, msg)
    return msg


def decode_response(value: JSON, msg: Message) -> None:
    """Fill a response message from the upstream body: envelopes take the whole body. Strict:
    a known field with the wrong JSON type means the answer is not what the contract says."""
    env = envelope_field(descriptor_of(msg))
    if env is not None:
        set_field(msg, env, value, strict=True)
    else:
        decode_into(value, msg, strict=True)


# --- proto -> JSON ---------------------------------------------------------------------------


def _encode_value(f: FD, value: Any) -> JSON:
    if f.type == FD.TYPE_MESSAGE:
        return encode(value)
    if f.type == FD.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if f.type == FD.TYPE_ENUM:
        return _enum(f).values_by_number[value].name
    return value


def encode(msg: Message) -> JSON:
    """The OpenAI JSON for `msg` (an object, or an array for a list wrapper).

    Walks only the fields that are set (`ListFields`, in C) rather than every field of the
    type: a chat request has some forty fields and sets four."""
    plan = _plan_of(msg)
    if plan.desc.full_name in JSON_WKT:
        return _ints(json_format.MessageToDict(msg))
    if plan.wrapper:
        f = plan.desc.fields[0]
        return [_encode_value(f, v) for v in getattr(msg, f.name)]
    out: dict[str, JSON] = {}
    extra: JSON = None
    kinds = plan.out
    for f, value in msg.ListFields():
        key, kind = kinds[f.number]
        if kind == _OUT_PLAIN:
            out[key] = value
        elif kind == _OUT_MESSAGE:
            out[key] = encode(value)
        elif kind == _OUT_MESSAGES:
            out[key] = [encode(v) for v in value]
        elif kind == _OUT_LIST:
            out[key] = list(value)
        elif kind == _OUT_MAP:
            vf = message_type(f).fields_by_name["value"]
            out[key] = {k: _encode_value(vf, v) for k, v in value.items()}
        elif kind == _OUT_CONVERTED:
            out[key] = [_encode_value(f, v) for v in value] if f.is_repeated else _encode_value(f, value)
        else:  # _OUT_EXTRA: merged last, as keys the contract does not know
            extra = _ints(json_format.MessageToDict(value))
    for key, f in plan.out_required:
        if key not in out:
            # A required 0 or false is a value; a required empty string is only "not set".
            value = getattr(msg, f.name)
            out[key] = [] if f.is_repeated else _encode_value(f, value)
    if extra:
        out.update(extra)
    return out


def _ints(value: JSON) -> JSON:
    """Struct stores every number as a double: give integral ones back as ints (`n: 2`, not 2.0)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value
