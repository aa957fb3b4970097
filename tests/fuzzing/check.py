"""One mutant through both walkers: refused with DeidError, or written without any planted value, alike."""

from __future__ import annotations

import io
import signal
import threading
from dataclasses import dataclass

import pydicom
from samples import dataset_values

from pipeline.deid import DeidError, Profile, apply, parse
from pipeline.deid.stream import deidentify_bytes
from pipeline.headers import read_header

from .seeds import needles_for

SECRET = "fuzz-secret-0123456789"
FAILURES = ("leaks", "untyped", "disagree", "bad-output", "hang")
HANG_SECONDS = 60


@dataclass(frozen=True)
class Outcome:
    """What became of one mutant: a class (refused, written or a FAILURES class) and what exactly."""

    cls: str
    detail: str
    pattern: str = ""  # what makes failures alike, when the detail is too specific for that

    @property
    def signature(self) -> str:
        return self.pattern or self.detail


@dataclass(frozen=True)
class _Walk:
    refused: str | None = None
    untyped: str | None = None
    data: bytes = b""
    uid_map: dict | None = None
    fast: bool = False
    message: str = ""  # the untyped error's own words, for a replay


def _name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class _Hang(BaseException):
    """A walker ran past HANG_SECONDS on one small mutant (not an Exception, so nothing swallows it)."""


def _alarm(signum, frame):
    raise _Hang


def _byte_walker(data: bytes, profile: Profile) -> _Walk:
    try:
        result = deidentify_bytes(data, profile, secret=SECRET)
    except DeidError as err:
        return _Walk(refused=err.reason)
    except Exception as exc:
        return _Walk(untyped=f"deidentify_bytes raised {_name(exc)}", message=str(exc)[:300])
    return _Walk(data=result.data, uid_map=result.uid_map, fast=result.fast)


def _dataset_walker(data: bytes, profile: Profile) -> _Walk:
    try:
        ds, uid_map = apply(parse(data), profile, secret=SECRET)
    except DeidError as err:
        return _Walk(refused=err.reason)
    except Exception as exc:
        return _Walk(untyped=f"apply raised {_name(exc)}", message=str(exc)[:300])
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as exc:
        return _Walk(untyped=f"apply returned an unwritable dataset ({_name(exc)})", message=str(exc)[:300])
    reference = io.BytesIO()
    try:
        pydicom.dcmwrite(reference, ds, enforce_file_format=True)  # after save_as: it converts some in place
    except Exception as exc:
        return _Walk(untyped=f"apply's result wrote a file pydicom's writer refuses ({_name(exc)})",
                     message=str(exc)[:300])
    if reference.getvalue() != buffer.getvalue():
        return _Walk(untyped="apply's result wrote other bytes than pydicom's writer does")
    return _Walk(data=buffer.getvalue(), uid_map=uid_map)


def _first_difference(a: tuple[dict, dict], b: tuple[dict, dict]) -> str:
    """The first top-level tag whose content differs, or the file meta."""
    if a[0] == b[0]:
        return "file meta"
    tag = min(t for t in set(a[0]) | set(b[0]) if a[0].get(t) != b[0].get(t))
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _content(ds: pydicom.Dataset) -> tuple[dict, dict]:
    return dataset_values(ds), dataset_values(ds.file_meta)


def leaked(data: bytes, profile: Profile) -> list[str]:
    """Where the planted values found in `data` were planted (nothing the profile keeps on purpose)."""
    return sorted({n.where for n in needles_for(profile) if n.value in data})


def walkers(data: bytes, profile: Profile) -> dict[str, str | bytes]:
    """Each walker's own answer to one mutant: its output bytes, or why it refused or failed."""
    answers: dict[str, str | bytes] = {}
    both = (("byte walker", _byte_walker(data, profile)), ("apply", _dataset_walker(data, profile)))
    for name, walk in both:
        if walk.refused or walk.untyped:
            answers[name] = f"refused: {walk.refused}" if walk.refused else f"{walk.untyped}: {walk.message}"
        else:
            answers[name] = walk.data
    return answers


def judge(data: bytes, profile: Profile) -> Outcome:
    """Run both walkers on one mutant and classify the result (a hang is caught in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return _classify(_byte_walker(data, profile), _dataset_walker(data, profile), profile, data)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        return _classify(_byte_walker(data, profile), _dataset_walker(data, profile), profile, data)
    except _Hang:
        return Outcome("hang", f"no answer within {HANG_SECONDS} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_SCANNED = (("study_uid", "StudyInstanceUID"), ("series_uid", "SeriesInstanceUID"),
            ("sop_uid", "SOPInstanceUID"))


def _scan_differs(data: bytes, walk: _Walk, written: pydicom.Dataset) -> str | None:
    """How the header scan, which groups a written object into its study and unit, read it otherwise than
    the engine: refused it, or found a UID other than the one the engine replaced (or none)."""
    try:
        record = read_header(data, True)
    except Exception as exc:
        return f"the header scan raised {_name(exc)}"
    if record.get("error"):
        return f"the header scan refused it ({record['error']}), the engine wrote it"
    for column, keyword in _SCANNED:
        out = str(written.get(keyword, "") or "")
        if out and (walk.uid_map or {}).get(record[column], record[column]) != out:
            return f"the header scan read another {column} than the engine"
    return None


def _classify(fast: _Walk, slow: _Walk, profile: Profile, data: bytes) -> Outcome:
    untyped = [w.untyped for w in (fast, slow) if w.untyped]
    if untyped:
        return Outcome("untyped", "; ".join(untyped))
    leaks = {name: found for name, walk in (("byte walker", fast), ("apply", slow))
             if walk.refused is None and (found := leaked(walk.data, profile))}
    if leaks:
        detail = "; ".join(f"{name} wrote {', '.join(found)}" for name, found in leaks.items())
        return Outcome("leaks", detail, " and ".join(leaks) + " wrote planted values")
    if fast.refused and slow.refused:
        same = fast.refused == slow.refused
        return Outcome("refused", fast.refused if same else f"{fast.refused}|{slow.refused}")
    if fast.refused or slow.refused:
        return Outcome("disagree", f"byte walker {fast.refused or 'wrote'}, apply {slow.refused or 'wrote'}")
    try:
        written = pydicom.dcmread(io.BytesIO(fast.data))
        content = _content(written)
    except Exception as exc:
        return Outcome("bad-output", f"byte walker output unreadable ({_name(exc)})")
    if scan := _scan_differs(data, fast, written):
        return Outcome("disagree", scan)
    if not fast.fast:  # the byte walker handed the file to the dataset walker: one result, nothing to compare
        return Outcome("written", "dataset walker")
    try:
        other = _content(pydicom.dcmread(io.BytesIO(slow.data)))
    except Exception as exc:
        return Outcome("bad-output", f"apply output unreadable ({_name(exc)})")
    if content != other:
        return Outcome("disagree", f"both wrote, content differs at {_first_difference(content, other)}")
    if fast.uid_map != slow.uid_map:
        return Outcome("disagree", "both wrote, UID maps differ")
    return Outcome("written", "byte walker")
