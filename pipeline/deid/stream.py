"""De-identify a DICOM file's bytes without building pydicom objects: the engine's fast path.

It walks element headers in the byte string, copies what is kept as it is, and encodes only what
it replaces. Broken structure is refused here (`malformed`); well-formed files it does not take
(no preamble, big endian, deflate, DICOMDIR, missing SOP UIDs) go to the pydicom walker, after the
same strict structure check (`parse`), which decides or refuses with the reason.
"""

from __future__ import annotations

from collections import Counter
from functools import cache, lru_cache
from struct import pack, unpack_from
from typing import NamedTuple

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .clean import cleaned_value
from .engine import deidentify
from .errors import DeidError
from .guard import Guard, searched
from .iods import REFERENCED_SERIES, iod_for
from .keys import date_shift_days, resolve_secret
from .markers import file_meta_elements, mark
from .operations import (
    BLANK,
    CLEAN,
    DROP,
    DUMMY,
    EMPTY,
    KEEP,
    MAX_DEPTH,
    NEW_UIDS,
    SHIFT,
    UIDS,
    WALK,
    WALK_CLEAN,
    PrivateBlocks,
    Pseudonym,
    UidMapper,
    name,
    operation,
    orphaned_overlay_groups,
    patient_identity,
    settled,
    shifting_dates,
)
from .parse import parse, serialize
from .profile import Profile
from .rules import action_at, needs_value, placed_tags
from .structure import (
    DICOMDIR_SOP_CLASS,
    ITEM,
    ITEM_END,
    LONG_VRS,
    MEDIA_SOP_CLASS,
    PIXEL_DATA,
    SEQUENCE_END,
    TRANSFER_SYNTAX,
    UNDEFINED,
    Reader,
    contradiction,
    looks_explicit,
    malformed,
    remembered_conformance,
)
from .structured import STRUCTURED_SEQUENCES
from .values import SPACE_PADDED, concrete_vr, dummy, shift

DIRECTORY_RECORDS = 0x00041220
NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
IDENTITY_TAGS = (0x00100010, 0x00100020, 0x00100021, 0x0020000D)
SOP_CLASS = 0x00080016
_ITEM_START, _ITEM_END, _SEQUENCE_END = (pack("<HHI", 0xFFFE, element, length) for element, length in
                                         ((0xE000, UNDEFINED), (0xE00D, 0), (0xE0DD, 0)))


# Top-level values of the output that callers name and index files by, so they need not parse it.
HEADER = {0x00080005: "SpecificCharacterSet", 0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID",
          0x00080060: "Modality", 0x0008103E: "SeriesDescription", 0x0020000D: "StudyInstanceUID",
          0x0020000E: "SeriesInstanceUID", 0x00280008: "NumberOfFrames", 0x00280010: "Rows",
          0x00280011: "Columns", 0x00280301: "BurnedInAnnotation"}


class FileResult(NamedTuple):
    """De-identified file bytes, the UID map, where each UID came from, and which walker ran."""

    data: bytes
    uid_map: dict[str, str]
    uid_attributes: dict[str, int]
    fast: bool
    header: dict[str, str | int | None]  # HEADER's keywords -> the output's values
    actions: Counter  # (tag, action code, operation) -> how often, see actions.py


class _Unsupported(Exception):
    """Not for the fast path; the pydicom walker takes the file."""


class _Pending:
    """A C action's text, cleaned once the whole walk has said what identifies (see `_Stream.clean`)."""

    def __init__(self, tag: int, vr: str, raw: bytes, implicit: bool, required: bool) -> None:
        self.tag, self.vr, self.raw, self.implicit, self.required = tag, vr, raw, implicit, required
        self.value = b""
        self.chunk = b""
        self.dropped = False


Chunk = bytes | memoryview | _Pending | list  # a list: a sequence's parts, pending text among them, in order
_BYTES = (bytes, memoryview)


def _joined(chunk: Chunk) -> bytes | memoryview:
    """The bytes of a chunk, pending text filled in."""
    if isinstance(chunk, _BYTES):
        return chunk
    if isinstance(chunk, _Pending):
        return chunk.chunk
    return b"".join([part.chunk if isinstance(part, _Pending) else part for part in chunk])


def deidentify_bytes(data: bytes, profile: Profile, *, secret: str | bytes | None = None,
                     shift_identity: bytes | None = None, pseudonym: Pseudonym | None = None) -> FileResult:
    """Bytes of one DICOM file in, bytes of its de-identified file out (or DeidError); `shift_identity`
    and `pseudonym` as in `engine.apply`."""
    key = resolve_secret(secret)
    try:
        try:
            return _Stream(data, profile, key, shift_identity, pseudonym).file()
        except (_Unsupported, UnicodeError):
            result = deidentify(parse(data), profile, secret=key, shift_identity=shift_identity,
                                pseudonym=pseudonym)
            return FileResult(serialize(result.dataset), result.uid_map, result.uid_attributes, False,
                              header_of(result.dataset), result.actions)
    except DeidError:
        raise
    except RecursionError as exc:
        raise DeidError("too-deep", "sequences nested too deeply to process") from exc
    except Exception as exc:  # only DeidError leaves the engine
        raise DeidError("unprocessable", f"{type(exc).__name__}: {exc}") from exc


def header_of(ds: Dataset) -> dict[str, str | int | None]:
    """HEADER's values of a dataset, in the plain types the byte walker gives."""
    values: dict[str, str | int | None] = {}
    for keyword in HEADER.values():
        value = ds.get(keyword)
        if keyword in ("Rows", "Columns", "NumberOfFrames"):
            values[keyword] = _int(str(value)) if value not in (None, "") else None
        elif value is None:
            values[keyword] = None
        else:
            values[keyword] = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
    return values


def _int(text: str) -> int | None:
    try:
        return int(text.strip(" \0"))
    except ValueError:
        return None


@cache
def _actions(profile: Profile) -> dict[int, str]:
    """Resolved actions by tag, filled as tags are met and kept for every later file.

    Tags with compound codes, and unlisted ones the safety net decides by type (`rules.placed_tags`),
    are not kept here: their action depends on the object's IOD and the sequence path, and
    `rules.action_at` caches it by the attribute's type there.
    """
    return {}


MAX_PLANS = 65536  # bounded: a file of many distinct tags must not grow memory for good


class _Plan(NamedTuple):
    """What is done to a public element of defined length whose action does not depend on its place."""

    vr: str | None  # the VR bytes read (None in implicit VR)
    known: str  # the VR it is read by
    action: str
    op: str
    counted: tuple[int, str, str]  # its key in the actions count
    runs: bool  # kept, it may share a chunk with the kept elements before it (`_Stream._runs`)
    noted: bool  # removed or replaced, the guard searches for its value (`guard.searched`)


@cache
def _plans(profile: Profile) -> dict[str, dict[int, _Plan]]:
    """Plans by the enclosing sequence's operation and tag, filled as they are met (the last VR read
    for a tag wins)."""
    return {}


def _dictionary_vr(tag: int) -> str:
    return "UN" if tag >> 16 & 1 else _public_vr(tag)


@lru_cache(maxsize=8192)
def _public_vr(tag: int) -> str:
    try:
        return concrete_vr(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    if implicit:
        return pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if vr in LONG_VRS:
        return pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    if length > 0xFFFF:
        raise _Unsupported
    return pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _encode(vr: str, value) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("ascii")
    elif vr == "AT":
        raw = pack("<HH", value >> 16, value & 0xFFFF)
    else:
        raw = pack("<" + NUMBERS[vr], value)
    return raw + (b" " if vr in SPACE_PADDED else b"\0") if len(raw) % 2 else raw


def _element(tag: int, vr: str, value, implicit: bool) -> bytes:
    raw = _encode(vr, value)
    return _header(tag, vr, len(raw), implicit) + raw


@cache
def _marker_elements(profile: Profile, implicit: bool) -> tuple[tuple[int, bytes], ...]:
    """The PS3.15 E.1.1 markers for a profile, encoded once."""
    ds = Dataset()
    mark(ds, profile)
    encoded = []
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, True
        write_data_element(fp, elem)
        encoded.append((int(elem.tag), fp.getvalue()))
    return tuple(encoded)


@lru_cache(maxsize=64)
def _syntax(text: str) -> tuple[UID, bool, bool]:
    """A transfer syntax, whether this walker reads it (little endian, not deflated), and whether it
    is implicit VR; decided once per syntax, not per file."""
    syntax = UID(text)
    readable = syntax.is_transfer_syntax and not syntax.is_deflated and syntax.is_little_endian
    return syntax, readable, readable and syntax.is_implicit_VR


class _Stream(Reader):
    """One file's walk: the input bytes, the profile's decisions and what the walk has learnt."""

    def __init__(self, data: bytes, profile: Profile, key: bytes, shift_identity: bytes | None = None,
                 pseudonym: Pseudonym | None = None) -> None:
        super().__init__(data)
        self.view, self.profile, self.key = memoryview(data), profile, key
        self.uids = UidMapper(key)
        self.shifting = shifting_dates(profile)
        self.shift_identity, self.pseudonym = shift_identity, pseudonym
        self.shift_days: int | None = None
        self.actions = _actions(profile)
        self.plans = _plans(profile)
        self.placed = placed_tags(profile)
        self.seen: Counter = Counter()  # (tag, action, what was done) -> how often; see actions.py
        self.top: dict[int, bytes] = {}  # output values of HEADER's elements
        self.guard = Guard(profile)
        self.pending: list[_Pending] = []
        # Structured content is cleaned item by item by its concepts, by the pydicom walker only.
        self.structured = profile.clean_structured_content

    def file(self) -> FileResult:
        meta, pos = self._file_meta()
        text = meta.get(TRANSFER_SYNTAX, b"").decode("ascii", "replace").rstrip("\0 ")
        syntax, readable, implicit = _syntax(text)
        if not readable or meta.get(MEDIA_SOP_CLASS, b"").rstrip(b"\0 ") == DICOMDIR_SOP_CLASS.encode():
            raise _Unsupported
        self.body, self.implicit = pos, implicit
        if pos < len(self.data) and looks_explicit(self.data, pos) == self.implicit:
            raise _Unsupported  # encoded otherwise than its transfer syntax says: pydicom re-encodes
        top = self._top_values((SOP_CLASS, REFERENCED_SERIES))
        self.iod = iod_for(top.get(SOP_CLASS, b"").decode("latin-1"), REFERENCED_SERIES in top)
        chunks, _ = self.dataset(pos, len(self.data), self.implicit, 0, WALK, ())
        self.clean()
        header = self._header()
        if not header["SOPInstanceUID"] or header["SOPClassUID"] in (None, "", DICOMDIR_SOP_CLASS):
            raise _Unsupported
        markers = dict(_marker_elements(self.profile, self.implicit))
        for tag, vr, value in self.pseudonym.elements() if self.pseudonym else ():
            markers[tag] = _element(tag, vr, value, self.implicit)
        body = sorted([c for c in chunks if c[0] not in markers] + list(markers.items()),
                      key=lambda c: c[0])
        self.guard.check()
        meta = b"".join(_element(tag, vr, value, False) for tag, vr, value in
                        file_meta_elements(header["SOPClassUID"], header["SOPInstanceUID"], syntax))
        out = b"".join([b"\0" * 128, b"DICM", _element(0x00020000, "UL", len(meta), False), meta,
                        *(_joined(c) for _, c in body)])
        return FileResult(out, self.uids.uid_map, self.uids.uid_attributes, True, header, self.seen)

    def _header(self) -> dict[str, str | int | None]:
        """HEADER's output values decoded as pydicom would give them (one value each)."""
        charset = self.top.get(0x00080005, b"").decode("ascii", "replace").split("\\")
        values: dict[str, str | int | None] = dict.fromkeys(HEADER.values())
        encodings = None
        for tag, raw in self.top.items():
            keyword = HEADER[tag]
            if keyword in ("Rows", "Columns"):
                values[keyword] = unpack_from("<H", raw)[0] if len(raw) >= 2 else None
            else:
                encodings = encodings or convert_encodings([c.strip(" \0") for c in charset])
                text = decode_bytes(raw, encodings, set())
                values[keyword] = text.strip(" \0") if keyword != "NumberOfFrames" else _int(text)
        return values

    def _file_meta(self) -> tuple[dict[int, bytes], int]:
        data = self.data
        if data[128:132] != b"DICM":
            raise _Unsupported
        meta, pos = {}, 132
        if not looks_explicit(data, pos):
            raise _Unsupported  # file meta in implicit VR: pydicom reads it so, after the same check
        while pos + 8 <= len(data) and unpack_from("<H", data, pos)[0] == 0x0002:
            tag, vr, start, end = self.read_header(pos, False, len(data))
            if end is None:
                raise malformed(pos, f"file meta element {name(tag)} of undefined length")
            if tag == 0x00020000 and end - start != 4:  # pydicom cannot read such a file meta
                raise malformed(pos, f"File Meta Information Group Length of {end - start} bytes, not 4")
            meta[tag] = data[start:end]
            pos = end
        return meta, pos

    def clean(self) -> None:
        """Fill in the cleaned text, now that every value the profile removes is known."""
        if not self.pending:
            return
        cleaner = self.guard.cleaner()
        for pending in self.pending:
            pending.value = cleaned_value(cleaner, pending.vr, pending.raw, pending.required)
            pending.chunk = _element(pending.tag, pending.vr, pending.value, pending.implicit)
            if not pending.dropped:
                self.guard.note(pending.tag, KEEP, pending.vr, lambda v=pending.value: v)
                if pending.tag in self.top and self.top[pending.tag] is pending:
                    self.top[pending.tag] = pending.value

    def dataset(self, pos: int, limit: int, implicit: bool, depth: int, inner: str,
                path: tuple[int, ...]) -> tuple[list[tuple[int, Chunk]], int]:
        """Walk one dataset's elements up to `limit`, or to its item delimiter when limit is None.

        `inner` is the operation of the sequence it is an item of (WALK at the top); `path` holds
        the tags of the sequences above it, outermost first.
        """
        if depth > MAX_DEPTH:
            raise DeidError("too-deep", f"sequences nested more than {MAX_DEPTH} levels deep")
        end = len(self.data) if limit is None else limit
        if (pos < end and not implicit and not looks_explicit(self.data, pos)
                and self.data[pos:pos + 4] != b"\xfe\xff\x0d\xe0"):  # not an empty item's delimiter
            raise _Unsupported  # implicit VR items in an explicit VR file: pydicom reads them so
        chunks: list[tuple[int, Chunk]] = []
        overlay_tags: list[int] = []
        span_start = span_end = -1  # the run of verbatim elements the last chunk holds
        private: PrivateBlocks | None = None  # made at the first private element: most items have none
        last = -1
        seen = self.seen
        data, view, read_header = self.data, self.view, self.read_header
        note, keep = self.guard.note, self.guard.keep
        plans = self.plans.get(inner)
        if plans is None:
            plans = self.plans[inner] = {}
        while pos < end:
            if depth == 0 and data[pos] == 0 and self.padding(pos, end):
                break
            tag, vr, start, stop = read_header(pos, implicit, end)
            if tag >> 16 == 0xFFFE:  # an item or a delimiter: the end of this item, stray or misplaced
                if tag == ITEM_END and limit is None:
                    pos = start
                    break
                if self.stray(pos, tag, stop, depth):
                    pos = stop
                    continue
            if tag <= last or tag >> 16 == 0xFFFE:
                self.order(pos, tag, last)
            if depth == 0 and tag == DIRECTORY_RECORDS:
                raise _Unsupported  # a DICOMDIR: the pydicom walker refuses it with its reason
            last = tag
            if tag >> 16 & 0xFF01 == 0x6000:
                overlay_tags.append(tag)
            plan = plans.get(tag) if stop is not None else None
            if plan is not None and plan.vr == vr:
                _, known, action, op, counted, runs, noted = plan
            else:
                if vr is None or vr == "UN":
                    known = _dictionary_vr(tag)
                elif problem := contradiction(tag, vr):
                    raise malformed(pos, problem)
                else:
                    known = vr
                if stop is None:
                    self.undefined(pos, tag, vr)
                    if tag != PIXEL_DATA:
                        known = "SQ"  # an undefined length can only be a sequence (PS3.5 6.2.2 for UN)
                if tag >> 16 & 1:
                    private = private or PrivateBlocks(self.profile)
                    if not private.keeps(tag, lambda s=start, e=stop: self.data[s:e].decode("latin-1")):
                        self.guard.note(tag, DROP, known, lambda s=start, e=stop: self.view[s:e])
                        key = (tag | 0xFFFF, "X", DROP)
                        seen[key] = seen.get(key, 0) + 1
                        pos = self.past(known, start, stop, implicit or vr == "UN", depth)
                        continue
                    action, text, group = "K", WALK, tag | 0xFFFF  # private ones are counted by group
                else:
                    action = self.actions.get(tag) or self._action(tag, path)
                    text, group = inner, tag
                op = operation(action, known, text, self.shifting, tag)
                counted, runs, noted = (group, action, op), self._runs(tag), searched(known, op)
                if stop is not None and tag in self.actions:  # public, and decided by tag alone
                    if len(plans) > MAX_PLANS:
                        plans.clear()
                    plans[tag] = _Plan(vr, known, action, op, counted, runs, noted)
            if op == WALK_CLEAN and self.structured and tag in STRUCTURED_SEQUENCES:
                raise _Unsupported
            if op == NEW_UIDS:
                op = settled(data[start:stop].decode("latin-1"))
                counted = (counted[0], action, op)
            if op == KEEP and stop is not None:  # most elements: kept as they are (never a sequence)
                value, after = view[start:stop], stop
                if problem := remembered_conformance(tag, known, value):
                    if problem[0]:
                        raise malformed(pos, f"{name(tag)}: {problem[1]}")
                    key = (counted[0], action, DROP)  # a value that does not conform is not output
                    seen[key] = seen.get(key, 0) + 1
                    if private is not None:
                        private.dropped(tag)
                    pos = after
                    continue
                keep(tag, known, value)
                if (stop - start) % 2:
                    chunk = self._padded(tag, vr, known, start, stop, implicit)
                else:
                    chunk = view[pos:stop]
            else:
                chunk, after = self._apply(op, tag, vr, known, pos, start, stop, implicit, depth, path)
                if noted:
                    note(tag, op, known, lambda s=start, e=stop: view[s:e])
                if chunk is None:
                    key = (counted[0], action, DROP)
                    seen[key] = seen.get(key, 0) + 1
                    if private is not None:
                        private.dropped(tag)
                    pos = after
                    continue
            seen[counted] = seen.get(counted, 0) + 1  # inline: this runs once per element
            if depth == 0 and tag in HEADER:
                self.top[tag] = chunk if isinstance(chunk, _Pending) else self._value(chunk, implicit)
            verbatim = isinstance(chunk, memoryview)
            if verbatim and span_end == pos and runs and chunks[-1][0] >> 16 == tag >> 16:
                chunks[-1] = (chunks[-1][0], view[span_start:after])  # one chunk per run
            else:
                chunks.append((tag, chunk))
                span_start = pos
            span_end = after if verbatim else -1
            pos = after
        else:
            if limit is None:
                raise malformed(pos, "an item of undefined length without its delimiter")
        if private is None and not overlay_tags:
            return chunks, pos  # nothing to drop afterwards
        dropped = set(private.orphaned()) if private else set()
        groups = orphaned_overlay_groups(overlay_tags, [t for t, _ in chunks])
        if not dropped and not groups:
            return chunks, pos
        for tag, chunk in chunks:
            if isinstance(chunk, _Pending) and tag >> 16 in groups:
                chunk.dropped = True
        return [c for c in chunks if c[0] not in dropped and c[0] >> 16 not in groups], pos

    def _action(self, tag: int, path: tuple[int, ...]) -> str:
        action = action_at(tag, self.profile, self.iod, path)
        if tag not in self.placed:
            self.actions[tag] = action
        return action

    def _runs(self, tag: int) -> bool:
        """Whether kept elements of this group may share one chunk: not where chunks are later
        dropped or replaced by tag (overlays, safe private blocks, the groups of the markers)."""
        group = tag >> 16
        return not (group in (0x0012, 0x0028) or group & 0xFF01 == 0x6000
                    or (group & 1 and self.profile.retain_safe_private))

    def _apply(self, op: str, tag: int, vr: str | None, known: str, pos: int, start: int,
               stop: int | None, implicit: bool, depth: int,
               path: tuple[int, ...]) -> tuple[Chunk | None, int]:
        """One element's output bytes (or None) and where the next element starts."""
        if known == "SQ" and op not in (DROP, EMPTY):
            inner_implicit = implicit or vr == "UN"  # a UN sequence holds implicit VR little endian
            items, after = self._items(start, stop, inner_implicit, depth, op, path + (tag,))
            head = _header(tag, vr if vr == "UN" else "SQ", UNDEFINED, implicit)
            if isinstance(items, bytes):
                return head + items + _SEQUENCE_END, after
            return [head, *items, _SEQUENCE_END], after
        if stop is None or known == "SQ":
            after = self.past(known, start, stop, implicit or vr == "UN", depth)
        else:
            after = stop
        if op == KEEP:  # an undefined length here is encapsulated Pixel Data, kept whole
            return self.view[pos:after], after
        if op == DROP:
            return None, after
        if op == EMPTY:
            return _header(tag, known, 0, implicit), after
        if op == DUMMY:
            return _element(tag, known, dummy(known), implicit), after
        if op == BLANK:
            return _element(tag, known, bytes(after - start), implicit), after
        if op == CLEAN:
            required = needs_value(self.iod, tag, path)
            pending = _Pending(tag, known, bytes(self.view[start:stop]), implicit, required)
            self.pending.append(pending)
            return pending, after
        text = self.data[start:stop].decode("latin-1")
        if op in (UIDS, NEW_UIDS):
            return _element(tag, known, "\\".join(self.uids.map(tag, text, op == NEW_UIDS)), implicit), after
        if op == SHIFT:
            return _element(tag, known, shift(known, text.rstrip(" \0"), self._shift()), implicit), after
        raise AssertionError(op)

    def _padded(self, tag: int, vr: str | None, known: str, start: int, stop: int, implicit: bool) -> bytes:
        """A kept element of odd length, which is invalid: padded as pydicom pads it."""
        pad = b" " if known in SPACE_PADDED else b"\0"
        return _header(tag, vr or known, stop - start + 1, implicit) + self.data[start:stop] + pad

    def _items(self, start: int, stop: int | None, implicit: bool, depth: int,
               inner: str, path: tuple[int, ...]) -> tuple[bytes | list[Chunk], int]:
        """A sequence's items walked and re-encoded with undefined lengths (a list of chunks when
        they hold text still to be cleaned)."""
        out: list[Chunk] = []
        pos, pending = start, len(self.pending)
        end = len(self.data) if stop is None else stop
        while pos < end:
            tag, _, item_start, item_stop = self.read_header(pos, True, end)
            if tag == SEQUENCE_END and stop is None:
                return (b"".join(out) if len(self.pending) == pending else out), item_start
            if tag != ITEM:
                raise malformed(pos, f"{name(tag)} where a sequence item or its delimiter must be")
            chunks, pos = self.dataset(item_start, item_stop, implicit, depth + 1, inner, path)
            if pos > end:
                raise malformed(item_start, f"an item runs past the end of its sequence at {end}")
            out.append(_ITEM_START)
            for _, chunk in chunks:
                if isinstance(chunk, list):  # parts of a sequence holding pending text: kept flat
                    out += chunk
                else:
                    out.append(chunk)
            out.append(_ITEM_END)
        if stop is None:
            raise malformed(pos, "a sequence of undefined length without its delimiter")
        return (b"".join(out) if len(self.pending) == pending else out), stop

    def _value(self, chunk: bytes, implicit: bool) -> bytes:
        offset = 8 if implicit or bytes(chunk[4:6]).decode("latin-1") not in LONG_VRS else 12
        return bytes(chunk[offset:])

    def _shift(self) -> int:
        if self.shift_days is None:
            values = self._top_values(IDENTITY_TAGS)
            identity = self.shift_identity or patient_identity(lambda tag: values.get(tag, b""))
            self.shift_days = date_shift_days(self.key, identity)
        return self.shift_days

    def _top_values(self, wanted: tuple[int, ...]) -> dict[int, bytes]:
        """Raw values of a few top-level elements (b"" for undefined lengths), read from headers alone."""
        found, pos, end = {}, self.body, len(self.data)
        while pos < end:
            tag, _, start, stop = self.read_header(pos, self.implicit, end)
            if tag > max(wanted):
                break
            if tag in wanted:
                found[tag] = self.data[start:stop].rstrip(b" \0") if stop is not None else b""
            pos = self.skip(start, stop, self.implicit, 0)
        return found
