"""Secrets at rest: upstream keys entered in the console are sealed with a key derived from the
instance's secret key (HKDF-SHA256 → Fernet: AES-128-CBC + HMAC-SHA256), so the database file
alone never reveals them. Changing ``APIINONE_SECRET_KEY`` makes stored keys unreadable: such a
route then counts as not configured until its key is entered again."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"apiinone upstream route keys v1"


class SealError(ValueError):
    """A sealed value that this instance's secret key cannot open (changed key, or tampering)."""


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("a secret key is needed to seal secrets")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, ValueError) as exc:
            raise SealError("the sealed value cannot be opened with this instance's secret key") from exc
