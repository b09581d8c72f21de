"""Device and user credentials: both sides of the challenge, and API tokens.

A device holds a random secret. The hub never stores it: it keeps a salt and
``verifier = PBKDF2-HMAC-SHA256(secret, salt, iterations)``. On connect the
hub sends a fresh nonce with the salt and iteration count, and the device
proves it knows the secret with ``hex(HMAC-SHA256(verifier, nonce))``. The
secret never crosses the network and a captured proof is useless for any
other nonce.

The verifier is itself enough to answer challenges, so the ``devices`` table
must be guarded like the secrets; revoking a device and issuing a new secret
is the cure for a leak. PBKDF2 only keeps the original secret from being
recovered from a stolen verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

DEFAULT_ITERATIONS: Final = 100_000
"""PBKDF2 rounds: about 0.3 s on a Pi Zero 2 W, done once per agent start.

The secrets are random, not passwords, so the cost only has to slow down an
attacker who stole the ``devices`` table; a slower device would pay it on
every restart.
"""

MIN_ITERATIONS: Final = 10_000
"""Fewest rounds a hub may ask for (the schema of ``challenge`` agrees)."""

MAX_ITERATIONS: Final = 2_000_000
"""Most rounds a device computes, so a rogue hub cannot pin its CPU for minutes."""

SECRET_BYTES: Final = 32
SALT_BYTES: Final = 16
NONCE_BYTES: Final = 32
TOKEN_BYTES: Final = 32
DEVICE_ID_PREFIX: Final = "dev_"
TOKEN_PREFIX: Final = "fet_"  # noqa: S105 (a public prefix, not a secret)
"""Prefix of user API tokens, so secret scanners and people recognise them."""

VERIFIER_BYTES: Final = hashlib.sha256().digest_size


def new_secret() -> str:
    """A device secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def new_device_id() -> str:
    """A fresh device id such as ``dev_3f9a0c1d2e4b5a6978ab`` (80 random bits)."""
    return DEVICE_ID_PREFIX + secrets.token_hex(10)


def new_salt() -> str:
    """A fresh PBKDF2 salt as lower-case hex."""
    return secrets.token_hex(SALT_BYTES)


def new_nonce() -> str:
    """A challenge nonce as 64 lower-case hex digits; use each exactly once."""
    return secrets.token_hex(NONCE_BYTES)


def make_verifier(
    secret: str, salt: str | None = None, iterations: int = DEFAULT_ITERATIONS
) -> tuple[str, bytes, int]:
    """Return ``(salt_hex, verifier, iterations)`` for the hub to store.

    A new random salt is drawn unless ``salt`` (hex) is given; the device
    passes the hub's salt to derive the same verifier.
    """
    salt_hex = new_salt() if salt is None else salt
    return salt_hex, _derive(secret, salt_hex, iterations), iterations


def _derive(secret: str, salt_hex: str, iterations: int) -> bytes:
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(
            f"iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, "
            f"got {iterations}"
        )
    try:
        salt_bytes = bytes.fromhex(salt_hex)
    except ValueError:
        raise ValueError(f"salt must be hex digits, got {salt_hex[:80]!r}") from None
    if not secret:
        raise ValueError("device secret is empty; check the agent's configuration")
    return hashlib.pbkdf2_hmac(
        "sha256", secret.encode("utf-8"), salt_bytes, iterations, VERIFIER_BYTES
    )


def proof(verifier: bytes, nonce: str) -> str:
    """The answer to a challenge: hex HMAC-SHA256 keyed by the verifier."""
    return hmac.new(verifier, nonce.encode("utf-8"), hashlib.sha256).hexdigest()


def check_proof(verifier: bytes, nonce: str, proof: str) -> bool:
    """True when ``proof`` answers ``nonce``; constant time in the proof."""
    expected = hmac.new(verifier, nonce.encode("utf-8"), hashlib.sha256).hexdigest()
    received = proof.encode("utf-8", errors="replace")
    return hmac.compare_digest(expected.encode("ascii"), received)


class DeviceCredentials:
    """The device side: its id and secret, and the verifier derived once.

    PBKDF2 is the slow step; the hub sends the same salt and iterations on
    every connection, so reconnecting after a Wi-Fi drop costs one HMAC.
    """

    def __init__(self, device_id: str, secret: str) -> None:
        self.device_id = device_id
        self._secret = secret
        self._cached: tuple[str, int, bytes] | None = None

    def __repr__(self) -> str:
        return f"DeviceCredentials(device_id={self.device_id!r}, secret=<hidden>)"

    def verifier(self, salt: str, iterations: int) -> bytes:
        """The verifier for the hub's ``salt`` and ``iterations``, cached."""
        if self._cached is None or self._cached[:2] != (salt, iterations):
            self._cached = (salt, iterations, _derive(self._secret, salt, iterations))
        return self._cached[2]

    def answer(self, nonce: str, salt: str, iterations: int) -> str:
        """The proof for a ``challenge`` frame's nonce, salt and iterations."""
        return proof(self.verifier(salt, iterations), nonce)


def new_token() -> str:
    """A user API token: ``fet_`` and 32 random bytes, shown to the user once."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """The sha256 hex stored instead of a token.

    Tokens carry 256 random bits, so a fast unsalted hash is safe and lets the
    hub find a token's row with one indexed lookup.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
