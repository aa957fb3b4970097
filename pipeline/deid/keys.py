"""Keyed, deterministic replacements: the same secret and input give the same output anywhere."""

from __future__ import annotations

import hmac
import os
import secrets
import warnings
from functools import cache

SECRET_ENV = "DICOM_DEID_SECRET"
MAX_SHIFT_DAYS = 3650


def as_key(secret: str | bytes) -> bytes:
    """A usable HMAC key; an empty secret would make every replacement guessable."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the de-identification secret is empty")
    return key


@cache
def _process_secret() -> bytes:
    warnings.warn(
        f"no secret given and {SECRET_ENV} is not set: using a random secret for this process, "
        "so new UIDs and date shifts will not be reproducible across processes or runs",
        stacklevel=4,
    )
    return secrets.token_bytes(32)


def resolve_secret(secret: str | bytes | None) -> bytes:
    """The secret from the argument, else the environment, else a random one (with a warning)."""
    if secret is not None:
        return as_key(secret)
    from_env = os.environ.get(SECRET_ENV)
    return as_key(from_env) if from_env else _process_secret()


def new_uid(key: bytes, uid: str) -> str:
    """2.25 form of an RFC 9562 version-8 UUID made of the first 128 bits of HMAC-SHA256(key, uid)."""
    raw = bytearray(hmac.digest(key, uid.encode("ascii"), "sha256")[:16])  # one-shot: no HMAC object
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return f"2.25.{int.from_bytes(raw, 'big')}"


def date_shift_days(key: bytes, identity: bytes) -> int:
    """Days (1 to MAX_SHIFT_DAYS, into the past) that every date of one patient moves."""
    digest = hmac.digest(key, b"dicom-deid/date-shift\x00" + identity, "sha256")  # one-shot, as `new_uid`
    return -(1 + int.from_bytes(digest[:8], "big") % MAX_SHIFT_DAYS)


def patient_pseudonym(key: bytes, identity: bytes) -> str:
    """A research ID for one patient identity: 'P' and 20 hex digits of HMAC-SHA256(key, identity), a
    valid LO and PN value that reveals nothing without the key."""
    digest = hmac.digest(key, b"dicom-deid/patient\x00" + identity, "sha256").hex()
    return "P" + digest[:20].upper()
