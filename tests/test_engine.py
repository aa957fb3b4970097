"""The engine on DICOM made here, so these run everywhere (no corpus needed)."""

import hashlib
import hmac
import re
import time
import warnings
from io import BytesIO

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import validate_value

from pipeline.deid import DeidError, Profile, action_for, apply, basic_profile, parse, serialize
from pipeline.deid.markers import IMPLEMENTATION_CLASS_UID
from pipeline.deid.rules import table
from pipeline.deid.stream import deidentify_bytes

SECRET = "test-secret"
UIDS = {
    "sop": "1.2.826.0.1.3680043.8.498.1001", "study": "1.2.826.0.1.3680043.8.498.1002",
    "series": "1.2.826.0.1.3680043.8.498.1003", "frame": "1.2.826.0.1.3680043.8.498.1004",
    "ref_series": "1.2.826.0.1.3680043.8.498.1005", "ref_sop": "1.2.826.0.1.3680043.8.498.1006",
}
IDENTIFYING = ["Doe^Jane", "PID-12345", "19700101", "General Hospital Springfield", "CTSTATION7",
               "Secret private note", "Dr^Who", "Overlay about Jane", *UIDS.values()]


def item(**attrs) -> Dataset:
    ds = Dataset()
    for name, value in attrs.items():
        setattr(ds, name, value)
    return ds


def make_dataset() -> Dataset:
    """A CT header with something identifying in every place the engine must look."""
    ds = item(
        SOPClassUID=CTImageStorage, SOPInstanceUID=UIDS["sop"], StudyInstanceUID=UIDS["study"],
        SeriesInstanceUID=UIDS["series"], FrameOfReferenceUID=UIDS["frame"], Modality="CT",
        PatientName="Doe^Jane", PatientID="PID-12345", PatientBirthDate="19700101", PatientSex="F",
        StudyDate="20240315", SeriesDate="20240316", StudyTime="101500",
        AcquisitionDateTime="20240315101600.123+0100", InstitutionName="General Hospital Springfield",
        StationName="CTSTATION7", SeriesDescription="Chest of Jane", Rows=2, Columns=2,
        ReferringPhysicianName="Dr^Who", SpecificCharacterSet="ISO_IR 100",
    )
    ds.ReferencedSeriesSequence = Sequence([item(
        SeriesInstanceUID=UIDS["ref_series"],
        ReferencedInstanceSequence=Sequence([item(
            ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=UIDS["ref_sop"],
            PerformingPhysicianName="Dr^Who")]),
    )])
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "Secret private note")
    ds.add_new(0x60000010, "US", 2)
    ds.add_new(0x60003000, "OW", b"\x00" * 8)
    ds.add_new(0x60004000, "LT", "Overlay about Jane")
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x01000010, "LO", "unknown public")
    ds.PixelData = b"\x00" * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return ds


def to_bytes(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITALPACS"
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def through_datasets(data: bytes, **flags) -> tuple[bytes, dict]:
    out, uid_map = apply(parse(data), secret=SECRET, **flags)
    return serialize(out), uid_map


def through_bytes(data: bytes, **flags) -> tuple[bytes, dict]:
    result = deidentify_bytes(data, Profile(**flags), secret=SECRET)
    assert result.fast  # these files are ordinary: the byte walker, not its fallback, must take them
    return result.data, result.uid_map


@pytest.fixture(params=[through_datasets, through_bytes], ids=["dataset-walker", "byte-walker"])
def run(request):
    """Both walkers, for the tests that read back the file a walker wrote."""
    return request.param


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_nothing_identifying_survives_anywhere(syntax, run):
    data = to_bytes(make_dataset(), syntax)
    out, uid_map = run(data)
    for value in IDENTIFYING:
        assert value.encode() not in out, value
    assert b"HOSPITALPACS" not in out
    assert set(uid_map) == set(UIDS.values())
    back = pydicom.dcmread(BytesIO(out))
    assert back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID \
        == uid_map[UIDS["ref_sop"]]
    assert "PerformingPhysicianName" not in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert not any(e.tag.is_private for e in back.iterall())
    assert all(e.tag.group not in (0x5000, 0x6000, 0x0000, 0x0100) for e in back.iterall())
    assert back.PatientName == "" and back.PatientID == "" and "InstitutionName" not in back
    assert back.Rows == 2 and back.PixelData == b"\x00" * 8


def test_input_is_not_modified():
    ds = parse(to_bytes(make_dataset()))
    before = to_bytes(ds)
    apply(ds, secret=SECRET)
    assert to_bytes(ds) == before


def test_new_uid_is_the_keyed_version_8_uuid():
    out, uid_map = apply(make_dataset(), secret=SECRET)
    digest = bytearray(hmac.new(SECRET.encode(), UIDS["study"].encode(), hashlib.sha256).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x80
    digest[8] = digest[8] & 0x3F | 0x80
    assert out.StudyInstanceUID == uid_map[UIDS["study"]] == f"2.25.{int.from_bytes(digest, 'big')}"
    for new in uid_map.values():
        assert len(new) <= 64 and re.fullmatch(r"2\.25\.(0|[1-9]\d*)", new)
    assert apply(make_dataset(), secret="another")[0].StudyInstanceUID != out.StudyInstanceUID


def test_secret_from_environment_and_warning_without_one(monkeypatch):
    monkeypatch.setenv("DICOM_DEID_SECRET", SECRET)
    assert apply(make_dataset())[1] == apply(make_dataset(), secret=SECRET)[1]
    monkeypatch.delenv("DICOM_DEID_SECRET")
    from pipeline.deid import keys
    keys._process_secret.cache_clear()
    with pytest.warns(UserWarning, match="not be reproducible"):
        apply(make_dataset())


def test_file_meta_is_replaced():
    out, _ = apply(parse(to_bytes(make_dataset())), secret=SECRET)
    meta = out.file_meta
    assert out.preamble == b"\0" * 128
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != UIDS["sop"]
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert "SourceApplicationEntityTitle" not in meta
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_markers_record_profile_and_options():
    out, _ = apply(make_dataset(), secret=SECRET, retain_uids=True, retain_long_modified_dates=True)
    assert out.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113110"]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert apply(make_dataset(), secret=SECRET)[0].LongitudinalTemporalInformationModified == "REMOVED"
    assert out.StudyInstanceUID == UIDS["study"]


def test_modified_dates_shift_one_patient_consistently(run):
    a = read(run(to_bytes(make_dataset()), retain_long_modified_dates=True)[0])
    other = make_dataset()
    other.StudyDate, other.SOPInstanceUID = "20240101", "1.2.3.4"
    b = read(run(to_bytes(other), retain_long_modified_dates=True)[0])
    from datetime import date
    day = lambda s: date(int(s[:4]), int(s[4:6]), int(s[6:8]))  # noqa: E731
    shift = (day(a.StudyDate) - day("20240315")).days
    assert shift < 0 and (day(b.StudyDate) - day("20240101")).days == shift
    assert (day(a.SeriesDate) - day(a.StudyDate)).days == 1
    assert a.StudyTime == "101500"
    assert a.AcquisitionDateTime.endswith("101600.123+0100")
    assert a.AcquisitionDateTime[:8] == a.StudyDate
    assert a.PatientBirthDate == ""  # Patient's Birth Date has no C in the Modified Dates column


def test_full_dates_win_over_modified_dates():
    out, _ = apply(make_dataset(), secret=SECRET, retain_long_full_dates=True,
                   retain_long_modified_dates=True)
    assert out.StudyDate == "20240315"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_private_tags_kept_only_when_asked(run):
    kept = read(run(to_bytes(make_dataset()), retain_private_tags=True)[0])
    assert kept[0x00091001].value == "Secret private note"
    assert kept[0x00090010].value == "ACME 1.0"


def test_safe_private_is_creator_aware(run):
    ds = make_dataset()
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191004, "DS", "1.5")  # unsafe element under a safe creator: must go
    ds.add_new(0x00191024, "DS", "30")  # (0019,xx24) GEMS_ACQU_01 is in Table E.3.10-1
    ds.add_new(0x00210010, "LO", "NOT A LISTED CREATOR")
    ds.add_new(0x00211024, "DS", "30")
    assert ("GEMS_ACQU_01", 0x0019, 0x24) in __import__("pipeline.deid.rules", fromlist=["x"]).safe_private()
    out = read(run(to_bytes(ds), retain_safe_private=True)[0])
    assert 0x00191024 in out and 0x00190010 in out
    assert 0x00191004 not in out
    assert 0x00211024 not in out and 0x00210010 not in out
    assert 0x00091001 not in out and 0x00090010 not in out


def test_a_transfer_syntax_uid_of_several_values_is_refused_by_its_reason():
    """A header swallowed into the file meta's Transfer Syntax UID reads as several values: refused as no
    transfer syntax, not as an internal error (found by the fuzzer, seed 20261204)."""
    data = to_bytes(make_dataset())
    syntax = ExplicitVRLittleEndian.encode() + b"\0"
    assert data.count(syntax) == 1
    data = data.replace(syntax, b"1.2.840.10008.1.2\\1\0")  # the same length: nothing else moves
    for walk in (lambda: deidentify_bytes(data, Profile(), secret=SECRET),
                 lambda: apply(pydicom.dcmread(BytesIO(data)), Profile(), secret=SECRET)):
        with pytest.raises(DeidError) as refused:
            walk()
        assert refused.value.reason == "unsupported-transfer-syntax"


def test_a_private_creator_left_out_as_invalid_takes_its_block_with_it(run):
    """A creator whose value is invalid for the VR it is stored under is not output, so it reserves
    nothing: its block's safe elements go too, rather than stay without a creator; and where the block
    kept nothing, apply no longer fails removing a creator that is not there (found by the fuzzer)."""
    ds = make_dataset()
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191024, "DS", "30")  # listed as safe under this creator
    ds.add_new(0x00210010, "LO", "NOT LISTED")
    ds.add_new(0x00211024, "DS", "30")
    data = to_bytes(ds)
    for creator in (b"\x19\x00\x10\x00LO\x0c\x00GEMS_ACQU_01", b"\x21\x00\x10\x00LO\x0a\x00NOT LISTED"):
        assert creator in data
        data = data.replace(creator, creator[:4] + b"DS" + creator[6:])  # text no DS may hold
    out = read(run(data, retain_safe_private=True)[0])
    assert not [tag for tag in out.keys() if tag.group in (0x0019, 0x0021)]


def test_safe_private_decides_nested_items_one_by_one(run):
    """In a kept sequence each item's private blocks are decided by that item's own creators; a creator
    whose block keeps nothing goes with it."""
    ds = make_dataset()
    first, second = Dataset(), Dataset()
    for item in (first, second):
        item.add_new(0x00190010, "LO", "GEMS_ACQU_01")
        item.add_new(0x00191004, "DS", "1.5")  # not in Table E.3.10-1: goes
    first.add_new(0x00191024, "DS", "30")  # listed as safe under this creator: stays
    second.add_new(0x00210010, "LO", "GEMS_ACQU_01")  # the same creator in another group: not listed
    second.add_new(0x00211024, "DS", "30")
    ds.CTAcquisitionTypeSequence = [first, second]
    out = read(run(to_bytes(ds), retain_safe_private=True)[0])
    kept_first, kept_second = out.CTAcquisitionTypeSequence
    assert kept_first[0x00191024].value == 30 and kept_first[0x00190010].value == "GEMS_ACQU_01"
    assert 0x00191004 not in kept_first
    assert not [t for t in kept_second.keys() if t.is_private]  # nothing safe: creators gone too


def test_overlay_group_goes_whole_and_curves_go(run):
    out = read(run(to_bytes(make_dataset()))[0])
    assert not [t for t in out.keys() if t.group in (0x5000, 0x6000)]


def test_clean_graphics_keeps_overlays_but_blank(run):
    out = read(run(to_bytes(make_dataset()), clean_graphics=True)[0])
    assert action_for(0x60003000, Profile(clean_graphics=True)) == "C"
    assert out[0x60003000].value == bytes(8) and out[0x60000010].value == 2
    assert "Jane" not in out[0x60004000].value


def test_command_elements_do_not_reach_a_stored_object():
    ds = make_dataset()
    ds.add_new(0x00000900, "US", 0)
    out, _ = apply(ds, secret=SECRET)
    assert not [t for t in out.keys() if t.group == 0]


def un_encoded(items: list[Dataset]) -> bytes:
    """A sequence's value as PS3.5 6.2.2 says a UN-encoded sequence carries it (implicit VR LE)."""
    body = b""
    for ds in items:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        write_dataset(fp, ds)
        value = fp.getvalue()
        body += b"\xfe\xff\x00\xe0" + len(value).to_bytes(4, "little") + value
    return body


def test_sequence_stored_as_un_is_processed_like_any_other(run):
    ds = make_dataset()
    del ds.ReferencedSeriesSequence
    nested = item(SeriesInstanceUID=UIDS["ref_series"], PerformingPhysicianName="Dr^Who")
    value = un_encoded([nested])
    # A raw element, because pydicom would otherwise turn a known sequence's UN back into SQ.
    ds[0x00081115] = RawDataElement(Tag(0x00081115), "UN", len(value), value, 0, False, True)
    data = to_bytes(ds)
    assert UIDS["ref_series"].encode() in data
    out, uid_map = run(data)
    assert UIDS["ref_series"].encode() not in out and b"Dr^Who" not in out
    back = pydicom.dcmread(BytesIO(out))
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == uid_map[UIDS["ref_series"]]


def test_x_removes_a_sequence_and_k_keeps_it_processed():
    ds = make_dataset()
    ds.RequestAttributesSequence = Sequence([item(ReferencedSOPInstanceUID=UIDS["ref_sop"])])
    assert action_for("RequestAttributesSequence", basic_profile()) == "X"
    out, _ = apply(ds, secret=SECRET)
    assert "RequestAttributesSequence" not in out
    assert action_for("ReferencedSeriesSequence", basic_profile()) == "K"
    assert out.ReferencedSeriesSequence[0].SeriesInstanceUID != UIDS["ref_series"]


def test_dummy_sequence_keeps_structure_but_not_free_text(run):
    ds = make_dataset()
    ds.ContentSequence = Sequence([item(ValueType="TEXT", TextValue="Jane fell off her bike")])
    out = read(run(to_bytes(ds))[0])
    assert out.ContentSequence[0].ValueType == "TEXT"
    assert "Jane" not in out.ContentSequence[0].TextValue


VALUES = {"AE": "PACS", "AS": "042Y", "CS": "ABC", "DA": "20200101", "DS": "1.5", "DT": "20200101120000",
          "IS": "7", "LO": "long text", "LT": "long text", "PN": "Doe^John", "SH": "short",
          "ST": "short text", "TM": "120000", "UC": "text", "UI": "1.2.3.4", "UR": "http://x.org",
          "UT": "text", "FL": 1.5, "FD": 1.5, "SL": -3, "SS": -3, "UL": 3, "US": 3, "SV": 3, "UV": 3,
          "OB": b"\x01\x02", "OW": b"\x01\x02", "OF": b"\x01\x02\x03\x04", "OD": b"\x01" * 8,
          "OL": b"\x01" * 4, "OV": b"\x01" * 8, "UN": b"\x01\x02", "AT": 0x00100010}


def listed_attributes(code: str) -> list[tuple[int, str]]:
    from pydicom.datadict import dictionary_VR
    found = []
    for key, row in table().items():
        if row["basic"][0] != code or not key[1:5].isalnum() or "x" in key:
            continue
        tag = int(key[1:5] + key[6:10], 16)
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        if vr != "SQ":
            found.append((tag, vr))
    return found


@pytest.mark.parametrize("code", ["D", "Z"])
def test_replacements_are_valid_for_their_vr(code, run):
    attrs = listed_attributes(code)
    assert len(attrs) > 20
    ds = make_dataset()
    for tag, vr in attrs:
        ds.add_new(tag, vr, VALUES[vr])
    back = read(run(to_bytes(ds))[0])
    for tag, vr in attrs:
        value = back[tag].value
        if code == "Z":
            assert value in ("", None, b"") or tag == 0x00100020, (hex(tag), value)
        else:
            assert value not in ("", None, b""), hex(tag)
            if isinstance(value, str) and vr != "UI":
                validate_value(vr, value, 2)  # 2: raise on an invalid value


def test_dicomdir_is_refused():
    ds = make_dataset()
    ds.SOPClassUID = "1.2.840.10008.1.3.10"
    with pytest.raises(DeidError, match="DICOMDIR") as err:
        apply(ds, secret=SECRET)
    assert err.value.reason == "dicomdir"


def test_unknown_flag_is_an_error_that_names_it():
    with pytest.raises(TypeError, match="retain_patient_names"):
        apply(make_dataset(), secret=SECRET, retain_patient_names=True)
    assert apply(make_dataset(), Profile(retain_uids=True), secret=SECRET)[1] == {}


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"), (b"hello, this is not DICOM at all" * 10, "not-dicom")])
def test_bad_bytes_raise_the_typed_error(data, reason):
    with pytest.raises(DeidError) as err:
        parse(data)
    assert err.value.reason == reason


def test_truncated_object_is_refused():
    data = to_bytes(make_dataset())
    for walk in (parse, lambda d: deidentify_bytes(d, Profile(), secret=SECRET)):
        with pytest.raises(DeidError) as err:
            walk(data[:-4])
        assert err.value.reason == "truncated"


def test_absurd_nesting_is_refused_quickly():
    ds = make_dataset()
    inner = ds
    for _ in range(80):
        child = Dataset()
        inner.ReferencedSeriesSequence = Sequence([child])
        inner = child
    data = to_bytes(ds)
    for walk in (lambda d: apply(parse(d), secret=SECRET), lambda d: deidentify_bytes(d, Profile())):
        start = time.perf_counter()
        with warnings.catch_warnings(), pytest.raises(DeidError) as err:
            warnings.simplefilter("ignore")
            walk(data)
        assert err.value.reason == "too-deep"
        assert time.perf_counter() - start < 5
