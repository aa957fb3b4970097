"""The dataset API's raw path: sequences read from their bytes as pydicom reads them, walked items written
as pydicom writes them, the input left as it was, and a result that holds what it writes."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path
from struct import pack

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_sequence_item
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pipeline.deid import DeidError, Profile, apply, serialize
from pipeline.deid.rawitems import encode_items, read_items

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
SECRET = "dataset-api-test"
PROFILES = [Profile(), Profile(retain_private_tags=True, retain_uids=True),
            Profile(retain_long_modified_dates=True, clean_descriptions=True, clean_structured_content=True)]


def sources() -> list[Path]:
    """pydicom's own test files, and the corpus where it is present."""
    found = sorted(TEST_FILES.glob("*.dcm"))
    if CORPUS.exists():
        found += sorted(p for p in CORPUS.rglob("*")
                        if p.is_file() and p.suffix not in (".csv", ".json", ".md"))
    return found


def readable() -> list[tuple[Path, pydicom.Dataset]]:
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sources():
            try:
                found.append((path, pydicom.dcmread(path, force=True)))
            except Exception:
                continue
    return found


@pytest.fixture(scope="module")
def datasets() -> list[tuple[Path, pydicom.Dataset]]:
    return readable()


def raw_sequences(ds: Dataset):
    """Every sequence pydicom left raw, at any depth, with the encoding its items are read in."""
    for elem in ds._dict.values():
        if isinstance(elem, RawDataElement):
            if elem.VR == "SQ" and isinstance(elem.value, bytes) and elem.is_little_endian:
                yield elem
        elif elem.VR == "SQ":
            for item in elem.value:
                yield from raw_sequences(item)


def same_items(ours: list[dict], theirs: Sequence, where: str) -> None:
    """Items read from bytes hold exactly the elements pydicom reads (a sequence of undefined length,
    which pydicom parses at once, as its items' bytes)."""
    assert len(ours) == len(theirs), where
    for mine, item in zip(ours, theirs, strict=True):
        assert list(mine) == list(item._dict), where
        for tag, elem in mine.items():
            other = item._dict[tag]
            if isinstance(other, DataElement):  # an undefined-length sequence inside
                assert (elem.VR, elem.length) == ("SQ", 0xFFFFFFFF), where
                nested = read_items(elem.value, elem.is_implicit_VR, elem.value_tell)
                same_items(nested, other.value, where)
            else:
                assert elem == other, (where, tag)


def test_sequences_are_read_from_their_bytes_as_pydicom_reads_them(datasets):
    read = irregular = 0
    for path, ds in datasets:
        for elem in raw_sequences(ds):
            items = read_items(elem.value, elem.is_implicit_VR)
            if items is None:
                irregular += 1
                continue
            theirs = convert_raw_data_element(elem, encoding=ds.original_character_set).value
            same_items(items, theirs, f"{path.name} {elem.tag}")
            read += 1
    assert read >= (500 if CORPUS.exists() else 20)
    assert irregular <= read // 50  # pydicom's own reading stays the exception


def pydicom_items(items: list[dict], implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    for elements in items:
        item = Dataset(parent_encoding="iso8859")
        item.set_original_encoding(implicit, True, "iso8859")
        for tag, elem in elements.items():
            item[tag] = elem
        item.is_undefined_length_sequence_item = True
        write_sequence_item(fp, item, ["iso8859"])
    return fp.getvalue()


def test_walked_items_are_written_as_pydicom_writes_them(datasets):
    written = 0
    for path, ds in datasets:
        for elem in raw_sequences(ds):
            items = read_items(elem.value, elem.is_implicit_VR)
            if not items:
                continue
            for item in items:  # a value the walker replaced, beside the raw ones it kept
                item[0x00080018] = DataElement(0x00080018, "UI", "2.25.1234")
            expected = pydicom_items(items, elem.is_implicit_VR)
            assert encode_items(items, elem.is_implicit_VR, True, ["iso8859"], "iso8859") == expected, path
            written += 1
    assert written >= 20


def state(ds: Dataset) -> list:
    """What a dataset holds, raw elements as they are, down every sequence; read without converting."""
    found = []
    for tag, elem in ds._dict.items():
        if isinstance(elem, RawDataElement):
            found.append(tuple(elem))
        elif elem.VR == "SQ":
            found.append((tag, elem.is_undefined_length, [state(item) for item in elem.value]))
        else:
            found.append((tag, elem.VR, repr(elem.value)))
    return found


def values(ds: Dataset) -> list:
    """Every element's tag, VR and value (sequences item by item), as a reader of the dataset sees them."""
    return [(e.tag, e.VR, [values(i) for i in e.value] if e.VR == "SQ" else e.value) for e in ds]


@pytest.mark.parametrize("profile", PROFILES, ids=["basic", "private-uids", "dates-clean"])
def test_apply_leaves_its_input_as_read_and_returns_what_it_writes(datasets, profile):
    done = 0
    for path, ds in datasets:
        before = state(ds)
        try:
            out, _ = apply(ds, profile, secret=SECRET)
        except DeidError:
            assert state(ds) == before, path
            continue
        assert state(ds) == before, path  # nothing converted, replaced or added in place
        data = serialize(out)
        assert serialize(out) == data, path  # writing converts nothing that changes the bytes
        plain = BytesIO()
        out.save_as(plain)  # the file meta is complete: a plain save writes the same file
        assert plain.getvalue() == data, path
        back = pydicom.dcmread(BytesIO(data))
        assert values(out) == values(back), path  # the raw sequences and markers read as written
        done += 1
    assert done >= (400 if CORPUS.exists() else 20)


def test_zero_padding_is_skipped_after_a_real_tag_zero_element():
    """A file's zero padding reads as a tag-0 element without value; a decision remembered for a real
    (0000,0000) element of an earlier dataset must not make the padding count as a removed element."""
    from pipeline.deid.engine import _plans, deidentify

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        padded = pydicom.dcmread(BytesIO(plain + bytes(16)))
        assert padded._dict[0].value is None and padded._dict[0].VR is None
        first = pydicom.dcmread(BytesIO(plain))  # a tag-0 element with a value, read without a VR
        first._dict[Tag(0)] = RawDataElement(Tag(0), None, 4, bytes(4), 0, False, True)
        _plans.cache_clear()
        alone = deidentify(padded, Profile(), secret=SECRET).actions
        _plans.cache_clear()
        deidentify(first, Profile(), secret=SECRET)
        assert deidentify(padded, Profile(), secret=SECRET).actions == alone


def test_the_result_is_written_as_it_is_held():
    """pydicom's writer writes the result's file meta and its SOP UIDs as the raw bytes they are held
    in: converting them (as it does for a dataset whose encoding it does not know) costs the write
    time and may encode them otherwise."""
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out, _ = apply(ds, secret=SECRET)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, out.file_meta)  # in place, not on a copy as save_as does
    assert all(isinstance(elem, RawDataElement) for elem in out.file_meta._dict.values())
    assert all(isinstance(out._dict[Tag(tag)], RawDataElement) for tag in (0x00080016, 0x00080018))
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID


def test_a_remembered_plan_holds_only_for_the_vr_it_was_read_with():
    """Plans are remembered by tag across datasets, each with the VR it was read with: a Study Instance
    UID read as UI is replaced, one stored as LO is removed (no UID to replace), whichever came first."""
    from pipeline.deid.engine import _plans, deidentify

    def study_as(vr: str) -> pydicom.Dataset:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        value = b"1.2.3.4.5.6.7.8.9\0"
        ds._dict[Tag(0x0020000D)] = RawDataElement(Tag(0x0020000D), vr, len(value), value, 0, False, True)
        return ds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = {}
        for vr in ("UI", "LO"):
            _plans.cache_clear()
            alone[vr] = deidentify(study_as(vr), Profile(), secret=SECRET)
        assert 0x0020000D in alone["UI"].dataset and 0x0020000D not in alone["LO"].dataset
        for first, then in (("UI", "LO"), ("LO", "UI")):
            _plans.cache_clear()
            deidentify(study_as(first), Profile(), secret=SECRET)
            after = deidentify(study_as(then), Profile(), secret=SECRET)
            assert serialize(after.dataset) == serialize(alone[then].dataset), (first, then)
            assert after.actions == alone[then].actions, (first, then)


def test_a_remembered_conformance_verdict_is_per_tag():
    """Specific Character Set is read as LO ('ISO-IR 100' conforms), any other CS by the CS repertoire
    (no '-'): a verdict remembered for the same bytes under one tag never answers for another."""
    from pipeline.deid.structure import conformance, remembered_conformance

    value, charset, modality = b"ISO-IR 100", 0x00080005, 0x00080060
    for tags in ((charset, modality), (modality, charset)):
        for tag in tags:
            assert remembered_conformance(tag, "CS", value) == conformance(tag, "CS", value)
    assert remembered_conformance(charset, "CS", value) is None
    assert remembered_conformance(modality, "CS", value) is not None


def test_items_kept_as_read_are_their_bytes_as_encoded(datasets):
    """An item `read_items` offers verbatim is byte for byte what `encode_items` writes of its elements."""
    offered = 0
    for path, ds in datasets:
        for elem in raw_sequences(ds):
            verbatim: list = []
            items = read_items(elem.value, elem.is_implicit_VR, 0, None, verbatim)
            if not items:
                continue
            assert len(verbatim) == len(items), path
            for item, raw in zip(items, verbatim, strict=True):
                if raw is not None:
                    assert encode_items([item], elem.is_implicit_VR, True, ["iso8859"], "iso8859") == \
                        encode_items([item], elem.is_implicit_VR, True, ["iso8859"], "iso8859", [raw]), path
                    offered += 1
    assert offered >= 20


def test_an_item_whose_header_bytes_would_change_is_encoded_again():
    """A long VR header with nonzero reserved bytes is written with zeros, as pydicom writes it: such an
    item is not copied as it was read."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    lut = b"\x28\x00\x01\x12OW\x01\x00" + pack("<I", 4) + b"\x01\x02\x03\x04"  # Red Palette LUT Data
    item = b"\xfe\xff\x00\xe0" + pack("<I", len(lut)) + lut
    tag = Tag(0x00082218)  # Anatomic Region Sequence, kept and walked
    ds._dict[tag] = RawDataElement(tag, "SQ", len(item), item, 0, False, True)
    data = serialize(apply(ds, secret=SECRET)[0])
    assert b"\x28\x00\x01\x12OW\x00\x00" + pack("<I", 4) + b"\x01\x02\x03\x04" in data
    assert b"OW\x01\x00" not in data


def test_a_deep_copy_of_the_file_meta_is_independent():
    """pydicom's writer deep-copies the file meta; the copy shares only raw elements (immutable): setting,
    deleting or converting an element in one never shows in the other."""
    from copy import deepcopy

    out, _ = apply(pydicom.dcmread(get_testdata_file("CT_small.dcm")), secret=SECRET)
    meta = out.file_meta
    assert meta.ImplementationVersionName  # converted in place: a DataElement from now on
    copied = deepcopy(meta)
    assert copied._dict[Tag(0x00020000)] is meta._dict[Tag(0x00020000)]  # raw: shared, being immutable
    assert copied._dict[Tag(0x00020013)] is not meta._dict[Tag(0x00020013)]
    assert copied == meta and type(copied) is type(meta) and copied.__dict__.keys() == meta.__dict__.keys()
    before = [(elem.tag, elem.VR, elem.value) for elem in meta]
    copied.ImplementationVersionName, copied.MediaStorageSOPInstanceUID = "OTHER", "2.25.1"
    copied._dict[Tag(0x00020013)].value = "CHANGED"
    del copied[0x00020001]
    assert [(elem.tag, elem.VR, elem.value) for elem in meta] == before
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_file_meta_parts_remembered_per_class_and_syntax_serve_only_those():
    """The file meta's fixed elements are made once per SOP class and transfer syntax: objects of other
    classes and syntaxes, processed in between, still get their own, and each its own SOP instance."""
    names = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "MR_small_implicit.dcm", "CT_small.dcm"]
    seen = set()
    for name in names:
        ds = pydicom.dcmread(get_testdata_file(name))
        out, _ = apply(ds, secret=SECRET)
        meta = out.file_meta
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == out.SOPClassUID, name
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID, name
        assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID, name
        seen.add((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID))
        data = serialize(out)  # the group length ends the file meta where the data set begins
        end = 144 + int.from_bytes(data[140:144], "little")
        assert data[end - 24:end - 7] == b"\x02\x00\x13\x00SH\x10\x00DICOMDEID", name  # the last, then
        assert data[end:end + 2] != b"\x02\x00", name  # no other file meta element
    assert len(seen) >= 3


def test_a_file_meta_group_length_that_swallows_elements_is_refused_by_both_walkers():
    """pydicom reads a File Meta Information Group Length of 52 bytes leniently (the next two elements become
    its values); the byte walker refuses the file as malformed, and the dataset walker agrees."""
    from pipeline.deid.stream import deidentify_bytes

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    swallowing = data[:138] + pack("<H", 4 + 14 + 34) + data[140:]  # its own 4 bytes, then (0002,0001-2)
    with pytest.raises(DeidError) as by_bytes:
        deidentify_bytes(swallowing, Profile(), secret=SECRET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(BytesIO(swallowing), force=True)
    with pytest.raises(DeidError) as by_dataset:
        apply(ds, secret=SECRET)
    assert by_bytes.value.reason == by_dataset.value.reason == "malformed"
    assert "File Meta Information Group Length of 52 bytes, not 4" in by_dataset.value.detail
    apply(pydicom.dcmread(get_testdata_file("CT_small.dcm")), secret=SECRET)  # a plain one is no refusal


def ct_small_with_vr(tag: bytes, vr: bytes) -> bytes:
    """CT_small.dcm with one UI element's explicit VR bytes replaced (its value left as it is)."""
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert data.count(tag + b"UI") == 1
    return data.replace(tag + b"UI", tag + vr)


@pytest.mark.parametrize("tag", [b"\x08\x00\x16\x00", b"\x08\x00\x18\x00"], ids=["class", "instance"])
def test_a_sop_uid_read_with_another_vr_is_refused_by_both_walkers(tag):
    """A SOP UID read as DA does not conform and is dropped: the result would name no object (pydicom's
    writer refuses its file meta, the result's own writer would write it), so both walkers refuse it."""
    from pipeline.deid.stream import deidentify_bytes

    flipped = ct_small_with_vr(tag, b"DA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(BytesIO(flipped), force=True)
    with pytest.raises(DeidError) as by_dataset:
        apply(ds, secret=SECRET)
    with pytest.raises(DeidError) as by_bytes:
        deidentify_bytes(flipped, Profile(), secret=SECRET)
    assert by_bytes.value.reason == by_dataset.value.reason == "malformed"
    assert "no value its VR allows" in by_dataset.value.detail


def test_a_sop_class_uid_stored_as_pn_is_written_by_both_walkers_alike():
    """A UID under another text VR conforms to it and is kept: both walkers name the file by its text (the
    dataset walker built a UID from a PersonName and refused the object; found by the fuzzer)."""
    from pipeline.deid.stream import deidentify_bytes

    flipped = ct_small_with_vr(b"\x08\x00\x16\x00", b"PN")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = apply(pydicom.dcmread(BytesIO(flipped), force=True), secret=SECRET)
    by_bytes = deidentify_bytes(flipped, Profile(), secret=SECRET)
    assert by_bytes.fast and by_bytes.header["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert out.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    written = [pydicom.dcmread(BytesIO(data)) for data in (serialize(out), by_bytes.data)]
    assert values(written[0]) == values(written[1])  # the same content (the PN's padding may differ)
    assert values(written[0].file_meta) == values(written[1].file_meta)


@pytest.mark.parametrize("profile", [Profile(), Profile(retain_long_modified_dates=True)],
                         ids=["basic", "modified"])
def test_markers_the_source_held_under_another_vr_are_replaced_by_both_walkers(profile):
    """A De-identification Method stored as LT is replaced by ours as LO; apply set its value into the
    source's element and kept LT, where the byte walker wrote LO (found by the fuzzer)."""
    from pipeline.deid.markers import mark
    from pipeline.deid.stream import deidentify_bytes

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00120063, "LT", "removed by hand at the site")
    ds.add_new(0x00120062, "LO", "NO")
    fp = DicomBytesIO()
    ds.save_as(fp)
    source = fp.getvalue()
    out, _ = apply(pydicom.dcmread(BytesIO(source)), profile=profile, secret=SECRET)
    by_bytes = deidentify_bytes(source, profile, secret=SECRET)
    for written in (pydicom.dcmread(BytesIO(serialize(out))), pydicom.dcmread(BytesIO(by_bytes.data))):
        assert written[0x00120063].VR == "LO" and written[0x00120063].value[0].startswith("dicom-deid")
        assert written.PatientIdentityRemoved == "YES"
    assert serialize(out) == by_bytes.data
    held = Dataset()
    held.add_new(0x00120063, "LT", "removed by hand")  # the dataset path of a big endian source
    mark(held, profile)
    assert held[0x00120063].VR == "LO"


def test_kept_private_values_are_written_as_read_by_both_walkers():
    """A kept private element with a known VR stays raw in apply's output: converted, as setting it into a
    dataset does, a DS of NUL bytes became an empty value where the byte walker kept its bytes (found by the
    fuzzer), and a text padded with NUL came out padded with a space."""
    from pipeline.deid.stream import deidentify_bytes

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    block = ds.private_block(0x0021, "DEID TEST", create=True)
    block.add_new(0x93, "DS", "0")
    block.add_new(0x94, "LO", "ABC")
    fp = DicomBytesIO()
    ds.save_as(fp)
    source = fp.getvalue()
    number, text = (pack("<HH", 0x0021, block.get_tag(offset) & 0xFFFF) for offset in (0x93, 0x94))
    source = source.replace(number + b"DS\x02\x000 ", number + b"DS\x02\x00\0\0")
    source = source.replace(text + b"LO\x04\x00ABC ", text + b"LO\x04\x00ABC\0")
    assert b"DS\x02\x00\0\0" in source and b"ABC\0" in source
    profile = Profile(retain_private_tags=True)
    out, _ = apply(pydicom.dcmread(BytesIO(source)), profile=profile, secret=SECRET)
    by_bytes = deidentify_bytes(source, profile, secret=SECRET)
    assert b"DS\x02\x00\0\0" in by_bytes.data and b"ABC\0" in by_bytes.data
    assert serialize(out) == by_bytes.data
    assert out[block.get_tag(0x94)].private_creator == "DEID TEST"  # learnt when read, as pydicom does
