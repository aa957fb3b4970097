"""One date shift per study's patient, patient pseudonyms and the crosswalk, and the burned-in guard, each
through a real run on a LocalCluster over generated DICOM."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import SecondaryCaptureImageStorage, UltrasoundImageStorage, generate_uid
from samples import PATIENT_NAME, SECRET, study_objects, tree, write_tree

import pipeline
from pipeline import burned_in
from pipeline.cli import _parse
from pipeline.deid import Profile, Pseudonym, apply
from pipeline.deid.keys import date_shift_days, patient_pseudonym
from pipeline.deid.stream import deidentify_bytes
from pipeline.deid.values import shift
from pipeline.job import JobError
from pipeline.maps import export_maps
from pipeline.patients import CrosswalkError, read_crosswalk
from pipeline.scan import scan_batch

STUDY_DATE = "20040119"


def _encode(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _object(study: str, **values) -> bytes:
    """A CT object of `study` with the given attributes set (None: removed)."""
    ds = copy.deepcopy(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    ds.StudyInstanceUID, ds.StudyDate = study, STUDY_DATE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "SOPClassUID" in values:
        ds.file_meta.MediaStorageSOPClassUID = values["SOPClassUID"]
    return _encode(ds)


def _run(src: Path, out: Path, client, **kw) -> pipeline.RunResult:
    return pipeline.run(str(src), str(out / "dest"), str(out / "tables"), client=client, secret=SECRET, **kw)


def _outputs(out: Path) -> dict[str, pydicom.Dataset]:
    return {k: pydicom.dcmread(io.BytesIO(v)) for k, v in tree(out / "dest").items()
            if not k.startswith("_index/")}


def _disagreeing_study() -> dict[str, bytes]:
    """One study whose files disagree on the patient: an issuer, none, another issuer."""
    study = generate_uid()
    return {"a.dcm": _object(study, PatientID="PID-1", IssuerOfPatientID="HOSP-A"),
            "b.dcm": _object(study, PatientID=None, IssuerOfPatientID=None),
            "c.dcm": _object(study, PatientID="PID-1", IssuerOfPatientID="HOSP-B")}


def test_a_study_whose_files_disagree_on_the_patient_shifts_alike(tmp_path, dask_client):
    src, out = tmp_path / "src", tmp_path / "out"
    files = _disagreeing_study()
    write_tree(src, files)
    profile = Profile(retain_long_modified_dates=True)
    alone = [deidentify_bytes(data, profile, secret=SECRET) for data in files.values()]
    alone_dates = {pydicom.dcmread(io.BytesIO(result.data)).StudyDate for result in alone}
    alone = {result.header["StudyInstanceUID"] for result in alone}
    assert len(alone) == 1 and len(alone_dates) == 3  # the engine alone: one study, three shifts

    # One object per unit: the study's objects run in different tasks, maybe on different workers.
    result = _run(src, out, dask_client, profile=profile, max_unit_objects=1)
    assert result.written == 3, result.quarantine_reasons
    expected = shift("DA", STUDY_DATE, date_shift_days(SECRET, b"id\0PID-1\0HOSP-A"))  # a.dcm comes first
    assert {ds.StudyDate for ds in _outputs(out).values()} == {expected}

    # A later run's object of the study reuses the recorded identity, though it would come first now.
    (src / "0.dcm").write_bytes(_object(pydicom.dcmread(io.BytesIO(files["a.dcm"])).StudyInstanceUID,
                                        PatientID="SOMEONE-ELSE"))
    again = _run(src, out, dask_client, profile=profile, max_unit_objects=1)
    assert again.run_objects == 1 and again.written == 4
    assert {ds.StudyDate for ds in _outputs(out).values()} == {expected}


def _crosswalk_csv(path: Path, rows: list[tuple[str, ...]], header=("patient_id", "research_id",
                                                                    "research_name")) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_patient_pseudonyms_and_the_crosswalk(tmp_path, dask_client):
    src, out = tmp_path / "src", tmp_path / "out"
    files = study_objects(3, 2, seed="pseudo")
    write_tree(src, files)
    ids = sorted({str(pydicom.dcmread(io.BytesIO(d)).PatientID) for d in files.values()})
    crosswalk = _crosswalk_csv(tmp_path / "crosswalk.csv", [(ids[0], "RESEARCH-0001", "SUBJECT^ONE")])
    result = _run(src, out, dask_client, crosswalk=str(crosswalk), max_unit_objects=1, verify=True)
    assert result.written == 6 and result.verified, result.report

    by_patient: dict[str, set[tuple[str, str]]] = {}
    for data in files.values():
        original = pydicom.dcmread(io.BytesIO(data))
        by_patient.setdefault(str(original.PatientID), set())
    outputs = _outputs(out)
    manifest = pd.read_parquet(out / "tables" / "manifest.parquet")
    for row in manifest.itertuples():
        original = pydicom.dcmread(row.source_url.removeprefix("file://"))
        written = outputs[row.output_key]
        by_patient[str(original.PatientID)].add((str(written.PatientID), str(written.PatientName)))
    assert by_patient[ids[0]] == {("RESEARCH-0001", "SUBJECT^ONE")}  # the crosswalk wins where it has a row
    for patient in ids[1:]:  # the keyed pseudonym elsewhere, one per patient, the same in every unit
        keyed = patient_pseudonym(SECRET, b"id\0" + patient.encode() + b"\0")
        assert by_patient[patient] == {(keyed, keyed)}

    patient_map = pd.read_parquet(out / "tables" / "patient_map.parquet")
    pairs = set(zip(patient_map.original_patient_id, patient_map.new_patient_id, patient_map.source,
                    strict=True))
    keyed = {(p, patient_pseudonym(SECRET, b"id\0" + p.encode() + b"\0"), "pseudonym") for p in ids[1:]}
    assert pairs == {(ids[0], "RESEARCH-0001", "crosswalk"), *keyed}
    export_maps(str(out / "tables"), str(tmp_path / "maps"))
    exported = list(csv.reader((tmp_path / "maps" / "patient_map.csv").open()))
    assert exported[0] == ["id_old", "id_new"] and {tuple(r) for r in exported[1:]} == {p[:2] for p in pairs}

    # Nothing of the patients, the crosswalk or the secret in DEST; the secret nowhere in TABLES either.
    for name, data in tree(out / "dest").items():
        for value in (*ids, PATIENT_NAME, "SUBJECT^ONE", "RESEARCH-0001"):
            if value.startswith(("SUBJECT", "RESEARCH")) and not name.startswith("_index"):
                continue  # research IDs are meant to be in the outputs
            assert value.encode() not in data, (name, value)
    for data in tree(out / "tables").values():
        assert SECRET not in data
    job = json.loads((out / "tables" / "job.json").read_text())
    assert job["pseudonymize_patients"] is True and job["crosswalk"] is True
    assert str(crosswalk) not in json.dumps(job) and "RESEARCH" not in json.dumps(job)

    with pytest.raises(JobError, match="--pseudonymize-patients"):
        _run(src, out, dask_client, max_unit_objects=1)


def test_crosswalk_reading(tmp_path):
    csv_path = _crosswalk_csv(tmp_path / "c.csv", [("A", "R1", ""), ("B", "R2", "NAME^TWO")])
    assert read_crosswalk(str(csv_path)) == {"A": ("R1", "R1"), "B": ("R2", "NAME^TWO")}
    pd.DataFrame({"patient_id": ["A"], "research_id": ["R1"]}).to_parquet(tmp_path / "c.parquet")
    assert read_crosswalk(str(tmp_path / "c.parquet")) == {"A": ("R1", "R1")}
    for rows, header, problem in (
        ([("A", "R1", "")], ("patient", "research_id", "research_name"), "columns"),
        ([("A", "R1", ""), ("A", "R9", "")], None, "row 2"),
        ([("A", "R\\1", "")], None, "row 1"),
        ([("A", "Ré", "")], None, "row 1"),
        ([("", "R1", "")], None, "row 1"),
    ):
        bad = _crosswalk_csv(tmp_path / "bad.csv", rows, *(header,) if header else ())
        with pytest.raises(CrosswalkError, match=problem) as caught:
            read_crosswalk(str(bad))
        assert "R9" not in str(caught.value) and "R\\1" not in str(caught.value)  # values never in messages


def _burned_in_objects() -> dict[str, bytes]:
    study = generate_uid()
    return {
        "ct-yes.dcm": _object(study, BurnedInAnnotation="YES"),
        "ct-none.dcm": _object(study),
        "sc-none.dcm": _object(study, SOPClassUID=SecondaryCaptureImageStorage),
        "sc-no.dcm": _object(study, SOPClassUID=SecondaryCaptureImageStorage, BurnedInAnnotation="NO"),
        "us-none.dcm": _object(study, SOPClassUID=UltrasoundImageStorage),
    }


@pytest.mark.parametrize(("settings", "quarantined"), [
    ({}, {"ct-yes.dcm", "sc-none.dcm", "us-none.dcm"}),
    ({"burned_in_unknown": "allow"}, {"ct-yes.dcm"}),
    ({"allow_burned_in": True}, set()),
])
def test_burned_in_guard(tmp_path, dask_client, settings, quarantined):
    src, out = tmp_path / "src", tmp_path / "out"
    files = _burned_in_objects()
    write_tree(src, files)
    result = _run(src, out, dask_client, **settings)
    assert result.objects == len(files) and result.written == len(files) - len(quarantined)
    rows = pd.read_parquet(out / "tables" / "quarantine.parquet")
    assert {Path(url).name for url in rows.source_url} == quarantined
    assert set(rows.reason) <= {"burned-in-annotation"}
    index = pd.concat(pd.read_parquet(p) for p in (out / "dest" / "_index").glob("*.parquet"))
    expected = {"YES"} if settings.get("allow_burned_in") else set()
    assert set(index.burned_in_annotation.dropna()) == {"NO"} | expected
    inventory = scan_batch([str(src / "ct-yes.dcm"), str(src / "sc-no.dcm")], [None, None])
    assert inventory["burned_in_annotation"].to_pylist() == ["YES", "NO"]
    other = {"burned_in_unknown": "allow"} if not settings else {}
    with pytest.raises(JobError, match="--burned-in-unknown" if not settings else "--"):
        _run(src, out, dask_client, **other)  # other burned-in settings: a different job


def test_every_burned_in_class_is_in_pydicoms_dictionary():
    assert len(burned_in.BURNED_IN_CLASSES) == len(burned_in.BURNED_IN_KEYWORDS)


@pytest.mark.parametrize(("sop_class", "marked", "allow", "unknown", "refused"), [
    ("1.2.840.10008.5.1.4.1.1.2", "YES", False, "allow", True),  # CT marked YES
    ("1.2.840.10008.5.1.4.1.1.2", "yes ", False, "quarantine", True),
    ("1.2.840.10008.5.1.4.1.1.2", "YES", True, "quarantine", False),
    ("1.2.840.10008.5.1.4.1.1.2", None, False, "quarantine", False),  # CT without the attribute
    (SecondaryCaptureImageStorage, None, False, "quarantine", True),
    (SecondaryCaptureImageStorage, "", False, "allow", False),
    (SecondaryCaptureImageStorage, "NO", False, "quarantine", False),
    (SecondaryCaptureImageStorage, "MAYBE", False, "quarantine", True),  # neither YES nor NO
    ("1.2.840.10008.5.1.4.1.1.104.1", None, True, "quarantine", False),  # Encapsulated PDF, allowed
])
def test_burned_in_refusal(sop_class, marked, allow, unknown, refused):
    assert bool(burned_in.refusal(sop_class, marked, allow=allow, unknown=unknown)) is refused


def test_the_settings_from_flags_and_config(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text('pseudonymize_patients = true\ncrosswalk = "ids.csv"\nburned_in_unknown = "allow"\n')
    args = _parse(["run", "src", "dest", "--tables", "t", "--config", str(config)])
    assert (args.pseudonymize_patients, args.crosswalk, args.allow_burned_in, args.burned_in_unknown) == (
        True, "ids.csv", False, "allow")
    args = _parse(["run", "src", "dest", "--tables", "t", "--allow-burned-in"])
    assert (args.pseudonymize_patients, args.crosswalk, args.allow_burned_in, args.burned_in_unknown) == (
        False, None, True, "quarantine")
    with pytest.raises(SystemExit):
        _parse(["run", "src", "dest", "--tables", "t", "--burned-in-unknown", "maybe"])


@pytest.mark.parametrize(("name", "fast"), [("CT_small.dcm", True), ("MR_small_bigendian.dcm", False)])
def test_both_walkers_take_a_shift_identity_and_a_pseudonym(name, fast):
    data = Path(get_testdata_file(name)).read_bytes()
    original = pydicom.dcmread(io.BytesIO(data))
    profile = Profile(retain_long_modified_dates=True)
    identity = b"id\0SOMEONE\0ELSEWHERE"
    result = deidentify_bytes(data, profile, secret=SECRET, shift_identity=identity,
                              pseudonym=Pseudonym("R-1", "SUBJECT^ONE"))
    assert result.fast is fast
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert out.StudyDate == shift("DA", original.StudyDate, date_shift_days(SECRET, identity))
    assert (out.PatientID, str(out.PatientName)) == ("R-1", "SUBJECT^ONE")
    own = pydicom.dcmread(io.BytesIO(deidentify_bytes(data, profile, secret=SECRET).data))
    assert own.StudyDate != out.StudyDate and own.PatientID == ""  # without them: its own identity, emptied
    ds, _ = apply(pydicom.dcmread(io.BytesIO(data)), profile, secret=SECRET, shift_identity=identity,
                  pseudonym=Pseudonym("R-1", "SUBJECT^ONE"))
    assert (ds.StudyDate, ds.PatientID) == (out.StudyDate, "R-1")
