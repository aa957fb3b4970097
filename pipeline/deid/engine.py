"""De-identify one dataset by PS3.15 Annex E: a pure function from dataset to new dataset."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache, partial
from typing import Any, NamedTuple

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from .clean import cleaned_value
from .errors import DeidError
from .guard import Guard, element_value
from .iods import REFERENCED_SERIES, Iod, iod_for
from .keys import date_shift_days, resolve_secret
from .markers import file_meta_for, mark, transfer_syntax
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
    WALK_DUMMY,
    PrivateBlocks,
    Pseudonym,
    UidMapper,
    operation,
    orphaned_overlay_groups,
    patient_identity,
    settled,
    shifting_dates,
)
from .profile import Profile, resolve
from .rawitems import CHARSET, encode_items, read_items, sequence
from .rawmarks import raw_file_meta, raw_markers
from .rules import action_at, needs_value, placed_tags
from .structure import DICOMDIR_SOP_CLASS, UNDEFINED, max_elements, remembered_conformance
from .structured import CODE_VALUE, CODING_SCHEME, CONCEPT_NAME, ITEM_SEQUENCES, VALUE_TYPE, value_actions
from .values import SPACE_PADDED, concrete_vr, dummy, empty, shift
from .written import Deidentified

_SOP_CLASS, _SOP_INSTANCE, _DIRECTORY_RECORDS = 0x00080016, 0x00080018, 0x00041220
_META_GROUP_LENGTH = 0x00020000
_MEDIA_SOP_CLASS = 0x00020002


_PENDING = object()  # where cleaned text goes once the whole walk is done (`_Walk.clean`)
MAX_PLANS = 65536  # bounded: a file of many distinct tags must not grow memory for good


class _Plan(NamedTuple):
    """What is done to a public raw element whose action does not depend on its place."""

    read: str | None  # the VR as read (None in implicit VR): the plan holds only for it
    vr: str
    action: str
    op: str
    kept: tuple[int, str, str]  # its key in the actions count when output
    dropped: tuple[int, str, str]  # and when not (a kept value that does not conform)


@cache
def _plans(profile: Profile) -> dict[str, dict[int, _Plan]]:
    """Plans by the enclosing sequence's operation and tag, filled as they are met (the last VR read
    for a tag wins)."""
    return {}


class _Walked(NamedTuple):
    """A walked sequence, encoded once the text it holds is cleaned (see `_Walk.body`)."""

    tag: int
    items: list[dict[int, Any]]
    verbatim: list[bytes | None]  # per item, its bytes where every element was kept as read (`rawitems`)


@dataclass
class _Walk:
    """What stays fixed while one dataset is walked; `uids` fills the UID map."""

    profile: Profile
    uids: UidMapper
    shift_days: int
    charset: str | list[str] | None
    encoding: tuple[bool, bool]  # (implicit VR, little endian) of the output
    iod: Iod | None  # what decides compound codes
    guard: Guard
    pending: list[tuple[dict, int, str, bytes, bool]] = field(default_factory=list)  # text to clean
    seen: Counter = field(default_factory=Counter)  # (tag, action, what was done) -> how often

    def __post_init__(self) -> None:
        self.whole = False  # whether the last `items` output every element as it was read
        self.plans = _plans(self.profile)
        self.placed = placed_tags(self.profile)
        self.shifting = shifting_dates(self.profile)
        self.max_elements = max_elements()

    def items(self, source: Mapping[int, Any], depth: int, inner: str, path: tuple[int, ...] = ()) -> dict:
        """Tag -> element of what survives of `source` (a dataset's elements), each by its own action.

        Raw elements stay raw: kept ones as they are, replaced ones encoded; sequences are walked
        from their bytes (`rawitems`). `inner` is the operation of the sequence it is an item of
        (WALK at the top); `path` holds the tags of the sequences above it, outermost first.
        """
        if depth > MAX_DEPTH:
            raise DeidError("too-deep", f"sequences nested more than {MAX_DEPTH} levels deep")
        out: dict[int, Any] = {}
        private: PrivateBlocks | None = None  # made at the first private element: most items have none
        overlays = False
        content_item = path and path[-1] in ITEM_SEQUENCES and inner == WALK_CLEAN
        values = self._content_item(source) if content_item else {}
        plans = self.plans.get(inner)
        if plans is None:
            plans = self.plans[inner] = {}
        seen, charset, note, keep = self.seen, self.charset, self.guard.note, self.guard.keep
        implicit, little = self.encoding
        conforming = remembered_conformance
        same = 0  # elements output as they were read
        for tag, elem in source.items():
            tag = int(tag)  # plain ints compare at C speed in the plans' keys
            raw = elem.__class__ is RawDataElement
            plan = plans.get(tag) if raw and tag not in values else None
            if plan is not None and plan.read == elem.VR:
                _, vr, action, op, kept, dropped = plan
                counted = tag
            else:
                if tag >> 16 == 0xFFFE or not tag and elem.value is None:  # stray delimiters, zero padding
                    continue  # read as elements by pydicom: dropped unseen, as the byte walker skips them
                vr = _known_vr(tag, elem.VR)  # `_vr`, by the plain int tag (cached by it)
                if tag >> 16 & 1:
                    private = private or PrivateBlocks(self.profile)
                    if not private.keeps(tag, lambda e=elem: _text(e)):
                        note(tag, DROP, vr, partial(element_value, elem, charset))
                        seen[tag | 0xFFFF, "X", DROP] += 1
                        continue
                    action, text, counted = "K", WALK, tag | 0xFFFF  # private ones are counted by group
                elif tag in values:  # a content item's value, by its concept: exactly that action
                    action, text, counted = values[tag], WALK, tag
                else:
                    action, text, counted = action_at(tag, self.profile, self.iod, path), inner, tag
                op = operation(action, vr, text, self.shifting, tag)
                kept, dropped = (counted, action, op), (counted, action, DROP)
                # By tag alone; never tag 0, which zero padding also reads as (skipped above, unplanned).
                if raw and tag and not tag >> 16 & 1 and tag not in values and tag not in self.placed:
                    if len(plans) > MAX_PLANS:
                        plans.clear()
                    plans[tag] = _Plan(elem.VR, vr, action, op, kept, dropped)
            value = elem.value
            if op == KEEP and raw and value.__class__ is bytes:  # most elements: kept as they are
                length = elem.length
                if (length == len(value) and not length % 2 and elem.is_implicit_VR == implicit
                        and elem.is_little_endian == little and conforming(tag, vr, value) is None):
                    new = elem  # whole, even, valid and in the output's encoding: see `_conforming`
                else:
                    new = self._conforming(elem, vr, tag)
                if new is not None:
                    keep(tag, vr, value)
                    seen[kept] = seen.get(kept, 0) + 1
                    out[tag] = new
                    same += new is elem
                else:
                    seen[dropped] = seen.get(dropped, 0) + 1
                    if private is not None:
                        private.dropped(tag)
            else:
                if op == NEW_UIDS:
                    op = settled(_text(elem))
                new = self._element(elem, vr, op, depth, path)
                if op == CLEAN:
                    self.pending.append((out, tag, vr, element_value(elem, charset),
                                         needs_value(self.iod, tag, path)))
                if new is not None or op != KEEP:  # a kept value dropped as non-conforming is not output
                    note(tag, op, vr, partial(element_value, elem, charset))
                key = (counted, action, DROP if new is None else op)
                seen[key] = seen.get(key, 0) + 1
                if new is not None:
                    out[tag] = new
                elif private is not None:
                    private.dropped(tag)
            if tag >> 16 & 0xFF01 == 0x6000:
                overlays = True
        if private is not None:
            for tag in private.orphaned():
                del out[tag]
        if overlays:
            for group in orphaned_overlay_groups(source.keys(), out.keys()):
                for tag in [t for t in out if t >> 16 == group]:
                    del out[tag]
        self.whole = same == len(source) == len(out)
        return out

    def _element(self, elem, vr: str, op: str, depth: int, path: tuple[int, ...]):
        """The element that replaces `elem`, or None when nothing should remain."""
        tag = elem.tag
        if op == KEEP:
            if elem.__class__ is RawDataElement and isinstance(elem.value, bytes):
                return self._conforming(elem, vr, int(tag))
            return self._keep(elem)
        if op in (WALK, WALK_DUMMY, WALK_CLEAN):
            return self._sequence(elem, depth, op, path + (int(tag),))
        if op == EMPTY:
            return self._new(tag, vr, b"") if self.encoding[1] else \
                DataElement(tag, vr, Sequence() if vr == "SQ" else empty(vr))
        if op in (UIDS, NEW_UIDS):
            new = self.uids.map(tag, _text(elem), op == NEW_UIDS)
            if self.encoding[1]:
                return self._new(tag, vr, "\\".join(new).encode("ascii"), b"\0")
            return DataElement(tag, vr, new[0] if len(new) == 1 else new)
        if op == SHIFT:
            shifted = shift(vr, _text(elem), self.shift_days)
            return self._new(tag, vr, shifted.encode("ascii")) if self.encoding[1] else \
                DataElement(tag, vr, shifted)
        if op == DUMMY:
            return self._new(tag, vr, _dummy_value(vr)) if self.encoding[1] else \
                DataElement(tag, vr, dummy(vr))
        if op == BLANK:
            return DataElement(tag, vr, bytes(len(elem.value or b"")))
        if op == CLEAN:  # a placeholder until the whole walk has said what identifies: see `clean`
            return _PENDING
        return None

    def _new(self, tag: BaseTag, vr: str, value: bytes, pad: bytes = b" ") -> RawDataElement:
        """A replaced value as the raw element pydicom's writer would make of it (little endian)."""
        if len(value) % 2:
            value += pad
        return RawDataElement(tag, vr, len(value), value, 0, self.encoding[0], True)

    def clean(self) -> None:
        """Fill in the cleaned text, now that every value the profile removes is known."""
        if not self.pending:
            return
        cleaner = self.guard.cleaner()
        implicit, little = self.encoding
        for out, tag, vr, raw, required in self.pending:
            if tag in out:  # not gone with its overlay group
                value = cleaned_value(cleaner, vr, bytes(raw), required)
                out[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, implicit, little)
                self.guard.note(tag, KEEP, vr, lambda v=value: v)

    def body(self, top: dict[int, Any]) -> Dataset:
        """The top level as a dataset, its walked sequences encoded as raw elements."""
        out = Dataset(parent_encoding=self.charset)
        out.set_original_encoding(*self.encoding, self.charset)
        if isinstance(top.get(CHARSET), RawDataElement):  # pydicom's writer reads it first, converted
            top[CHARSET] = convert_raw_data_element(top[CHARSET])
        encodings = _encodings(top.get(CHARSET), convert_encodings(default_encoding))
        for tag, elem in top.items():
            if elem.__class__ is _Walked:
                elem = self._encoded(elem, encodings)
            # A raw element is stored as read and so written as the byte walker writes it (a private one
            # learns its creator when read). Setting a private one would convert, and re-encode, its value;
            # only one stored as UN is set, so that pydicom settles its VR once, not at each write.
            if elem.__class__ is RawDataElement and (not tag >> 16 & 1 or elem.VR not in (None, "UN")):
                out._dict[elem.tag] = elem
            else:
                out[tag] = elem
        return out

    def _encoded(self, walked: _Walked, encodings: list[str]) -> RawDataElement:
        implicit, little = self.encoding
        for i, item in enumerate(walked.items):
            if walked.verbatim and walked.verbatim[i] is not None:
                continue  # its elements as read: no walked sequence among them
            inner = _encodings(item.get(CHARSET), encodings)
            for tag, elem in item.items():
                if elem.__class__ is _Walked:
                    item[tag] = self._encoded(elem, inner)
        return sequence(walked.tag, encode_items(walked.items, implicit, little, encodings, self.charset,
                                                 walked.verbatim), implicit, little)

    def _keep(self, elem):
        """An element unchanged; its header re-encoded when the output's VR encoding differs."""
        if not isinstance(elem, RawDataElement):
            return elem
        implicit, little = self.encoding
        if (elem.value is None and not elem.length and elem.is_implicit_VR == implicit
                and (implicit or elem.VR != "UN")):  # pydicom's writer would convert it as if deferred,
            elem = elem._replace(value=b"")  # to the same empty value and a header it does not change
        if isinstance(elem.value, bytes) and len(elem.value) % 2:  # odd lengths are invalid: pad, as
            pad = b" " if _vr(elem) in SPACE_PADDED else b"\0"  # the byte walker does
            elem = elem._replace(value=elem.value + pad, length=len(elem.value) + 1)
        if elem.is_little_endian != little:
            elem = convert_raw_data_element(elem, encoding=self.charset)
            elem.VR = _vr(elem)
        elif elem.is_implicit_VR != implicit:  # same bytes, only the header changes
            elem = elem._replace(VR=_vr(elem), is_implicit_VR=implicit)
        return elem

    def _conforming(self, elem: RawDataElement, vr: str, tag: int):
        """A raw element kept only when whole and valid for its VR; see `values.nonconforming`."""
        if elem.length != UNDEFINED and len(elem.value) != elem.length:
            raise DeidError("truncated", f"element {elem.tag} holds {len(elem.value)} of its "
                                         f"{elem.length} bytes")
        problem = remembered_conformance(tag, vr, elem.value)
        if problem is None:
            implicit, little = self.encoding
            if len(elem.value) % 2 or elem.is_implicit_VR != implicit or elem.is_little_endian != little:
                return self._keep(elem)
            return elem
        if problem[0]:
            raise DeidError("malformed", f"offset {elem.value_tell}: {elem.tag}: {problem[1]}")
        return None

    def _content_item(self, item: Mapping[int, Any]) -> dict[int, str]:
        """Actions for the value of an SR content item under Clean Structured Content, by its concept."""
        if not self.profile.clean_structured_content:
            return {}
        names = self._source_items(item.get(CONCEPT_NAME))
        concept = names[0] if names else {}
        scheme, code, value_type = (_text(ds.get(t)).strip() for ds, t in
                                    ((concept, CODING_SCHEME), (concept, CODE_VALUE), (item, VALUE_TYPE)))
        return value_actions(scheme, code, value_type, self.profile)

    def _source_items(self, elem, verbatim: list[bytes | None] | None = None) -> list[Mapping[int, Any]]:
        """The items of an input sequence (tag -> element each), read without changing the input:
        from the raw bytes where pydicom would read them plainly (then `verbatim`, if given, is filled
        as `read_items` fills it), else by pydicom."""
        if elem is None:
            return []
        if isinstance(elem, RawDataElement):
            untyped = elem.VR == "UN"  # PS3.5 6.2.2: a sequence stored as UN is in implicit VR little endian
            if isinstance(elem.value, bytes) and (untyped or elem.is_little_endian):
                found = read_items(elem.value, elem.is_implicit_VR or untyped,
                                   elem.value_tell if elem.length == UNDEFINED else 0, self.max_elements,
                                   verbatim)
                if found is not None:
                    return found
                if verbatim:
                    verbatim.clear()  # filled for the items read before the irregular one
            if untyped:
                elem = elem._replace(VR="SQ", is_implicit_VR=True, is_little_endian=True)
            elem = convert_raw_data_element(elem, encoding=self.charset)
        return [item._dict for item in elem.value or []]

    def _sequence(self, elem, depth: int, inner: str, path: tuple[int, ...]) -> _Walked:
        verbatim: list[bytes | None] = []
        walked = []
        for i, item in enumerate(self._source_items(elem, verbatim)):
            walked.append(self.items(item, depth + 1, inner, path))
            if verbatim and not self.whole:
                verbatim[i] = None
        return _Walked(int(elem.tag), walked, verbatim)


def _encodings(charset_elem, inherited: list[str]) -> list[str]:
    """The encodings pydicom's writer uses for text under a Specific Character Set element, if any."""
    if charset_elem is None:
        return inherited
    if isinstance(charset_elem, RawDataElement):
        charset_elem = convert_raw_data_element(charset_elem)
    return convert_encodings(charset_elem.value or [default_encoding])


@lru_cache(maxsize=64)
def _dummy_value(vr: str) -> bytes:
    """The dummy's value bytes as pydicom's writer encodes them (little endian)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = True, True
    write_data_element(fp, DataElement(0x00100010, vr, dummy(vr)))
    return fp.getvalue()[8:]


def _vr(elem) -> str:
    """The element's VR, with UN and implicit VR read from the data dictionary."""
    return _known_vr(elem.tag, elem.VR)


@lru_cache(maxsize=8192)
def _known_vr(tag: int, vr: str | None) -> str:
    """`_vr` by tag and VR read, looked up once (a private tag's KeyError costs as much as the walk)."""
    if vr in (None, "UN"):
        try:
            return concrete_vr(dictionary_VR(tag))
        except KeyError:
            return vr or "UN"
    return concrete_vr(vr)


def _text(elem) -> str:
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip(" \0")
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _uid(ds: Dataset, tag: int, as_written: bool = False) -> str | None:
    """A raw single UID as pydicom reads it, without converting the element (which would make pydicom's
    writer encode it again); None where pydicom must say (absent, converted, several values, other VRs).
    With `as_written`, only where pydicom writes the converted value as the raw bytes are, so that leaving
    the element raw changes no output."""
    elem = ds._dict.get(tag)
    raw = elem.value if isinstance(elem, RawDataElement) and elem.VR in ("UI", None) else None
    if not isinstance(raw, bytes):
        return None
    text = raw.decode("latin-1").rstrip("\0 ")  # as convert_UI; UID(...) then strips the value
    uid = text.strip()
    written = uid.encode("latin-1")
    if not uid or "\\" in text or as_written and raw not in (written, written + b"\0"):
        return None
    return uid


def _meta_value(elem) -> str | MultiValue | None:
    """A SOP UID's value as the file meta takes it: text, as the byte walker reads it, also where it was
    stored under another text VR (a PersonName, say); None where it is no text."""
    value = None if elem is None else elem.value
    if isinstance(value, bytes | bytearray):
        return None
    return value if value is None or isinstance(value, str | MultiValue) else str(value)


def _raw_text(ds: Dataset, tag: int) -> bytes:
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None or elem.value is None:
        return b""
    value = elem.value
    return (value if isinstance(value, bytes) else str(value).encode("utf-8")).rstrip(b" \0")


def _refuse_unusable(ds: Dataset) -> None:
    sop_class = _raw_text(ds, _SOP_CLASS).decode("latin-1")
    meta = getattr(ds, "file_meta", None)
    _refuse_swallowing_meta(meta)
    media = None if meta is None else _uid(meta, _MEDIA_SOP_CLASS) or meta.get("MediaStorageSOPClassUID")
    if sop_class == DICOMDIR_SOP_CLASS or _DIRECTORY_RECORDS in ds or media == DICOMDIR_SOP_CLASS:
        raise DeidError("dicomdir", "a DICOMDIR's references break under de-identification; "
                                    "rebuild it from the de-identified files instead")
    if not sop_class or not _raw_text(ds, _SOP_INSTANCE):
        raise DeidError("not-composite", "no SOP Class UID or SOP Instance UID, so the object "
                                         "cannot be stored as a DICOM file (ACR-NEMA or a fragment?)")


def _refuse_swallowing_meta(meta) -> None:
    """A File Meta Information Group Length of other than 4 bytes has swallowed the elements after it: the
    byte walker refuses such a file, so the dataset walker does too."""
    elem = None if meta is None else meta._dict.get(_META_GROUP_LENGTH)
    if elem is None or elem.value is None:
        return
    if isinstance(elem, RawDataElement):
        size, offset = len(elem.value), f"offset {elem.value_tell - 8}: " if elem.value_tell else ""
    else:
        size, offset = 4 * (len(elem.value) if isinstance(elem.value, list | MultiValue) else 1), ""
    if size != 4:
        raise DeidError("malformed", f"{offset}File Meta Information Group Length of {size} bytes, not 4")


class Result(NamedTuple):
    """A de-identified dataset, original UID -> new UID, original UID -> tag it came from, and how
    often each (tag, action code, operation) occurred (see actions.py)."""

    dataset: FileDataset
    uid_map: dict[str, str]
    uid_attributes: dict[str, int]
    actions: Counter


def apply(dataset: Dataset, profile: Profile | None = None, *, secret: str | bytes | None = None,
          shift_identity: bytes | None = None, pseudonym: Pseudonym | None = None,
          **flags: bool) -> tuple[FileDataset, dict[str, str]]:
    """De-identify `dataset` into a new file dataset; return it with original UID -> new UID. The
    dataset's `save_as` writes pydicom's bytes from the walk's own (`written.Deidentified`).

    `shift_identity` keys the date shift instead of this dataset's own patient identity (so that every
    object of a study shifts alike); `pseudonym` replaces Patient ID and Patient's Name."""
    result = deidentify(dataset, resolve(profile, flags), secret=secret, shift_identity=shift_identity,
                        pseudonym=pseudonym)
    return result.dataset, result.uid_map


def deidentify(dataset: Dataset, profile: Profile, *, secret: str | bytes | None = None,
               shift_identity: bytes | None = None, pseudonym: Pseudonym | None = None) -> Result:
    """`apply` that also says where each replaced UID came from (the byte walker falls back to it)."""
    try:
        _refuse_unusable(dataset)
        key = resolve_secret(secret)
        syntax = transfer_syntax(dataset)
        identity = shift_identity or patient_identity(lambda tag: _raw_text(dataset, tag))
        walk = _Walk(profile, UidMapper(key), date_shift_days(key, identity),
                     dataset.original_character_set, (syntax.is_implicit_VR, syntax.is_little_endian),
                     iod_for(_raw_text(dataset, _SOP_CLASS).decode("latin-1"), REFERENCED_SERIES in dataset),
                     Guard(profile))
        top = walk.items(dataset._dict, 0, WALK)
        walk.clean()
        walk.guard.check()
        body = walk.body(top)
        for tag, vr, value in pseudonym.elements() if pseudonym else ():
            body[tag] = DataElement(tag, vr, value)
        markers = raw_markers(profile, syntax.is_implicit_VR) if syntax.is_little_endian else ()
        if markers:  # replacing any the source had, as the byte walker does
            body._dict.update((elem.tag, elem) for elem in markers)
        else:
            mark(body, profile)
        sop_class, sop_instance = _uid(body, _SOP_CLASS, True), _uid(body, _SOP_INSTANCE, True)
        if sop_class is None or sop_instance is None:
            sop_class, sop_instance = (_meta_value(body.get(tag)) for tag in (_SOP_CLASS, _SOP_INSTANCE))
        if not sop_class or not sop_instance:  # read with another VR, and dropped as not conforming to it
            raise DeidError("malformed", "the SOP Class or SOP Instance UID holds no value its VR allows, "
                                         "so the output would name no object")
        meta = (raw_file_meta(sop_class, sop_instance, syntax)
                or file_meta_for(sop_class, sop_instance, syntax))
    except DeidError:
        raise
    except RecursionError as exc:
        raise DeidError("too-deep", "sequences nested too deeply to process") from exc
    except Exception as exc:  # a broken element anywhere: refuse the object, never half-finish it
        raise DeidError("unprocessable", f"{type(exc).__name__}: {exc}") from exc
    out = Deidentified("", body, preamble=b"\0" * 128, file_meta=meta)
    out.set_original_encoding(*body.original_encoding, body.original_character_set)
    out.seal()
    return Result(out, walk.uids.uid_map, walk.uids.uid_attributes, walk.seen)
