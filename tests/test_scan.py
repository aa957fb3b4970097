"""Stage 2: header scans read little, fall back when a header is long, and record broken objects."""

import io
from collections import Counter

import pyarrow as pa
import pytest
import s3fs
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pipeline import scan as scan_module
from pipeline.listing import list_objects
from pipeline.scan import INVENTORY_SCHEMA, scan

MIB = 1024 * 1024


def make_dicom(n: int = 1, pixel_bytes: int = 4 * MIB, private_bytes: int = 0) -> bytes:
    """A CT object with `pixel_bytes` of pixel data and, optionally, a big private element early on."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.99.3.{n}"
    ds.Modality = "CT"
    if private_bytes:
        ds.add_new(0x00090010, "LO", "TEST CREATOR")
        ds.add_new(0x00091001, "OB", b"\1" * private_bytes)
    ds.PatientID = f"PID-{n}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.99.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.2"
    ds.Rows, ds.Columns = 1024, pixel_bytes // 2048
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = b"\0" * pixel_bytes
    return _saved(ds)


def _saved(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _rows(table: pa.Table) -> dict[str, dict]:
    return {row["url"].rsplit("/", 1)[-1]: row for row in table.to_pylist()}


def _check_fields(row: dict, n: int) -> None:
    assert row["error"] is None
    assert row["study_uid"] == "1.2.826.0.1.3680043.99.1"
    assert row["series_uid"] == "1.2.826.0.1.3680043.99.2"
    assert row["sop_uid"] == f"1.2.826.0.1.3680043.99.3.{n}"
    assert row["patient_id"] == f"PID-{n}"
    assert (row["modality"], row["sop_class_uid"]) == ("CT", CTImageStorage)
    assert row["transfer_syntax_uid"] == ExplicitVRLittleEndian
    assert row["burned_in_annotation"] == "NO"


@pytest.fixture
def s3_objects(s3_server, s3_bucket) -> str:
    """Large, long-header and broken objects in a fresh bucket; returns the prefix URL."""
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    plain = get_testdata_file("CT_small.dcm", read=False)
    with open(plain, "rb") as f:
        small = f.read()
    fs.pipe({
        f"{s3_bucket}/in/big.dcm": make_dicom(1),
        f"{s3_bucket}/in/long-header.dcm": make_dicom(2, private_bytes=300_000),
        f"{s3_bucket}/in/empty.dcm": b"",
        f"{s3_bucket}/in/notes.txt": b"this is not a DICOM file at all, just some words" * 10,
        f"{s3_bucket}/in/truncated.dcm": small[:700],
    })
    return f"s3://{s3_bucket}/in"


def test_scan_reads_only_the_header_of_large_objects_on_s3(s3_server, s3_objects):
    options = s3_server["storage_options"]
    inventory = scan(list_objects(s3_objects, options), options)
    assert inventory.schema == INVENTORY_SCHEMA
    big = _rows(inventory)["big.dcm"]
    _check_fields(big, 1)
    assert big["size"] > 4 * MIB
    assert 0 < big["header_bytes_read"] <= 64 * 1024


def test_scan_falls_back_to_a_bigger_read_for_a_long_header(s3_server, s3_objects):
    options = s3_server["storage_options"]
    row = _rows(scan(list_objects(s3_objects, options), options))["long-header.dcm"]
    _check_fields(row, 2)
    assert 300_000 < row["header_bytes_read"] < row["size"] - 2 * MIB  # more than 64 KiB, no pixel data


def test_scan_records_broken_objects_without_raising(s3_server, s3_objects):
    options = s3_server["storage_options"]
    rows = _rows(scan(list_objects(s3_objects, options), options))
    assert rows["empty.dcm"]["error"] == "empty"
    assert rows["empty.dcm"]["header_bytes_read"] == 0
    assert rows["notes.txt"]["error"] == "not-dicom"
    assert rows["truncated.dcm"]["error"] == "truncated"
    assert rows["truncated.dcm"]["header_bytes_read"] == 700
    for row in (rows["empty.dcm"], rows["notes.txt"], rows["truncated.dcm"]):
        assert row["study_uid"] is None


def test_scan_of_an_object_gone_since_listing_and_of_unknown_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_module, "CONCURRENT_READS", 1)  # each object in a read round of its own
    (tmp_path / "a.dcm").write_bytes(make_dicom(3, pixel_bytes=2 * MIB))
    listing = pa.table({"url": [f"file://{tmp_path}/a.dcm", f"file://{tmp_path}/gone.dcm"],
                        "size": pa.nulls(2, pa.int64())})
    rows = _rows(scan(listing))
    _check_fields(rows["a.dcm"], 3)
    assert rows["a.dcm"]["size"] == (tmp_path / "a.dcm").stat().st_size
    assert rows["gone.dcm"]["error"] == "io: FileNotFoundError"
    assert rows["a.dcm"]["header_bytes_read"] == 65536


def test_scan_with_a_tiny_first_read_still_finds_the_header(tmp_path):
    (tmp_path / "a.dcm").write_bytes(make_dicom(4, pixel_bytes=MIB))
    row = _rows(scan(list_objects(str(tmp_path)), header_bytes=100))["a.dcm"]
    _check_fields(row, 4)
    assert row["header_bytes_read"] < 2048


def test_scan_on_the_cluster_in_batches_matches_a_local_scan(tmp_path, dask_client, monkeypatch):
    for n in range(7):
        (tmp_path / f"{n}.dcm").write_bytes(make_dicom(n, pixel_bytes=64 * 1024))
    (tmp_path / "junk.bin").write_bytes(b"\xff" * 300)
    monkeypatch.setattr(scan_module, "MIN_BATCH", 2)
    listing = list_objects(str(tmp_path))
    assert len(scan_module._batches(listing, dask_client)) == 4  # 8 objects, 2 per batch on 2 workers
    on_cluster = scan(listing, client=dask_client)
    assert on_cluster.equals(scan(listing))
    assert on_cluster["url"].to_pylist() == listing["url"].to_pylist()
    for n in range(7):
        _check_fields(_rows(on_cluster)[f"{n}.dcm"], n)


def test_scan_keeps_header_values_out_of_logs_and_warnings(tmp_path, caplog, recwarn):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3"
    ds.StudyInstanceUID = "9.8.SECRET-STUDY-VALUE"  # invalid for UI: pydicom complains, quoting it
    (tmp_path / "odd.dcm").write_bytes(_saved(ds))
    caplog.clear()
    recwarn.clear()
    caplog.set_level("DEBUG")
    row = _rows(scan(list_objects(str(tmp_path))))["odd.dcm"]
    assert row["study_uid"] == "9.8.SECRET-STUDY-VALUE"
    assert "SECRET" not in caplog.text
    assert not [w for w in recwarn if "SECRET" in str(w.message)]


def _broken_objects() -> dict[str, bytes]:
    """Objects the strict header reader refuses, each in its own way."""
    with open(get_testdata_file("CT_small.dcm", read=False), "rb") as f:
        whole = f.read()
    body = 144 + int.from_bytes(whole[140:144], "little")  # past the file meta group
    first_end = body + 8 + int.from_bytes(whole[body + 6:body + 8], "little")
    assert whole[body + 4:body + 6].isalpha()  # explicit VR: the first element's VR is at body + 4
    dicomdir = bytearray(whole)
    media_class = whole.index(b"1.2.840.10008.5.1.4.1.1.2")  # first in the file meta
    dicomdir[media_class:media_class + 25] = b"1.2.840.10008.1.3.10\0\0\0\0\0"
    return {
        "cut-in-header.dcm": whole[:first_end + 3],  # inside the second element's header
        "unknown-vr.dcm": whole[:body + 4] + b"ZZ" + whole[body + 6:],
        "repeated.dcm": whole[:first_end] + whole[body:first_end] + whole[first_end:],
        "dicomdir.dcm": bytes(dicomdir),
    }


def test_objects_the_header_reader_refuses_carry_the_engines_reason_and_are_quarantined_once(tmp_path,
                                                                                              monkeypatch):
    from pipeline.deid import DeidError, Profile
    from pipeline.deid.keys import SECRET_ENV
    from pipeline.deid.stream import deidentify_bytes
    from pipeline.execute import Settings, Unit, run_unit
    from pipeline.secret import fingerprint

    secret = b"scan-test-secret"
    monkeypatch.setenv(SECRET_ENV, secret.decode())
    broken = _broken_objects()
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
    rows = _rows(scan(list_objects(str(tmp_path))))
    reasons = {}
    for name, data in broken.items():
        with pytest.raises(DeidError) as refused:
            deidentify_bytes(data, Profile(), secret=secret)
        reasons[name] = refused.value.reason
        assert rows[name]["error"] == reasons[name], name
    assert set(reasons.values()) == {"truncated", "malformed", "dicomdir"}
    settings = Settings(str(tmp_path / "out" / "dest"), str(tmp_path / "out" / "tables"), Profile(),
                        fingerprint(secret))
    unit = Unit("u-broken", [{"url": row["url"], "size": row["size"], "duplicate_of": None}
                             for row in rows.values()])
    stats = run_unit(unit, settings)  # each object one quarantine row, with the reason the scan gave
    assert stats["objects"] == stats["quarantined"] == len(broken)
    assert stats["reasons"] == dict(Counter(reasons.values()))


def test_header_reader_ends_at_zero_padding_and_leaves_the_items_of_a_sequence_to_the_engine():
    """The reader's shortcuts keep its answers: zero padding after the last element ends the dataset, and a
    sequence of defined length is stepped over whole, so a broken item inside it before the columns is the
    engine's to refuse: the object is planned by the UIDs around the sequence and quarantined in its unit."""
    from pipeline.deid import DeidError, Profile
    from pipeline.deid.stream import deidentify_bytes
    from pipeline.headers import NeedMore, read_header

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.99.3.7"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.4"
    ds.ReferencedStudySequence = [item]
    ds.PatientID = "PID-7"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.99.1"
    data = _saved(ds)
    padded = data + b"\0" * 32
    assert read_header(padded, True)["study_uid"] == "1.2.826.0.1.3680043.99.1"
    assert read_header(padded, True)["patient_id"] == "PID-7" and "error" not in read_header(padded, True)
    with pytest.raises(NeedMore):  # zeros that may be followed by more elements: read on
        read_header(padded[:-8], False)
    inner = data.index(b"\x08\x00\x55\x11UI")  # (0008,1155) inside the item: its length overruns the item
    broken = data[:inner + 6] + b"\xff\x00" + data[inner + 8:]
    record = read_header(broken, True)
    assert "error" not in record and record["study_uid"] == "1.2.826.0.1.3680043.99.1"
    with pytest.raises(DeidError) as refused:
        deidentify_bytes(broken, Profile(), secret=b"test-secret")
    assert refused.value.reason == "malformed"
    with pytest.raises(NeedMore):  # a read that ends inside the sequence needs the rest of it
        read_header(broken[:inner], False)


def test_header_reader_refuses_a_stray_delimiter_before_the_columns_as_the_engine_does():
    """An item delimiter between top-level elements makes the object malformed for both readers; one after
    the last element, followed by nothing, is skipped by both. (The scan stopped at any group FFFE tag as if
    past its columns, and planned the object on the values read before it.)"""
    from pipeline.deid import DeidError, Profile
    from pipeline.deid.stream import deidentify_bytes
    from pipeline.headers import read_header

    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        data = f.read()
    delimiter = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    at = data.index(b"\x10\x00\x20\x00LO")  # Patient ID, before Study Instance UID
    stray = data[:at] + delimiter + data[at:]
    assert read_header(stray, True)["error"] == "malformed"
    with pytest.raises(DeidError) as refused:
        deidentify_bytes(stray, Profile(), secret=b"test-secret")
    assert refused.value.reason == "malformed"
    trailing = data + delimiter
    record = read_header(trailing, True)
    assert "error" not in record and record["study_uid"] == read_header(data, True)["study_uid"]
    deidentify_bytes(trailing, Profile(), secret=b"test-secret")
