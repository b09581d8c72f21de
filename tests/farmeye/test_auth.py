"""Tests of device secrets, the challenge-response proof and API tokens."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmeye import auth, protocol

FAST = auth.MIN_ITERATIONS
"""Cheapest allowed PBKDF2 cost, so the tests stay fast on a busy machine."""


def test_secret_is_urlsafe_with_32_random_bytes() -> None:
    """new_secret returns URL-safe text decoding to 32 bytes, fresh every call."""
    secret = auth.new_secret()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert secret != auth.new_secret()


def test_device_id_fits_the_wire_schema() -> None:
    """new_device_id has the dev_ prefix and passes the hello schema."""
    device_id = auth.new_device_id()
    assert device_id.startswith("dev_")
    protocol.encode(protocol.hello(device_id, "1.0"))
    assert device_id != auth.new_device_id()


def test_verifier_is_reproducible_from_the_salt() -> None:
    """The same secret, salt and iterations give the same verifier; a new salt not."""
    salt, verifier, iterations = auth.make_verifier("s3cret", iterations=FAST)
    assert iterations == FAST
    assert len(verifier) == 32
    assert auth.make_verifier("s3cret", salt, FAST) == (salt, verifier, FAST)
    assert auth.make_verifier("s3cret", iterations=FAST)[1] != verifier
    assert auth.make_verifier("other", salt, FAST)[1] != verifier


def test_verifier_matches_pbkdf2_hmac_sha256() -> None:
    """The verifier is plain PBKDF2-HMAC-SHA256, reproducible in any language."""
    _, verifier, _ = auth.make_verifier("password", "73616c74", 10_000)
    # Computed independently: openssl kdf -keylen 32 -kdfopt digest:SHA256
    # -kdfopt pass:password -kdfopt hexsalt:73616c74 -kdfopt iter:10000 PBKDF2
    assert verifier.hex() == (
        "5ec02b91a4b59c6f59dd5fbe4ca649ece4fa8568cdb8ba36cf41426e8805522b"
    )


@pytest.mark.parametrize(
    ("salt", "iterations", "secret", "message"),
    [
        ("00" * 16, FAST - 1, "s", "iterations"),
        ("00" * 16, auth.MAX_ITERATIONS + 1, "s", "iterations"),
        ("not hex", FAST, "s", "hex"),
        ("00" * 16, FAST, "", "empty"),
    ],
)
def test_make_verifier_refuses_bad_parameters(
    salt: str, iterations: int, secret: str, message: str
) -> None:
    """Out-of-range iterations, non-hex salt and empty secrets raise ValueError."""
    with pytest.raises(ValueError, match=message):
        auth.make_verifier(secret, salt, iterations)


def test_documented_test_vector() -> None:
    """The verifier and proof match the vector in docs/protocol.md."""
    device = auth.DeviceCredentials(
        "dev_3f9a0c1d2e4b5a6978ab", "uD1pZ3Vz7cbrXKgxN4Zr0bW6yq9E3tFQ2hKjLmNoPqA"
    )
    salt = "8f3c2a7d9e1b4c6a0f5d3e2b1a9c8d7e"
    nonce = "5b1f0c7e9a2d4f6b8c3e1a0d7f9b2c4e6a8d0f1b3c5e7a9d2f4b6c8e0a1d3f5b"
    assert device.verifier(salt, 100_000).hex() == (
        "861d54f98ecef6c89b2b19adbeacb83fb2faa0f38f2f86b0d0017ef14ea65e87"
    )
    assert device.answer(nonce, salt, 100_000) == (
        "21ef7a85a09eaa1a65380b6c7094dda68dfd3f5b801e372748d9a5f5504b9a12"
    )


def test_proof_is_accepted_only_for_its_nonce_and_verifier() -> None:
    """check_proof accepts the right proof and refuses any other nonce or key."""
    _, verifier, _ = auth.make_verifier("s3cret", iterations=FAST)
    nonce = auth.new_nonce()
    answer = auth.proof(verifier, nonce)
    assert re.fullmatch(r"[0-9a-f]{64}", answer)
    assert auth.check_proof(verifier, nonce, answer)
    assert not auth.check_proof(verifier, auth.new_nonce(), answer)
    assert not auth.check_proof(b"\x00" * 32, nonce, answer)
    assert not auth.check_proof(verifier, nonce, answer.upper())


@settings(max_examples=200, deadline=None)
@given(garbage=st.text(max_size=80))
def test_check_proof_never_raises_on_garbage(garbage: str) -> None:
    """Any string as a proof, even non-ASCII, is refused without an exception."""
    assert not auth.check_proof(b"k" * 32, "00" * 32, garbage)


def test_nonces_are_fresh_hex() -> None:
    """new_nonce returns 64 hex digits that never repeat."""
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(re.fullmatch(r"[0-9a-f]{64}", n) for n in nonces)


def test_handshake_over_frames_authenticates_the_device() -> None:
    """hello, challenge and auth frames carry enough for the hub to check the proof."""
    device_id, secret = auth.new_device_id(), auth.new_secret()
    salt, verifier, iterations = auth.make_verifier(secret, iterations=FAST)
    device = auth.DeviceCredentials(device_id, secret)
    hub, agent = protocol.FrameDecoder(), protocol.FrameDecoder()

    hello = hub.feed(protocol.encode(protocol.hello(device_id, "0.1.0")))[0]
    nonce = auth.new_nonce()
    sent = protocol.challenge(nonce, salt, iterations)
    challenge = agent.feed(protocol.encode(sent))[0].header
    proof = device.answer(
        challenge["nonce"], challenge["salt"], challenge["iterations"]
    )
    reply = hub.feed(protocol.encode(protocol.auth(device_id, proof)))[0]

    assert hello.header["device_id"] == reply.header["device_id"] == device_id
    assert auth.check_proof(verifier, nonce, reply.header["proof"])


def test_device_credentials_derive_the_verifier_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reconnects with the same salt reuse the verifier; a new salt derives again."""
    calls: list[str] = []
    derive = auth._derive

    def counting(secret: str, salt: str, iterations: int) -> bytes:
        calls.append(salt)
        return derive(secret, salt, iterations)

    monkeypatch.setattr(auth, "_derive", counting)
    device = auth.DeviceCredentials("dev_0123456789", "s3cret")
    first = device.answer("aa" * 32, "00" * 16, FAST)
    assert device.answer("aa" * 32, "00" * 16, FAST) == first
    assert device.answer("bb" * 32, "00" * 16, FAST) != first
    device.answer("aa" * 32, "11" * 16, FAST)
    assert calls == ["00" * 16, "11" * 16]


def test_device_credentials_refuse_a_rogue_iteration_count() -> None:
    """A hub asking for more rounds than MAX_ITERATIONS gets a ValueError."""
    device = auth.DeviceCredentials("dev_0123456789", "s3cret")
    with pytest.raises(ValueError, match="iterations"):
        device.answer("aa" * 32, "00" * 16, 10**9)


def test_device_credentials_repr_hides_the_secret() -> None:
    """repr() shows the device id but never the secret, so logs stay safe."""
    device = auth.DeviceCredentials("dev_0123456789", "hunter2-secret")
    assert "hunter2" not in repr(device)
    assert "dev_0123456789" in repr(device)


def test_tokens_are_prefixed_random_and_hashed_stably() -> None:
    """new_token is fet_ plus 32 random bytes; token_hash is its sha256 hex."""
    token = auth.new_token()
    assert token.startswith(auth.TOKEN_PREFIX)
    assert token != auth.new_token()
    assert auth.token_hash(token) == auth.token_hash(token)
    assert re.fullmatch(r"[0-9a-f]{64}", auth.token_hash(token))
    assert auth.token_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_default_iterations_are_accepted_by_the_schema() -> None:
    """DEFAULT_ITERATIONS lies within the range a challenge frame allows."""
    assert auth.MIN_ITERATIONS <= auth.DEFAULT_ITERATIONS <= auth.MAX_ITERATIONS
    header = protocol.challenge(auth.new_nonce(), auth.new_salt(), 100_000)
    protocol.encode(header)
