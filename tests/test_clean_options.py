"""Each cleaning option over the standard's own tables (../shared/ps3.15) and over the corpus.

Skipped where ../shared is absent; test_clean.py holds the tests that always run.
"""

import csv
import re
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.sequence import Sequence
from test_engine import item, make_dataset, read, through_datasets, to_bytes

from pipeline.deid import DeidError, Profile, action_for, apply, parse
from pipeline.deid.rules import description_tags
from pipeline.deid.stream import deidentify_bytes

REPO = Path(__file__).resolve().parents[1]
PS315 = REPO.parent / "shared" / "ps3.15"
CORPUS = REPO.parent / "shared" / "corpus"
SECRET = "test-secret"
needs_tables = pytest.mark.skipif(not PS315.exists(), reason="../shared/ps3.15 is not present")
needs_corpus = pytest.mark.skipif(not CORPUS.exists(), reason="../shared/corpus is not present")

# Each E.1-1 column that holds C, and the profile flag that switches it on.
C_COLUMNS = {"clean_desc": "clean_descriptions", "clean_graph": "clean_graphics",
             "clean_struct_cont": "clean_structured_content",
             "rtn_pat_chars": "retain_patient_characteristics"}
# Concrete tags for the pattern rows with a C: a curve's description, overlay comments and data.
PATTERN_TAGS = {"(50xx,xxxx)": [(0x50000022, "LO")], "(60xx,4000)": [(0x60004000, "LT")],
                "(60xx,3000)": [(0x60003000, "OW")]}
TEXT = {"SH": ("CT DOE^JANE", "CT"), **dict.fromkeys(("LO", "ST", "LT", "UT", "UC"),
                                                     ("HEAD CT for Jane Doe, PID-12345", "HEAD CT"))}


def csv_rows(name: str) -> list[dict[str, str]]:
    with open(PS315 / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def c_attributes(column: str) -> list[tuple[int, str]]:
    """(tag, VR) of every attribute that the column marks C, for which a VR is known."""
    found = []
    for row in csv_rows("table_e1_1.csv"):
        if row[column] != "C":
            continue
        match = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", row["tag"])
        if not match:
            found += PATTERN_TAGS[row["tag"]]
            continue
        tag = int(match[1] + match[2], 16)
        try:
            found.append((tag, dictionary_VR(tag).split(" or ")[0]))
        except KeyError:  # added to the standard after pydicom's dictionary: no VR to write it with
            continue
    return found


@needs_tables
@pytest.mark.parametrize("column", sorted(C_COLUMNS))
def test_every_c_attribute_of_an_option_is_cleaned_alike_by_both_walkers(column):
    attributes = c_attributes(column)
    assert attributes
    ds = make_dataset()
    code = item(CodeValue="1234567", CodingSchemeDesignator="99X", CodeMeaning="CT for Jane Doe",
                TextValue="HEAD CT for Jane Doe, PID-12345")
    for tag, vr in attributes:
        if vr == "SQ":
            ds.add_new(tag, vr, Sequence([code]))
        elif vr in TEXT:
            ds.add_new(tag, vr, TEXT[vr][0])
        elif vr in ("OB", "OW"):
            ds.add_new(tag, vr, b"\x01\x02\x03\x04")
        else:
            ds.add_new(tag, vr, "ABC")
    data = to_bytes(ds)
    flags = {C_COLUMNS[column]: True}
    out, uid_map = through_datasets(data, **flags)
    result = deidentify_bytes(data, Profile(**flags), secret=SECRET)
    assert (out, uid_map) == (result.data, result.uid_map)
    assert b"Jane" not in out and b"PID-12345" not in out
    back = read(out)
    for tag, vr in attributes:
        assert action_for(tag, Profile(**flags)) == "C"
        value = back[tag].value
        if vr == "SQ":
            kept = value[0]
            assert (kept.CodeValue, kept.CodeMeaning, kept.TextValue) == ("1234567", "CT", "HEAD CT"), \
                hex(tag)
        elif vr in TEXT:
            assert value == TEXT[vr][1], hex(tag)
        elif vr in ("OB", "OW"):
            assert value == bytes(4), hex(tag)  # kept, blank
        else:
            assert value not in ("ABC", "", None), hex(tag)


# The profiles the concept table is checked under: Clean Structured Content with each other option.
CONCEPT_PROFILES = [
    {}, {"clean_descriptions": True}, {"retain_uids": True}, {"retain_long_full_dates": True},
    {"retain_long_modified_dates": True},
    {"retain_device_identity": True, "retain_institution_identity": True,
     "retain_patient_characteristics": True},
]
CONCEPT_COLUMNS = {"retain_uids": "rtn_uids", "retain_device_identity": "rtn_dev_id",
                   "retain_institution_identity": "rtn_inst_id",
                   "retain_patient_characteristics": "rtn_pat_chars",
                   "retain_long_full_dates": "rtn_long_full_dates",
                   "retain_long_modified_dates": "rtn_long_modif_dates", "clean_descriptions": "clean_desc"}
ORIGINAL = {"PNAME": "Who^Doctor", "DATE": "20240315", "TIME": "101500",
            "DATETIME": "20240315101500", "UIDREF": "1.2.826.0.1.3680043.8.498.7777"}
VALUE = {"TEXT": "TextValue", "PNAME": "PersonName", "DATE": "Date", "TIME": "Time", "DATETIME": "DateTime",
         "UIDREF": "UID"}
DUMMY = {"TEXT": "ANONYMIZED", "PNAME": "ANONYMIZED", "DATE": "19000101", "TIME": "000000",
         "DATETIME": "19000101000000"}


def expected_letter(row: dict[str, str], flags: dict[str, bool]) -> str:
    """The oracle, from the table's words: the options' codes, most conservative first; Full Dates
    over Modified Dates; C under Modified Dates means shifted (M); else the Basic code."""
    codes = []
    for flag in flags:
        column = CONCEPT_COLUMNS.get(flag)
        if not column or not row[column]:
            continue
        if column == "rtn_long_modif_dates":
            if "retain_long_full_dates" in flags:
                continue
            codes.append("M")
        else:
            codes.append(row[column][0])
    return min(codes, key="XZDCMUK".index) if codes else row["basic"][0]


def own_text(index: int) -> str:
    """A text no other item holds: the text of an item removed for its concept is removed from others."""
    return f"HEAD CT {chr(65 + index // 26)}{chr(65 + index % 26)}x"


def content_item(index: int, row: dict[str, str], letter: str):
    """One item of the row's concept; text kept as it is (K) holds no name, or the guard refuses it."""
    kind = row["value_type"]
    name = item(CodeValue=row["code_value"], CodingSchemeDesignator=row["coding_scheme"],
                CodeMeaning=row["code_meaning"])
    entry = item(RelationshipType="CONTAINS", ValueType=kind, ConceptNameCodeSequence=Sequence([name]))
    if kind in VALUE:
        text = own_text(index) + ("" if letter == "K" else " for Jane Doe")
        setattr(entry, VALUE[kind], text if kind == "TEXT" else ORIGINAL[kind])
    elif kind == "NUM":
        units = item(CodeValue="a", CodingSchemeDesignator="UCUM", CodeMeaning="year")
        entry.MeasuredValueSequence = Sequence([item(NumericValue="42",
                                                     MeasurementUnitsCodeSequence=Sequence([units]))])
    elif kind == "CODE":
        entry.ConceptCodeSequence = Sequence([item(CodeValue="248152002", CodingSchemeDesignator="SCT",
                                                   CodeMeaning="Female")])
    return entry


@needs_tables
@pytest.mark.parametrize("flags", CONCEPT_PROFILES, ids=lambda f: "+".join(f) or "basic")
def test_every_content_item_concept_gets_its_action(flags):
    rows = csv_rows("clean_struct_cont_concepts.csv")
    ds = make_dataset()
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.88.22", "SR"  # Enhanced SR
    ds.ContentSequence = Sequence([content_item(i, row, expected_letter(row, flags))
                                   for i, row in enumerate(rows)])
    data = to_bytes(ds)
    profile = Profile(clean_structured_content=True, **flags)
    out, uid_map = apply(parse(data), profile, secret=SECRET)
    assert deidentify_bytes(data, profile, secret=SECRET).data == through_datasets(
        data, clean_structured_content=True, **flags)[0]
    items = out.ContentSequence
    assert [i.ValueType for i in items] == [r["value_type"] for r in rows]  # the tree keeps its shape
    for index, (row, got) in enumerate(zip(rows, items, strict=True)):
        kind, letter = row["value_type"], expected_letter(row, flags)
        where = (row["code_meaning"], kind, letter)
        assert got.ConceptNameCodeSequence[0].CodeValue == row["code_value"], where
        if kind in VALUE:
            value = str(getattr(got, VALUE[kind]))
            if kind == "TEXT" and letter == "K":
                assert value == own_text(index), where
            elif letter == "K" or (letter == "M" and kind == "TIME"):  # times are kept under Modified Dates
                assert value == ORIGINAL[kind], where
            elif kind == "UIDREF":
                assert value == uid_map[ORIGINAL[kind]], where
            elif letter == "C":
                assert value == own_text(index), where
            elif letter == "M":
                assert value not in (ORIGINAL[kind], DUMMY[kind], ""), where
                assert len(value) == len(ORIGINAL[kind]), where
            else:
                assert value == DUMMY[kind], where
        elif kind == "NUM":
            assert (len(got.MeasuredValueSequence) == 1) == (letter == "K"), where
        elif kind == "CODE":
            assert (got.ConceptCodeSequence[0].CodeMeaning == "Female") == (letter == "K"), where


OWN_VALUES = {b"ANONYMIZED", b"19000101", b"19000101000000"}  # the engine's dummies prove nothing
RETAIN_OPTIONS = ("retain_uids", "retain_device_identity", "retain_patient_characteristics",
                  "retain_institution_identity", "retain_long_full_dates", "retain_long_modified_dates",
                  "retain_safe_private")
# Text that can identify: no codes, ages or numbers.
SEARCHED_VRS = {"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def walk_values(ds, profile: Profile, into: dict[str, set[bytes]]) -> None:
    """Sort the input's text values by what the profile does with them: kept (K), removed or replaced
    (the rest; Modified Dates keep times), and cleaned (C), which is neither; descriptions are no
    identities and not counted."""
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        try:
            vr = elem.VR if elem.VR not in (None, "UN") else dictionary_VR(tag)
        except KeyError:
            vr = elem.VR or "UN"
        action = action_for(tag, profile)
        if vr == "SQ":
            if action != "X":
                for entry in ds[tag].value:
                    walk_values(entry, profile, into)
            continue
        if vr not in SEARCHED_VRS or not isinstance(elem.value, bytes) or action == "C":
            continue
        if tag in description_tags():
            continue
        bucket = into["kept"] if action == "K" or (action == "M" and vr == "TM") else into["gone"]
        bucket.update(v.strip(b" \0") for v in elem.value.split(b"\\") if len(v.strip(b" \0")) >= 8)


@needs_corpus
@pytest.mark.parametrize("flags", [{"clean_descriptions": True}, {"clean_structured_content": True},
                                   {"clean_graphics": True},
                                   {"clean_descriptions": True, "clean_structured_content": True,
                                    "clean_graphics": True, "retain_long_modified_dates": True},
                                   *({name: True} for name in RETAIN_OPTIONS)],
                         ids=["descriptors", "structured", "graphics", "all+modified-dates", *RETAIN_OPTIONS])
def test_corpus_leaks_nothing_with_each_option(flags):
    """What an option does not retain stays out of every output, the retain options' included."""
    profile = Profile(**flags)
    retaining = any(name.startswith("retain_") and name != "retain_long_modified_dates" for name in flags)
    leaks, checked, written = [], 0, 0
    with open(CORPUS / "MANIFEST.csv", newline="", encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    for path in paths:
        data = (CORPUS / path).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = deidentify_bytes(data, profile, secret=SECRET).data
            except DeidError as err:
                # The cleaner leaves the guard nothing to find; a retained value may still hold a
                # removed one (a physician's name in a kept institution name): then the guard refuses.
                assert err.reason != "leak-guard" or retaining, path
                continue
            values: dict[str, set[bytes]] = {"gone": set(), "kept": set()}
            walk_values(parse(data), profile, values)
        written += 1
        suspects = {v for v in values["gone"] - OWN_VALUES if not any(v in k for k in values["kept"])}
        checked += len(suspects)
        leaks += [(path, v) for v in suspects if v in out]
        pydicom.dcmread(BytesIO(out))
    assert written >= 440 and checked > 2000  # real identifying values were searched for
    assert not leaks
