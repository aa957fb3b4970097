"""One strict reading of the bytes: broken structure is refused, kept values conform to their VR."""

import contextlib
import tracemalloc
import warnings
import zlib
from io import BytesIO
from pathlib import Path
from struct import pack

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pipeline.deid import DeidError, Profile, apply, basic_profile, parse, serialize
from pipeline.deid.stream import deidentify_bytes

SECRET = "strict-test-secret"
NAME = b"Plantedname^Zelda"  # a distinctive Patient's Name: it must never reach an output
PATIENT_ID = b"PLANTED-ID-8817"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def seed(**extra) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.826.0.1.3680043.8.498.77"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.78"
    ds.Modality, ds.SliceThickness = "CT", "2.5"
    ds.PatientName, ds.PatientID = NAME.decode(), PATIENT_ID.decode()
    ds.DeviceSerialNumber = "SERIAL-PLANTED-44"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, syntax=ExplicitVRLittleEndian, preamble: bool = True) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buffer, ds, enforce_file_format=preamble)
    return buffer.getvalue()


def code_item() -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X1", "99L", NAME.decode()
    return item


def outcome(data: bytes, profile: Profile | None = None) -> bytes | DeidError:
    """What the byte path gives, and that the dataset path refuses or agrees on the refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = deidentify_bytes(data, profile or basic_profile(), secret=SECRET).data
        except DeidError as err:
            with pytest.raises(DeidError) as again:
                apply(parse(data), profile, secret=SECRET)
            assert again.value.reason == err.reason
            return err
    return out


def refused(data: bytes, reason: str = "malformed", profile: Profile | None = None) -> DeidError:
    result = outcome(data, profile)
    assert isinstance(result, DeidError), "a broken file was written"
    assert result.reason == reason, result
    assert result.detail.startswith("offset "), result.detail  # says where
    return result


def header_at(data: bytes, tag: int, vr: bytes = b"") -> int:
    pos = data.index(pack("<HH", tag >> 16, tag & 0xFFFF) + vr, 132)
    return pos


def test_seed_is_written_without_the_planted_values():
    out = outcome(encode(seed()))
    assert isinstance(out, bytes) and NAME not in out and PATIENT_ID not in out


def test_nested_length_running_past_its_item_is_refused():
    ds = seed(ReferencedStudySequence=Sequence([code_item()]))
    data = bytearray(encode(ds, ImplicitVRLittleEndian))
    pos = data.index(pack("<HH", 0x0008, 0x0104), 132)  # Code Meaning inside the item
    data[pos + 4:pos + 8] = pack("<I", 200)  # still inside the file, past the item
    assert "past the end of its item" in refused(bytes(data)).detail


@pytest.mark.parametrize("length", [0xFFFFFFFF, 0xFFFFFFFE])
def test_undefined_or_huge_length_on_a_value_is_refused(length):
    data = bytearray(encode(seed(ImageComments="comment that is long enough")))
    pos = header_at(data, 0x00204000, b"LT")
    data[pos + 4:pos + 6] = b"UT"  # a long VR, so a four-byte length fits
    data[pos + 6:pos + 8] = b"\0\0"
    data[pos + 8:pos + 8] = pack("<I", length)
    result = outcome(bytes(data))
    assert isinstance(result, DeidError) and result.reason in ("malformed", "truncated")


def test_encapsulated_pixel_data_stored_as_un_is_refused():
    """UN of undefined length reads as a sequence (PS3.5 6.2.2), so pydicom parses the fragments as
    datasets and fails where the byte walker copied them: both walkers now refuse it (fuzz, vr-flip)."""
    data = bytearray(Path(get_testdata_file("JPEG2000.dcm")).read_bytes())
    pos = header_at(data, 0x7FE00010, b"OB")
    assert data[pos + 8:pos + 12] == b"\xff\xff\xff\xff"  # encapsulated: undefined length
    outcome(bytes(data))  # as stored, both walkers agree
    data[pos + 4:pos + 6] = b"UN"
    assert "(7FE0,0010) stored as UN" in refused(bytes(data)).detail


@pytest.mark.parametrize("vr", [b"\0\0", b"ZZ", b"  "])
def test_unknown_or_zeroed_vr_is_refused(vr):
    data = bytearray(encode(seed()))
    pos = header_at(data, 0x00100010, b"PN")
    data[pos + 4:pos + 6] = vr
    assert "unknown VR" in refused(bytes(data)).detail


def test_item_without_its_delimiter_is_refused():
    ds = seed(ReferencedStudySequence=Sequence([code_item()]))
    data = encode(ds)
    delimiter = pack("<HHI", 0xFFFE, 0xE00D, 0)
    assert delimiter not in data  # pydicom writes items with defined lengths; make them undefined
    raw = bytearray(data)
    item = raw.index(pack("<HH", 0xFFFE, 0xE000))
    item_length = int.from_bytes(raw[item + 4:item + 8], "little")
    raw[item + 4:item + 8] = pack("<I", 0xFFFFFFFF)
    seq = header_at(raw, 0x00081110, b"SQ")
    raw[seq + 8:seq + 12] = pack("<I", 0xFFFFFFFF)
    end = pack("<HHI", 0xFFFE, 0xE00D, 0)
    raw[item + 8 + item_length:item + 8 + item_length] = end + pack("<HHI", 0xFFFE, 0xE0DD, 0)
    out = outcome(bytes(raw))
    assert isinstance(out, bytes) and NAME not in out  # with both delimiters: well formed
    result = outcome(bytes(raw).replace(end, b""))
    assert isinstance(result, DeidError) and result.reason == "malformed"
    assert "outside its sequence" in result.detail


def test_out_of_order_and_repeated_tags_are_refused():
    data = bytearray(encode(seed()))
    name, pid = header_at(data, 0x00100010, b"PN"), header_at(data, 0x00100020, b"LO")
    data[pid:pid + 4] = pack("<HH", 0x0010, 0x0010)  # Patient ID's header now says Patient's Name
    assert "out of order or repeated" in refused(bytes(data)).detail
    data[pid:pid + 4] = pack("<HH", 0x0010, 0x0005)  # below (0010,0010): out of order
    assert name < pid and "out of order" in refused(bytes(data)).detail


def test_long_vr_header_cut_short_is_a_typed_refusal():
    data = encode(seed(ImageComments="x" * 40))
    data = data[:header_at(data, 0x00204000) + 10]
    data = data[:-10] + pack("<HH", 0x0020, 0x4000) + b"UT" + b"\0\0"  # a UT header missing its length
    result = outcome(data)
    assert isinstance(result, DeidError) and result.reason == "truncated"


@pytest.mark.parametrize(("keyword", "vr"), [("PerformedProtocolCodeSequence", b"OB"),
                                             ("RadiopharmaceuticalInformationSequence", b"UT"),
                                             ("RadiopharmaceuticalInformationSequence", b"UR")])
def test_public_sequence_under_another_vr_is_refused(keyword, vr):
    data = bytearray(encode(seed(**{keyword: Sequence([code_item()])})))
    tag = pydicom.datadict.tag_for_keyword(keyword)
    pos = header_at(data, tag, b"SQ")
    data[pos + 4:pos + 6] = vr  # same header layout, defined length: the items become the value
    assert "the data dictionary says SQ" in refused(bytes(data), profile=Profile(
        retain_patient_characteristics=True, retain_device_identity=True)).detail


def test_sh_flipped_to_ov_is_refused():
    data = bytearray(encode(seed(StationName="STATION-PLANTED")))
    pos = header_at(data, 0x00081010, b"SH")
    data[pos + 4:pos + 6] = b"OV"
    result = outcome(bytes(data))
    assert isinstance(result, DeidError) and result.reason in ("malformed", "truncated")


def test_un_flipped_to_ur_is_refused_both_public_and_private():
    ds = seed(ReferencedStudySequence=Sequence([code_item()]))
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "UN", b"\x10\x00\x10\x00\x12\x00\x00\x00" + NAME + b" ")
    data = bytearray(encode(ds))
    private = header_at(data, 0x00091001, b"UN")
    data[private + 4:private + 6] = b"UR"
    assert "control byte" in refused(bytes(data), profile=Profile(retain_private_tags=True)).detail
    data[private + 4:private + 6] = b"UN"
    public = header_at(data, 0x00081110, b"SQ")
    data[public + 4:public + 6] = b"UR"
    assert "the data dictionary says SQ" in refused(bytes(data)).detail


def test_sequence_stored_as_un_with_defined_length_is_read_by_the_dictionary():
    """Implicit VR items (PS3.5 6.2.2) are walked and de-identified like any sequence's."""
    item = Dataset()
    item.SeriesInstanceUID = "1.2.3.999.4"
    item.add_new(0x0040A123, "PN", NAME.decode())  # Person Name: replaced wherever it occurs
    ds = seed(ReferencedSeriesSequence=Sequence([item]))
    implicit = encode(ds, ImplicitVRLittleEndian)
    pos = implicit.index(pack("<HH", 0x0008, 0x1115), 132)
    value = implicit[pos + 8:pos + 8 + int.from_bytes(implicit[pos + 4:pos + 8], "little")]
    data = bytearray(encode(ds))
    seq = header_at(data, 0x00081115, b"SQ")
    old = int.from_bytes(data[seq + 8:seq + 12], "little")
    data[seq:seq + 12 + old] = pack("<HH2sHI", 0x0008, 0x1115, b"UN", 0, len(value)) + value
    out = outcome(bytes(data))
    assert isinstance(out, bytes) and NAME not in out and b"1.2.3.999.4" not in out
    ref = pydicom.dcmread(BytesIO(out)).ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID.startswith("2.25.") and ref.PersonName == "ANONYMIZED"


def test_explicit_items_inside_un_are_refused_not_misread():
    """Decision: a UN sequence's items are implicit VR (PS3.5 6.2.2); explicit ones fail that reading."""
    ds = seed(ReferencedImageSequence=Sequence([code_item()]))
    data = bytearray(encode(ds))
    seq = header_at(data, 0x00081140, b"SQ")
    data[seq + 4:seq + 6] = b"UN"
    result = outcome(bytes(data))
    assert isinstance(result, DeidError) and result.reason in ("malformed", "truncated")


def test_ds_enlarged_to_swallow_what_follows_is_refused():
    data = bytearray(encode(seed()))
    pos = header_at(data, 0x00180050, b"DS")  # Slice Thickness, kept; Device Serial Number follows
    data[pos + 6:pos + 8] = pack("<H", int.from_bytes(data[pos + 6:pos + 8], "little") + 26)
    assert b"SERIAL-PLANTED-44" in data[pos + 8:pos + 8 + 30]
    assert "control byte" in refused(bytes(data)).detail


def test_non_conforming_kept_values_are_removed_by_both_walkers():
    ds = seed(BodyPartExamined="b?cken", Rows=4)
    data = bytearray(encode(ds))
    rows = header_at(data, 0x00280010, b"US")
    data[rows + 6:rows + 8] = pack("<H", 4)  # Rows (VM 1) holding two values; Columns follows...
    data[rows + 8:rows + 10] = b"\x04\x00\x00\x00"  # ...so the walk stays on its feet
    data = bytes(data[:rows + 10]) + bytes(data[rows + 10:])
    out = outcome(data)
    assert isinstance(out, bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = pydicom.dcmread(BytesIO(serialize(apply(parse(data), secret=SECRET)[0])))
    for written in (pydicom.dcmread(BytesIO(out)), slow):
        assert "BodyPartExamined" not in written and "Rows" not in written
        assert written.SliceThickness == 2.5  # conforming values stay


def test_nul_padded_character_set_is_read_as_pydicom_reads_it():
    ds = seed(SpecificCharacterSet="GB18030", PatientComments="GB18030 text")
    data = encode(ds).replace(b"GB18030 ", b"GB18030\0")
    result = deidentify_bytes(data, basic_profile(), secret=SECRET)
    assert result.fast and result.header["SpecificCharacterSet"] == "GB18030"


def test_only_deid_error_leaves_the_engine_on_any_prefix():
    """Every cut of a file (cut headers included) ends as output or DeidError, nothing else."""
    data = encode(seed(ReferencedStudySequence=Sequence([code_item()]), ImageComments="x" * 30))
    for end in range(132, len(data), 3):
        with contextlib.suppress(DeidError):
            deidentify_bytes(data[:end], basic_profile(), secret=SECRET)


def test_a_dataset_with_a_truncated_element_is_refused_not_returned_unwritable():
    data = encode(seed(PixelSpacing=["0.5", "0.75"]))  # kept, and the last element
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(BytesIO(data[:-3]), force=True)
        with pytest.raises(DeidError) as err:
            apply(ds, secret=SECRET)
    assert err.value.reason == "truncated"


@pytest.mark.skipif(not (CORPUS / "fo-dicom/TestData/GH179A.dcm").exists(), reason="no corpus")
def test_gh179a_is_refused_by_every_path():
    data = (CORPUS / "fo-dicom/TestData/GH179A.dcm").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DeidError):
            apply(pydicom.dcmread(BytesIO(data), force=True), secret=SECRET)
        for walk in (parse, lambda d: deidentify_bytes(d, basic_profile(), secret=SECRET)):
            with pytest.raises(DeidError):
                walk(data)


def broken_nested(ds: Dataset, syntax) -> bytes:
    """`ds` encoded in `syntax` with an item's Code Meaning length running past its item."""
    data = bytearray(encode(ds, syntax))
    big = syntax == ExplicitVRBigEndian
    tag = pack(">HH" if big else "<HH", 0x0008, 0x0104) + b"LO"
    pos = data.index(tag)
    data[pos + 6:pos + 8] = pack(">H" if big else "<H", 120)
    return bytes(data)


def test_the_fallback_is_as_strict_big_endian_and_no_preamble():
    ds = seed(ReferencedStudySequence=Sequence([code_item()]))
    for data in (broken_nested(ds, ExplicitVRBigEndian), broken_nested(ds, ExplicitVRLittleEndian)[128 + 4:]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(DeidError) as err:
                deidentify_bytes(data, basic_profile(), secret=SECRET)
        assert err.value.reason == "malformed", err.value
    good = encode(seed(ReferencedStudySequence=Sequence([code_item()])), ExplicitVRBigEndian)
    result = deidentify_bytes(good, basic_profile(), secret=SECRET)
    assert not result.fast and NAME not in result.data


def test_the_fallback_is_as_strict_inside_a_deflated_dataset():
    ds = seed(ReferencedStudySequence=Sequence([code_item()]))
    plain = broken_nested(ds, ExplicitVRLittleEndian)
    good = encode(ds, DeflatedExplicitVRLittleEndian)
    meta_end = 132 + 12 + int.from_bytes(good[140:144], "little")
    body = plain[132 + 12 + int.from_bytes(plain[140:144], "little"):]
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    broken = good[:meta_end] + packer.compress(body) + packer.flush()
    with pytest.raises(DeidError) as err:
        deidentify_bytes(broken, basic_profile(), secret=SECRET)
    assert err.value.reason == "malformed"
    out = deidentify_bytes(good, basic_profile(), secret=SECRET).data
    body = zlib.decompress(out[132 + 12 + int.from_bytes(out[140:144], "little"):], -zlib.MAX_WBITS)
    assert NAME not in body and pydicom.dcmread(BytesIO(out)).StudyInstanceUID.startswith("2.25.")


def dense_file(elements: int) -> bytes:
    """A valid file ending in `elements` tiny private elements (ten bytes each)."""
    parts, group = [encode(seed())], 0x0021
    while elements > 0:
        count = min(0xF000, elements)
        parts.append(b"".join(pack("<HH2sH", group, 0x1000 + i, b"US", 2) + b"\1\0" for i in range(count)))
        elements, group = elements - count, group + 2
    return b"".join(parts)


def peak_memory(data: bytes, profile: Profile) -> int | DeidError:
    tracemalloc.start()
    try:
        deidentify_bytes(data, profile, secret=SECRET)
        return tracemalloc.get_traced_memory()[1]
    except DeidError as err:
        return err
    finally:
        tracemalloc.stop()


def test_a_million_tiny_elements_are_refused_as_too_many(monkeypatch):
    data = dense_file(1_000_000)
    assert len(data) > 10_000_000
    with pytest.raises(DeidError) as err:
        deidentify_bytes(data, basic_profile(), secret=SECRET)
    assert err.value.reason == "too-many-elements" and "DICOM_DEID_MAX_ELEMENTS" in err.value.detail
    monkeypatch.setenv("DICOM_DEID_MAX_ELEMENTS", "20000")
    tracemalloc.start()
    try:
        with pytest.raises(DeidError):
            deidentify_bytes(data, Profile(retain_private_tags=True), secret=SECRET)
        assert tracemalloc.get_traced_memory()[1] < len(data)  # refused early, having kept little
    finally:
        tracemalloc.stop()


def test_the_element_limit_is_configurable_and_memory_stays_within_ten_times(monkeypatch):
    data = dense_file(30_000)
    keep_all = Profile(retain_private_tags=True)
    monkeypatch.setenv("DICOM_DEID_MAX_ELEMENTS", "20000")
    assert peak_memory(data, keep_all).reason == "too-many-elements"
    monkeypatch.setenv("DICOM_DEID_MAX_ELEMENTS", "40000")
    peak = peak_memory(data, keep_all)
    assert isinstance(peak, int) and peak < 10 * len(data), (peak, len(data))
    out = deidentify_bytes(data, keep_all, secret=SECRET).data
    assert data[-1000:] in out  # every tiny element kept, verbatim


@pytest.mark.parametrize(("old", "new"), [(b"498.77", b"498.\xe97"), (b"1.1.2\0", b"1.1.X\0")])
def test_a_uid_that_is_no_uid_is_refused(old, new):
    """A replaced UID with bytes outside ASCII, or a kept one (SOP Class) outside the UI repertoire."""
    data = encode(seed())
    assert old in data
    result = outcome(data.replace(old, new))
    assert isinstance(result, DeidError) and result.reason == "malformed"


def test_a_date_stored_under_a_binary_vr_is_not_kept_by_modified_dates():
    """Study Date re-encoded as FD holds the same eight digits: under Modified Dates it cannot be
    shifted, so it is replaced, never copied (a fuzzer find)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.8.498.5"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.6", "1.2.826.0.1.3680043.8.498.7"
    ds.add_new(0x00080020, "FD", 0.0)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = bytearray(buffer.getvalue())
    at = data.index(b"\x08\x00\x20\x00FD\x08\x00") + 8
    data[at:at + 8] = b"19760616"
    profile = Profile(retain_long_modified_dates=True)
    for out in (deidentify_bytes(bytes(data), profile, secret="s").data,
                serialize(apply(parse(bytes(data)), profile, secret="s")[0])):
        assert b"19760616" not in out


def test_a_character_set_stored_as_a_number_is_malformed_for_both_walkers():
    """Specific Character Set under US (a fuzzer find: the byte walker wrote it, pydicom cannot read it)."""
    data = bytearray(encode(seed()))
    at = data.index(b"\x08\x00\x05\x00CS")
    data[at + 4:at + 6] = b"US"
    for walker in (lambda: deidentify_bytes(bytes(data), basic_profile(), secret="s"),
                   lambda: apply(parse(bytes(data)), secret="s")):
        with pytest.raises(DeidError) as refused:
            walker()
        assert refused.value.reason == "malformed" and "character set" in str(refused.value)


def test_a_datetime_stored_as_tm_is_no_time_kept_under_modified_dates():
    """Modified Dates keeps times; a DT attribute stored under TM still holds a date, which must not be
    kept as it is (a fuzzer find: Radiopharmaceutical Start DateTime written whole by both walkers)."""
    ds = seed(StudyTime="101010")
    ds.add_new(0x00181078, "TM", "19810609101010.000000")  # Radiopharmaceutical Start DateTime is DT
    data = encode(ds)
    profile = Profile(retain_long_modified_dates=True)
    for out in (deidentify_bytes(data, profile, secret="s").data,
                serialize(apply(parse(data), profile, secret="s")[0])):
        assert b"19810609" not in out
        assert b"101010" in out  # Study Time, a time, is kept


def test_a_datetime_that_swallowed_what_follows_is_not_shifted_along_with_it():
    """Modified Dates shifts a DT's date and keeps its time and offset; bytes a wrong length made part
    of the value (a swallowed element) are no time: the value becomes empty (a fuzzer find)."""
    from pipeline.deid.values import shift

    assert shift("DT", "19810609101010.000000+0100", -3) == "19810606101010.000000+0100"
    assert shift("DT", "19810609101010.000000 T\x00\x00\x08\x00p\x10ZQXNAME^ZQX", -3) == ""


def test_a_file_meta_group_length_of_the_wrong_size_is_malformed():
    """pydicom cannot read a file meta whose group length swallowed what follows; neither walker writes
    it (a fuzzer find: before, the byte walker wrote it and the dataset walker refused)."""
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    data[138:140] = pack("<H", 12)
    with pytest.raises(DeidError) as refused:
        deidentify_bytes(bytes(data), basic_profile(), secret="s")
    assert refused.value.reason == "malformed"
