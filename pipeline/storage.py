"""One way to reach objects on disk or S3, with retries, so no stage special-cases a backend."""

from __future__ import annotations

import errno
import json
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec
from fsspec import AbstractFileSystem

READ_THREADS = 32  # reads in flight where the filesystem has no async API of its own
log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 10.0
ATTEMPTS = 5

# errno values that say "try again later" rather than "this will never work" (s3fs maps S3 503/SlowDown
# to EBUSY and 500/InternalError to EREMOTEIO).
TRANSIENT_ERRNOS = frozenset({
    errno.EAGAIN, errno.EBUSY, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ECONNRESET,
    errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.ENETUNREACH, errno.EPIPE,
    errno.ETIMEDOUT, getattr(errno, "EREMOTEIO", 121),
})
TRANSIENT_AWS_CODES = frozenset({
    "BandwidthLimitExceeded", "InternalError", "OperationAborted", "PriorRequestNotComplete",
    "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException", "RequestTimeout",
    "RequestTimeoutException", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "TooManyRequestsException",
})


def _transient_types() -> tuple[type[BaseException], ...]:
    """Network error classes that are always worth a retry, the optional S3 stack's only once it is loaded:
    no error of a library not imported yet can exist, and importing aiohttp costs a small job ~0.3 s."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None:
        found += [boto.ConnectionError, boto.HTTPClientError]
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        found += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError]
    return tuple(found)


def _aws_transient(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return code in TRANSIENT_AWS_CODES or status == 429 or status >= 500


def is_transient(exc: BaseException) -> bool:
    """True when an error (or one it was raised from) is the kind that goes away if you wait."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(current, _transient_types()) or _aws_transient(current):
            return True
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): exponential with full jitter."""
    return random.uniform(0, min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2 ** (attempt - 1)))


def retry(fn: Callable[..., T], *args: Any, attempts: int = ATTEMPTS, **kw: Any) -> T:
    """Call fn(*args, **kw), retrying transient I/O errors so a flaky network does not fail a run."""
    for attempt in range(1, attempts):
        try:
            return fn(*args, **kw)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Type only: messages may carry object keys, which can hold patient data.
            log.warning("transient %s, retry %d of %d", type(exc).__name__, attempt, attempts - 1)
            time.sleep(backoff(attempt))
    return fn(*args, **kw)


def _options(storage_options: dict | str | None) -> dict:
    if isinstance(storage_options, str):
        return json.loads(storage_options) if storage_options.strip() else {}
    return dict(storage_options or {})


def filesystem(url: str, storage_options: dict | str | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for a URL and the path inside it; options are a dict or a JSON string."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    # Settings for object stores are meaningless (and sometimes rejected) on local disk.
    options = {} if protocol in ("file", "local") else _options(storage_options)
    return fsspec.core.url_to_fs(url, **options)


def is_local(url: str) -> bool:
    """True for plain paths and file:// URLs, which only the machine that names them can read."""
    return (fsspec.core.split_protocol(url)[0] or "file") in ("file", "local")


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or local path with single slashes."""
    base = re.sub(r"(?<![:/])/+$", "", url)
    tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
    if not tail:
        return base or url
    return base + tail if base.endswith("/") else f"{base}/{tail}"


def _local_range(path: str, start: int | None, end: int | None) -> bytes | Exception:
    """Bytes [start, end) of a local file (to its end when `end` is None), or the error."""
    try:
        with open(path, "rb") as f:
            if start:
                f.seek(start)
            return f.read() if end is None else f.read(max(0, end - (start or 0)))
    except Exception as exc:  # returned, as cat_ranges(on_error="return") does
        return exc


def _cat_ranges(fs: AbstractFileSystem, paths: list[str], starts: list,
                ends: list) -> list[bytes | Exception]:
    """fsspec's cat_ranges, which is concurrent only on async filesystems; threads make it so elsewhere."""
    if getattr(fs, "async_impl", False):
        return list(fs.cat_ranges(paths, starts, ends, on_error="return"))
    if "file" in fs.protocol:  # local reads take microseconds: a pool would cost more than it hides
        return [_local_range(path, start, end) for path, start, end in zip(paths, starts, ends, strict=True)]

    def one(args: tuple) -> bytes | Exception:
        try:
            return fs.cat_file(*args)
        except Exception as exc:  # returned, as cat_ranges(on_error="return") does
            return exc

    with ThreadPoolExecutor(min(READ_THREADS, max(1, len(paths)))) as pool:
        return list(pool.map(one, zip(paths, starts, ends, strict=True)))


def read_many(fs: AbstractFileSystem, paths: Sequence[str], starts: Sequence[int] | None = None,
              ends: Sequence[int] | None = None, attempts: int = ATTEMPTS) -> list[bytes | Exception]:
    """Read many objects (or byte ranges) concurrently; per-path results, exceptions returned not raised."""
    starts = list(starts) if starts is not None else [None] * len(paths)
    ends = list(ends) if ends is not None else [None] * len(paths)
    results = _cat_ranges(fs, list(paths), starts, ends)
    for attempt in range(1, attempts):
        todo = [i for i, got in enumerate(results) if isinstance(got, Exception) and is_transient(got)]
        if not todo:
            break
        log.warning("%d transient read errors, retry %d of %d", len(todo), attempt, attempts - 1)
        time.sleep(backoff(attempt))
        again = _cat_ranges(fs, [paths[i] for i in todo], [starts[i] for i in todo], [ends[i] for i in todo])
        for i, got in zip(todo, again, strict=True):
            results[i] = got
    return results
