"""Converting between the seams' frozen dataclasses and index/index.proto.

Generic by construction: a protobuf message and its dataclass share name and
field names (index.proto says so). Rules:
- `repeated Pair` ⇄ a tuple of (name, value) pairs;
- a wrapper message with a oneof (Body, Mutation, Condition) ⇄ a Union value,
  the oneof field named after the member's type in snake_case;
- `repeated Message` ⇄ a tuple of dataclasses; a nested message ⇄ a dataclass.
Stored values are one format-version byte, then the message (`dump`/`load`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

from common import seams
from common.errors import invariant
from index import index_pb2

FORMAT_VERSION = 1

_WRAPPERS = {"Body", "Mutation", "Condition"}
_CLASSES: dict[str, type] = {
    name: getattr(seams, name)
    for name in dir(seams)
    if dataclasses.is_dataclass(getattr(seams, name)) and hasattr(index_pb2, name)
}


@functools.lru_cache(maxsize=None)
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_SCALAR, _SCALARS, _PAIRS, _MESSAGES, _WRAPPER, _MESSAGE = range(6)
_PLANS: dict[str, tuple] = {}


def _plan(descriptor) -> tuple:
    """Per message type, once: (field name, kind) for every field, so conversions do
    not walk protobuf descriptors on every call."""
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        fields = []
        for field in descriptor.fields:
            if field.message_type is None:
                kind = _SCALARS if field.is_repeated else _SCALAR
            elif field.message_type.name == "Pair":
                kind = _PAIRS
            elif field.is_repeated:
                kind = _MESSAGES
            elif field.message_type.name in _WRAPPERS:
                kind = _WRAPPER
            else:
                kind = _MESSAGE
            fields.append((field.name, kind))
        plan = (descriptor.name in _WRAPPERS, _CLASSES.get(descriptor.name), tuple(fields))
        _PLANS[descriptor.full_name] = plan
    return plan


def to_message(value: Any, message: Any) -> Any:
    """Fill protobuf `message` from dataclass `value` (or a Union member for wrappers)."""
    wrapper, _, fields = _plan(message.DESCRIPTOR)
    if wrapper:
        if value is None:
            return message
        target = getattr(message, _snake(type(value).__name__))
        to_message(value, target)
        target.SetInParent()
        return message
    for name, kind in fields:
        item = getattr(value, name)
        if kind == _SCALAR:
            setattr(message, name, item)
        elif kind == _PAIRS:
            if item:
                target = getattr(message, name)
                for pair_name, text in item:
                    target.add(name=pair_name, value=text)
        elif kind == _SCALARS:
            getattr(message, name).extend(item)
        elif kind == _MESSAGES:
            target = getattr(message, name)
            for element in item:
                to_message(element, target.add())
        elif kind == _WRAPPER:
            to_message(item, getattr(message, name))
        elif item is not None:
            target = getattr(message, name)
            to_message(item, target)
            target.SetInParent()
    return message


def from_message(message: Any) -> Any:
    """The dataclass (or Union member, or None for an empty wrapper) a message holds."""
    wrapper, cls, fields = _plan(message.DESCRIPTOR)
    if wrapper:
        which = message.WhichOneof("kind")
        return None if which is None else from_message(getattr(message, which))
    values = {}
    for name, kind in fields:
        item = getattr(message, name)
        if kind == _SCALAR:
            values[name] = item
        elif kind == _PAIRS:
            values[name] = tuple((pair.name, pair.value) for pair in item) if item else ()
        elif kind == _SCALARS:
            values[name] = tuple(item)
        elif kind == _MESSAGES:
            values[name] = tuple(from_message(element) for element in item)
        elif kind == _WRAPPER or message.HasField(name):
            values[name] = from_message(item)
        else:
            values[name] = None
    return cls(**values)


def dump(message: Any) -> bytes:
    return bytes([FORMAT_VERSION]) + message.SerializeToString()


def load(raw: bytes, message_type: type) -> Any:
    invariant(len(raw) >= 1 and raw[0] == FORMAT_VERSION, f"unknown index value format {raw[:1]!r}")
    message = message_type()
    message.ParseFromString(raw[1:])
    return message


def dump_record(value: Any) -> bytes:
    """A seams dataclass as a stored value."""
    return dump(to_message(value, getattr(index_pb2, type(value).__name__)()))


def load_record(raw: bytes, cls: type) -> Any:
    return from_message(load(raw, getattr(index_pb2, cls.__name__)))


def encode_command(mutation: seams.Mutation, condition: seams.Condition, request_id: bytes, not_after_us: int) -> bytes:
    command = index_pb2.Command(request_id=request_id, not_after_us=not_after_us)
    to_message(mutation, command.mutation)
    to_message(condition, command.condition)
    return dump(command)


def decode_command(raw: bytes) -> tuple[seams.Mutation, seams.Condition, bytes, int]:
    command = load(raw, index_pb2.Command)
    return from_message(command.mutation), from_message(command.condition), command.request_id, command.not_after_us


def outcome_message(outcome: seams.Outcome) -> Any:
    """An Outcome as stored (dedup table) and answered (AppliedEntry); ids absent as ""."""
    return index_pb2.Outcome(
        seq=outcome.seq, time_us=outcome.time_us, version_id=outcome.version_id or "",
        upload_id=outcome.upload_id or "", bucket_incarnation=outcome.bucket_incarnation or "")


def from_message_outcome(message: Any) -> seams.Outcome:
    return seams.Outcome(
        seq=message.seq, time_us=message.time_us, version_id=message.version_id or None,
        upload_id=message.upload_id or None, bucket_incarnation=message.bucket_incarnation or None,
    )
