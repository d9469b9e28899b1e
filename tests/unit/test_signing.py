"""Our webhook signatures must verify with the reference Standard Webhooks library."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from apiinone.webhooks.signing import new_webhook_secret, sign, verify, webhook_headers

BODY = orjson.dumps({"id": "task_123", "status": "succeeded", "images": [{"url": "https://x/1.png"}]})


def test_new_secret_format() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert new_webhook_secret() != secret


def test_known_vector_from_the_spec() -> None:
    signature = sign(
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_reference_library_verifies_our_headers() -> None:
    secret = new_webhook_secret()
    headers = webhook_headers([secret], "msg_abc", BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_abc"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert Webhook(secret).verify(BODY, headers) == orjson.loads(BODY)
    assert verify(secret, headers, BODY)


def test_both_secrets_verify_during_rotation() -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    headers = webhook_headers([new, old], "msg_rot", BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in headers["webhook-signature"].split(" "))
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    assert verify(old, headers, BODY) and verify(new, headers, BODY)
    stranger = new_webhook_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(BODY, headers)
    assert not verify(stranger, headers, BODY)


def test_tampered_body_fails() -> None:
    secret = new_webhook_secret()
    headers = webhook_headers([secret], "msg_t", BODY)
    tampered = BODY.replace(b"succeeded", b"failed")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
    assert not verify(secret, headers, tampered)


def test_tampered_id_or_timestamp_fails() -> None:
    secret = new_webhook_secret()
    headers = webhook_headers([secret], "msg_t", BODY)
    assert not verify(secret, {**headers, "webhook-id": "msg_other"}, BODY)
    ts = int(headers["webhook-timestamp"])
    assert not verify(secret, {**headers, "webhook-timestamp": str(ts + 1)}, BODY)


def test_timestamp_tolerance() -> None:
    secret = new_webhook_secret()
    headers = webhook_headers([secret], "msg_old", BODY, now=time.time() - 3600)
    assert not verify(secret, headers, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)
    assert verify(secret, headers, BODY, tolerance_s=7200)
    assert verify(secret, headers, BODY, now=time.time() - 3600)


def test_verify_is_header_case_insensitive_and_rejects_junk() -> None:
    secret = new_webhook_secret()
    headers = webhook_headers([secret], "msg_c", BODY)
    assert verify(secret, {k.upper(): v for k, v in headers.items()}, BODY)
    assert not verify(secret, {}, BODY)
    assert not verify(secret, {**headers, "webhook-timestamp": "soon"}, BODY)
    assert not verify(secret, {**headers, "webhook-signature": "v2,abc v1,!!!notbase64"}, BODY)


def test_timestamp_is_integer_seconds() -> None:
    headers = webhook_headers([new_webhook_secret()], "msg_i", BODY, now=1700000000.9)
    assert headers["webhook-timestamp"] == "1700000000"


def test_secret_without_padding_matches_reference() -> None:
    raw = b"0123456789abcdefghijklmnopqrstu"  # 31 bytes, so its base64 ends in "="
    secret = "whsec_" + base64.b64encode(raw).decode().rstrip("=")
    headers = webhook_headers([secret], "msg_p", BODY)
    Webhook(secret).verify(BODY, headers)


def test_misuse_is_loud() -> None:
    secret = new_webhook_secret()
    with pytest.raises(TypeError):
        sign(secret, "msg", 1, BODY)
    with pytest.raises(ValueError):
        sign([], "msg", 1, BODY)
    with pytest.raises(ValueError):
        sign(["whsec_!!!"], "msg", 1, BODY)
    with pytest.raises(ValueError):
        sign(["whsec_"], "msg", 1, BODY)
