"""Every input object ends as exactly one output or one quarantine row: links, duplicates, taken keys."""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from samples import SECRET, study_objects, tree, write_tree

import pipeline
from pipeline.deid import Profile
from pipeline.deid.stream import deidentify_bytes
from pipeline.execute import Settings, run_units
from pipeline.listing import list_objects
from pipeline.runs import planned_rows, stored_runs
from pipeline.secret import fingerprint
from pipeline.storage import filesystem
from pipeline.tables import read_table


def _one(seed: str) -> bytes:
    return next(iter(study_objects(1, 1, seed=seed).values()))


def _renamed(data: bytes, name: str) -> bytes:
    """The same object (same UIDs) with another patient name: another object claiming one SOP Instance."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds = copy.deepcopy(ds)
    ds.PatientName = name
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _key(data: bytes) -> str:
    header = deidentify_bytes(data, Profile(), secret=SECRET).header
    uids = (header[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    return "/".join(map(str, uids)) + ".dcm"


def _manifest(tables: str) -> list[dict]:
    return pq.read_table(f"{tables}/manifest.parquet").to_pylist()


def _parts(tables: str, options: dict | None) -> list[dict]:
    """The manifest rows the units wrote (before any finalize), on disk or S3."""
    fs, path = filesystem(tables, options)
    return pa.concat_tables([read_table(fs, p) for p in fs.find(f"{path}/manifest/parts")]).to_pylist()


def _exactly_once(manifest: list[dict], urls: set[str]) -> None:
    assert sorted(row["source_url"] for row in manifest) == sorted(urls)
    keys = [row["output_key"] for row in manifest if row["status"] == "written"]
    assert len(keys) == len(set(keys)), "two inputs share an output key"


def test_symbolic_links_are_followed_once_and_a_dangling_one_is_quarantined(tmp_path, dask_client):
    src, outside = tmp_path / "src", tmp_path / "outside"
    files = study_objects(1, 2, seed="links")
    write_tree(src / "real", files)
    write_tree(outside, {"linked/far.dcm": _one("far"), "single.dcm": _one("single")})
    os.symlink(outside / "linked", src / "folder-link")
    os.symlink(outside / "single.dcm", src / "file-link.dcm")
    os.symlink(src, src / "real" / "loop")  # a folder that leads back to the top
    os.symlink(tmp_path / "nowhere.dcm", src / "dangling.dcm")
    first = sorted(files)[0]
    os.symlink(src / "real" / first, src / "second-path.dcm")  # the same object under two names

    listed = set(list_objects(str(src))["url"].to_pylist())
    links = ("folder-link/far.dcm", "file-link.dcm", "dangling.dcm", "second-path.dcm")
    expected = {(src / "real" / name).as_uri() for name in files} | {(src / p).as_uri() for p in links}
    assert listed == expected  # the loop entered nothing twice

    result = pipeline.run(str(src), str(tmp_path / "dest"), str(tmp_path / "tables"), client=dask_client,
                          secret=SECRET)
    manifest = _manifest(str(tmp_path / "tables"))
    _exactly_once(manifest, expected)
    status = {row["source_url"].rsplit("/", 1)[-1]: (row["status"], row["reason"]) for row in manifest}
    assert status["far.dcm"][0] == status["file-link.dcm"][0] == "written"
    assert status["dangling.dcm"] == ("quarantined", "read-error")
    assert status["second-path.dcm"] == ("quarantined", "duplicate-sop-instance")
    assert result.written == 4 and result.quarantined == 2


def _plan(urls_sizes: list[tuple[str, int]], units: list[str], sops: list[str | None]) -> pa.Table:
    return pa.table({"url": [u for u, _ in urls_sizes], "size": [s for _, s in urls_sizes],
                     "unit_id": units, "sop_uid": pa.array(sops, pa.string())})


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(source root, dest, tables, storage options, put) on local disk or the moto S3 server."""
    if request.param == "local":
        def put(name: str, data: bytes) -> str:
            path = tmp_path / "src" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return path.as_uri()
        return str(tmp_path / "dest"), str(tmp_path / "tables"), None, put
    s3_server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server["storage_options"])

    def put_s3(name: str, data: bytes) -> str:
        fs.pipe_file(f"{bucket}/src/{name}", data)
        return f"s3://{bucket}/src/{name}"
    return f"s3://{bucket}/dest", f"s3://{bucket}/tables", s3_server["storage_options"], put_s3


def _read_dest(dest: str, options: dict | None, key: str) -> bytes:
    fs, path = filesystem(dest, options)
    return fs.cat_file(f"{path}/{key}")


@pytest.mark.parametrize("same_unit", [True, False])
def test_objects_the_scan_could_not_read_never_share_an_output_key(where, same_unit, dask_client):
    dest, tables, options, put = where
    data = _one("unscanned")
    other = _renamed(data, "Other^Patient")  # same SOP Instance UID, other content
    urls = [put("a/copy.dcm", data), put("b/copy.dcm", data), put("c/other.dcm", other)]
    units = ["u-1"] * 3 if same_unit else ["u-1", "u-2", "u-3"]
    plan = _plan([(u, len(d)) for u, d in zip(urls, [data, data, other], strict=True)], units, [None] * 3)
    progress = run_units(dask_client, plan, Settings(dest, tables, Profile(), fingerprint(SECRET), options))

    assert progress.written == 1 and progress.quarantined == 2 and not progress.failed_units
    manifest = _parts(tables, options)
    _exactly_once(manifest, set(urls))
    assert {row["reason"] for row in manifest if row["status"] == "quarantined"} == {"duplicate-sop-instance"}
    winner = next(row["source_url"] for row in manifest if row["status"] == "written")
    source = other if winner == urls[2] else data
    assert _read_dest(dest, options, _key(data)) == deidentify_bytes(source, Profile(), secret=SECRET).data


def test_a_duplicate_takes_the_place_of_its_quarantined_first_copy(tmp_path, dask_client):
    data = _one("first-broken")
    write_tree(tmp_path / "src", {"a/first.dcm": data[:len(data) // 2], "b/second.dcm": data})
    result = pipeline.run(str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"),
                          client=dask_client, secret=SECRET)
    fs, tables = filesystem(str(tmp_path / "tables"))
    planned = planned_rows(fs, tables, stored_runs(fs, tables)[0]).sort_by("url")
    assert len(set(planned["sop_uid"].to_pylist())) == 1  # the scan saw both as one SOP Instance
    assert planned["duplicate_of"].to_pylist() == [None, planned["url"][0].as_py()]
    assert len(set(planned["unit_id"].to_pylist())) == 1  # one unit decides which copy is written
    status = {Path(row["source_url"]).name: row for row in _manifest(str(tmp_path / "tables"))}
    assert status["first.dcm"]["status"] == "quarantined" and status["first.dcm"]["reason"] == "truncated"
    assert status["second.dcm"]["status"] == "written"
    assert result.written == 1 and tree(tmp_path / "dest" / _key(data).split("/")[0])


def test_an_output_key_holding_other_bytes_is_never_overwritten(where, dask_client):
    dest, tables, options, put = where
    data = _one("taken")
    url = put("x/object.dcm", data)
    key = _key(data)
    foreign = b"bytes some other job wrote here"
    fs, path = filesystem(dest, options)
    fs.makedirs(f"{path}/{key}".rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(f"{path}/{key}", foreign)
    settings = Settings(dest, tables, Profile(), fingerprint(SECRET), options)
    plan = _plan([(url, len(data))], ["u-1"], [None])
    progress = run_units(dask_client, plan, settings)
    assert progress.quarantined == 1 and progress.reasons == {"output-exists": 1}
    assert _read_dest(dest, options, key) == foreign

    # The same object again after its own earlier output: identical bytes are no conflict.
    clean = Settings(dest + "-2", tables + "-2", Profile(), fingerprint(SECRET), options)
    assert run_units(dask_client, plan, clean).written == 1
    again = run_units(dask_client, plan.set_column(2, "unit_id", pa.array(["u-again"])), clean)
    assert again.written == 1 and _read_dest(dest + "-2", options, key) == deidentify_bytes(
        data, Profile(), secret=SECRET).data
