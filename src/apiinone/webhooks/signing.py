"""Standard Webhooks signatures, so receivers can use any off-the-shelf verifier.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` with HMAC-SHA256 keyed by the
bytes of the account's ``whsec_`` secret (base64 after the prefix). During a secret rotation the
old and new secrets both sign, space-separated, so receivers can switch over without a gap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

__all__ = ["SECRET_PREFIX", "new_webhook_secret", "sign", "verify", "webhook_headers"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret


def new_webhook_secret() -> str:
    """A fresh secret: ``whsec_`` + base64 of 32 random bytes (the format receivers expect)."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def _secret_bytes(secret: str) -> bytes:
    """Key bytes of a secret; a malformed secret is a bug on our side, hence ValueError."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Accept unpadded base64 like the reference library does.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not valid base64") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per secret, space-separated."""
    if isinstance(secrets, str):  # a lone str is a Sequence too; signing per character is a bug
        raise TypeError("secrets must be a sequence of secrets, not a single string")
    if not secrets:
        raise ValueError("at least one webhook secret is needed")
    return " ".join(
        "v1," + base64.b64encode(_signature(_secret_bytes(s), msg_id, timestamp, body)).decode("ascii")
        for s in secrets
    )


def webhook_headers(
    secrets: Sequence[str], msg_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers for one delivery attempt; ``msg_id`` must stay the same across retries."""
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """Check a delivery like a receiver would (our tests and sample clients); never raises on input."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp_text or not signatures:
        return False
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _signature(_secret_bytes(secret), msg_id, timestamp, body)
    for item in signatures.split(" "):
        version, _, encoded = item.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return True
    return False
