"""`dicom-deid verify` and `export-maps` on real runs: clean runs pass, every planted fault is found."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from samples import CORPUS, PATIENT_ID, PATIENT_NAME, SECRET, study_objects, write_tree

import pipeline
from pipeline.cli import main
from pipeline.verify import _completeness, _inconsistent, _Run, verify

PYDICOM_FILES = str(Path(pydicom.__file__).parent / "data" / "test_files")


def _clean(v) -> None:
    t = v.totals
    assert v.ok, v.describe()
    assert (t["leaks"], t["lost"], t["unaccounted"], t["profile_errors"], t["inconsistencies"]) == (0,) * 5


@pytest.mark.parametrize("flags", [{}, {"retain_long_modified_dates": True, "retain_device_identity": True,
                                         "retain_patient_characteristics": True, "retain_private_tags": True,
                                         "clean_descriptions": True}])
def test_a_run_over_pydicoms_files_verifies_clean(tmp_path, dask_client, flags):
    dest, tables = tmp_path / "dest", tmp_path / "tables"
    # Secondary captures and ultrasound, which lack Burned In Annotation there, are written and verified too.
    result = pipeline.run(PYDICOM_FILES, str(dest), str(tables), client=dask_client, secret=SECRET,
                          verify=not flags, burned_in_unknown="allow",
                          **flags)  # on the cluster, with dciodvfy where installed
    assert result.ok and result.verified is (True if not flags else None), result.report
    v = verify(str(dest), str(tables), validity_limit=0)  # standalone, in this process (few objects)
    _clean(v)
    t = v.totals
    assert t["outputs"] == result.written > 100 and t["source_checked"] == t["outputs"]
    assert t["objects"] == result.objects and t["quarantined"] == result.quarantined
    assert t["references_external"] > 0  # references to objects never in SOURCE are not counted
    report = pq.read_table(tables / "verify" / "report.parquet").to_pandas()
    assert len(report) == result.objects and set(report.status) == {"written", "quarantined"}
    assert not report.completeness.astype(bool).any()


def _run(tmp_path: Path, dask_client) -> tuple[Path, Path, dict[str, bytes]]:
    files = study_objects(3, 4)
    write_tree(tmp_path / "src", files)
    dest, tables = tmp_path / "dest", tmp_path / "tables"
    result = pipeline.run(str(tmp_path / "src"), str(dest), str(tables), client=dask_client, secret=SECRET,
                          max_unit_objects=4)
    assert result.ok and result.written == 12
    return dest, tables, files


def _rewrite(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _set_table(path: Path, column: str, where: str, key_column: str, value: str) -> None:
    table = pq.read_table(path).to_pandas()
    table.loc[table[key_column] == where, column] = value
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False, schema=pq.read_schema(path)), path)


def test_every_planted_fault_is_found(tmp_path, dask_client, capsys):
    dest, tables, files = _run(tmp_path, dask_client)
    manifest = pd.read_parquet(tables / "manifest.parquet").sort_values("output_key")
    urls, keys = list(manifest.source_url), list(manifest.output_key)
    source = {url: pydicom.dcmread(tmp_path / "src" / url.split("/src/", 1)[1]) for url in urls}
    by_study: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_study.setdefault(key.split("/")[0], []).append(i)
    first, second, third = by_study.values()
    name_in_kept, uid_nested, uid_key, name_in_index = first
    missing, priv, identity, referrer = second
    inconsistent, extra_of = third[:2]

    _rewrite(dest / keys[name_in_kept], lambda ds: setattr(ds, "ManufacturerModelName", PATIENT_NAME + "0"))
    original_series = source[urls[uid_nested]].SeriesInstanceUID
    item = Dataset()
    item.ReferencedSOPClassUID = original_series
    _rewrite(dest / keys[uid_nested], lambda ds: setattr(ds, "SourceImageSequence", Sequence([item])))
    original_sop = source[urls[uid_key]].SOPInstanceUID
    leaky_key = keys[uid_key].rsplit("/", 1)[0] + f"/{original_sop}.dcm"
    (dest / keys[uid_key]).rename(dest / leaky_key)
    _set_table(tables / "manifest.parquet", "output_key", urls[uid_key], "source_url", leaky_key)
    index_file = next((dest / "_index").glob("*.parquet"))
    _set_table(index_file, "key", keys[uid_key], "key", leaky_key)
    _set_table(index_file, "series_description", keys[name_in_index], "key", PATIENT_NAME + "0")
    missing_sop = pydicom.dcmread(dest / keys[missing]).SOPInstanceUID
    (dest / keys[missing]).unlink()
    shutil.copy(dest / keys[extra_of], dest / "stray.dcm")
    _rewrite(dest / keys[identity], lambda ds: setattr(ds, "PatientIdentityRemoved", "NO"))

    def add_private(ds: Dataset) -> None:
        ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", "kept by mistake")
    _rewrite(dest / keys[priv], add_private)

    def add_references(ds: Dataset) -> None:
        to_missing, elsewhere = Dataset(), Dataset()
        to_missing.ReferencedSOPInstanceUID = missing_sop  # an input that was written, but is gone
        elsewhere.ReferencedSOPInstanceUID = generate_uid()  # never in SOURCE: not counted
        ds.ReferencedImageSequence = Sequence([to_missing, elsewhere])
    _rewrite(dest / keys[referrer], add_references)
    _rewrite(dest / keys[inconsistent], lambda ds: setattr(ds, "PatientSex", "F"))
    patient_id = str(source[urls[extra_of]].PatientID).encode()
    output = (dest / keys[extra_of]).read_bytes()
    (dest / keys[extra_of]).write_bytes(patient_id + output[len(patient_id):])  # in the preamble

    v = verify(str(dest), str(tables), validity_limit=0)
    report = pd.read_parquet(tables / "verify" / "report.parquet").set_index("source_url", drop=False)
    row = lambda i: report.loc[urls[i]]  # noqa: E731
    assert "PatientName" in row(name_in_kept).leak_attributes and row(name_in_kept).leak_places == "body"
    assert row(uid_nested).leak_attributes == "uid:SeriesInstanceUID"
    assert row(uid_key).leak_attributes == "uid:SOPInstanceUID" and "key" in row(uid_key).leak_places
    assert "PatientName" in row(name_in_index).leak_attributes and row(name_in_index).leak_places == "index"
    assert row(missing).completeness == "output-missing"
    stray = report[report.output_key == "stray.dcm"]
    assert list(stray.completeness) == ["output-without-manifest-row"]
    assert row(identity).profile_errors == "patient-identity-removed"
    assert row(priv).profile_errors == "private (0011,0010), private (0011,1001)"  # creator and element
    assert row(referrer).dangling_references == 1
    assert set(report[report.output_key.str.startswith(keys[inconsistent].split("/")[0])]
               .inconsistent_attributes) == {"PatientSex"}
    assert row(extra_of).leak_attributes == "PatientID" and row(extra_of).leak_places == "preamble"
    t = v.totals
    assert (t["leaks"], t["lost"], t["unaccounted"], t["profile_errors"]) == (5, 1, 1, 2)
    assert t["inconsistencies"] == 2 and t["dangling"] == 1 and t["references_external"] == 1
    assert report.leaks.fillna(0).sum() == 5  # nothing else is counted: no false positive
    assert not v.ok

    assert main(["verify", str(dest), "--tables", str(tables), "--validity-limit", "0"]) == 1
    out = capsys.readouterr().out
    assert "verify: FAILED" in out and PATIENT_NAME not in out and original_sop not in out
    assert main(["verify", str(dest), "--tables", str(tmp_path / "nowhere")]) == 2


def test_leaks_are_found_without_the_source_from_the_uid_map(tmp_path, dask_client):
    dest, tables, _ = _run(tmp_path, dask_client)
    manifest = pd.read_parquet(tables / "manifest.parquet")
    uids = pd.read_parquet(tables / "uid_map.parquet")
    key = manifest.output_key.iloc[0]
    other_study = uids[(uids.new_study_uid != key.split("/")[0])
                       & (uids.attribute == "StudyInstanceUID")].original_uid.iloc[0]
    _rewrite(dest / key, lambda ds: setattr(ds, "ImageComments", f"see {other_study}"))
    shutil.rmtree(tmp_path / "src")
    v = verify(str(dest), str(tables), validity_limit=0)
    assert v.totals["source_checked"] == 0 and v.totals["leaks"] == 1
    report = pd.read_parquet(tables / "verify" / "report.parquet").set_index("output_key")
    assert report.loc[key].leak_attributes == "uid:other-unit"


def test_verify_takes_the_source_where_it_is_now(tmp_path, dask_client):
    dest, tables, _ = _run(tmp_path, dask_client)
    (tmp_path / "src").rename(tmp_path / "moved")
    assert verify(str(dest), str(tables), validity_limit=0).totals["source_checked"] == 0
    v = verify(str(dest), str(tables), str(tmp_path / "moved"), validity_limit=0)
    assert v.totals["source_checked"] == 12
    _clean(v)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_validity_regressions_are_counted_and_not_fatal(tmp_path, dask_client):
    dest, tables, _ = _run(tmp_path, dask_client)
    key = pd.read_parquet(tables / "manifest.parquet").output_key.iloc[0]
    _rewrite(dest / key, lambda ds: delattr(ds, "Modality"))  # Type 1 in the General Series module
    v = verify(str(dest), str(tables), validity_limit=100)
    assert v.totals["validity_checked"] == 12 and v.totals["validity_regressions"] == 1 and v.ok
    report = pd.read_parquet(tables / "verify" / "report.parquet").set_index("output_key")
    assert report.loc[key].validity_new_errors >= 1


def test_cli_run_verify_and_export_maps(tmp_path, dask_client, capsys):
    files = study_objects(2, 3)
    write_tree(tmp_path / "src", files)
    (tmp_path / "secret").write_bytes(SECRET)
    dest, tables, out = tmp_path / "dest", tmp_path / "tables", tmp_path / "maps"
    assert main(["run", str(tmp_path / "src"), str(dest), "--tables", str(tables), "--secret-file",
                 str(tmp_path / "secret"), "--no-progress", "--verify",
                 "--scheduler", dask_client.scheduler.address]) == 0
    assert "verify: OK" in capsys.readouterr().out
    assert main(["export-maps", "--tables", str(tables), "--out", str(out)]) == 0
    uid_rows = list(csv.reader(io.StringIO((out / "uid_map.csv").read_text())))
    patient_rows = list(csv.reader(io.StringIO((out / "patient_map.csv").read_text())))
    assert uid_rows[0] == patient_rows[0] == ["id_old", "id_new"]
    uid_map = pd.read_parquet(tables / "uid_map.parquet")
    pairs = set(zip(uid_map.original_uid, uid_map.new_uid, strict=True))
    assert sorted(map(tuple, uid_rows[1:])) == sorted(pairs)
    studies = {pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID for data in files.values()}
    new_studies = {p.name for p in dest.iterdir() if p.name != "_index"}
    assert {dict(uid_rows[1:])[s] for s in studies} == new_studies
    # The Basic Profile empties Patient ID: each original maps to the (empty) value its outputs carry.
    assert sorted(patient_rows[1:]) == [[f"{PATIENT_ID}{s}", ""] for s in range(2)]


def test_a_run_on_s3_verifies_and_a_planted_leak_is_found(s3_server, s3_bucket, dask_client):
    import s3fs

    options = s3_server["storage_options"]
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.pipe({f"{s3_bucket}/in/{name}": data for name, data in study_objects(2, 2, seed="s3v").items()})
    dest, tables = f"s3://{s3_bucket}/out", f"s3://{s3_bucket}/private/tables"
    result = pipeline.run(f"s3://{s3_bucket}/in", dest, tables, client=dask_client, secret=SECRET,
                          storage_options=options, verify=True)
    assert result.ok and result.verified, result.report
    key = next(k for k in sorted(fs.find(f"{s3_bucket}/out")) if "/_index/" not in k)
    ds = pydicom.dcmread(io.BytesIO(fs.cat_file(key)))
    ds.ManufacturerModelName = f"{PATIENT_ID}s3v0"  # the four objects make one unit: any patient's ID counts
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    fs.pipe(key, buffer.getvalue())
    v = verify(dest, tables, storage_options=options, validity_limit=0)
    assert v.totals["leaks"] == 1 and v.totals["source_checked"] == 4 and not v.ok
    report = pd.read_parquet(f"{tables}/verify/report.parquet", storage_options=options)
    assert report[report.leaks > 0].output_key.tolist() == [key.removeprefix(f"{s3_bucket}/out/")]


@pytest.mark.skipif(not CORPUS.exists(), reason="the corpus is not at ../shared/corpus")
def test_a_corpus_run_verifies_clean(tmp_path, dask_client):
    dest, tables = tmp_path / "dest", tmp_path / "tables"
    result = pipeline.run(str(CORPUS), str(dest), str(tables), client=dask_client, secret=SECRET)
    v = verify(str(dest), str(tables), client=dask_client, validity_limit=20)
    _clean(v)
    assert v.totals["outputs"] == result.written and v.totals["source_checked"] == result.written


def _table_run(**changes) -> _Run:
    """Tables of a run of three inputs (two written, one quarantined) that agree, with `changes` applied."""
    manifest = [{"source_url": "s/a", "status": "written", "output_key": "1/2/3.dcm"},
                {"source_url": "s/b", "status": "written", "output_key": "1/2/4.dcm"},
                {"source_url": "s/c", "status": "quarantined", "output_key": None}]
    fields = {"job": {}, "manifest": manifest, "quarantine": [{"source_url": "s/c"}], "uids": [],
              "planned": [{"url": u, "sop_uid": None} for u in ("s/a", "s/b", "s/c")],
              "outputs": {"1/2/3.dcm", "1/2/4.dcm"}, "index": {"1/2/3.dcm": "", "1/2/4.dcm": ""},
              "other_jobs": set()}
    return _Run(**{**fields, **changes})


def test_completeness_names_every_way_an_input_is_lost_or_an_output_unaccounted():
    assert _completeness(_table_run()) == ({}, {})
    base = _table_run()
    lost, unaccounted = _completeness(_table_run(
        manifest=[base.manifest[0], base.manifest[0] | {"source_url": "s/b"}, base.manifest[2],
                  base.manifest[2] | {"source_url": "s/x"}],
        quarantine=[{"source_url": "s/y"}],
        planned=base.planned + [{"url": "s/d", "sop_uid": None}],
        outputs={"1/2/3.dcm", "1/2/4.dcm", "9/9/9.dcm", "8/8/8.dcm"}, other_jobs={"8/8/8.dcm"},
        index={"1/2/3.dcm": "", "7/7/7.dcm": ""}))
    assert lost == {"s/a": {"output-key-shared"}, "s/b": {"output-key-shared"},
                    "s/c": {"no-quarantine-row"}, "s/d": {"no-manifest-row"}}
    assert unaccounted == {"s/x": {"manifest-row-not-planned"},
                           "s/y": {"quarantine-row-without-manifest-row"},
                           "1/2/4.dcm": {"output-without-manifest-row"},  # s/b names 1/2/3.dcm now
                           "9/9/9.dcm": {"output-without-manifest-row"},  # 8/8/8.dcm: another job's
                           "7/7/7.dcm": {"index-row-without-output"}}
    lost, _ = _completeness(_table_run(manifest=base.manifest + [base.manifest[0]], outputs={"1/2/4.dcm"}))
    assert lost == {"s/a": {"several-manifest-rows", "output-missing"}}


def test_study_disagreement_counts_only_where_the_inputs_agreed():
    def pair(first: tuple[str, str, str | None], second_study: str = "s1") -> dict:
        """Study s1's first object (output key, output sex, input sex) and a second one, F in and out."""
        return _inconsistent([
            {"output_key": key, "study": {"PatientSex": sex}, "source_study": {"PatientSex": source_sex}}
            for key, sex, source_sex in (first, (f"{second_study}/a/2.dcm", "F", "F"))])
    assert pair(("s1/a/1.dcm", "", "F")) == {"s1": ["PatientSex"]}
    assert pair(("s1/a/1.dcm", "", "M")) == {}  # the inputs disagreed already
    assert pair(("s1/a/1.dcm", "", None)) == {"s1": ["PatientSex"]}  # input not read: counted
    assert pair(("s1/a/1.dcm", "", "F"), second_study="s2") == {}


def test_a_job_of_several_runs_verifies_against_its_last_listing(tmp_path, dask_client):
    dest, tables, _ = _run(tmp_path, dask_client)
    src = tmp_path / "src"
    gone, changed, copied = sorted(p for p in src.rglob("*") if p.is_file())[:3]
    gone.unlink()  # its output and row stay
    _rewrite(changed, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))  # a new output key
    shutil.copy(copied, src / "new.dcm")
    _rewrite(src / "new.dcm", lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    result = pipeline.run(str(src), str(dest), str(tables), client=dask_client, secret=SECRET, verify=True)
    assert result.ok and result.verified, result.report
    manifest = pd.read_parquet(tables / "manifest.parquet")
    assert (manifest.status == "superseded").sum() == 1  # the changed object's first output is still in DEST
    v = verify(str(dest), str(tables), validity_limit=0)
    _clean(v)
    assert (v.totals["objects"], v.totals["outputs"]) == (13, 13)
    assert v.totals["source_checked"] == 12  # the gone object's output cannot be compared with its source
    new = (src / "new.dcm").as_uri()
    standing = manifest[(manifest.status != "superseded") & (manifest.source_url == new)]
    assert len(standing) == 1
    pq.write_table(pa.Table.from_pandas(manifest.drop(standing.index), preserve_index=False,
                                        schema=pq.read_schema(tables / "manifest.parquet")),
                   tables / "manifest.parquet")
    v = verify(str(dest), str(tables), validity_limit=0)
    assert not v.ok and v.totals["lost"] == 1
    report = pd.read_parquet(tables / "verify" / "report.parquet").set_index("source_url")
    assert report.loc[new].completeness == "no-manifest-row"
