"""Every row of PS3.15 Table E.1-1, for the Basic Profile, each option and each pair of options."""

import csv
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.deid import FLAGS, Profile, action_for, basic_profile

REPO = Path(__file__).resolve().parents[1]
PS315 = REPO.parent / "shared" / "ps3.15"
DATA = REPO / "pipeline" / "deid" / "data"
COLUMNS = {
    "retain_safe_private": "rtn_safe_priv", "retain_uids": "rtn_uids",
    "retain_device_identity": "rtn_dev_id", "retain_institution_identity": "rtn_inst_id",
    "retain_patient_characteristics": "rtn_pat_chars",
    "retain_long_full_dates": "rtn_long_full_dates",
    "retain_long_modified_dates": "rtn_long_modif_dates", "clean_descriptions": "clean_desc",
    "clean_structured_content": "clean_struct_cont", "clean_graphics": "clean_graph",
}
# A concrete tag standing for each pattern row of the table.
PATTERN_EXAMPLES = {
    "(50xx,xxxx)": [0x50000010, 0x501E3000],
    "(60xx,3000)": [0x60003000, 0x60E23000],
    "(60xx,4000)": [0x60004000, 0x601E4000],
    "(gggg,eeee) where gggg is odd": [0x00090010, 0x00291010, 0x7FE11001],
}

pytestmark = pytest.mark.skipif(not PS315.exists(), reason="../shared/ps3.15 is not present")


def standard_rows() -> list[dict[str, str]]:
    with open(PS315 / "table_e1_1.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tags_of(row: dict[str, str]) -> list[int]:
    match = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", row["tag"])
    return [int(match[1] + match[2], 16)] if match else PATTERN_EXAMPLES[row["tag"]]


def expected(row: dict[str, str], flags: tuple[str, ...]) -> str:
    """The oracle, written from the issue's words rather than from the engine's code."""
    codes = []
    for flag in flags:
        column = COLUMNS.get(flag)
        if column is None or not row[column]:
            continue
        if column == "rtn_long_modif_dates" and "retain_long_full_dates" in flags:
            continue  # full dates win over modified dates for temporal attributes
        codes.append("M" if column == "rtn_long_modif_dates" else row[column][0])
    if "retain_private_tags" in flags and row["tag"].startswith("(gggg"):
        codes.append("K")
    order = "XZDCMUK"
    return min(codes, key=order.index) if codes else row["basic"][0]


PROFILES = [()] + [(f,) for f in FLAGS] + list(itertools.combinations(FLAGS, 2))


@pytest.mark.parametrize("flags", PROFILES, ids=lambda f: "+".join(f) or "basic")
def test_every_row_resolves_as_the_standard_says(flags):
    profile = Profile(**dict.fromkeys(flags, True))
    wrong = [
        (row["tag"], row["name"], action_for(tag, profile), expected(row, flags))
        for row in standard_rows() for tag in tags_of(row)
        if action_for(tag, profile) != expected(row, flags)
    ]
    assert not wrong


def test_all_656_rows_are_covered():
    rows = standard_rows()
    assert len(rows) == 656
    assert {action_for(t, basic_profile()) for r in rows for t in tags_of(r)} <= set("DZXKCU")


@pytest.mark.parametrize(("name", "profile", "code"), [
    ("PatientName", Profile(), "Z"),
    ("PatientID", Profile(), "Z"),
    ("StudyInstanceUID", Profile(), "U"),
    ("StudyInstanceUID", Profile(retain_uids=True), "K"),
    ("StudyDate", Profile(retain_long_full_dates=True), "K"),
    ("StudyDate", Profile(retain_long_modified_dates=True), "M"),
    ("StudyDate", Profile(retain_long_full_dates=True, retain_long_modified_dates=True), "K"),
    ("InstitutionName", Profile(), "X"),
    ("InstitutionName", Profile(retain_institution_identity=True), "K"),
    ("SeriesDescription", Profile(clean_descriptions=True), "C"),
    ("PatientSex", Profile(retain_patient_characteristics=True), "K"),
])
def test_spot_checks_from_the_standard_text(name, profile, code):
    assert action_for(name, profile) == code


def test_tag_forms_agree():
    forms = [0x00100010, (0x0010, 0x0010), "PatientName"]
    assert {action_for(form, basic_profile()) for form in forms} == {"Z"}


def test_beyond_the_table():
    basic = basic_profile()
    assert action_for(0x00000900, basic) == "X"  # command element
    assert action_for(0x00041220, basic) == "X"  # DICOMDIR records
    assert action_for(0x00280010, basic) == "K"  # Rows: not listed, kept
    assert action_for(0x00230010, Profile(retain_private_tags=True)) == "K"
    assert action_for(0x00230010, Profile(retain_private_tags=True, retain_safe_private=True)) == "C"
    assert action_for(0x01000010, basic) == "X"  # a public tag no dictionary knows


def test_unknown_names_are_errors_that_name_them():
    with pytest.raises(ValueError, match="NotAKeyword"):
        action_for("NotAKeyword", basic_profile())
    with pytest.raises(TypeError, match="retain_everything"):
        from pipeline.deid.profile import resolve
        resolve(None, {"retain_everything": True})


def test_generated_tables_match_the_standard(tmp_path):
    xml = PS315 / "source" / "part15.xml"
    if not xml.exists():
        pytest.skip("part15.xml is not present")
    subprocess.run([sys.executable, str(REPO / "scripts" / "generate_rules.py"), str(xml),
                    str(tmp_path)], check=True, capture_output=True)
    for name in ("table_e1_1.json", "safe_private.json"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
