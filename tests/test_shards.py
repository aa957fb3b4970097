"""Sharded mode without a scheduler: `run --shard I/N` processes, then `finalize`, end like one run."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
from samples import SECRET, poison_objects, study_objects, tree, write_tree

import pipeline
from pipeline.finalize import Unfinished, finalize_job
from pipeline.ingest import shard_of

PRIVATE_TABLES = ("manifest", "uid_map", "quarantine")


def _content(read, name: str) -> pd.DataFrame:
    """A table's rows whatever units they ran in: units depend on how the job was split."""
    table = read(name).drop_columns(["unit_id"]).to_pandas()
    return table.drop_duplicates().sort_values(list(table.columns)).reset_index(drop=True)


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_three_shards_at_once_on_s3_end_like_one_run(s3_server, s3_bucket, dask_client):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server["storage_options"])
    files = study_objects(5, 3, seed="shard")
    files["copies/again.dcm"] = files[sorted(files)[0]]
    files.update({name: data for name, (data, _) in poison_objects().items()})
    fs.pipe({f"{s3_bucket}/in/{name}": data for name, data in files.items()})
    source, root = f"s3://{s3_bucket}/in", f"s3://{s3_bucket}"
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": s3_server["endpoint_url"],
           "DICOM_DEID_SECRET": SECRET.decode()}
    common = [source, f"{root}/sharded", "--tables", f"{root}/private/sharded", "--no-progress",
              "--max-unit-objects", "2"]
    shards = [_cli(["run", *common, "--shard", f"{i}/3"], env) for i in range(3)]  # all at once
    for shard in shards:
        out, err = shard.communicate(timeout=600)
        assert shard.returncode == 0, err[-3000:]
        assert "dicom-deid finalize --tables" in out
    final = _cli(["finalize", "--tables", f"{root}/private/sharded"], env)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-3000:]
    single = pipeline.run(source, f"{root}/single", f"{root}/private/single", client=dask_client,
                          secret=SECRET, storage_options=s3_server["storage_options"], max_unit_objects=2)
    assert f"objects: {single.objects}" in out and single.objects == len(files)

    def objects(prefix: str) -> dict[str, bytes]:
        keys = [k for k in fs.find(f"{s3_bucket}/{prefix}") if "/_index/" not in k]
        return {k.split("/", 2)[2]: fs.cat_file(k) for k in keys}

    assert objects("sharded") == objects("single") and len(objects("single")) == single.written

    def index(prefix: str) -> pd.DataFrame:
        table = pd.concat([pd.read_parquet(io.BytesIO(fs.cat_file(k)))
                           for k in fs.find(f"{s3_bucket}/{prefix}/_index")])
        return table.sort_values("key").reset_index(drop=True)

    assert index("sharded").equals(index("single"))
    for name in PRIVATE_TABLES:
        def read(table: str, job: str = "sharded") -> pq.Table:
            return pq.read_table(io.BytesIO(fs.cat_file(f"{s3_bucket}/private/{job}/{table}.parquet")))
        assert _content(read, name).equals(_content(lambda t: read(t, "single"), name)), name


def test_finalize_names_the_missing_shard_until_it_has_run(tmp_path, dask_client, capsys):
    from pipeline.cli import main

    write_tree(tmp_path / "src", study_objects(12, 1, seed="missing"))  # a unit per object: 12 units
    args = (str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"))
    first = pipeline.run(*args, client=dask_client, secret=SECRET, max_unit_objects=1, shard=(1, 2))
    run_file = pq.read_table(tmp_path / "tables" / "runs" / "000001" / "run.parquet")
    units = set(run_file["unit_id"].drop_null().to_pylist())
    owners = {shard_of(unit, 2) for unit in units}
    assert owners == {0, 1} and first.units_run == sum(shard_of(unit, 2) == 1 for unit in units)

    with pytest.raises(Unfinished, match=r"run shard\(s\) 0 of 2 again"):
        finalize_job(str(tmp_path / "tables"))
    assert main(["finalize", "--tables", str(tmp_path / "tables")]) == 1
    assert "shard(s) 0 of 2" in capsys.readouterr().err
    assert not (tmp_path / "tables" / "manifest.parquet").exists()

    pipeline.run(*args, client=dask_client, secret=SECRET, max_unit_objects=1, shard=(0, 2))
    assert main(["finalize", "--tables", str(tmp_path / "tables")]) == 0
    assert "objects: 12  written: 12" in capsys.readouterr().out
    assert len([k for k in tree(tmp_path / "dest") if k.endswith(".dcm")]) == 12
    again = pipeline.run(*args, client=dask_client, secret=SECRET, max_unit_objects=1)
    assert "nothing new: every unit was committed" in again.report


def test_shard_must_be_i_of_n(tmp_path, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.setenv("DICOM_DEID_SECRET", SECRET.decode())
    write_tree(tmp_path / "src", study_objects(1, 1, seed="bad"))
    for bad in ("3/3", "a/b", "2/1"):
        assert main(["run", str(tmp_path / "src"), str(tmp_path / "dest"), "--tables", str(tmp_path / "t"),
                     "--shard", bad]) == 2
        assert "--shard" in capsys.readouterr().err


def test_shards_of_an_empty_source_finalize_to_zero_objects(tmp_path, dask_client):
    (tmp_path / "src").mkdir()
    args = (str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"))
    for index in range(2):
        result = pipeline.run(*args, client=dask_client, secret=SECRET, shard=(index, 2))
        assert result.ok and result.objects == 0
    summary = finalize_job(str(tmp_path / "tables"))
    assert summary["objects"] == 0 and summary["units_total"] == 0
