"""Channel secrets at rest: webhook and Slack URLs and signing secrets are stored as Fernet tokens.

The keys come from `KAHN_ENCRYPTION_KEY` (comma-separated Fernet keys, the first encrypts, every
one decrypts: rotation adds a new key in front, and `secret_rotated` rewrites old tokens); OSS mode
derives one from the secret key when none is set. A database dump then holds no secret in clear.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["EncryptionKeyMissing", "InvalidToken", "secret_decrypt", "secret_encrypt", "secret_rotated"]


class EncryptionKeyMissing(ImproperlyConfigured):
    """Cloud mode stores no channel secret without KAHN_ENCRYPTION_KEY."""


def _derived_key(secret_key: str) -> bytes:
    digest = hashlib.sha256(f"kahn-alerts-encryption:{secret_key}".encode()).digest()
    return base64.urlsafe_b64encode(digest)


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "KAHN_ENCRYPTION_KEY must be comma-separated Fernet keys (32 url-safe base64-encoded bytes each)"
        ) from exc


def _keys() -> MultiFernet:
    configured = tuple(k.strip() for k in settings.KAHN_ENCRYPTION_KEY.split(",") if k.strip())
    if not configured:
        if settings.CLOUD:
            raise EncryptionKeyMissing(
                "cloud mode needs KAHN_ENCRYPTION_KEY (Fernet keys) to store alert channels' URLs and secrets"
            )
        configured = (_derived_key(settings.SECRET_KEY).decode(),)
    return _fernet(configured)


def secret_encrypt(value: str) -> str:
    return _keys().encrypt(value.encode()).decode()


def secret_decrypt(token: str) -> str:
    """The clear value; InvalidToken if no configured key opens it."""
    return _keys().decrypt(token.encode()).decode()


def secret_rotated(token: str) -> str:
    """The same value encrypted with the first key."""
    return _keys().rotate(token.encode()).decode()
