"""De-identify one dataset by PS3.15 Annex E: a pure function from dataset to new dataset."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

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
from .rules import action_at, needs_value
from .structure import DICOMDIR_SOP_CLASS, UNDEFINED, conformance
from .structured import CODE_VALUE, CODING_SCHEME, CONCEPT_NAME, ITEM_SEQUENCES, VALUE_TYPE, value_actions
from .values import SPACE_PADDED, concrete_vr, dummy, empty, shift

_SOP_CLASS, _SOP_INSTANCE, _DIRECTORY_RECORDS = 0x00080016, 0x00080018, 0x00041220


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
    pending: list[tuple[Dataset, int, str, bytes, bool]] = field(default_factory=list)  # text to clean
    seen: Counter = field(default_factory=Counter)  # (tag, action, what was done) -> how often

    def items(self, source: Dataset, depth: int, inner: str, path: tuple[int, ...] = ()) -> Dataset:
        """A new dataset holding what survives of `source`, each element by its own action.

        `inner` is the operation of the sequence it is an item of (WALK at the top); `path` holds
        the tags of the sequences above it, outermost first.
        """
        if depth > MAX_DEPTH:
            raise DeidError("too-deep", f"sequences nested more than {MAX_DEPTH} levels deep")
        # Matching encodings and character set let pydicom copy kept elements' bytes unparsed.
        out = Dataset(parent_encoding=self.charset)
        out.set_original_encoding(*self.encoding, self.charset)
        private = PrivateBlocks(self.profile)
        shifting = shifting_dates(self.profile)
        content_item = path and path[-1] in ITEM_SEQUENCES and inner == WALK_CLEAN
        values = self._content_item(source) if content_item else {}
        for tag in source.keys():
            elem = source.get_item(tag, keep_deferred=True)
            if tag >> 16 == 0xFFFE or not tag and elem.value is None:  # stray delimiters and zero padding
                continue  # read as elements by pydicom: dropped unseen, as the byte walker skips them
            value = partial(element_value, elem, self.charset)
            if tag.is_private:
                if not private.keeps(tag, lambda e=elem: _text(e)):
                    self.guard.note(tag, DROP, _vr(elem), value)
                    self.seen[tag | 0xFFFF, "X", DROP] += 1
                    continue
                action, text, counted = "K", WALK, tag | 0xFFFF  # private ones are counted by group
            elif tag in values:  # a content item's value, by its concept: exactly that action
                action, text, counted = values[tag], WALK, int(tag)
            else:
                action, text, counted = action_at(tag, self.profile, self.iod, path), inner, int(tag)
            op = operation(action, _vr(elem), text, shifting, tag)
            if op == NEW_UIDS:
                op = settled(_text(elem))
            new = self._element(elem, op, depth, path)
            if op == CLEAN:
                self.pending.append((out, tag, _vr(elem), element_value(elem, self.charset),
                                     needs_value(self.iod, tag, path)))
            if new is not None or op != KEEP:  # a kept value dropped as non-conforming is not output
                self.guard.note(tag, op, _vr(elem), value)
            self.seen[counted, action, DROP if new is None else op] += 1
            if new is not None:
                out[tag] = new
        for tag in private.orphaned():
            del out[tag]
        for group in orphaned_overlay_groups(source.keys(), out.keys()):
            for tag in [t for t in out.keys() if t.group == group]:
                del out[tag]
        return out

    def _element(self, elem, op: str, depth: int, path: tuple[int, ...]):
        """The element that replaces `elem`, or None when nothing should remain."""
        tag, vr = elem.tag, _vr(elem)
        if op == KEEP:
            if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
                return self._conforming(elem, vr)
            return self._keep(elem)
        if op == EMPTY:
            return DataElement(tag, vr, Sequence() if vr == "SQ" else empty(vr))
        if op in (UIDS, NEW_UIDS):
            new = self.uids.map(tag, _text(elem), op == NEW_UIDS)
            return DataElement(tag, vr, new[0] if len(new) == 1 else new)
        if op == SHIFT:
            return DataElement(tag, vr, shift(vr, _text(elem), self.shift_days))
        if op == DUMMY:
            return DataElement(tag, vr, dummy(vr))
        if op == BLANK:
            return DataElement(tag, vr, bytes(len(elem.value or b"")))
        if op in (WALK, WALK_DUMMY, WALK_CLEAN):
            return self._sequence(elem, depth, op, path + (int(tag),))
        if op == CLEAN:  # a placeholder until the whole walk has said what identifies: see `clean`
            return DataElement(tag, vr, "")
        return None

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

    def _keep(self, elem):
        """An element unchanged; its header re-encoded when the output's VR encoding differs."""
        if not isinstance(elem, RawDataElement):
            return elem
        if isinstance(elem.value, bytes) and len(elem.value) % 2:  # odd lengths are invalid: pad, as
            pad = b" " if _vr(elem) in SPACE_PADDED else b"\0"  # the byte walker does
            elem = elem._replace(value=elem.value + pad, length=len(elem.value) + 1)
        implicit, little = self.encoding
        if elem.is_little_endian != little:
            elem = convert_raw_data_element(elem, encoding=self.charset)
            elem.VR = _vr(elem)
        elif elem.is_implicit_VR != implicit:  # same bytes, only the header changes
            elem = elem._replace(VR=_vr(elem), is_implicit_VR=implicit)
        return elem

    def _conforming(self, elem: RawDataElement, vr: str):
        """A raw element kept only when whole and valid for its VR; see `values.nonconforming`."""
        if elem.length != UNDEFINED and len(elem.value) != elem.length:
            raise DeidError("truncated", f"element {elem.tag} holds {len(elem.value)} of its "
                                         f"{elem.length} bytes")
        problem = conformance(elem.tag, vr, elem.value)
        if problem is None:
            return self._keep(elem)
        if problem[0]:
            raise DeidError("malformed", f"offset {elem.value_tell}: {elem.tag}: {problem[1]}")
        return None

    def _content_item(self, item: Dataset) -> dict[int, str]:
        """Actions for the value of an SR content item under Clean Structured Content, by its concept."""
        if not self.profile.clean_structured_content:
            return {}
        names = self._source_items(item.get_item(CONCEPT_NAME, keep_deferred=True))
        concept = names[0] if names else Dataset()
        scheme, code, value_type = (_text(ds.get_item(t, keep_deferred=True)).strip() for ds, t in
                                    ((concept, CODING_SCHEME), (concept, CODE_VALUE), (item, VALUE_TYPE)))
        return value_actions(scheme, code, value_type, self.profile)

    def _source_items(self, elem) -> list[Dataset]:
        """The items of an input sequence, read without changing the input."""
        if elem is None:
            return []
        if isinstance(elem, RawDataElement):
            if elem.VR == "UN":  # PS3.5 6.2.2: a sequence stored as UN is in implicit VR little endian
                elem = elem._replace(VR="SQ", is_implicit_VR=True, is_little_endian=True)
            elem = convert_raw_data_element(elem, encoding=self.charset)
        return list(elem.value or [])

    def _sequence(self, elem, depth: int, inner: str, path: tuple[int, ...]) -> DataElement:
        items = [self.items(item, depth + 1, inner, path) for item in self._source_items(elem)]
        for item in items:  # undefined lengths, as the byte walker writes them: a private sequence in
            item.is_undefined_length_sequence_item = True  # implicit VR stays readable as one
        return DataElement(elem.tag, "SQ", Sequence(items), is_undefined_length=True)


def _vr(elem) -> str:
    """The element's VR, with UN and implicit VR read from the data dictionary."""
    vr = elem.VR
    if vr in (None, "UN"):
        try:
            return concrete_vr(dictionary_VR(elem.tag))
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


def _raw_text(ds: Dataset, tag: int) -> bytes:
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None or elem.value is None:
        return b""
    value = elem.value
    return (value if isinstance(value, bytes) else str(value).encode("utf-8")).rstrip(b" \0")


def _refuse_unusable(ds: Dataset) -> None:
    sop_class = _raw_text(ds, _SOP_CLASS).decode("latin-1")
    meta = getattr(ds, "file_meta", None)
    if (sop_class == DICOMDIR_SOP_CLASS or _DIRECTORY_RECORDS in ds
            or (meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS)):
        raise DeidError("dicomdir", "a DICOMDIR's references break under de-identification; "
                                    "rebuild it from the de-identified files instead")
    if not sop_class or not _raw_text(ds, _SOP_INSTANCE):
        raise DeidError("not-composite", "no SOP Class UID or SOP Instance UID, so the object "
                                         "cannot be stored as a DICOM file (ACR-NEMA or a fragment?)")


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
    """De-identify `dataset` into a new file dataset; return it with original UID -> new UID.

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
        body = walk.items(dataset, 0, WALK)
        walk.clean()
        walk.guard.check()
        for tag, vr, value in pseudonym.elements() if pseudonym else ():
            body[tag] = DataElement(tag, vr, value)
        mark(body, profile)
        meta = file_meta_for(body, syntax)
    except DeidError:
        raise
    except RecursionError as exc:
        raise DeidError("too-deep", "sequences nested too deeply to process") from exc
    except Exception as exc:  # a broken element anywhere: refuse the object, never half-finish it
        raise DeidError("unprocessable", f"{type(exc).__name__}: {exc}") from exc
    out = FileDataset("", body, preamble=b"\0" * 128, file_meta=meta)
    out.set_original_encoding(*body.original_encoding, body.original_character_set)
    return Result(out, walk.uids.uid_map, walk.uids.uid_attributes, walk.seen)
