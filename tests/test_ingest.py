"""A growing archive: a rerun lists SOURCE again and processes only new and changed objects; edge cases."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import generate_uid
from samples import SECRET, study_objects, tree, write_tree

import pipeline
from pipeline.job import JobError


def _run(src: Path, out: Path, client, **kw) -> pipeline.RunResult:
    return pipeline.run(str(src), str(out / "dest"), str(out / "tables"), client=client, secret=SECRET,
                        max_unit_objects=2, **kw)


def _another_of(data: bytes) -> bytes:
    """One more object of the same study and series (a new SOP Instance UID)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds = copy.deepcopy(ds)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _outputs(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(out / "dest").items() if not k.startswith("_index/")}


def test_a_rerun_processes_only_new_and_changed_objects(tmp_path, dask_client):
    src, out = tmp_path / "src", tmp_path / "out"
    files = study_objects(3, 3, seed="grow")
    write_tree(src, files)
    first = _run(src, out, dask_client)
    before = _outputs(out)
    names = sorted(files)

    # Unchanged in size and mtime, but other bytes: were it read again, its output would change.
    untouched = src / names[0]
    stat = untouched.stat()
    other = _another_of(files[names[1]])[:stat.st_size].ljust(stat.st_size, b"\0")
    untouched.write_bytes(other)
    os.utime(untouched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # Changed: same object, new content (another Instance Number) and size.
    ds = pydicom.dcmread(src / names[3])
    ds.InstanceNumber, ds.ImageComments = 42, "re-sent"
    ds.save_as(src / names[3], enforce_file_format=True)
    (src / names[6]).unlink()  # gone
    write_tree(src, {"late/one-more.dcm": _another_of(files[names[4]])})  # joins an existing study
    write_tree(src, study_objects(1, 2, seed="new"))

    dry = _run(src, out, dask_client, dry_run=True)
    assert "3 new, 1 changed, 7 unchanged, 1 gone" in dry.report
    assert "would process 4 objects" in dry.report
    second = _run(src, out, dask_client)

    assert first.ok and second.ok and first.written == 9
    assert second.units_run >= 1 and "3 new, 1 changed, 7 unchanged, 1 gone" in second.report
    after = _outputs(out)
    assert {k: after[k] for k in before} != before  # the changed object's output was rewritten ...
    assert sum(before[k] != after[k] for k in before) == 1  # ... and only it: the untouched one was not read
    assert len(after) == len(before) + 3
    manifest = pq.read_table(out / "tables" / "manifest.parquet").to_pandas()
    changed_rows = manifest[manifest.source_url == f"file://{src / names[3]}"]
    assert sorted(changed_rows.status) == ["superseded", "written"]
    assert manifest[manifest.status != "superseded"].source_url.is_unique
    summary = json.loads((out / "tables" / "summary.json").read_text())
    assert summary["superseded"] == 1 and summary["last_listing"]["gone"] == 1
    assert summary["objects"] == 9 + 3  # the gone object's output stays in DEST, and is counted
    # The late object of an existing study has that study's new UID; the index has each output once.
    index = pq.read_table(out / "dest" / "_index").to_pandas()
    assert index.key.is_unique and set(index.key) == set(after)
    late = manifest[manifest.source_url == f"file://{src}/late/one-more.dcm"].output_key.item()
    sibling = manifest[manifest.source_url == f"file://{src / names[4]}"].output_key.item()
    assert late.split("/")[0] == sibling.split("/")[0]
    runs = sorted(p.name for p in (out / "tables" / "runs").iterdir())
    assert runs == ["000001", "000002"]
    planned = pq.read_metadata(out / "tables" / "runs" / "000002" / "run.parquet")
    assert planned.num_rows == 4 + 1 + 11  # planned rows, then the gone one, then the whole listing

    third = _run(src, out, dask_client)
    assert "nothing new: every unit was committed" in third.report and third.units_run == 0
    assert "0 new, 0 changed, 11 unchanged, 0 gone" in third.report


def test_an_incremental_job_ends_like_one_run_over_the_final_archive(tmp_path, dask_client):
    """Two waves, the second interrupted and resumed, give the outputs of one run over both waves."""
    src, out, whole = tmp_path / "src", tmp_path / "out", tmp_path / "whole"
    wave1, wave2 = study_objects(2, 3, seed="w1"), study_objects(3, 2, seed="w2")
    write_tree(src, wave1)
    _run(src, out, dask_client)
    write_tree(src, wave2)

    class Interrupted(Exception):
        pass

    def stop(stats: dict) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        _run(src, out, dask_client, on_unit=stop)
    resumed = _run(src, out, dask_client)
    single = _run(src, whole, dask_client)

    assert resumed.ok and resumed.written == single.written == 12
    assert _outputs(out) == _outputs(whole)
    for name in ("manifest", "quarantine", "uid_map"):
        a = pq.read_table(out / "tables" / f"{name}.parquet").drop_columns(["unit_id"]).to_pandas()
        b = pq.read_table(whole / "tables" / f"{name}.parquet").drop_columns(["unit_id"]).to_pandas()
        a, b = (t.drop_duplicates().sort_values(list(t.columns)).reset_index(drop=True) for t in (a, b))
        assert a.equals(b), name


def test_an_object_already_processed_under_another_name_is_a_duplicate(tmp_path, dask_client):
    src, out = tmp_path / "src", tmp_path / "out"
    files = study_objects(1, 2, seed="dup")
    write_tree(src, files)
    _run(src, out, dask_client)
    before = _outputs(out)
    write_tree(src, {"zz-copy/again.dcm": files[sorted(files)[0]]})
    second = _run(src, out, dask_client)

    assert second.quarantine_reasons == {"duplicate-sop-instance": 1}
    assert _outputs(out) == before


def test_s3_rerun_sees_new_objects_and_a_changed_etag(s3_server, s3_bucket, dask_client, tmp_path):
    options = s3_server["storage_options"]
    fs = fsspec.filesystem("s3", **options)
    files = study_objects(2, 2, seed="s3grow")
    for name, data in files.items():
        fs.pipe(f"{s3_bucket}/in/{name}", data)
    args = (f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out", str(tmp_path / "tables"))
    first = pipeline.run(*args, client=dask_client, secret=SECRET, storage_options=options)
    name = sorted(files)[0]
    ds = pydicom.dcmread(io.BytesIO(files[name]))
    ds.InstanceNumber = 7  # same length as "1": only the ETag tells
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert len(buffer.getvalue()) == len(files[name])
    fs.pipe(f"{s3_bucket}/in/{name}", buffer.getvalue())
    for name, data in study_objects(1, 1, seed="s3late").items():
        fs.pipe(f"{s3_bucket}/in/{name}", data)
    second = pipeline.run(*args, client=dask_client, secret=SECRET, storage_options=options)

    assert first.ok and second.ok and first.written == 4
    assert "1 new, 1 changed, 3 unchanged, 0 gone" in second.report
    assert second.written == 5 and json.loads((tmp_path / "tables" / "summary.json").read_text())[
        "superseded"] == 1


# --- edge cases of the job itself ------------------------------------------------------------------


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DICOM_DEID_SECRET": SECRET.decode(), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args, "-q"],
                          capture_output=True, text=True, timeout=600, env=env)


def test_an_empty_source_ends_with_zero_objects(tmp_path, dask_client):
    (tmp_path / "src").mkdir()
    result = _run(tmp_path / "src", tmp_path / "out", dask_client)
    assert result.ok and result.objects == 0 and "objects: 0" in result.report
    dry = _run(tmp_path / "src", tmp_path / "out", dask_client, dry_run=True)
    assert "would process 0 objects" in dry.report


def test_empty_source_from_the_command_line(tmp_path):
    (tmp_path / "src").mkdir()
    done = _cli(str(tmp_path / "src"), str(tmp_path / "dest"), "--tables", str(tmp_path / "tables"))
    assert done.returncode == 0, done.stderr
    assert "objects: 0" in done.stdout


@pytest.mark.parametrize("content, expected", [
    ("path,bytes\n/a/b.dcm,10\n", "needs a 'url' column"),
    ("url,size\n/a/b.dcm,ten\n", "'size' column is not whole numbers"),
    ("url,size\n/a/b.dcm,1,2,3\n", "cannot read the listing file"),
])
def test_a_bad_listing_file_is_one_line_and_writes_nothing(tmp_path, dask_client, capsys, monkeypatch,
                                                           content, expected):
    from pipeline.cli import main

    monkeypatch.setenv("DICOM_DEID_SECRET", SECRET.decode())
    listing = tmp_path / "listing.csv"
    listing.write_text(content)
    code = main(["run", str(listing), str(tmp_path / "dest"), "--tables", str(tmp_path / "tables"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "tables").exists() and not (tmp_path / "dest").exists()


def test_an_unwritable_tables_location_is_one_line_and_exit_2(tmp_path):
    write_tree(tmp_path / "src", study_objects(1, 1, seed="ro"))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    done = _cli(str(tmp_path / "src"), str(tmp_path / "dest"), "--tables", str(tmp_path / "blocker" / "t"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("dicom-deid: error:"), done.stderr
    assert (tmp_path / "blocker").read_text() == "a file where a folder should be"
    assert not (tmp_path / "dest").exists()


def test_a_source_that_vanishes_mid_run_stops_and_leaves_nothing_half_done(tmp_path, dask_client):
    src, out = tmp_path / "src", tmp_path / "out"
    write_tree(src, study_objects(12, 2, seed="gone"))  # more units than run at once
    kept = tmp_path / "kept"
    shutil.copytree(src, kept)

    def pull_the_plug(stats: dict) -> None:
        shutil.rmtree(src, ignore_errors=True)

    with pytest.raises(JobError, match="vanished"):
        _run(src, out, dask_client, on_unit=pull_the_plug)
    assert not (out / "tables" / "summary.json").exists()
    shutil.copytree(kept, src)  # back again: the next run reads what it could not
    result = _run(src, out, dask_client)
    assert result.ok and result.written == 24 and result.quarantined == 0


def test_listings_carry_a_version_that_tells_changes(tmp_path, s3_server, s3_bucket):
    from pipeline.listing import list_objects

    write_tree(tmp_path / "src", {"a.dcm": b"x" * 10})
    local = list_objects(str(tmp_path / "src"))
    assert local["version"][0].as_py() == str(os.stat(tmp_path / "src" / "a.dcm").st_mtime)
    fs = fsspec.filesystem("s3", **s3_server["storage_options"])
    fs.pipe(f"{s3_bucket}/in/a.dcm", b"x" * 10)
    first = list_objects(f"s3://{s3_bucket}/in", s3_server["storage_options"])["version"][0].as_py()
    fs.pipe(f"{s3_bucket}/in/a.dcm", b"y" * 10)
    second = list_objects(f"s3://{s3_bucket}/in", s3_server["storage_options"])["version"][0].as_py()
    assert first and second and first != second  # the ETag
    (tmp_path / "listing.csv").write_text("bucket,key,size,e_tag\nb,k.dcm,10,abc\n")
    assert list_objects(str(tmp_path / "listing.csv"))["version"].to_pylist() == ["abc"]
