"""Reading and replacing one top-level string field in serialized protobuf bytes, without decoding the rest.

This is what lets the proxy route a ModelInferRequest by its model_name (field 1) and forward the original
bytes: only the varint tags and lengths of the fields before it are read.
"""

from __future__ import annotations

from mesh.errors import InvalidArgument

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise InvalidArgument("malformed protobuf message: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise InvalidArgument("malformed protobuf message: varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(data: bytes | memoryview):
    """(field number, wire type, value start, value end, field start) for each top-level field."""
    pos = 0
    end = len(data)
    while pos < end:
        start = pos
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise InvalidArgument("malformed protobuf message: field number 0")
        if wire_type == _VARINT:
            _, value_end = _varint(data, pos)
            value_start = pos
        elif wire_type == _LEN:
            length, value_start = _varint(data, pos)
            value_end = value_start + length
        elif wire_type == _I64:
            value_start, value_end = pos, pos + 8
        elif wire_type == _I32:
            value_start, value_end = pos, pos + 4
        else:
            raise InvalidArgument(f"malformed protobuf message: unsupported wire type {wire_type}")
        if value_end > end:
            raise InvalidArgument("malformed protobuf message: field runs past the end")
        yield number, wire_type, value_start, value_end, start
        pos = value_end


def read_string(data: bytes, number: int) -> str:
    """The value of a top-level string field ("" when absent); the last occurrence wins, as in protobuf.

    Only top-level tags are walked: tensors are skipped by their length prefix, so the cost grows with the
    number of top-level fields, not with the size of the message. This runs on every routed request, hence
    one flat loop with a fast path for one-byte tags and lengths.
    """
    pos, end = 0, len(data)
    found: tuple[int, int] | None = None
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise InvalidArgument("malformed protobuf message: field number 0")
        if wire_type == _LEN:
            if pos >= end:
                raise InvalidArgument("malformed protobuf message: truncated varint")
            length = data[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(data, pos)
            start, pos = pos, pos + length
            if field == number:
                found = (start, pos)
        elif wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _I64:
            pos += 8
        elif wire_type == _I32:
            pos += 4
        else:
            raise InvalidArgument(f"malformed protobuf message: unsupported wire type {wire_type}")
        if pos > end:
            raise InvalidArgument("malformed protobuf message: field runs past the end")
    if found is None:
        return ""
    try:
        return data[found[0] : found[1]].decode()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"field {number} is not valid UTF-8") from exc


def replace_string(data: bytes, number: int, value: str) -> bytes:
    """The message with every occurrence of a top-level string field replaced by one new value, put first."""
    view = memoryview(data)
    encoded = value.encode()
    parts = [_encode_varint(number << 3 | _LEN), _encode_varint(len(encoded)), encoded]
    cursor = 0
    for field, _, _, end, start in _fields(view):
        if field == number:
            parts.append(view[cursor:start])
            cursor = end
    parts.append(view[cursor:])
    return b"".join(parts)
