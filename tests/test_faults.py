"""Faults caused for real: a killed worker, an interrupted and restarted run, a storage that answers 503."""

from __future__ import annotations

import http.client
import io
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from samples import SECRET, study_objects, tree, write_tree

import pipeline

PRIVATE_TABLES = ("manifest", "uid_map", "quarantine")


class Interrupted(Exception):
    """Stands in for Ctrl-C or a dying driver in the middle of a run."""


def _run(src: Path, out: Path, client, **kw) -> pipeline.RunResult:
    return pipeline.run(str(src), str(out / "dest"), str(out / "tables"), client=client, secret=SECRET,
                        max_unit_objects=2, **kw)


def _same_results(a: Path, b: Path) -> None:
    """Byte-identical DEST objects, equal indexes and equal linkage tables."""
    def objects(root: Path) -> dict[str, bytes]:
        return {k: v for k, v in tree(root / "dest").items() if not k.startswith("_index/")}

    assert objects(a) == objects(b)
    assert pq.read_table(a / "dest" / "_index").equals(pq.read_table(b / "dest" / "_index"))
    for name in PRIVATE_TABLES:
        assert pq.read_table(a / "tables" / f"{name}.parquet").equals(pq.read_table(b / "tables" /
                                                                                    f"{name}.parquet"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "src"
    write_tree(root, study_objects(6, 4, seed="fault"))
    return root


@pytest.fixture(scope="module")
def reference(archive, dask_client) -> Path:
    """An uninterrupted run that faulty runs must match exactly."""
    out = archive.parent / "reference"
    result = _run(archive, out, dask_client)
    assert result.ok and result.written == 24
    return out


def test_a_worker_killed_mid_run_changes_nothing(archive, reference, dask_client, tmp_path):
    killed = []

    def kill_a_busy_worker(stats: dict) -> None:
        busy = [w for w, keys in dask_client.processing().items() if keys]
        if not killed and busy:
            pid = dask_client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)  # the worker process dies mid-unit; its nanny starts a new one
            killed.append(pid)

    try:
        result = _run(archive, tmp_path, dask_client, on_unit=kill_a_busy_worker)
    finally:
        dask_client.wait_for_workers(2, timeout=60)
    assert killed and result.ok and result.units_run == result.units_total
    _same_results(reference, tmp_path)


def test_an_interrupted_run_resumes_to_the_same_outputs(archive, reference, dask_client, tmp_path):
    finished = []

    def interrupt_after_two_units(stats: dict) -> None:
        finished.append(stats["unit_id"])
        if len(finished) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        _run(archive, tmp_path, dask_client, on_unit=interrupt_after_two_units)
    assert not (tmp_path / "dest" / "_index").exists()
    resumed = _run(archive, tmp_path, dask_client)

    assert resumed.ok and resumed.units_skipped >= 2 and resumed.units_run >= 1
    assert resumed.units_skipped + resumed.units_run == resumed.units_total
    _same_results(reference, tmp_path)


def test_a_run_killed_with_sigkill_restarts_to_the_same_outputs(archive, reference, dask_client, tmp_path):
    (tmp_path / "secret").write_bytes(SECRET)
    command = [sys.executable, "-m", "pipeline.cli", "run", str(archive), str(tmp_path / "dest"), "--tables",
               str(tmp_path / "tables"), "--secret-file", str(tmp_path / "secret"), "--max-unit-objects", "2",
               "--no-progress"]
    # Its own session, so the kill reaches the job's cluster processes too, and nothing else.
    job = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "tables" / "units").glob("*.done"))) < 2:
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before it was killed"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    committed = len(list((tmp_path / "tables" / "units").glob("*.done")))
    resumed = _run(archive, tmp_path, dask_client)

    assert resumed.ok and resumed.units_skipped == committed < resumed.units_total
    _same_results(reference, tmp_path)


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to the S3 server, but answers every sixth request with 503 SlowDown."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    counter = itertools.count(1)
    refused: list[str] = []

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if next(self.counter) % 6 == 0:
            self.refused.append(self.command)
            error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn.request(self.command, self.path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        self.send_response(response.status)
        length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                self.send_header(key, value)
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky_s3(s3_server):
    """Storage options that reach the moto server only through the flaky proxy."""
    host, port = s3_server["endpoint_url"].removeprefix("http://").split(":")
    handler = type("Proxy", (_FlakyProxy,), {"upstream": (host, int(port)), "refused": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = {**s3_server["storage_options"],
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{server.server_port}",
                                 "region_name": "us-east-1"}}
    yield options, handler.refused
    server.shutdown()


def test_transient_s3_errors_are_retried(s3_server, s3_bucket, flaky_s3, dask_client, tmp_path):
    import s3fs

    options, refused = flaky_s3
    files = study_objects(2, 3, seed="flaky")
    s3fs.S3FileSystem(skip_instance_cache=True, **s3_server["storage_options"]).pipe(
        {f"{s3_bucket}/src/{name}": data for name, data in files.items()})
    result = pipeline.run(f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/dest", f"s3://{s3_bucket}/tables",
                          client=dask_client, secret=SECRET, storage_options=options, max_unit_objects=3)

    assert len(refused) > 5  # many requests really failed
    assert result.ok and result.written == 6 and result.quarantined == 0
    direct = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server["storage_options"])
    assert len([k for k in direct.find(f"{s3_bucket}/dest") if k.endswith(".dcm")]) == 6


def test_an_unwritable_destination_fails_its_unit_and_a_rerun_completes(dask_client, tmp_path):
    from pipeline.deid.keys import new_uid

    files = study_objects(2, 2, seed="blocked")
    write_tree(tmp_path / "src", files)
    blocked_study = pydicom.dcmread(io.BytesIO(files[sorted(files)[0]])).StudyInstanceUID
    blocker = tmp_path / "dest" / new_uid(SECRET, blocked_study)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the study's folder should go")

    first = _run(tmp_path / "src", tmp_path, dask_client)
    assert not first.ok and len(first.failed_units) == 1 and first.written == 2
    blocker.unlink()
    second = _run(tmp_path / "src", tmp_path, dask_client)
    assert second.ok and second.units_run == 1 and second.written == 4
