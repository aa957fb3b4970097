"""The de-identification secret: every process reads its own, and only a keyed fingerprint travels."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from .deid.keys import SECRET_ENV, as_key

SECRET_FILE_ENV = "DICOM_DEID_SECRET_FILE"
_HOW = (f"set {SECRET_ENV} or {SECRET_FILE_ENV} (a mounted secret file) in its environment, "
        "or send it with --send-secret over a tls:// scheduler")
# Secrets a driver sent with --send-secret, by fingerprint; only ever filled by SendSecret.setup
# (pipeline/sendsecret.py), or for a job whose worker runs in the driver's own process (`held_here`).
_sent: dict[str, bytes] = {}


class SecretError(Exception):
    """A process has no secret, or another one than the job's: reported in one line."""


def read_secret_file(path: str | os.PathLike) -> bytes:
    """A secret file's bytes without surrounding whitespace (as Kubernetes and `echo` leave a newline)."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc.strerror}") from exc
    if not secret:
        raise SecretError(f"the secret file {path} is empty")
    return secret


@cache
def _cached_file(path: str) -> bytes:
    return read_secret_file(path)


def from_environment() -> bytes | None:
    """This process's own secret: DICOM_DEID_SECRET, else the file DICOM_DEID_SECRET_FILE names."""
    value = os.environ.get(SECRET_ENV)
    if value:
        return as_key(os.fsencode(value))  # the bytes as set, also when they are not UTF-8
    path = os.environ.get(SECRET_FILE_ENV)
    return _cached_file(path) if path else None


def fingerprint(key: bytes) -> str:
    """Tells two secrets apart without revealing either."""
    return hmac.new(key, b"dicom-deid/job-fingerprint", hashlib.sha256).hexdigest()[:16]


def _where() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return f"process {os.getpid()} on {socket.gethostname()}"


def _problem(key: bytes | None, expected: str) -> str | None:
    if key is None:
        return f"has no de-identification secret: {_HOW}"
    if fingerprint(key) != expected:
        return (f"holds another de-identification secret than the driver (fingerprint {fingerprint(key)}, "
                f"the job's is {expected}): give every process the same one")
    return None


def worker_key(expected: str) -> bytes:
    """The secret whose fingerprint the driver sent, from what this process holds; else a clear refusal."""
    key = _sent.get(expected) or from_environment()
    problem = _problem(key, expected)
    if problem:
        raise SecretError(f"{_where()} {problem}")
    return key


def secret_problem(expected: str) -> str | None:
    """Why this process cannot work for the job with this fingerprint (to follow its name), or None."""
    try:
        return _problem(_sent.get(expected) or from_environment(), expected)
    except SecretError as exc:  # an unreadable secret file
        return f"cannot use its secret: {exc}"


@contextmanager
def held_here(key: bytes | None) -> Iterator[None]:
    """Give a worker running in this very process the driver's secret, in memory, for as long as the job."""
    if key is None:
        yield
        return
    hold(key)
    try:
        yield
    finally:
        release(key)


def hold(key: bytes) -> None:
    """Keep a secret the driver handed this process, for workers here to find by its fingerprint."""
    _sent[fingerprint(key)] = key


def release(key: bytes) -> None:
    """Forget a secret `hold` kept, once its job is done here."""
    _sent.pop(fingerprint(key), None)
