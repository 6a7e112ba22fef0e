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


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def to_message(value: Any, message: Any) -> Any:
    """Fill protobuf `message` from dataclass `value` (or a Union member for wrappers)."""
    descriptor = message.DESCRIPTOR
    if descriptor.name in _WRAPPERS:
        if value is None:
            return message
        field = _snake(type(value).__name__)
        to_message(value, getattr(message, field))
        getattr(message, field).SetInParent()
        return message
    for field in descriptor.fields:
        item = getattr(value, field.name)
        if field.message_type is None:
            if field.is_repeated:
                getattr(message, field.name).extend(item)
            else:
                setattr(message, field.name, item)
        elif field.message_type.name == "Pair":
            target = getattr(message, field.name)
            for name, text in item:
                target.add(name=name, value=text)
        elif field.is_repeated:
            target = getattr(message, field.name)
            for element in item:
                to_message(element, target.add())
        elif item is not None or field.message_type.name in _WRAPPERS:
            to_message(item, getattr(message, field.name))
            if item is not None:
                getattr(message, field.name).SetInParent()
    return message


def from_message(message: Any) -> Any:
    """The dataclass (or Union member, or None for an empty wrapper) a message holds."""
    descriptor = message.DESCRIPTOR
    if descriptor.name in _WRAPPERS:
        which = message.WhichOneof("kind")
        return None if which is None else from_message(getattr(message, which))
    cls = _CLASSES[descriptor.name]
    values = {}
    for field in descriptor.fields:
        item = getattr(message, field.name)
        if field.message_type is None:
            values[field.name] = tuple(item) if field.is_repeated else item
        elif field.message_type.name == "Pair":
            values[field.name] = tuple((pair.name, pair.value) for pair in item)
        elif field.is_repeated:
            values[field.name] = tuple(from_message(element) for element in item)
        elif field.message_type.name in _WRAPPERS or message.HasField(field.name):
            values[field.name] = from_message(item)
        else:
            values[field.name] = None
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


def from_message_outcome(message: Any) -> seams.Outcome:
    return seams.Outcome(
        seq=message.seq, time_us=message.time_us, version_id=message.version_id or None,
        upload_id=message.upload_id or None, bucket_incarnation=message.bucket_incarnation or None,
    )
