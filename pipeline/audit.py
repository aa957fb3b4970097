"""Checks of one unit's outputs against their sources, independent of the engine that wrote them."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
import subprocess
import tempfile
import warnings
import zlib
from collections.abc import Iterator

import ahocorasick
import pyarrow.compute as pc
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from .deid import Profile
from .deid.clean import CLEANED_VRS
from .deid.markers import PRIVATE_KEPT_NOTE, options_used, package_version
from .deid.rules import edition, resolved_action, safe_private, unlisted_free_text
from .deid.unlisted import well_known
from .deid.values import DUMMY_TEXT, dummy
from .storage import filesystem, retry
from .tables import read_table

# Values a person could be found by, when the profile removes or replaces them.
IDENTIFYING_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "UR", "AE", "DA", "DT", "UI"})
# Values kept on purpose (any of them) make an identifying value that equals them not a leak.
TEXT_VRS = IDENTIFYING_VRS | {"CS", "DS", "IS", "TM", "AS"}
MIN_PATTERN = 3  # shorter values (initials, "MR") are everywhere
MIN_COMPONENT = 4  # a name's parts, searched on their own
MIN_UID = 8  # shorter "UIDs" ("0", "1.2.3") identify nothing and occur as numbers everywhere
# Patient and study attributes that must agree across the objects of one study (as dcentvfy checks).
STUDY_ATTRIBUTES = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "StudyDescription")
REFERENCED_SOP = 0x00081155
# Image-like bulk data (pixels, waveforms, lookup tables) matches short values by chance: not searched.
BULK_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010, 0x54001010, 0x00281201, 0x00281202, 0x00281203,
                       0x00281221, 0x00281222, 0x00281223, 0x00283006})
DEFLATE = "1.2.840.10008.1.2.1.99"
# A UID-like token: three or more dotted numbers, not inside a longer one.
UID_TOKEN = re.compile(rb"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}(?![0-9.])")
STANDARD_UID_ROOTS = ("1.2.840.10008.", "2.25.")
_QUOTED_VALUE = re.compile(r"= <[^>]*>")  # how dciodvfy quotes a value; attribute names stay
_ANY_UID = re.compile(r"[0-9]+(?:\.[0-9]+){2,}")
_DIGITS = frozenset(b"0123456789")
_SOURCE_META_IDENTIFYING = (0x00020003, 0x00020016, 0x00020017, 0x00020018)


def _engine_vocabulary(profile: Profile) -> bytes:
    """What the engine writes by itself: an identifying value equal to it proves nothing."""
    words = [DUMMY_TEXT, f"dicom-deid {package_version()}", f"PS3.15 {edition()} Annex E", PRIVATE_KEPT_NOTE,
             f"DICOMDEID_{package_version()}", "YES", "REMOVED", "MODIFIED", "UNMODIFIED", "DCM"]
    words += [str(dummy(vr)) for vr in ("AS", "DA", "DT", "TM")]
    for value, meaning in options_used(profile):
        words += [value, meaning]
    return "\0".join(words).encode()


def _values(raw: bytes) -> list[bytes]:
    return [v.strip(b" \0") for v in raw.split(b"\\")]


def _stored_vr(tag: int, item: RawDataElement) -> str:
    """The VR a raw element was stored with, the dictionary's where it says none or UN (as pydicom reads)."""
    if item.VR not in (None, "UN"):
        return item.VR
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _walk(ds: Dataset) -> Iterator[tuple[Dataset, int, str, bytes | None]]:
    """Every element at any depth as (its dataset, tag, VR, value bytes); sequences are walked, other
    values are taken as stored, never converted (an RT structure's coordinates would cost seconds)."""
    for tag in list(ds.keys()):
        try:
            item = ds.get_item(tag)
            raw = isinstance(item, RawDataElement)
            vr = _stored_vr(int(tag), item) if raw else item.VR
            if vr == "SQ":
                items = ds[tag].value or ()
        except Exception:  # an element pydicom cannot read (broken input) gives no value; its output is
            continue       # still searched for every UID and every value read elsewhere
        if vr == "SQ":
            for child in items:
                yield from _walk(child)
            continue
        yield ds, int(tag), vr, _as_bytes(item.value)


def _as_bytes(value) -> bytes | None:
    """A raw value as is; a converted text value (one or several, names, UIDs) encoded back."""
    if isinstance(value, bytes | None):
        return value
    if isinstance(value, MultiValue | list):
        texts = [str(v) for v in value if isinstance(v, str | PersonName)]
        return "\\".join(texts).encode("utf-8", "replace") if len(texts) == len(value) else None
    return str(value).encode("utf-8", "replace") if isinstance(value, str | PersonName) else None


class Findings:
    """Identifying values of a unit's sources, with what they are, and values they keep on purpose."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.patterns: dict[bytes, str] = {}
        self.kept: list[bytes] = [_engine_vocabulary(profile)]
        self.shifting = profile.retain_long_modified_dates and not profile.retain_long_full_dates

    def add(self, value: bytes, what: str, min_length: int = MIN_PATTERN) -> None:
        if len(value) >= min_length:
            self.patterns.setdefault(value, what)

    def add_source(self, ds: Dataset) -> None:
        """The source's values of every attribute the profile removes or replaces, at any depth."""
        meta = getattr(ds, "file_meta", None) or Dataset()
        for tag in _SOURCE_META_IDENTIFYING:
            raw = meta.get(tag)
            if raw is not None and raw.value:
                for value in _values(str(raw.value).encode()):
                    self.add(value, raw.keyword or f"{tag:08X}")
        for _, tag, vr, raw in _walk(ds):
            if tag >> 16 & 1 or raw is None or vr not in TEXT_VRS:
                continue
            action = resolved_action(tag, self.profile).upper()  # the safety net's letters too
            if action == "C" and vr in CLEANED_VRS:  # cleaned text keeps its words, minus other values
                if unlisted_free_text(tag):  # the safety net's: kept as before it was cleaned
                    self.kept.append(raw)
                continue
            removed = action in "XZDCU" or (action == "M" and vr in ("DA", "DT") and self.shifting)
            if not removed or vr not in IDENTIFYING_VRS:
                self.kept.append(raw)
                continue
            what = pydicom.datadict.keyword_for_tag(tag) or f"{tag:08X}"
            for value in _values(raw):
                if vr == "UI" and well_known(value.decode("latin-1")):  # kept: the standard defines it
                    continue
                self.add(value, what, MIN_UID if vr == "UI" else MIN_PATTERN)
                if vr == "PN":
                    for part in re.split(rb"[\^=]", value):
                        self.add(part.strip(), what, MIN_COMPONENT)

    def automaton(self) -> ahocorasick.Automaton | None:
        """One automaton of every pattern not also kept on purpose; None when there is nothing to find."""
        found = ahocorasick.Automaton()
        for value, what in self.patterns.items():
            found.add_word(value.decode("latin-1"), (value, what))  # latin-1: one character per byte
        if not len(found):
            return None
        found.make_automaton()
        retained = {value for value, _ in hits(found, b"\0".join(self.kept))}
        for value in retained:
            found.remove_word(value.decode("latin-1"))
        if not len(found):
            return None
        found.make_automaton()
        return found


def _bounded(data: bytes, start: int, end: int) -> bool:
    """A number or UID found inside a longer one is a coincidence, not a copy ("1.2.3.dcm" is a copy)."""
    def digit(i: int) -> bool:
        return 0 <= i < len(data) and data[i] in _DIGITS

    def continues(i: int, step: int) -> bool:
        return digit(i) or (0 <= i < len(data) and data[i] == ord(".") and digit(i + step))
    return not continues(start - 1, -1) and not continues(end + 1, 1)


def hits(found: ahocorasick.Automaton | None, data: bytes) -> Iterator[tuple[bytes, str]]:
    """Every pattern occurring in `data` (numbers and UIDs only where they stand alone)."""
    if found is None or not data:
        return
    for end, (value, what) in found.iter(data.decode("latin-1")):
        if not value.replace(b".", b"").isdigit() or _bounded(data, end - len(value) + 1, end):
            yield value, what


def _meta_end(data: bytes) -> int:
    """Where the file meta group ends (explicit VR little endian elements of group 0002 after 'DICM')."""
    pos = 132
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            pos += 12 + int.from_bytes(data[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6:pos + 8], "little")
    return pos


def _unsearched(ds: Dataset, private_kept: bool, inside_private: bool = False) -> Iterator[tuple[int, int]]:
    """(file offset, length) of values not searched, read before pydicom converts them: bulk data, and
    private attributes when the profile keeps them (their content is kept on purpose, whatever it says)."""
    for tag in list(ds.keys()):
        item = ds.get_item(tag)
        private = inside_private or (private_kept and tag.is_private)
        if (private or int(tag) in BULK_TAGS) and isinstance(item, RawDataElement) and item.value:
            yield item.value_tell, len(item.value)
        elif ds[tag].VR == "SQ":
            for child in ds[tag].value or ():
                yield from _unsearched(child, private_kept, private)


def regions(data: bytes, ds: Dataset, skip: list[tuple[int, int]]) -> dict[str, bytes]:
    """The output's bytes by place (a deflated body inflated), the `skip` spans left out."""
    meta_end = _meta_end(data) if data[128:132] == b"DICM" else 0
    body, base = data, meta_end
    if str(ds.file_meta.get("TransferSyntaxUID", "")) == DEFLATE:  # pydicom's offsets are the inflated ones
        body, base = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS), 0
    parts, pos = [], base
    for start, length in sorted(skip):
        parts.append(body[pos:max(pos, start)])
        pos = max(pos, start + length)
    return {"preamble": data[:128] if meta_end else b"", "file-meta": data[132:meta_end],
            "body": b"".join([*parts, body[pos:]])}


def profile_errors(ds: Dataset, profile: Profile) -> list[str]:
    """What the output's markers, private, curve and overlay attributes get wrong for the profile."""
    errors = []
    if ds.get("PatientIdentityRemoved") != "YES":
        errors.append("patient-identity-removed")
    codes = {(item.get("CodeValue"), item.get("CodingSchemeDesignator"))
             for item in ds.get("DeidentificationMethodCodeSequence") or ()}
    if codes != {(value, "DCM") for value, _ in options_used(profile)}:
        errors.append("method-codes")
    keep_all = profile.retain_private_tags and not profile.retain_safe_private
    # Overlay Data and Overlay Comments are what Table E.1-1 names; other overlay attributes are kept.
    overlay_actions = {e: resolved_action(0x6000 << 16 | e, profile) for e in (0x3000, 0x4000)}
    for where, tag, _, raw in _walk(ds):
        group, element = tag >> 16, tag & 0xFFFF
        if group & 1 and not keep_all and not _safe_private(where, tag, profile):
            errors.append(f"private ({group:04X},{element:04X})")
        elif group & 0xFF00 == 0x5000:
            errors.append(f"curve ({group:04X},{element:04X})")
        elif group & 0xFF01 == 0x6000 and overlay_actions.get(element) == "X":
            errors.append(f"overlay ({group:04X},{element:04X})")
        elif group & 0xFF01 == 0x6000 and element == 0x3000 and raw and raw.strip(b"\0"):
            errors.append(f"overlay data not blank ({group:04X},3000)")
    return sorted(set(errors))


def _safe_private(ds: Dataset, tag: int, profile: Profile) -> bool:
    """Under Retain Safe Private: creator elements and the Table E.3.10-1 elements of their blocks."""
    if not profile.retain_safe_private:
        return False
    group, element = tag >> 16, tag & 0xFFFF
    if 0x10 <= element <= 0xFF:
        return True
    creator = ds.get((group, element >> 8))
    text = str(creator.value).strip() if creator is not None else ""
    return (text, group, element & 0xFF) in safe_private()


def study_values(ds: Dataset | None, digest: bool = False) -> dict[str, str | None]:
    """The patient and study attributes of one object (None without a dataset); an input's as digests,
    which compare as well and send no patient data to the driver."""
    if ds is None:
        return dict.fromkeys(STUDY_ATTRIBUTES)
    values = {k: str(ds.get(k) or "").strip() for k in STUDY_ATTRIBUTES}
    if digest:
        return {k: hashlib.blake2b(v.encode(), digest_size=12).hexdigest() for k, v in values.items()}
    return values


def references(ds: Dataset) -> list[str]:
    """Every Referenced SOP Instance UID at any depth."""
    found = []
    for _, tag, _, raw in _walk(ds):
        if tag == REFERENCED_SOP and raw:
            found += [v.decode("ascii", "replace") for v in _values(raw) if v]
    return found


def _dciodvfy_errors(data: bytes) -> set[str] | None:
    """dciodvfy's error lines, values blanked so that the source's and output's compare; None if it fails."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(data)
        f.flush()
        try:
            done = subprocess.run(["dciodvfy", f.name], capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
    lines = (done.stdout + done.stderr).decode("utf-8", "replace").splitlines()
    errors = (line for line in lines if line.startswith("Error"))
    return {_ANY_UID.sub("UID", _QUOTED_VALUE.sub("= <>", line)) for line in errors}


def validity_regressions(output: bytes, source: bytes) -> int | None:
    """How many kinds of dciodvfy error the output has that its source had not (None: not checked)."""
    if shutil.which("dciodvfy") is None:
        return None
    after, before = _dciodvfy_errors(output), _dciodvfy_errors(source)
    return None if after is None or before is None else len(after - before)


def _read(data: bytes, private_kept: bool) -> tuple[Dataset, list[tuple[int, int]]]:
    """A whole re-read (every element converted, as any reader of the output would) and what not to search."""
    ds = pydicom.dcmread(io.BytesIO(data))
    skip = list(_unsearched(ds, private_kept))
    for _ in ds.iterall():
        pass
    return ds, skip


def _parse_source(data: bytes | None) -> Dataset | None:
    if data is None:
        return None
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:  # a source pydicom cannot read gives no values; its output is still searched for UIDs
        return None


def _fetch(url: str, storage_options: dict | None) -> bytes | None:
    fs, path = filesystem(url, storage_options)
    try:
        return retry(fs.cat_file, path)
    except OSError:
        return None


def _unit_uids(tables: str, unit_id: str, storage_options: dict | None) -> list[tuple[str, str]]:
    """(original UID, attribute) of one unit: its uid_map part, else its rows of the compacted table."""
    fs, path = filesystem(tables, storage_options)
    part = f"{path}/uid_map/parts/{unit_id}.parquet"
    if retry(fs.exists, part):
        table = read_table(fs, part)
    else:
        table = read_table(fs, f"{path}/uid_map.parquet")
        table = table.filter(pc.equal(table["unit_id"], unit_id))
    return list(zip(table["original_uid"].to_pylist(), table["attribute"].to_pylist(), strict=True))


def check_unit(task: dict) -> list[dict]:
    """Check one unit's outputs: leaks, profile, re-read, study values, references, validity.

    `task`: profile (dict), dest, tables, unit_id, storage_options, rows [{source_url, source_read,
    output_key, validity}], index {output_key: text of its index row}. The unit's original UIDs are read
    here from its uid_map part, so that they never travel to the worker.
    """
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its warnings quote values
    profile = Profile(**task["profile"])
    options = task["storage_options"]
    dest_fs, dest_path = filesystem(task["dest"], options)
    findings = Findings(profile)
    for uid, attribute in _unit_uids(task["tables"], task["unit_id"], options):
        findings.add(uid.encode(), f"uid:{attribute}", MIN_UID)
    sources: dict[str, tuple[bytes | None, dict | None]] = {}  # what each output is compared with
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in task["rows"]:
            data = _fetch(row["source_read"], options) if row["source_read"] else None
            ds = _parse_source(data)
            try:
                if ds is not None:
                    findings.add_source(ds)
            except Exception:  # whatever a hostile input does to pydicom, the output is still searched
                ds = None
            # only the inputs dciodvfy compares with are held: a unit's inputs may be gigabytes
            sources[row["source_url"]] = (data if row["validity"] else None,
                                          study_values(ds, digest=True) if ds is not None else None)
        found = findings.automaton()
        known = {value.decode("latin-1") for value in findings.patterns}
        return [_check_object(row, sources[row["source_url"]], found, task["index"][row["output_key"]],
                              profile, dest_fs, dest_path, known) for row in task["rows"]]


def _check_object(row: dict, source: tuple[bytes | None, dict | None], found, index_text: str,
                  profile: Profile, dest_fs, dest_path: str, known: set[str]) -> dict:
    source_data, source_study = source
    result = {"source_url": row["source_url"], "output_key": row["output_key"], "readable": False,
              "source_checked": source_study is not None, "leak_attributes": [], "leak_places": [],
              "profile_errors": [], "study": None, "source_study": source_study or study_values(None),
              "sop_uid": None, "references": [], "uid_tokens": [], "validity_new_errors": None}
    try:
        data = retry(dest_fs.cat_file, f"{dest_path}/{row['output_key']}")
    except FileNotFoundError:
        result["missing"] = True
        return result
    places = {"key": row["output_key"].encode(), "index": index_text.encode()}
    try:
        ds, skip = _read(data, profile.retain_private_tags or profile.retain_safe_private)
    except Exception:  # anything a reader trips on makes the output unreadable
        places["file"] = data
        ds = None
    else:
        places.update(regions(data, ds, skip))
        result.update(readable=True, profile_errors=profile_errors(ds, profile), study=study_values(ds),
                      sop_uid=str(ds.get("SOPInstanceUID", "")), references=references(ds))
    leaks = {(what, place) for place, text in places.items() for _, what in hits(found, text)}
    result["leak_attributes"] = sorted({what for what, _ in leaks})
    result["leak_places"] = sorted({place for _, place in leaks})
    # UIDs this unit does not know of, for the driver to look up among every unit's originals
    tokens = {t.decode() for text in places.values() for t in UID_TOKEN.findall(text)}
    result["uid_tokens"] = sorted(t for t in tokens - known if not t.startswith(STANDARD_UID_ROOTS))
    if row["validity"] and ds is not None and source_data is not None:
        result["validity_new_errors"] = validity_regressions(data, source_data)
    return result


def dciodvfy_available() -> bool:
    return shutil.which("dciodvfy") is not None
