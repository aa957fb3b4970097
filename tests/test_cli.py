"""`dicom-deid` as a person uses it: the demo, real runs, scan, status, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from samples import SECRET, poison_objects, study_objects, write_tree

from pipeline.cli import DEMO_DEST, DEMO_TABLES, main
from pipeline.deid.keys import SECRET_ENV
from pipeline.secret import SECRET_FILE_ENV


@pytest.fixture
def archive(tmp_path):
    write_tree(tmp_path / "src", study_objects(2, 3, seed="cli"))
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    return tmp_path


def _one_line_error(capsys, code: int, expected: str) -> None:
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dicom-deid: error:") and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_demo_with_no_arguments(tmp_path):
    """Its own embedded cluster, whose workers get the random demo secret through their environment."""
    env = {k: v for k, v in os.environ.items() if k not in (SECRET_ENV, SECRET_FILE_ENV)}

    def demo() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--no-progress"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)

    done = demo()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "random" in done.stderr and "not reproducible" in done.stderr
    assert f"demo: de-identified files in {DEMO_DEST}/" in done.stdout
    index = pq.read_table(tmp_path / DEMO_DEST / "_index")
    assert index.num_rows > 50
    assert (tmp_path / DEMO_TABLES / "manifest.parquet").exists()
    assert demo().returncode == 0  # a second demo replaces the first


def test_run_then_status(archive, capsys, dask_client):
    args = ["run", str(archive / "src"), str(archive / "dest"), "--tables", str(archive / "tables"),
            "--secret-file", str(archive / "secret"), "--max-unit-objects", "2", "--no-progress",
            "--retain-long-modified-dates", "--scheduler", dask_client.scheduler.address]
    assert main(args) == 0
    assert "written: 6" in capsys.readouterr().out
    assert main(["status", str(archive / "tables")]) == 0
    status = capsys.readouterr().out
    assert "units: 4/4 committed" in status and "6 written" in status and "finished" in status


def test_scan_writes_the_inventory(archive, capsys, dask_client):
    assert main(["scan", str(archive / "src"), "--out", str(archive / "inventory.parquet")]) == 0
    assert "scanned 6 objects" in capsys.readouterr().out
    assert pq.read_table(archive / "inventory.parquet").num_rows == 6


def test_dry_run_and_error_rate_exit_code(archive, capsys, dask_client):
    write_tree(archive / "src", {name: data for name, (data, _) in poison_objects().items()})
    common = [str(archive / "src"), str(archive / "dest"), "--tables", str(archive / "tables"),
              "--secret-file", str(archive / "secret"), "--no-progress"]
    assert main(["run", *common, "--dry-run"]) == 0
    assert "would process 10 objects" in capsys.readouterr().out
    assert main(["run", *common, "--max-error-rate", "0.1"]) == 1
    assert "above --max-error-rate" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "expected"), [
    (["SRC"], "DEST is required"),
    (["SRC", "DEST"], "--tables is required"),
    (["SRC", "DEST", "--tables", "TABLES"], "no secret"),
    (["SRC", "DEST", "--tables", "DEST/tables", "--secret-file", "SECRET"], "inside DEST"),
    (["MISSING", "DEST", "--tables", "TABLES", "--secret-file", "SECRET"], "not found"),
    (["SRC", "DEST", "--tables", "TABLES", "--secret-file", "MISSING"], "cannot read the secret file"),
    (["SRC", "DEST", "--tables", "TABLES", "--secret-file", "SECRET", "--storage-options", "{bad"],
     "not valid JSON"),
])
def test_bad_arguments_give_one_clean_line(archive, capsys, monkeypatch, extra, expected):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    places = {"SRC": archive / "src", "DEST": archive / "dest", "TABLES": archive / "tables",
              "SECRET": archive / "secret", "MISSING": archive / "missing"}
    argv = ["run"] + [str(places[a.split("/")[0]] / "/".join(a.split("/")[1:])) if a.split("/")[0] in places
                      else a for a in extra]
    _one_line_error(capsys, main(argv), expected)


def test_status_of_a_location_without_a_job(tmp_path, capsys):
    _one_line_error(capsys, main(["status", str(tmp_path)]), "no dicom-deid job")


def test_console_script_reports_usage_errors_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "DEST is required" in done.stderr and "Traceback" not in done.stderr


def test_missing_storage_credentials_are_one_line(archive, capsys, monkeypatch, s3_server):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    options = {"skip_instance_cache": True, "client_kwargs": {"endpoint_url": s3_server["endpoint_url"]}}
    code = main(["run", "s3://any-bucket/incoming", str(archive / "dest"), "--tables",
                 str(archive / "tables"), "--secret-file", str(archive / "secret"),
                 "--storage-options", json.dumps(options)])
    _one_line_error(capsys, code, "missing storage credentials")


def test_s3_endpoint_comes_from_the_environment(tmp_path, s3_server, s3_bucket):
    """No --storage-options: the CLI and its own workers find S3 through AWS_ENDPOINT_URL_S3."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server["storage_options"])
    fs.pipe({f"{s3_bucket}/in/{name}": data for name, data in study_objects(1, 3, seed="env").items()})
    (tmp_path / "secret").write_bytes(SECRET)
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": s3_server["endpoint_url"]}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", f"s3://{s3_bucket}/in",
                           f"s3://{s3_bucket}/out", "--tables", str(tmp_path / "tables"),
                           "--secret-file", str(tmp_path / "secret"), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len([key for key in fs.find(f"{s3_bucket}/out") if key.endswith(".dcm")]) == 3
