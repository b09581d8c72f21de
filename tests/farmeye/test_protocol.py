"""Tests of the sans-I/O frame codec, the message schemas and their limits."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import schemas
from farmeye import auth, protocol
from farmeye.labels import LABELS
from farmeye.protocol import (
    MAX_HEADER_BYTES,
    PREFIX,
    Frame,
    FrameDecoder,
    ProtocolError,
    encode,
)

SETTINGS = settings(max_examples=200, deadline=None)
PHOTO = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"
DEVICE = "dev_0123456789abcdef"


def upload(id: int = 1, payload: bytes = PHOTO, **fields: Any) -> bytes:
    header = protocol.upload_header(
        id, hashlib.sha256(payload).hexdigest(), "2026-05-01T06:30:00Z", **fields
    )
    return encode(header, payload)


def raw_frame(header: bytes, payload: bytes = b"", **prefix: int) -> bytes:
    """A frame built by hand, so tests can break any part of it."""
    fields = {"version": 1, "flags": 0, "header_len": len(header)}
    fields.update(prefix)
    head = PREFIX.pack(
        b"FE", fields["version"], fields["flags"], fields["header_len"], len(payload)
    )
    return head + header + payload


def decode_all(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    decoder.eof()
    return frames


def error_code(data: bytes, decoder: FrameDecoder | None = None) -> str:
    with pytest.raises(ProtocolError) as caught:
        decode_all(data) if decoder is None else decoder.feed(data)
    return caught.value.code


# Strategies for valid messages

ids = st.integers(0, 2**53 - 1)
device_ids = st.from_regex(r"dev_[A-Za-z0-9_-]{8,64}", fullmatch=True)
entity_ids = st.one_of(
    st.integers(1, 2**53 - 1),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True),
)
text = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=64)
hex_digits = st.binary(min_size=16, max_size=64).map(bytes.hex)
times = st.datetimes(timezones=st.just(UTC)).map(protocol.format_time)
hhmm = st.times().map(lambda t: t.strftime("%H:%M"))
schedules = st.one_of(
    st.fixed_dictionaries({"interval_s": st.integers(10, 86400)}),
    st.fixed_dictionaries(
        {
            "interval_s": st.integers(10, 86400),
            "active_start_utc": hhmm,
            "active_end_utc": hhmm,
        }
    ),
)
scores = st.dictionaries(st.sampled_from(LABELS), st.floats(0, 1), min_size=1)
verdicts = st.fixed_dictionaries(
    {"label": st.sampled_from(LABELS)}, optional={"scores": scores}
)
meta = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
    st.one_of(text, st.integers(-(2**31), 2**31), st.booleans(), st.none()),
    max_size=5,
)


@st.composite
def uploads(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    payload = draw(st.binary(min_size=1, max_size=2048))
    header = protocol.upload_header(
        draw(ids),
        hashlib.sha256(payload).hexdigest(),
        draw(times),
        draw(st.sampled_from(["image/jpeg", "image/png"])),
        meta=draw(st.none() | meta),
        triage=draw(st.none() | verdicts),
    )
    return header, payload


def no_payload(headers: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return headers.map(lambda header: (header, b""))


messages = st.one_of(
    uploads(),
    no_payload(
        st.builds(
            protocol.hello,
            device_ids,
            text.filter(bool),
            st.lists(
                st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"), unique=True, max_size=16
            ),
        )
    ),
    no_payload(
        st.builds(
            protocol.challenge,
            hex_digits,
            hex_digits,
            st.integers(auth.MIN_ITERATIONS, auth.MAX_ITERATIONS),
        )
    ),
    no_payload(st.builds(protocol.auth, device_ids, st.just("ab" * 32))),
    no_payload(
        st.builds(
            protocol.auth_ok,
            device_ids,
            entity_ids,
            entity_ids,
            st.none() | schedules,
            st.none() | st.datetimes(timezones=st.just(UTC)),
        )
    ),
    no_payload(st.builds(protocol.ack, ids, st.integers(1, 2**53 - 1), st.booleans())),
    no_payload(
        st.builds(protocol.error, st.just("busy"), text, st.booleans(), st.none() | ids)
    ),
    no_payload(st.builds(protocol.ping, ids)),
    no_payload(st.builds(protocol.pong, ids)),
    no_payload(st.builds(protocol.command, ids, st.just("capture_now"))),
    no_payload(
        st.builds(
            lambda id, args: protocol.command(id, "set_schedule", **args),
            ids,
            schedules,
        )
    ),
    no_payload(
        st.builds(
            protocol.health,
            uptime_s=st.floats(0, 1e9),
            spool_depth=st.integers(0, 10**6),
            cpu_temp_c=st.none() | st.floats(-60, 150),
            throttled=st.lists(
                st.sampled_from(["under_voltage", "throttled"]), unique=True
            ),
        )
    ),
)


# Round trips


@SETTINGS
@given(frames=st.lists(messages, min_size=1, max_size=5), data=st.data())
def test_frames_survive_any_chunking(
    frames: list[tuple[dict[str, Any], bytes]], data: st.DataObject
) -> None:
    """Valid frames fed in arbitrary chunks come out equal and in order."""
    stream = b"".join(encode(header, payload) for header, payload in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    received: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += decoder.feed(stream[start:end])
    decoder.eof()

    assert [(f.header, f.payload) for f in received] == frames
    assert decoder.buffered_bytes == 0


def test_several_frames_in_one_chunk_come_out_in_order() -> None:
    """One feed holding several frames returns all of them in order."""
    stream = upload(1) + encode(protocol.ping(7)) + upload(2, b"other photo")
    frames = decode_all(stream)
    assert [f.type for f in frames] == ["upload", "ping", "upload"]
    assert [f.header["id"] for f in frames] == [1, 7, 2]
    assert frames[2].payload == b"other photo"


def test_partial_frame_is_buffered_until_complete() -> None:
    """Bytes of an unfinished frame wait in the buffer and count in buffered_bytes."""
    data = upload()
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered_bytes == len(data) - 1
    assert decoder.feed(data[-1:])[0].payload == PHOTO
    assert decoder.buffered_bytes == 0


def test_frame_layout_matches_the_documented_bytes() -> None:
    """The prefix is magic, version 1, flags 0 and two big-endian lengths."""
    data = encode(protocol.ping(5))
    header = b'{"type":"ping","id":5}'
    assert data == b"FE\x01\x00" + struct.pack(">II", len(header), 0) + header


# Garbage and hostile input


@SETTINGS
@given(garbage=st.binary(max_size=300))
def test_garbage_raises_only_protocol_error(garbage: bytes) -> None:
    """Arbitrary bytes either decode or raise ProtocolError, nothing else."""
    try:
        decode_all(garbage)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
        assert str(exc)


@SETTINGS
@given(body=st.binary(max_size=300), payload=st.binary(max_size=50))
def test_garbage_header_behind_valid_prefix_raises_protocol_error(
    body: bytes, payload: bytes
) -> None:
    """A well-formed prefix around random header bytes fails only as ProtocolError."""
    with pytest.raises(ProtocolError):
        decode_all(raw_frame(body, payload))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(
    document=st.dictionaries(
        st.sampled_from(["type", "id", "sha256", "device_id", "code", "x"]),
        json_values | st.sampled_from(protocol.MESSAGE_TYPES),
    )
)
def test_arbitrary_json_headers_raise_only_protocol_error(
    document: dict[str, Any],
) -> None:
    """Any JSON object as a header is accepted or refused with ProtocolError."""
    header = json.dumps(document).encode()
    try:
        decode_all(raw_frame(header))
    except ProtocolError as exc:
        assert exc.code in {"bad_json", "schema", "unknown_type"}


def test_four_gigabyte_payload_is_refused_from_the_prefix() -> None:
    """A prefix announcing a 4 GB payload is refused before anything is buffered."""
    prefix = PREFIX.pack(b"FE", 1, 0, 20, 0xFFFFFFFF)
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(prefix)
    assert caught.value.code == "payload_too_large"
    assert not caught.value.retryable
    assert decoder.buffered_bytes == 0


def test_payload_limit_is_configurable() -> None:
    """A decoder with a small max_payload_bytes refuses a payload one byte over."""
    photo = b"x" * 101
    assert error_code(upload(payload=photo), FrameDecoder(100)) == "payload_too_large"
    assert FrameDecoder(101).feed(upload(payload=photo))[0].payload == photo


def test_huge_header_is_refused_from_its_length_field() -> None:
    """A header length over 16 KiB is refused once its 4 bytes arrive."""
    too_long = PREFIX.pack(b"FE", 1, 0, MAX_HEADER_BYTES + 1, 0)[:8]
    assert error_code(too_long, FrameDecoder()) == "header_too_large"


@pytest.mark.parametrize(
    ("data", "code", "hint"),
    [
        (b"XX\x01\x00", "bad_magic", "expected b'FE'"),
        (b"GET / HTTP/1.1\r\n", "bad_magic", "HTTP"),
        (b"\x16\x03\x01\x00\xa5", "bad_magic", "TLS"),
        (b"FE\x02", "unsupported_version", "version 2"),
        (b"FE\x00", "unsupported_version", "version 0"),
        (b"FE\x01\x80", "bad_flags", "0x80"),
    ],
)
def test_bad_leading_bytes_are_refused_at_once(
    data: bytes, code: str, hint: str
) -> None:
    """Wrong magic, version or flags fail on the first wrong byte, with a hint."""
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder().feed(data)
    assert caught.value.code == code
    assert hint in str(caught.value)


def test_first_byte_of_magic_alone_is_buffered() -> None:
    """A lone b"F" could still start a frame, so it waits for more bytes."""
    decoder = FrameDecoder()
    assert decoder.feed(b"F") == []
    assert decoder.buffered_bytes == 1


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        b"",
        b"\xff\xfe{}",
        b'{"type": "ping", "id": NaN}',
        b'{"type": "ping", "id": 1, "id": 2}',
        b'{"type": "error", "code": "busy", "message": "\\ud800", "retryable": true}',
        b"[" * 5000 + b"]" * 5000,
        b'{"type": "ping", "id": ' + b"9" * 5000 + b"}",
    ],
    ids=[
        "text",
        "empty",
        "not-utf8",
        "nan",
        "duplicate-key",
        "lone-surrogate",
        "deep",
        "huge-int",
    ],
)
def test_non_json_header_is_bad_json(header: bytes) -> None:
    """Headers that are not strict UTF-8 JSON fail with code bad_json."""
    assert error_code(raw_frame(header)) == "bad_json"


@pytest.mark.parametrize("header", [b"[]", b'"ping"', b"1", b"null", b"true"])
def test_non_object_json_header_is_bad_json(header: bytes) -> None:
    """A JSON array, string, number or null as header fails with bad_json."""
    with pytest.raises(ProtocolError, match="expected an object") as caught:
        decode_all(raw_frame(header))
    assert caught.value.code == "bad_json"


def test_truncated_frame_fails_at_eof_and_may_be_retried() -> None:
    """EOF at any point inside a frame raises a retryable truncated error."""
    data = upload()
    for cut in range(1, len(data)):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) == []
        with pytest.raises(ProtocolError) as caught:
            decoder.eof()
        assert caught.value.code == "truncated"
        assert caught.value.retryable


def test_eof_between_frames_is_clean() -> None:
    """EOF right after a complete frame raises nothing."""
    decoder = FrameDecoder()
    decoder.feed(encode(protocol.ping(1)))
    decoder.eof()


def test_decoder_stays_failed_after_an_error() -> None:
    """After a ProtocolError every later feed and eof raises the same code."""
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"XX")
    for call in (lambda: decoder.feed(encode(protocol.ping(1))), decoder.eof):
        with pytest.raises(ProtocolError, match="already failed") as caught:
            call()
        assert caught.value.code == "bad_magic"


def test_bad_header_fails_before_its_payload_arrives() -> None:
    """A broken header is refused without waiting for the announced payload."""
    header = b'{"type":"upload","id":1}'
    prefix_and_header = raw_frame(header, b"x" * 10_000)[: 12 + len(header)]
    assert error_code(prefix_and_header, FrameDecoder()) == "schema"


# Schemas


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({"type": "hello", "device_id": DEVICE}, "agent_version"),
        ({"type": "hello", "device_id": "laptop", "agent_version": "1"}, "device_id"),
        (
            {"type": "hello", "device_id": DEVICE + "\n", "agent_version": "1"},
            "device_id",
        ),
        (
            {"type": "hello", "device_id": DEVICE, "agent_version": "1", "x": 1},
            "unexpected",
        ),
        ({"type": "ack", "id": 1.0, "capture_id": 2, "duplicate": False}, "id"),
        ({"type": "ack", "id": True, "capture_id": 2, "duplicate": False}, "id"),
        ({"type": "ack", "id": -1, "capture_id": 2, "duplicate": False}, "id"),
        ({"type": "ack", "id": 1, "capture_id": 0, "duplicate": False}, "capture_id"),
        ({"type": "ping", "id": 2**53}, "id"),
        (protocol.challenge("ab" * 32, "cd" * 16, 5), "iterations"),
        (protocol.challenge("AB" * 32, "cd" * 16, 100_000), "nonce"),
        (protocol.auth(DEVICE, "0" * 63), "proof"),
        (protocol.auth_ok(DEVICE, 0, 1), "coop_id"),
        (protocol.auth_ok(DEVICE, 1, 1, {"interval_s": 1}), "interval_s"),
        ({**protocol.auth_ok(DEVICE, 1, 1), "hub_time": "yesterday"}, "hub_time"),
        (protocol.hello(DEVICE, "1", ["Hub-Time"]), "features"),
        (protocol.hello(DEVICE, "1", ["hub_time", "hub_time"]), "features"),
        (protocol.health(clock_offset_s="3 h"), "clock_offset_s"),
        (protocol.command(1, "reboot"), "name"),
        (protocol.command(1, "capture_now", count=11), "count"),
        (protocol.command(1, "set_schedule"), "interval_s"),
        (
            protocol.command(1, "set_schedule", interval_s=60, active_end_utc="24:00"),
            "active_end_utc",
        ),
        (protocol.error("Bad Code", "x", False), "code"),
        (protocol.error("busy", "x" * 1025, True), "message"),
        (protocol.health(), "(top level)"),
        (protocol.health(throttled=["on_fire"]), "throttled"),
        (protocol.health(spool_depth=-1), "spool_depth"),
        (protocol.health(camera_error="line\nbreak"), "camera_error"),
        ({"id": 1}, '"type"'),
        ({"type": 7}, '"type"'),
    ],
)
def test_schema_breaking_headers_are_refused(
    header: dict[str, Any], field: str
) -> None:
    """Headers that break their schema fail with code schema, naming the field."""
    with pytest.raises(ProtocolError) as caught:
        encode(header)
    assert caught.value.code == "schema"
    assert field in str(caught.value)
    assert error_code(raw_frame(json.dumps(header).encode())) == "schema"


@pytest.mark.parametrize(
    ("header", "time_field"),
    [
        (
            protocol.upload_header(1, "0" * 64, "2026-05-01 06:30:00Z"),
            "captured_at",
        ),
        (protocol.upload_header(1, "0" * 64, "2026-05-01T06:30:00"), "captured_at"),
        (protocol.health(last_capture_at="yesterday"), "last_capture_at"),
    ],
)
def test_timestamps_need_rfc3339_with_offset(
    header: dict[str, Any], time_field: str
) -> None:
    """Times without the T separator or an offset are refused."""
    with pytest.raises(ProtocolError, match=time_field):
        encode(header, PHOTO if header["type"] == "upload" else b"")


def test_upload_triage_and_meta_are_checked() -> None:
    """An upload's triage verdict and meta must follow the schema too."""
    digest = hashlib.sha256(PHOTO).hexdigest()
    good = protocol.upload_header(
        1,
        digest,
        "2026-05-01T06:30:00+02:00",
        "image/png",
        meta={"camera": "imx708", "exposure_ms": 12.5, "hdr": False},
        triage={"label": "coccidiosis", "scores": {"coccidiosis": 0.8}},
    )
    assert decode_all(encode(good, PHOTO))[0].header == good
    for broken in (
        {**good, "triage": {"label": "flu"}},
        {**good, "triage": {"label": "healthy", "scores": {"healthy": 1.5}}},
        {**good, "meta": {"Camera": "x"}},
        {**good, "meta": {"nested": {"a": 1}}},
        {**good, "content_type": "image/gif"},
        {**good, "sha256": digest.upper()},
    ):
        with pytest.raises(ProtocolError) as caught:
            encode(broken, PHOTO)
        assert caught.value.code == "schema"


def test_unknown_type_has_its_own_code() -> None:
    """A header whose type is not a known message fails with unknown_type."""
    assert error_code(raw_frame(b'{"type": "reboot"}')) == "unknown_type"
    with pytest.raises(ProtocolError, match="expected one of hello"):
        encode({"type": "reboot"})


def test_only_uploads_carry_a_payload() -> None:
    """An upload needs a payload and every other type must have none."""
    empty_upload = protocol.upload_header(1, "0" * 64, "2026-05-01T06:30:00Z")
    with pytest.raises(ProtocolError, match="empty payload"):
        encode(empty_upload)
    with pytest.raises(ProtocolError, match="only upload"):
        encode(protocol.ping(1), b"x")
    assert error_code(raw_frame(b'{"type":"ping","id":1}', b"x")) == "schema"


def test_every_message_type_has_a_valid_schema() -> None:
    """Each message type and the event have a schema file that compiles."""
    for name in (*protocol.MESSAGE_TYPES, "event", "common"):
        schema = schemas.load(name)
        assert schema["$id"].endswith(f"/{name}.json")
        protocol.schema_validator(name).check_schema(schema)
    assert protocol.DEVICE_TO_HUB | protocol.HUB_TO_DEVICE == set(
        protocol.MESSAGE_TYPES
    )


def reference_validator(name: str) -> Any:
    """A stock jsonschema validator resolving common.json as other tools would."""
    registry = Registry().with_resource(
        schemas.load("common")["$id"],
        Resource.from_contents(schemas.load("common"), DRAFT202012),
    )
    return Draft202012Validator(schemas.load(name), registry=registry)


@SETTINGS
@given(message=messages)
def test_schema_files_accept_what_the_codec_accepts(
    message: tuple[dict[str, Any], bytes],
) -> None:
    """A stock validator reading the raw files accepts every valid message."""
    header, _ = message
    errors = list(reference_validator(header["type"]).iter_errors(header))
    assert errors == []


def test_schemas_agree_with_python_constants() -> None:
    """Labels, command names and iteration bounds in the schemas match the code."""
    common = schemas.load("common")["$defs"]
    assert tuple(common["label"]["enum"]) == LABELS
    command = schemas.load("command")["properties"]["name"]["enum"]
    assert tuple(command) == protocol.COMMAND_NAMES
    iterations = schemas.load("challenge")["properties"]["iterations"]
    assert iterations["minimum"] == auth.MIN_ITERATIONS
    assert iterations["maximum"] == auth.MAX_ITERATIONS


def test_schema_load_refuses_unknown_names() -> None:
    """schemas.load names the known schemas when asked for a missing one."""
    with pytest.raises(FileNotFoundError, match="hello"):
        schemas.load("nope")
    with pytest.raises(FileNotFoundError):
        schemas.load("../pyproject")


# Encoding


def test_encode_refuses_what_cannot_be_strict_json() -> None:
    """NaN, bytes and other non-JSON values fail with bad_json when unvalidated."""
    for header in ({"type": "ping", "id": float("nan")}, {"type": "ping", "id": b""}):
        with pytest.raises(ProtocolError) as caught:
            encode(header, validate=False)
        assert caught.value.code == "bad_json"


def test_encode_refuses_oversized_header_and_payload() -> None:
    """encode enforces the header limit and the payload limit it is given."""
    header = {"type": "ping", "id": 1, "pad": "x" * MAX_HEADER_BYTES}
    with pytest.raises(ProtocolError) as caught:
        encode(header, validate=False)
    assert caught.value.code == "header_too_large"
    with pytest.raises(ProtocolError) as caught:
        encode(
            protocol.upload_header(1, "0" * 64, "2026-05-01T06:30:00Z"),
            PHOTO,
            max_payload_bytes=4,
        )
    assert caught.value.code == "payload_too_large"


def test_unvalidated_encode_is_still_checked_by_the_decoder() -> None:
    """validate=False skips the local check but the peer still refuses the frame."""
    data = encode({"type": "ping"}, validate=False)
    assert error_code(data) == "schema"


def test_protocol_error_becomes_a_valid_error_frame() -> None:
    """ProtocolError.to_header builds an error frame that passes its schema."""
    exc = ProtocolError("payload_too_large", "too big " * 500)
    header = exc.to_header(id=4)
    frame = decode_all(encode(header))[0]
    assert frame.header["code"] == "payload_too_large"
    assert frame.header["retryable"] is False
    assert frame.header["id"] == 4
    assert ProtocolError("custom_code", "x", retryable=True).retryable


def test_protocol_error_survives_pickling() -> None:
    """Code, message and retryable survive a trip through a process pool."""
    exc = ProtocolError("internal", "store failed", retryable=False)
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own bytes)
    assert (copy.code, str(copy), copy.retryable) == ("internal", "store failed", False)


def test_verify_upload_detects_a_corrupted_photo() -> None:
    """verify_upload accepts the right payload and flags a changed one as retryable."""
    frame = decode_all(upload())[0]
    protocol.verify_upload(frame)
    corrupted = Frame(frame.header, PHOTO[:-1] + b"\x00")
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_upload(corrupted)
    assert caught.value.code == "checksum_mismatch"
    assert caught.value.retryable


def test_datetimes_become_rfc3339_text() -> None:
    """Aware datetimes are written with Z for UTC; naive ones are refused."""
    moment = datetime(2026, 5, 1, 6, 30, tzinfo=UTC)
    header = protocol.upload_header(1, "0" * 64, moment)
    assert header["captured_at"] == "2026-05-01T06:30:00.000Z"
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert protocol.format_time(plus_two) == "2026-05-01T08:30:00.000+02:00"
    assert protocol.health(last_capture_at=moment)["last_capture_at"].endswith("Z")
    with pytest.raises(ValueError, match="no time zone"):
        protocol.format_time(datetime(2026, 5, 1))


def test_decoder_refuses_an_impossible_limit() -> None:
    """A max_payload_bytes that the u32 length field cannot express is a bug."""
    with pytest.raises(ValueError, match="max_payload_bytes"):
        FrameDecoder(2**32)
