"""The C action on text: cleaned of the dataset's own identifying values and self-identifying text.

DICOM made here, so these run everywhere; tests over the standard's tables and the corpus are in
test_clean_options.py.
"""

import pytest
from pydicom.sequence import Sequence
from test_engine import item, make_dataset, read, through_bytes, through_datasets, to_bytes

from pipeline.deid import DeidError, Profile, action_for, apply, parse
from pipeline.deid.clean import Cleaner, cleaned_value
from pipeline.deid.guard import Guard
from pipeline.deid.operations import DROP
from pipeline.deid.stream import deidentify_bytes

SECRET = "test-secret"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def cleaner_of(*removed: tuple[int, str, bytes], keep_dates: bool = False) -> Cleaner:
    """The cleaner a walk builds after removing these (tag, VR, value) elements."""
    guard = Guard(Profile(retain_long_full_dates=keep_dates))
    for tag, vr, raw in removed:
        guard.note(tag, DROP, vr, lambda r=raw: r)
    return guard.cleaner()


PATIENT = (0x00100010, "PN", b"DOE^JANE")
BIRTH = (0x00100030, "DA", b"19760616")
MRN = (0x00100020, "LO", b"MRN12345678")
INSTITUTION = (0x00080080, "LO", b"General Hospital Springfield")


@pytest.mark.parametrize("form", [
    "19760616", "06/16/1976", "6/16/1976", "16/06/1976", "1976-06-16", "1976/06/16", "16.06.1976",
    "16 Jun 1976", "16-Jun-1976", "16 June 1976", "Jun 16, 1976", "June 16 1976", "Jun1976", "Jun 1976",
    "jun1976", "JUNE 1976", "06-16-76",
])
@pytest.mark.parametrize("keep_dates", [False, True], ids=["dates-removed", "full-dates"])
def test_every_written_form_of_a_removed_date_goes(form, keep_dates):
    """By its value (even under Full Dates, where dates as such stay) and by the date patterns."""
    cleaner = cleaner_of(BIRTH, keep_dates=keep_dates)
    assert cleaner.clean_text(f"Knee MR, DOB {form}; follow-up") == "Knee MR follow-up"


@pytest.mark.parametrize("written", ["Jane Doe", "DOE^JANE", "doe, jane", "Doe Jane", "JANE DOE", "jAnE dOe",
                                     "Jane"])
def test_the_patients_name_goes_in_any_order_and_case(written):
    assert cleaner_of(PATIENT).clean_text(f"CT CHEST W CONTRAST for {written}") == "CT CHEST W CONTRAST"


def test_dataset_values_go_as_whole_words_only():
    cleaner = cleaner_of(PATIENT, MRN, INSTITUTION)
    assert cleaner.clean_text("Janet Doering knee") == "Janet Doering knee"  # other words, not Jane's
    assert cleaner.clean_text("MRN12345678 knee at General Hospital Springfield") == "knee"


@pytest.mark.parametrize("text, expected", [
    ("Head CT 2023-01-05 10:30", "Head CT"),
    ("Scan at 7:45 pm", "Scan"),
    ("call 555-123-4567 with questions", "with questions"),
    ("ph (555) 123 4567", ""),
    ("result to jdoe@example.org asap", "result asap"),
    ("prior: 1.2.840.113619.2.55.3.604688119", "prior"),
    ("accession 20230105123 chest", "chest"),
    ("order A1234567 chest", "order chest"),
    ("MR knee 3rd May 2021", "MR knee"),
])
def test_self_identifying_text_goes_without_any_dataset_value(text, expected):
    assert Cleaner([]).clean_text(text) == expected


@pytest.mark.parametrize("text", ["CHEST", "Head 3D T1 b1000", "T2 FLAIR 1.5T", "Series 5 2mm",
                                  "AX T1 (post)", "firmware 3.5.1.0"])
def test_descriptive_text_is_left_alone(text):
    raw = text.encode()
    assert cleaner_of(PATIENT, BIRTH, MRN).clean("LO", raw) is raw


def test_full_dates_keep_dates_that_are_no_dataset_value():
    assert cleaner_of(PATIENT, keep_dates=True).clean_text("Prior 2019-02-03") == "Prior 2019-02-03"
    assert cleaner_of(PATIENT).clean_text("Prior 2019-02-03") == "Prior"


def test_multiple_values_are_cleaned_one_by_one_but_long_text_is_one():
    cleaner = cleaner_of(PATIENT)
    assert cleaner.clean("LO", b"CHEST\\for Jane Doe\\KNEE") == b"CHEST\\\\KNEE"
    assert cleaner.clean("LT", b"a\\b for Jane Doe") == b"a\\b"


def test_text_in_iso_2022_is_emptied_rather_than_cut():
    raw = b"\x1b$B9qIt\x1b(B for Jane Doe"
    assert cleaner_of(PATIENT).clean("LO", raw) == b""


def test_the_written_value_is_valid_for_its_vr():
    cleaner = cleaner_of(PATIENT)
    assert cleaned_value(cleaner, "LO", b"CT for Jane Doe ", required=False) == b"CT"
    assert cleaned_value(cleaner, "LO", b"Jane Doe", required=False) == b""
    assert cleaned_value(cleaner, "LO", b"Jane Doe", required=True) == b"ANONYMIZED"  # Type 1
    assert cleaned_value(cleaner, "LO", b"ABC for Jane", required=False) == b"ABC "  # even length
    assert cleaned_value(cleaner, "LO", b"CT\x01 head", required=False) == b"ANONYMIZED"  # no control bytes


def clinical() -> bytes:
    ds = make_dataset()  # patient Doe^Jane, ID PID-12345, born 19700101, at General Hospital Springfield
    ds.StudyDescription = "CT CHEST W CONTRAST for Jane Doe"
    ds.SeriesDescription = "Chest of Jane Doe 01/01/1970"
    ds.ProtocolName = "Doe^Jane"
    ds.ImageComments = "PID-12345: phone 555-123-4567, General Hospital Springfield"
    return to_bytes(ds)


def test_clean_descriptors_keeps_meaning_and_drops_identity():
    out, _ = through_bytes(clinical(), clean_descriptions=True)
    back = read(out)
    assert back.StudyDescription == "CT CHEST W CONTRAST"
    assert back.SeriesDescription == "Chest"
    assert back.ProtocolName == ""  # nothing left, and Type 3 in a CT: empty rather than a dummy
    assert back.ImageComments == ""
    for value in (b"Jane", b"PID-12345", b"555-123", b"Springfield", b"ANONYMIZED"):
        assert value not in out


@pytest.mark.parametrize("flags", [
    {"clean_descriptions": True}, {"clean_descriptions": True, "retain_long_modified_dates": True},
    {"clean_descriptions": True, "retain_long_full_dates": True, "retain_institution_identity": True},
    {"clean_graphics": True}, {},
])
def test_both_walkers_write_the_same_bytes(flags):
    data = clinical()
    assert through_datasets(data, **flags) == through_bytes(data, **flags)


def test_a_type_1_attribute_cleaned_to_nothing_gets_the_dummy():
    ds = make_dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.200.1"  # CT Defined Procedure Protocol: Protocol Name Type 1
    ds.ProtocolName = "Doe^Jane"
    data = to_bytes(ds)
    for walk in (through_datasets, through_bytes):
        out, _ = walk(data, clean_descriptions=True)
        assert read(out).ProtocolName == "ANONYMIZED"


def test_the_guard_still_refuses_what_a_cleaner_would_miss(monkeypatch):
    """The cleaner makes the guard pass; should it fail, the guard refuses the object."""
    monkeypatch.setattr(Guard, "cleaner", lambda self: Cleaner([]))
    data = clinical()
    for walk in (lambda: apply(parse(data), secret=SECRET, clean_descriptions=True),
                 lambda: deidentify_bytes(data, Profile(clean_descriptions=True), secret=SECRET)):
        with pytest.raises(DeidError) as err:
            walk()
        assert err.value.reason == "leak-guard"


def test_safety_net_cleans_unlisted_text_and_code_meanings():
    assert action_for("ContentDescription") == "K" and action_for("TextValue") == "C"
    assert action_for("CodeMeaning") == "C"
    ds = make_dataset()
    ds.AnatomicRegionSequence = Sequence([item(CodeValue="51185008", CodingSchemeDesignator="SCT",
                                               CodeMeaning="Chest, General Hospital Springfield")])
    ds.TextValue = "Jane Doe, seen 01/01/1970"  # unlisted at the top level: free text
    data = to_bytes(ds)
    out, _ = through_bytes(data)
    assert out == through_datasets(data)[0]
    back = read(out)
    code = back.AnatomicRegionSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("51185008", "SCT", "Chest")
    assert back.TextValue == "seen"


def test_clean_graphics_cleans_annotation_text():
    ds = make_dataset()
    ds.GraphicAnnotationSequence = Sequence([item(GraphicLayer="L1", TextObjectSequence=Sequence([item(
        UnformattedTextValue="lesion, Jane Doe 01/01/1970", AnchorPointAnnotationUnits="PIXEL")]))])
    data = to_bytes(ds)
    out, _ = through_bytes(data, clean_graphics=True, clean_descriptions=True)
    assert out == through_datasets(data, clean_graphics=True, clean_descriptions=True)[0]
    assert read(out).GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "lesion"
    dummied = read(through_bytes(data, clean_graphics=True)[0])  # the table says D without Clean Descriptors
    assert dummied.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "ANONYMIZED"


def concept(code: str, scheme: str, meaning: str) -> Sequence:
    return Sequence([item(CodeValue=code, CodingSchemeDesignator=scheme, CodeMeaning=meaning)])


def report() -> bytes:
    """A Basic Text SR whose content tree holds a finding, an observer, a date, a UID and free text."""
    ds = make_dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.Modality = "SR"
    finding = item(RelationshipType="CONTAINS", ValueType="TEXT", ConceptNameCodeSequence=concept(
        "121071", "DCM", "Finding"), TextValue="Nodule, seen by Jane Doe on 01/01/1970")
    observer = item(RelationshipType="HAS OBS CONTEXT", ValueType="PNAME", ConceptNameCodeSequence=concept(
        "121008", "DCM", "Person Observer Name"), PersonName="Who^Doctor")
    when = item(RelationshipType="HAS ACQ CONTEXT", ValueType="DATE", ConceptNameCodeSequence=concept(
        "126201", "DCM", "Acquisition Date"), Date="20240315")
    study = item(RelationshipType="HAS ACQ CONTEXT", ValueType="UIDREF", ConceptNameCodeSequence=concept(
        "110180", "DCM", "Study Instance UID"), UID="1.2.826.0.1.3680043.8.498.1002")
    note = item(RelationshipType="CONTAINS", ValueType="TEXT", ConceptNameCodeSequence=concept(
        "99001", "99LOCAL", "Local note"), TextValue="Compare with prior, Jane Doe")
    finding.ContentSequence = Sequence([note])
    ds.ContentSequence = Sequence([finding, observer, when, study])
    return to_bytes(ds)


@pytest.mark.parametrize("flags, finding, date", [
    ({}, "ANONYMIZED", "19000101"),
    ({"clean_descriptions": True}, "Nodule, seen", "19000101"),
    ({"retain_long_full_dates": True}, "ANONYMIZED", "20240315"),
])
def test_structured_content_is_cleaned_item_by_item_by_concept(flags, finding, date):
    data = report()
    result = deidentify_bytes(data, Profile(clean_structured_content=True, **flags), secret=SECRET)
    assert not result.fast  # SR content is cleaned by the dataset walker, and both say the same
    assert result.data == through_datasets(data, clean_structured_content=True, **flags)[0]
    back = read(result.data)
    items = back.ContentSequence
    assert [i.ValueType for i in items] == ["TEXT", "PNAME", "DATE", "UIDREF"]  # the tree is intact
    assert items[0].TextValue == finding
    assert items[0].ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    assert items[0].ContentSequence[0].TextValue == "Compare with prior"  # an unlisted concept: cleaned
    assert items[1].PersonName == "ANONYMIZED"
    assert items[2].Date == date
    assert result.uid_map["1.2.826.0.1.3680043.8.498.1002"] == items[3].UID
    assert b"Jane" not in result.data and b"Who^Doctor" not in result.data


def test_modified_dates_shift_structured_content_dates():
    profile = Profile(clean_structured_content=True, retain_long_modified_dates=True)
    result = deidentify_bytes(report(), profile, secret=SECRET)
    back = read(result.data)
    shifted = back.ContentSequence[2].Date
    assert shifted not in ("20240315", "19000101", "") and len(shifted) == 8
    assert shifted == back.StudyDate  # the same shift as the header's Study Date, 20240315
