"""The run stage on hand-made plans: one unit in this process, and many units through a real cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from samples import SECRET, identifying_strings, poison_objects, study_objects, tree, write_tree

from pipeline.deid import Profile
from pipeline.deid.keys import SECRET_ENV
from pipeline.execute import Settings, Unit, duplicates, run_unit, run_units
from pipeline.secret import SecretError, fingerprint
from pipeline.tables import INDEX_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, UID_MAP_SCHEMA


@pytest.fixture(autouse=True)
def _own_secret(monkeypatch):
    """Units run in this process too, which reads its secret from its own environment, like a worker."""
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())


def _rows(root: Path, names) -> list[dict]:
    return [{"url": (root / n).as_uri(), "size": (root / n).stat().st_size, "duplicate_of": None}
            for n in names]


def _settings(tmp_path: Path, name: str = "run") -> Settings:
    return Settings(str(tmp_path / name / "dest"), str(tmp_path / name / "tables"), Profile(),
                    fingerprint(SECRET))


def _part(settings: Settings, table: str, unit_id: str, schema: pa.Schema) -> pa.Table:
    table = pq.read_table(f"{settings.tables}/{table}/parts/{unit_id}.parquet")
    assert table.schema.equals(schema)
    return table


def test_unit_writes_outputs_by_new_uids_then_parts_then_marker(tmp_path):
    files = study_objects(2, 3)
    write_tree(tmp_path / "src", files)
    settings = _settings(tmp_path)
    stats = run_unit(Unit("u-1", _rows(tmp_path / "src", files)), settings)

    assert stats["objects"] == stats["written"] == 6 and stats["quarantined"] == 0
    marker = json.loads(Path(settings.tables, "units", "u-1.done").read_text())
    assert marker == stats
    outputs = tree(Path(settings.dest))
    assert len(outputs) == 6
    for key, data in outputs.items():
        study, series, sop = key.removesuffix(".dcm").split("/")
        assert all(uid.startswith("2.25.") for uid in (study, series, sop))
        assert not any(secret in data for secret in identifying_strings(files))
    manifest = _part(settings, "manifest", "u-1", MANIFEST_SCHEMA)
    assert sorted(manifest["output_key"].to_pylist()) == sorted(outputs)
    assert set(manifest["status"].to_pylist()) == {"written"}
    index = _part(settings, "index", "u-1", INDEX_SCHEMA)
    assert len(set(index["study_uid"].to_pylist())) == 2
    uid_map = _part(settings, "uid_map", "u-1", UID_MAP_SCHEMA)
    mapped = dict(zip(uid_map["original_uid"].to_pylist(), uid_map["new_uid"].to_pylist(), strict=True))
    assert set(index["sop_uid"].to_pylist()) <= set(mapped.values())
    attributes = set(uid_map["attribute"].to_pylist())
    assert {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"} <= attributes


def test_poison_objects_are_quarantined_with_their_reason(tmp_path):
    poison = poison_objects()
    write_tree(tmp_path / "src", {name: data for name, (data, _) in poison.items()})
    rows = _rows(tmp_path / "src", poison) + [{"url": (tmp_path / "src" / "gone.dcm").as_uri(), "size": 10,
                                               "duplicate_of": None}]
    settings = _settings(tmp_path)
    stats = run_unit(Unit("u-poison", rows), settings)

    assert stats["written"] == 0 and stats["quarantined"] == len(rows)
    quarantine = _part(settings, "quarantine", "u-poison", QUARANTINE_SCHEMA).to_pylist()
    reasons = {Path(q["source_url"]).name: q["reason"] for q in quarantine}
    for name, (_, expected) in poison.items():
        assert reasons[Path(name).name] in expected, name
    assert reasons["gone.dcm"] == "read-error"
    assert not Path(settings.dest).exists() or not tree(Path(settings.dest))


def test_unit_outputs_are_byte_identical_when_run_again(tmp_path):
    files = study_objects(1, 4)
    write_tree(tmp_path / "src", files)
    first, second = _settings(tmp_path, "first"), _settings(tmp_path, "second")
    run_unit(Unit("u-same", _rows(tmp_path / "src", files)), first)
    run_unit(Unit("u-same", list(reversed(_rows(tmp_path / "src", files)))), second)
    assert tree(Path(first.dest)) == tree(Path(second.dest))
    assert tree(Path(first.tables)) == tree(Path(second.tables))


def test_a_second_copy_of_an_object_is_quarantined_not_overwritten():
    plan = pa.table({"url": ["s3://b/a.dcm", "s3://b/b.dcm", "s3://b/c.dcm", "s3://b/d.dcm"],
                     "sop_uid": ["1.2.3", "1.2.4", "1.2.3", None]})
    assert duplicates(plan).to_pylist() == [None, None, "s3://b/a.dcm", None]


def _io_threads(monkeypatch) -> dict[str, set[str]]:
    """The threads that read sources and store outputs, recorded as the unit runs."""
    import threading

    import pipeline.execute as execute
    from pipeline.outputs import Outputs

    seen: dict[str, set[str]] = {"_read": set(), "store": set()}
    def spy(name: str, real):
        def called(*args):
            seen[name].add(threading.current_thread().name)
            return real(*args)
        return called

    for owner, name in ((execute, "_read"), (Outputs, "store")):
        monkeypatch.setattr(owner, name, spy(name, getattr(owner, name)))
    return seen


def test_local_reads_and_writes_stay_in_the_units_thread(tmp_path, monkeypatch):
    """Local storage has no latency to hide: handing its I/O to threads only costs the de-identifying one."""
    import threading

    files = study_objects(1, 4)
    write_tree(tmp_path / "src", files)
    seen = _io_threads(monkeypatch)
    stats = run_unit(Unit("u-local", _rows(tmp_path / "src", files)), _settings(tmp_path))
    assert stats["written"] == 4
    assert seen == {"_read": {threading.current_thread().name}, "store": {threading.current_thread().name}}


def test_remote_reads_and_writes_overlap_in_the_pool(tmp_path, monkeypatch, s3_server, s3_bucket):
    import fsspec

    files = study_objects(1, 4)
    options = s3_server["storage_options"]
    fs = fsspec.filesystem("s3", **options)
    for name, data in files.items():
        fs.pipe_file(f"{s3_bucket}/src/{name}", data)
    rows = [{"url": f"s3://{s3_bucket}/src/{name}", "size": len(data), "duplicate_of": None}
            for name, data in files.items()]
    seen = _io_threads(monkeypatch)
    settings = Settings(f"s3://{s3_bucket}/dest", f"s3://{s3_bucket}/tables", Profile(), fingerprint(SECRET),
                        options)
    assert run_unit(Unit("u-s3", rows), settings)["written"] == 4
    assert all(name.startswith("ThreadPoolExecutor") for names in seen.values() for name in names)
    assert seen["_read"] and seen["store"]


def test_reprs_name_no_secret_no_object():
    settings = Settings("d", "t", Profile(), fingerprint(SECRET),
                        storage_options={"secret": "aws-secret-key"})
    unit = Unit("u-x", [{"url": "file:///data/Doe^Janet/1.dcm", "size": 1, "duplicate_of": None}])
    assert SECRET.decode() not in repr(settings) and "aws-secret-key" not in repr(settings)
    assert "Doe" not in repr(unit) and "u-x" in repr(unit)


def test_driver_runs_each_unit_once_and_skips_committed_units(tmp_path, dask_client):
    files = study_objects(4, 3, seed="drv")
    write_tree(tmp_path / "src", files)
    rows = _rows(tmp_path / "src", sorted(files))
    plan = pa.Table.from_pylist([{**row, "unit_id": f"u-{i // 2}", "sop_uid": None}
                                 for i, row in enumerate(rows)])
    settings = _settings(tmp_path)
    seen = []
    progress = run_units(dask_client, plan, settings, window=2, on_unit=seen.append)

    assert progress.units_total == progress.units_run == 6 and not progress.failed_units
    assert sorted(s["unit_id"] for s in seen) == [f"u-{i}" for i in range(6)]
    assert progress.written == 12 and len(tree(Path(settings.dest))) == 12
    again = run_units(dask_client, plan, settings)
    assert again.units_run == 0 and again.units_skipped == 6


def test_running_units_report_progress_to_the_driver(tmp_path, dask_client):
    files = study_objects(1, 6, seed="progress")
    write_tree(tmp_path / "src", files)
    plan = pa.Table.from_pylist([{**row, "unit_id": "u-only", "sop_uid": None}
                                 for row in _rows(tmp_path / "src", sorted(files))])
    settings = Settings(str(tmp_path / "dest"), str(tmp_path / "tables"), Profile(), fingerprint(SECRET),
                        progress_seconds=0)
    reports = []
    run_units(dask_client, plan, settings, on_partial=reports.append)
    counts = [r["objects"] for r in reports if r["unit_id"] == "u-only"]
    assert len(counts) >= 3 and counts == sorted(counts) and counts[-1] <= 6


def test_a_unit_on_a_worker_with_another_secret_stops_the_run_at_once(tmp_path, dask_client):
    files = study_objects(1, 2, seed="other-secret")
    write_tree(tmp_path / "src", files)
    rows = _rows(tmp_path / "src", sorted(files))
    plan = pa.Table.from_pylist([{**row, "unit_id": "u-1", "sop_uid": None} for row in rows])
    settings = Settings(str(tmp_path / "dest"), str(tmp_path / "tables"), Profile(), fingerprint(b"another"))
    with pytest.raises(SecretError, match="^worker tcp://.* holds another de-identification secret"):
        run_units(dask_client, plan, settings)
    assert not (tmp_path / "dest").exists() and not (tmp_path / "tables").exists()
