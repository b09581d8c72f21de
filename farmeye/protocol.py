"""The device <-> hub wire protocol, as bytes in and frames out (no I/O here).

A frame is a 12-byte prefix, a JSON header and a raw payload::

    magic b"FE" | version u8 | flags u8 | header length u32 BE | payload length u32 BE
    header: UTF-8 JSON object with "type", valid against schemas/<type>.json
    payload: image bytes for "upload", empty for every other type

The camera agent and the hub wrap :class:`FrameDecoder` and :func:`encode`
around their own sockets, so the rules live in one place and tests drive them
without a network. ``docs/protocol.md`` is the full description for people
writing a device in another language.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match

import schemas

MAGIC: Final = b"FE"
PROTOCOL_VERSION: Final = 1
"""Version byte this code writes and the only one it accepts."""

PREFIX = struct.Struct(">2sBBII")
"""magic, version, flags, header length, payload length (network byte order)."""

PREFIX_BYTES: Final = PREFIX.size
MAX_HEADER_BYTES: Final = 16384
"""Largest JSON header either side accepts; headers are small by design."""

DEFAULT_MAX_PAYLOAD_BYTES: Final = 32 * 1024 * 1024
"""Default largest payload: a 12 MP JPEG is under 10 MiB, a PNG may be more."""

MESSAGE_TYPES: Final = (
    "hello",
    "challenge",
    "auth",
    "auth_ok",
    "upload",
    "ack",
    "error",
    "ping",
    "pong",
    "command",
    "health",
)
"""Every header ``type``; each has a schema file of the same name."""

DEVICE_TO_HUB: Final = frozenset(
    {"hello", "auth", "upload", "health", "ping", "pong", "error"}
)
"""Types a hub may receive; anything else from a device is a protocol error."""

HUB_TO_DEVICE: Final = frozenset(
    {"challenge", "auth_ok", "ack", "command", "ping", "pong", "error"}
)
"""Types a device may receive."""

COMMAND_NAMES: Final = ("capture_now", "set_schedule")
"""Commands a hub can send; ``args`` of each are defined in command.json."""

ERROR_CODES: Final[Mapping[str, bool]] = {
    # Framing and validation: the connection is closed after these.
    "bad_magic": False,
    "unsupported_version": False,
    "bad_flags": False,
    "header_too_large": False,
    "payload_too_large": False,
    "bad_json": False,
    "schema": False,
    "unknown_type": False,
    "truncated": True,
    # Session: authentication and message order.
    "auth_required": False,
    "auth_failed": False,
    "unexpected_message": False,
    "handshake_timeout": True,
    "idle_timeout": True,
    # Uploads and commands: answer one request, the connection stays open.
    "checksum_mismatch": True,
    "bad_image": False,
    "busy": True,
    "storage_unavailable": True,
    "unsupported_command": False,
    "internal": True,
}
"""Known ``error`` codes and whether the same request may succeed if retried.

Peers must accept codes not listed here and act on the frame's ``retryable``.
"""

_ANNOTATIONS: Final = frozenset({"title", "description"})
_ERROR_TEXT_CHARS: Final = 300


class ProtocolError(Exception):
    """A frame or header that breaks the protocol.

    ``code`` is one of :data:`ERROR_CODES`, ready to send back in an ``error``
    frame; ``retryable`` says whether sending the same thing again may work.
    """

    def __init__(
        self, code: str, message: str, *, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = (
            ERROR_CODES.get(code, False) if retryable is None else retryable
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Keep code and retryable when the error crosses a process boundary."""
        return (type(self), (self.code, str(self)), {"retryable": self.retryable})

    def to_header(self, id: int | None = None) -> dict[str, Any]:
        """The ``error`` header that tells the peer about this failure."""
        return error(self.code, str(self)[:1024], self.retryable, id)


@dataclass(frozen=True)
class Frame:
    """One decoded frame: a validated header and its payload bytes."""

    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        """The header's ``type``, one of :data:`MESSAGE_TYPES`."""
        return cast(str, self.header["type"])


# Encoding


def encode(
    header: Mapping[str, Any],
    payload: bytes = b"",
    *,
    validate: bool = True,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> bytes:
    """Return the bytes of one frame, or raise :class:`ProtocolError`.

    Validation catches a malformed header here, where the bug is, rather than
    as a dropped connection on the other side.
    """
    if validate:
        validate_header(header, payload_bytes=len(payload))
    header_bytes = _dump_json(header)
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError(
            "header_too_large",
            f"header is {len(header_bytes)} bytes encoded, over the limit of "
            f"{MAX_HEADER_BYTES}; shorten its strings or move data to the payload",
        )
    if len(payload) > max_payload_bytes:
        raise _payload_too_large(len(payload), max_payload_bytes)
    prefix = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(header_bytes), len(payload))
    return b"".join((prefix, header_bytes, payload))


def _dump_json(header: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN, infinities and lone surrogates are refused."""
    try:
        text = json.dumps(
            dict(header), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
        return text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(
            "bad_json",
            f"header cannot be written as strict JSON ({exc}); use only str, "
            "int, finite float, bool, None, list and dict values",
        ) from None


# Decoding


class FrameDecoder:
    """Turn a byte stream into frames, however the bytes are chunked.

    Limits are checked on the prefix, before anything is buffered, so a peer
    announcing a 4 GB payload costs 12 bytes. After a :class:`ProtocolError`
    the stream position is lost and every later call raises again: close the
    connection.
    """

    def __init__(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if not 0 <= max_payload_bytes <= 0xFFFFFFFF:
            raise ValueError(
                f"max_payload_bytes must be between 0 and {0xFFFFFFFF}, "
                f"got {max_payload_bytes}"
            )
        self.max_payload_bytes = max_payload_bytes
        self._buffer = bytearray()
        self._start = 0  # first buffered byte not yet returned in a frame
        self._lengths: tuple[int, int] | None = None
        self._header: dict[str, Any] | None = None
        self._failure: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order.

        Frames completed earlier in the same chunk as a bad one are dropped
        with it: the device resends whatever was not acknowledged.
        """
        self._raise_if_failed()
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next_frame()) is not None:
                frames.append(frame)
        except ProtocolError as exc:
            self._fail(exc)
            raise
        finally:
            # One compaction per chunk, not per frame: a chunk of many small
            # frames must not move the rest of the buffer once for each.
            del self._buffer[: self._start]
            self._start = 0
        return frames

    def eof(self) -> None:
        """Declare the stream ended; raise if it stopped inside a frame."""
        self._raise_if_failed()
        if self._buffer:
            exc = ProtocolError(
                "truncated",
                f"connection closed inside a frame with {len(self._buffer)} bytes "
                "of it received; resend the frame on a new connection",
            )
            self._fail(exc)
            raise exc

    def _next_frame(self) -> Frame | None:
        """The next complete frame, or None; each check runs once its bytes arrive."""
        if self._lengths is None:
            self._lengths = _check_prefix(
                self._view(0, PREFIX_BYTES), self.max_payload_bytes
            )
            if self._lengths is None:
                return None
        header_len, payload_len = self._lengths
        header_end = PREFIX_BYTES + header_len
        if self._header is None:
            if self._available() < header_end:
                return None
            raw_header = self._view(PREFIX_BYTES, header_end)
            self._header = decode_header(raw_header, payload_len)
        frame_end = header_end + payload_len
        if self._available() < frame_end:
            return None

        frame = Frame(self._header, self._view(header_end, frame_end))
        self._start += frame_end
        self._lengths = None
        self._header = None
        return frame

    def _available(self) -> int:
        return len(self._buffer) - self._start

    def _view(self, start: int, end: int) -> bytes:
        """Copy bytes ``start:end`` of the current frame, once."""
        with memoryview(self._buffer) as view:
            return bytes(view[self._start + start : self._start + end])

    def _fail(self, exc: ProtocolError) -> None:
        self._failure = exc
        self._buffer.clear()
        self._start = 0
        self._lengths = None
        self._header = None

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise ProtocolError(
                self._failure.code,
                f"decoder already failed ({self._failure}); open a new connection",
                retryable=self._failure.retryable,
            )


def _check_prefix(start: bytes, max_payload_bytes: int) -> tuple[int, int] | None:
    """Header and payload lengths once 12 bytes are in; raise as soon as wrong."""
    _check_leading_bytes(start)
    if len(start) >= 8:
        _check_header_length(int.from_bytes(start[4:8], "big"))
    if len(start) < PREFIX_BYTES:
        return None

    _, _, _, header_len, payload_len = PREFIX.unpack(start)
    if payload_len > max_payload_bytes:
        raise _payload_too_large(payload_len, max_payload_bytes)
    return header_len, payload_len


def _check_leading_bytes(start: bytes) -> None:
    """Magic, version and flags, checked on however many of them have arrived."""
    if not MAGIC.startswith(start[:2]):
        raise _bad_magic(start)
    if len(start) >= 3 and start[2] != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"peer speaks protocol version {start[2]}, this side only version "
            f"{PROTOCOL_VERSION}; upgrade the older of agent and hub",
        )
    if len(start) >= 4 and start[3] != 0:
        raise ProtocolError(
            "bad_flags",
            f"flags byte is {start[3]:#04x}; version {PROTOCOL_VERSION} defines "
            "no flags, so it must be 0",
        )


def _check_header_length(header_len: int) -> None:
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(
            "header_too_large",
            f"frame announces a {header_len}-byte header; the limit is "
            f"{MAX_HEADER_BYTES} bytes",
        )


def _bad_magic(start: bytes) -> ProtocolError:
    """Name the likely mistake: TLS on one end only, or HTTP to the ingest port."""
    hint = "check that the peer speaks the FarmEye frame protocol"
    if start[:1] in (b"\x15", b"\x16") and start[1:2] == b"\x03":
        hint = "this looks like TLS: turn TLS on at both ends or at neither"
    elif start[:1].isalpha():
        hint = "this looks like text (HTTP?): use the HTTP port for the REST API"
    return ProtocolError(
        "bad_magic",
        f"frame starts with {start[:4]!r}, expected {MAGIC!r}; {hint}",
    )


def _payload_too_large(payload_len: int, max_payload_bytes: int) -> ProtocolError:
    return ProtocolError(
        "payload_too_large",
        f"payload of {payload_len} bytes is over the limit of {max_payload_bytes}; "
        "send a smaller photo (lower resolution or JPEG quality)",
    )


def decode_header(raw_header: bytes, payload_bytes: int = 0) -> dict[str, Any]:
    """Parse and validate the JSON header of a frame with ``payload_bytes``."""
    header = _parse_json_object(raw_header)
    validate_header(header, payload_bytes=payload_bytes)
    return header


def _parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            "bad_json",
            f"header is not UTF-8 JSON ({_short(exc)}); send one JSON object",
        ) from None
    if not isinstance(value, dict):
        raise ProtocolError(
            "bad_json",
            f'header is a JSON {type(value).__name__}, expected an object with "type"',
        )
    _check_encodable(value)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse duplicate keys: two parsers must never read two different headers."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_short(key)!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_encodable(header: dict[str, Any]) -> None:
    """Refuse lone UTF-16 surrogates, which break logs and PostgreSQL later."""
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(
            "bad_json",
            "header contains an unpaired \\ud800-\\udfff escape; send valid Unicode",
        ) from None


# Validation


def validate_header(header: Mapping[str, Any], *, payload_bytes: int = 0) -> None:
    """Raise :class:`ProtocolError` unless ``header`` is a valid message.

    ``payload_bytes`` is checked too: only an upload carries a payload, and an
    upload without one is a bug on the sending side.
    """
    kind = header.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            "schema",
            f'header needs a string "type", one of {", ".join(MESSAGE_TYPES)}',
        )
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"unknown message type {_short(kind)!r}; expected one of "
            f"{', '.join(MESSAGE_TYPES)}",
        )
    _check_schema(kind, header)
    _check_payload(kind, payload_bytes)


def _check_schema(kind: str, header: Mapping[str, Any]) -> None:
    problem = schema_problem(kind, header)
    if problem is not None:
        raise ProtocolError("schema", f"{kind} header {problem}")


def schema_problem(name: str, document: Mapping[str, Any]) -> str | None:
    """The most relevant way ``document`` breaks ``schemas/<name>.json``, or None."""
    problem = best_match(schema_validator(name).iter_errors(dict(document)))
    if problem is None:
        return None
    where = "/".join(str(part) for part in problem.absolute_path) or "(top level)"
    return f"field {where}: {_short(problem.message)}; see schemas/{name}.json"


def _check_payload(kind: str, payload_bytes: int) -> None:
    if kind == "upload" and payload_bytes == 0:
        raise ProtocolError(
            "schema", "upload frame has an empty payload; send the photo's bytes"
        )
    if kind != "upload" and payload_bytes:
        raise ProtocolError(
            "schema",
            f"{kind} frame carries a {payload_bytes}-byte payload; only upload "
            "frames may have one",
        )


def verify_upload(frame: Frame) -> None:
    """Raise ``checksum_mismatch`` unless the payload has the header's sha256."""
    actual = hashlib.sha256(frame.payload).hexdigest()
    if actual != frame.header["sha256"]:
        raise ProtocolError(
            "checksum_mismatch",
            f"upload {frame.header.get('id')} payload has sha256 {actual}, header "
            f"says {frame.header['sha256']}; resend the photo from the spool",
        )


def _short(value: object) -> str:
    text = str(value)
    if len(text) <= _ERROR_TEXT_CHARS:
        return text
    return text[:_ERROR_TEXT_CHARS] + "..."


# Schemas


@functools.cache
def schema_validator(name: str) -> Any:
    """The compiled, cached validator of ``schemas/<name>.json``.

    Patterns use end-of-string ``$`` as in JavaScript and Go, and JSON floats
    such as ``1.0`` are not integers, so every language reads the files alike.
    References into ``common.json`` are inlined once here: resolving them on
    every frame tripled the cost of validating one.
    """
    schema = schemas.load(name)
    validator_class = _validator_class()
    validator_class.check_schema(schema)
    return validator_class(_inline_refs(schema, _common_defs()))


@functools.cache
def _common_defs() -> dict[str, Any]:
    defs: dict[str, Any] = schemas.load("common")["$defs"]
    return defs


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    """A copy of ``node`` with each ``$ref`` to a common definition replaced."""
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    copy = {key: _inline_refs(value, defs) for key, value in node.items()}
    ref = copy.pop("$ref", None)
    if ref is None:
        return copy

    target = _inline_refs(defs[_definition_name(ref)], defs)
    if (copy.keys() & target.keys()) - _ANNOTATIONS:
        # Both constrain the same keyword (say maxLength): both must hold.
        return {"allOf": [target], **copy}
    return {**target, **copy}


def _definition_name(ref: str) -> str:
    for prefix in ("common.json#/$defs/", "#/$defs/"):
        if ref.startswith(prefix):
            return ref.removeprefix(prefix)
    raise ValueError(f"schema reference {ref!r} is not to common.json#/$defs/")


@functools.cache
def _validator_class() -> Any:
    base = Draft202012Validator
    types = base.TYPE_CHECKER.redefine("integer", _is_integer)
    # The stubs leave extend() untyped; the class it returns is used as Any.
    extend = cast(Callable[..., Any], validators.extend)
    return extend(base, validators={"pattern": _pattern_keyword}, type_checker=types)


def _is_integer(checker: Any, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _pattern_keyword(
    validator: Any, pattern: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not _compile_pattern(pattern).search(instance):
        yield ValidationError(f"{_short(instance)!r} does not match {pattern!r}")


@functools.lru_cache(maxsize=256)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """Python's ``$`` also matches before a final newline; JSON Schema's does not."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


# Message constructors: each returns a header dict; encode() validates it.


HUB_TIME: Final = "hub_time"
"""Feature a device names in hello to get the hub's clock in auth_ok."""


def hello(
    device_id: str, agent_version: str, features: Sequence[str] = ()
) -> dict[str, Any]:
    """First frame from a device: who it is, which agent it runs, and which
    optional parts of the protocol it understands."""
    header: dict[str, Any] = {
        "type": "hello",
        "device_id": device_id,
        "agent_version": agent_version,
    }
    if features:
        header["features"] = list(features)
    return header


def challenge(nonce: str, salt: str, iterations: int) -> dict[str, Any]:
    """Hub's answer to hello: a fresh nonce and the device's PBKDF2 parameters."""
    return {"type": "challenge", "nonce": nonce, "salt": salt, "iterations": iterations}


def auth(device_id: str, proof: str) -> dict[str, Any]:
    """Device's answer to challenge: hex HMAC-SHA256 of the nonce (farmeye.auth)."""
    return {"type": "auth", "device_id": device_id, "proof": proof}


def auth_ok(
    device_id: str,
    coop_id: int | str,
    farm_id: int | str,
    schedule: Mapping[str, Any] | None = None,
    hub_time: datetime | None = None,
) -> dict[str, Any]:
    """Hub accepts the device; ``schedule`` (see set_schedule) replaces its own,
    and ``hub_time`` is the hub's clock, for a device that asked for it."""
    header: dict[str, Any] = {
        "type": "auth_ok",
        "device_id": device_id,
        "coop_id": coop_id,
        "farm_id": farm_id,
    }
    if schedule is not None:
        header["schedule"] = dict(schedule)
    if hub_time is not None:
        header["hub_time"] = format_time(hub_time)
    return header


def upload_header(
    id: int,
    sha256: str,
    captured_at: str | datetime,
    content_type: str = "image/jpeg",
    meta: Mapping[str, Any] | None = None,
    triage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Header of an upload frame; the photo's bytes go in the payload.

    ``id`` is the device's own sequence number, echoed in the ack; ``sha256``
    makes the upload idempotent. ``triage`` is the device's own verdict
    (``label``, optional ``scores`` and ``model_version``), advisory only.
    """
    header: dict[str, Any] = {
        "type": "upload",
        "id": id,
        "sha256": sha256,
        "captured_at": format_time(captured_at),
        "content_type": content_type,
    }
    if meta is not None:
        header["meta"] = dict(meta)
    if triage is not None:
        header["triage"] = dict(triage)
    return header


def ack(id: int, capture_id: int, duplicate: bool) -> dict[str, Any]:
    """The photo of upload ``id`` and its row are durable: the device may delete it."""
    return {"type": "ack", "id": id, "capture_id": capture_id, "duplicate": duplicate}


def error(
    code: str, message: str, retryable: bool, id: int | None = None
) -> dict[str, Any]:
    """A failure; ``id`` names the request it answers, if any (see ERROR_CODES)."""
    header: dict[str, Any] = {
        "type": "error",
        "code": code,
        "message": message,
        "retryable": retryable,
    }
    if id is not None:
        header["id"] = id
    return header


def ping(id: int) -> dict[str, Any]:
    """Keepalive from either side; the other answers pong with the same id."""
    return {"type": "ping", "id": id}


def pong(id: int) -> dict[str, Any]:
    """Answer to ping ``id``."""
    return {"type": "pong", "id": id}


def command(id: int, name: str, **args: Any) -> dict[str, Any]:
    """Hub instruction: ``capture_now`` (optional ``count``) or ``set_schedule``.

    ``set_schedule`` takes ``interval_s`` and optionally both
    ``active_start_utc`` and ``active_end_utc`` as ``"HH:MM"``.
    """
    return {"type": "command", "id": id, "name": name, "args": args}


def health(**fields: Any) -> dict[str, Any]:
    """Device condition report; every field is optional (see health.json).

    Fields: ``uptime_s``, ``spool_depth``, ``spool_bytes``, ``disk_free_bytes``,
    ``memory_free_bytes``, ``load_1m``, ``cpu_temp_c``, ``throttled`` (list of
    flag names), ``dropped_captures``, ``last_capture_at``, ``camera_ok``,
    ``camera_error``, ``wifi_signal_dbm``, ``clock_offset_s``, ``agent_version``.
    """
    if "last_capture_at" in fields and isinstance(fields["last_capture_at"], datetime):
        fields["last_capture_at"] = format_time(fields["last_capture_at"])
    return {"type": "health", **fields}


def format_time(value: str | datetime) -> str:
    """RFC 3339 text of an aware datetime (UTC as ``Z``); strings pass unchanged."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"datetime {value.isoformat()} has no time zone; pass an aware "
            "datetime such as datetime.now(UTC)"
        )
    text = value.isoformat(timespec="milliseconds")
    if text.endswith("+00:00"):
        return text.removesuffix("+00:00") + "Z"
    return text
