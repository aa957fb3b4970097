"""Compound codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) resolve by the attribute's type in the object's IOD."""

import json
import re
import subprocess
import sys
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pipeline.deid import Profile, action_for, apply, basic_profile, parse, serialize
from pipeline.deid.rules import resolve_row, table
from pipeline.deid.stream import deidentify_bytes

REPO = Path(__file__).resolve().parents[1]
PS33 = REPO.parent / "shared" / "ps3.3"
DATA = REPO / "pipeline" / "deid" / "data"
SECRET = "compound-test"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
FRAMES = ("PerFrameFunctionalGroupsSequence", "DerivationImageSequence")
SOURCE = "1.2.826.0.1.3680043.8.498.2001"


@pytest.mark.parametrize(("keyword", "sop_class", "path", "code"), [
    ("ContentDate", BASIC_TEXT_SR, (), "D"),  # Z/D, Type 1 in SR Document General
    ("ContentDate", CTImageStorage, (), "Z"),  # Z/D, Type 2C in General Image
    ("ContentDate", "1.2.3.4.5.6", (), "Z"),  # an unknown SOP class: the first code
    ("ContentDate", None, (), "Z"),
    ("DeviceSerialNumber", SEG, (), "D"),  # X/Z/D, Type 1 in Enhanced General Equipment
    ("DeviceSerialNumber", CTImageStorage, (), "X"),  # Type 3 in General Equipment
    ("DeviceSerialNumber", CTImageStorage, ("ContributingEquipmentSequence",), "X"),
    ("SourceImageSequence", SEG, FRAMES, "U"),  # X/Z/U*, Type 2 in the Derivation Image macro
    ("SourceImageSequence", SEG, (), "X"),  # Type 3 in General Reference
    ("SeriesDate", "1.2.840.10008.5.1.4.1.1.128", (), "D"),  # X/D, Type 1 in PET Series
    ("PatientID", CTImageStorage, (), "Z"),  # Z/D, Type 2
    ("InstitutionName", CTImageStorage, (), "X"),  # X/Z/D, Type 3
    ("PresentationCreationDate", GSPS, (), "D"),  # X alone on a Type 1 attribute
    ("ResponsiblePerson", CTImageStorage, (), "Z"),  # X alone on a Type 2C attribute
    ("PatientName", BASIC_TEXT_SR, (), "Z"),  # not compound: as the table says
])
def test_action_for_follows_the_type_at_the_path(keyword, sop_class, path, code):
    assert action_for(keyword, basic_profile(), sop_class=sop_class, path=path) == code


def test_options_still_override_compound_codes():
    assert action_for("ContentDate", Profile(retain_long_full_dates=True), sop_class=BASIC_TEXT_SR) == "K"
    assert action_for("ContentDate", Profile(retain_long_modified_dates=True), sop_class=BASIC_TEXT_SR) == "M"
    assert action_for("SourceImageSequence", Profile(retain_uids=True), sop_class=SEG, path=FRAMES) == "K"
    assert action_for("DeviceSerialNumber", Profile(retain_device_identity=True), sop_class=SEG) == "K"


def test_a_compound_code_in_an_option_column_resolves_by_type_too():
    row = dict(table()["(0008,0023)"], clean_desc="X/Z/D", basic="X")  # no such row in this edition
    profile = Profile(clean_descriptions=True)
    assert [resolve_row(row, profile, kind) for kind in ("1", "1C", "2", "2C", None)] == list("DDZZX")


# The issue's words, one row per code and kind of requirement: Type 1 -> D, Type 2 -> Z, a required
# reference sequence kept with its UIDs replaced; where the code lacks that letter, what it offers.
ORACLE = {"X/Z": ("Z", "Z"), "X/D": ("D", "D"), "Z/D": ("D", "Z"), "X/Z/D": ("D", "Z"),
          "X/Z/U*": ("U", "U"), "X": ("D", "Z")}


def test_every_typed_attribute_of_every_sop_class_resolves_as_the_issue_says():
    types = json.loads((DATA / "iod_types.json").read_text())
    codes = {int(m[1] + m[2], 16): row["basic"] for tag, row in table().items()
             if (m := re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", tag))}
    wrong, checked = [], 0
    for sop_class, index in types["sop_classes"].items():
        for tag, paths in types["tables"][index].items():
            code = codes[int(tag, 16)]
            for path, kind in paths.items():
                steps = tuple(int(t, 16) for t in path.split("/") if t)
                want = ORACLE[code][0 if kind.startswith("1") else 1]
                got = action_for(int(tag, 16), basic_profile(), sop_class=sop_class, path=steps)
                checked += 1
                if got != want:
                    wrong.append((sop_class, tag, path, kind, got, want))
    assert checked > 5000
    assert not wrong


def test_the_generator_keeps_the_strictest_type_and_leaves_type_3_out(tmp_path):
    source = tmp_path / "ps3.3"
    source.mkdir()
    (source / "sop_class_iod_map.json").write_text(json.dumps({"1.2.3": "one", "1.2.4": "two"}))
    (source / "iod_module_map.json").write_text(json.dumps({
        "one": [{"key": "a", "usage": "M", "ie": "x"}, {"key": "b", "usage": "U", "ie": "x"}],
        "two": [{"key": "a", "usage": "M", "ie": "x"}]}))
    (source / "module_attribute_map.json").write_text(json.dumps({
        "a": [{"keyword": "ContentDate", "type": "3", "path": []},
              {"keyword": "StationName", "type": "2", "path": ["ContributingEquipmentSequence"]},
              {"keyword": "Rows", "type": "1", "path": []}],
        "b": [{"keyword": "ContentDate", "type": "1", "path": []},
              {"keyword": "StationName", "type": "3", "path": ["ContributingEquipmentSequence"]}]}))
    subprocess.run([sys.executable, str(REPO / "scripts" / "generate_iod_types.py"), str(source),
                    str(tmp_path)], check=True, capture_output=True)
    made = json.loads((tmp_path / "iod_types.json").read_text())
    one, two = (made["tables"][made["sop_classes"][uid]] for uid in ("1.2.3", "1.2.4"))
    assert one == {"00080023": {"": "1"}, "00081010": {"0018A001": "2"}}
    assert two == {"00081010": {"0018A001": "2"}}  # Type 3 ContentDate left out, Rows not compound


def test_generated_types_match_the_standard(tmp_path):
    if not PS33.exists():
        pytest.skip("../shared/ps3.3 is not present")
    subprocess.run([sys.executable, str(REPO / "scripts" / "generate_iod_types.py"), str(PS33),
                    str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "iod_types.json").read_bytes() == (DATA / "iod_types.json").read_bytes()


def item(**attrs) -> Dataset:
    ds = Dataset()
    for name, value in attrs.items():
        setattr(ds, name, value)
    return ds


def encode(sop_class: str, **attrs) -> bytes:
    ds = item(SOPClassUID=sop_class, SOPInstanceUID="1.2.826.0.1.3680043.8.498.2000",
              StudyInstanceUID="1.2.826.0.1.3680043.8.498.2002", PatientName="Doe^Jane",
              ContentDate="20240315", ContentTime="101500", DeviceSerialNumber="SN-4711", **attrs)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def through_datasets(data: bytes) -> tuple[Dataset, dict[str, str]]:
    out, uid_map = apply(parse(data), secret=SECRET)
    return pydicom.dcmread(BytesIO(serialize(out))), uid_map


def through_bytes(data: bytes) -> tuple[Dataset, dict[str, str]]:
    result = deidentify_bytes(data, basic_profile(), secret=SECRET)
    assert result.fast
    return pydicom.dcmread(BytesIO(result.data)), result.uid_map


@pytest.fixture(params=[through_datasets, through_bytes], ids=["dataset-walker", "byte-walker"])
def run(request):
    return request.param


def references(uid: str = SOURCE) -> Sequence:
    return Sequence([item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=uid)])


def test_required_values_are_dummied_and_others_emptied_or_removed(run):
    sr, _ = run(encode(BASIC_TEXT_SR))
    assert (sr.ContentDate, sr.ContentTime) == ("19000101", "000000")  # Type 1: D
    assert "DeviceSerialNumber" not in sr  # Type 3 in an SR: X
    ct, _ = run(encode(CTImageStorage))
    assert ct.ContentDate == "" and ct.ContentTime == ""  # Type 2C: Z
    seg, _ = run(encode(SEG))
    assert seg.DeviceSerialNumber == "ANONYMIZED"  # Type 1 in Enhanced General Equipment: D
    unknown, _ = run(encode("1.2.3.4.5.6"))
    assert unknown.ContentDate == "" and "DeviceSerialNumber" not in unknown  # first codes


def test_required_reference_sequences_are_kept_with_new_uids(run):
    frames = Sequence([item(DerivationImageSequence=Sequence([item(SourceImageSequence=references())]))])
    out, uid_map = run(encode(SEG, PerFrameFunctionalGroupsSequence=frames, SourceImageSequence=references()))
    kept = out.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert kept.ReferencedSOPInstanceUID == uid_map[SOURCE] != SOURCE
    assert "SourceImageSequence" not in out  # Type 3 at the top, with no Referenced Series Sequence


def test_a_referenced_series_sequence_keeps_the_references_it_lists(run):
    listed = Sequence([item(SeriesInstanceUID="1.2.826.0.1.3680043.8.498.2003",
                            ReferencedInstanceSequence=references())])
    out, uid_map = run(encode(SEG, ReferencedSeriesSequence=listed, SourceImageSequence=references()))
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == uid_map[SOURCE]
    listed_uid = out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert listed_uid == uid_map[SOURCE]


def test_walkers_agree_on_typed_attributes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sop_class in (BASIC_TEXT_SR, CTImageStorage, SEG, "1.2.3.4.5.6"):
            data = encode(sop_class, ReferencedImageSequence=references(), OperatorsName="Op^Erator")
            a, map_a = through_datasets(data)
            b, map_b = through_bytes(data)
            assert a == b and map_a == map_b, sop_class
