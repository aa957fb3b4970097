"""The whole job through `pipeline.run` on a real cluster: local folders, S3 (moto), the real corpus."""

from __future__ import annotations

import csv
import io
import logging
import subprocess
import sys
from pathlib import Path

import dask.dataframe as dd
import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from samples import (
    CORPUS,
    SECRET,
    identifying_strings,
    poison_objects,
    study_objects,
    tree,
    write_tree,
)

import pipeline
from pipeline.job import JobError
from pipeline.tables import INDEX_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, UID_MAP_SCHEMA


def _archive(root: Path) -> dict[str, bytes]:
    """Four studies of five objects, a second copy of one object, and every kind of poison."""
    files = study_objects(4, 5)
    files["copies/again.dcm"] = files[sorted(files)[0]]
    files.update({name: data for name, (data, _) in poison_objects().items()})
    write_tree(root, files)
    return files


def _check_outputs(files: dict[str, bytes], outputs: dict[str, bytes], manifest: pd.DataFrame,
                   uid_map: pd.DataFrame) -> None:
    """One manifest row per input; outputs named and filled only by new UIDs; every UID in the map."""
    assert len(manifest) == len(files) and manifest["source_url"].is_unique
    written = manifest[manifest.status == "written"]
    assert set(written["output_key"]) == {key for key in outputs if not key.startswith("_index/")}
    forbidden = identifying_strings(files)
    new_to_original = dict(zip(uid_map.new_uid, uid_map.original_uid, strict=True))
    studies: dict[str, set[str]] = {}
    for key, data in outputs.items():
        assert not any(value.decode() in key for value in forbidden), key
        assert not any(value in data for value in forbidden), key
        if key.startswith("_index/"):
            continue
        ds = pydicom.dcmread(io.BytesIO(data))
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid in new_to_original
        studies.setdefault(new_to_original[ds.StudyInstanceUID], set()).add(ds.StudyInstanceUID)
    assert all(len(new) == 1 for new in studies.values())


def _tables(tables: Path) -> dict[str, pd.DataFrame]:
    schemas = {"manifest": MANIFEST_SCHEMA, "uid_map": UID_MAP_SCHEMA, "quarantine": QUARANTINE_SCHEMA}
    found = {}
    for name, schema in schemas.items():
        table = pq.read_table(tables / f"{name}.parquet")
        assert table.schema.equals(schema), name
        found[name] = table.to_pandas()
    return found


def test_local_archive_end_to_end(tmp_path, dask_client):
    files = _archive(tmp_path / "src")
    dest, tables = tmp_path / "out" / "dest", tmp_path / "private" / "tables"
    result = pipeline.run(str(tmp_path / "src"), str(dest), str(tables), client=dask_client, secret=SECRET,
                          max_unit_objects=3)

    assert result.ok and result.objects == len(files) and not result.failed_units
    assert result.written == 20 and result.quarantined == 5
    assert result.quarantine_reasons["duplicate-sop-instance"] == 1
    assert result.units_total >= 8  # studies of five split into units of at most three
    found = _tables(tables)
    _check_outputs(files, tree(dest), found["manifest"], found["uid_map"])
    quarantined = found["manifest"][found["manifest"].status == "quarantined"]
    assert set(quarantined.source_url) == set(found["quarantine"].source_url)
    index = pq.read_table(dest / "_index")
    assert index.schema.equals(INDEX_SCHEMA) and index.num_rows == 20
    query = f"select study_uid, count(*) n from '{dest}/_index/*.parquet' group by 1"
    per_study = duckdb.sql(query).fetchall()
    assert sorted(n for _, n in per_study) == [5, 5, 5, 5]
    frame = dd.read_parquet(str(dest / "_index")).compute(scheduler="sync")
    assert set(frame["key"]) == set(pd.read_parquet(dest / "_index")["key"]) and len(frame) == 20
    assert "objects: 25" in result.report


def test_second_run_writes_nothing_new(tmp_path, dask_client):
    write_tree(tmp_path / "src", study_objects(2, 3))
    args = (str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"))
    first = pipeline.run(*args, client=dask_client, secret=SECRET, max_unit_objects=2)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    second = pipeline.run(*args, client=dask_client, secret=SECRET, max_unit_objects=2)

    assert first.units_run == first.units_total == 4
    assert second.units_run == 0 and second.units_skipped == 4 and second.ok
    assert second.written == first.written == 6
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


def test_refuses_tables_inside_dest_and_a_resume_with_another_secret(tmp_path, dask_client):
    write_tree(tmp_path / "src", study_objects(1, 1))
    with pytest.raises(JobError, match="inside DEST"):
        pipeline.run(str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "dest" / "tables"),
                     client=dask_client, secret=SECRET)
    args = (str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"))
    pipeline.run(*args, client=dask_client, secret=SECRET)
    with pytest.raises(JobError, match="different job"):
        pipeline.run(*args, client=dask_client, secret=b"another secret")
    with pytest.raises(JobError, match="secret"):
        pipeline.run(*args, client=dask_client)


def test_error_rate_above_the_limit_makes_the_run_not_ok(tmp_path, dask_client):
    files = study_objects(1, 2)
    files.update({name: data for name, (data, _) in poison_objects().items()})
    write_tree(tmp_path / "src", files)
    result = pipeline.run(str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"),
                          client=dask_client, secret=SECRET, max_error_rate=0.5)
    assert result.error_rate == pytest.approx(4 / 6) and not result.ok
    assert result.written == 2  # the run still finished everything it could


def test_dry_run_plans_and_writes_nothing(tmp_path, dask_client):
    write_tree(tmp_path / "src", study_objects(2, 2))
    result = pipeline.run(str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"),
                          client=dask_client, dry_run=True)
    assert result.dry_run and result.objects == 4 and result.units_total >= 1
    assert "would process 4 objects" in result.report
    assert not (tmp_path / "dest").exists() and not (tmp_path / "tables").exists()


def test_s3_archive_end_to_end(s3_server, s3_bucket, dask_client):
    import s3fs

    options = s3_server["storage_options"]
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    files = _archive_in_s3(fs, f"{s3_bucket}/incoming")
    dest, tables = f"s3://{s3_bucket}/deidentified", f"s3://{s3_bucket}/private/tables"
    result = pipeline.run(f"s3://{s3_bucket}/incoming", dest, tables, client=dask_client, secret=SECRET,
                          storage_options=options, max_unit_objects=4)

    assert result.ok and result.objects == len(files) and result.written == 20
    outputs = {key.removeprefix(f"{s3_bucket}/deidentified/"): fs.cat_file(key)
               for key in fs.find(f"{s3_bucket}/deidentified")}
    found = {name: pq.read_table(f"{tables}/{name}.parquet", filesystem=fs).to_pandas()
             for name in ("manifest", "uid_map")}
    _check_outputs(files, outputs, found["manifest"], found["uid_map"])
    assert pq.read_table(f"{s3_bucket}/deidentified/_index", filesystem=fs).num_rows == 20
    again = pipeline.run(f"s3://{s3_bucket}/incoming", dest, tables, client=dask_client, secret=SECRET,
                         storage_options=options, max_unit_objects=4)
    assert again.units_run == 0 and again.units_skipped == result.units_total and again.written == 20


def _archive_in_s3(fs, prefix: str) -> dict[str, bytes]:
    files = study_objects(4, 5, seed="s3")
    files["copies/again.dcm"] = files[sorted(files)[0]]
    files.update({name: data for name, (data, _) in poison_objects().items() if name != "poison/deep.dcm"})
    fs.pipe({f"{prefix}/{name}": data for name, data in files.items()})
    return files


def test_corpus_sample_from_a_listing_file(tmp_path, dask_client):
    manifest = CORPUS / "MANIFEST.csv"
    if not manifest.exists():
        pytest.skip("the shared corpus is not here")
    with manifest.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["size"]) < 2_000_000]
    chosen = rows[::7]
    listing = tmp_path / "listing.csv"
    listing.write_text("url\n" + "".join(f"{(CORPUS / r['path']).as_uri()}\n" for r in chosen))
    files = {r["path"]: (CORPUS / r["path"]).read_bytes() for r in chosen}
    result = pipeline.run(str(listing), str(tmp_path / "dest"), str(tmp_path / "tables"), client=dask_client,
                          secret=SECRET, max_unit_objects=10)

    assert result.objects == len(chosen) and result.written + result.quarantined == len(chosen)
    assert result.written > len(chosen) // 2 and not result.failed_units
    found = _tables(tmp_path / "tables")
    outputs = tree(tmp_path / "dest")
    written = found["manifest"][found["manifest"].status == "written"]
    assert set(written.output_key) == {key for key in outputs if not key.startswith("_index/")}
    # Toy UIDs such as "1.2.3" would match inside any standard UID: only specific ones count.
    forbidden = {uid.encode() for uid in set(found["uid_map"].original_uid) | _instance_uids(files)
                 if len(uid) > 12}
    assert not [key for key, data in outputs.items() if any(uid in data for uid in forbidden)]


def _instance_uids(files: dict[str, bytes]) -> set[str]:
    """The study, series and SOP instance UIDs the given objects declare."""
    found = set()
    for data in files.values():
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        except Exception:
            continue
        found |= {str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
                  if ds.get(k)}
    return found


def test_secret_and_patient_data_stay_out_of_tables_logs_and_task_keys(tmp_path, dask_client, caplog):
    from distributed import get_task_stream

    files = study_objects(2, 2, seed="quiet")
    write_tree(tmp_path / "src", files)
    caplog.set_level(logging.INFO)
    with get_task_stream(dask_client) as tasks:
        pipeline.run(str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"),
                     client=dask_client, secret=SECRET)

    for path in [*(tmp_path / "dest").rglob("*"), *(tmp_path / "tables").rglob("*")]:
        assert not path.is_file() or SECRET not in path.read_bytes(), path
    private = [str(tmp_path / "src"), *(v.decode() for v in identifying_strings(files)), SECRET.decode()]
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert messages and not [m for m in messages if any(p in m for p in private)]
    keys = [str(t["key"]) for t in tasks.data]
    assert keys and not [k for k in keys if any(p in k for p in private)]


def test_a_study_arriving_in_a_later_run_gets_the_same_new_uids(tmp_path, dask_client):
    files = study_objects(1, 4, seed="later")
    names = sorted(files)
    write_tree(tmp_path / "monday", {n: files[n] for n in names[:2]})
    write_tree(tmp_path / "tuesday", {n: files[n] for n in names[2:]})
    for day in ("monday", "tuesday"):
        pipeline.run(str(tmp_path / day), str(tmp_path / "dest"), str(tmp_path / f"tables-{day}"),
                     client=dask_client, secret=SECRET)
    studies = {key.split("/")[0] for key in tree(tmp_path / "dest") if key.endswith(".dcm")}
    assert len(studies) == 1 and len([k for k in tree(tmp_path / "dest") if k.endswith(".dcm")]) == 4
    assert pq.read_table(tmp_path / "dest" / "_index").num_rows == 4  # each run added its own index file


def test_importing_the_package_and_engine_stays_light():
    code = ("import sys, pipeline, pipeline.deid; "
            "heavy = [m for m in ('dask', 'distributed', 'pyarrow', 'fsspec') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(pipeline.run)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_units_are_sized_so_every_worker_thread_gets_several():
    from pipeline.job import unit_size

    assert unit_size(382, 1000, 2) == 24  # 16 units for 2 threads, not 1 unit of 382
    assert unit_size(10_000_000, 1000, 64) == 1000  # the limit holds for large archives
    assert unit_size(5, 1000, 2) == 10 and unit_size(5, 2, 2) == 2
