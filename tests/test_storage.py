"""Storage helpers: URL handling, filesystems for disk and S3, retries of transient errors."""

import errno
import json
import socket
import threading
import uuid

import pytest
from botocore.exceptions import ClientError
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from moto.server import ThreadedMotoServer

from pipeline import storage
from pipeline.storage import filesystem, is_transient, join, read_many, retry


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_SECONDS", 0.01)


@pytest.mark.parametrize(("url", "parts", "joined"), [
    ("s3://bucket", ("a", "b.dcm"), "s3://bucket/a/b.dcm"),
    ("s3://bucket/prefix/", ("/a/",), "s3://bucket/prefix/a"),
    ("/data/out", ("x",), "/data/out/x"),
    ("/", ("x",), "/x"),
    ("file:///", ("x", ""), "file:///x"),
    ("s3://bucket/", (), "s3://bucket"),
])
def test_join(url, parts, joined):
    assert join(url, *parts) == joined


def test_filesystem_local_and_file_url(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    for url in (str(tmp_path / "f"), f"file://{tmp_path}/f"):
        fs, path = filesystem(url, {"key": "ignored-on-disk"})
        assert fs.cat_file(path) == b"abc"


def test_filesystem_s3_with_json_storage_options(s3_server, s3_bucket):
    fs, path = filesystem(f"s3://{s3_bucket}/k", json.dumps(s3_server["storage_options"]))
    assert path == f"{s3_bucket}/k"
    fs.pipe_file(path, b"hello")
    assert fs.cat_file(path) == b"hello"


def test_is_transient_classifies_errors():
    def aws(code, status):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Get")

    throttled, denied = aws("SlowDown", 503), aws("AccessDenied", 403)
    assert is_transient(aws("InternalError", 500))
    assert is_transient(throttled)
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.EBUSY, "slow down"))  # how s3fs reports a 503
    wrapped = OSError("outer")
    wrapped.__cause__ = throttled
    assert is_transient(wrapped)
    assert not is_transient(denied)
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(ValueError("bad"))


def test_retry_gives_up_at_once_on_permanent_errors_and_after_attempts_on_transient():
    calls = []

    def fail(exc):
        calls.append(exc)
        raise exc

    with pytest.raises(FileNotFoundError):
        retry(fail, FileNotFoundError())
    assert len(calls) == 1
    with pytest.raises(ConnectionResetError):
        retry(fail, ConnectionResetError(), attempts=3)
    assert len(calls) == 4


def test_retry_survives_a_real_outage(s3_server, s3_bucket):
    """Connection refused until an S3 endpoint comes up on the port a moment later."""
    storage_options = dict(s3_server["storage_options"])
    fs, path = filesystem(f"s3://{s3_bucket}/k", storage_options)
    fs.pipe_file(path, b"data")  # moto's in-process state is shared by every server in this process
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    late = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    opts = {**storage_options, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
            "config_kwargs": {"retries": {"max_attempts": 1}}}
    flaky_fs, _ = filesystem(f"s3://{s3_bucket}/k", opts)
    with pytest.raises(Exception) as refused:
        flaky_fs.cat_file(path)
    assert is_transient(refused.value)
    starter = threading.Timer(0.2, late.start)
    starter.start()
    try:
        assert retry(flaky_fs.cat_file, path, attempts=8) == b"data"
    finally:
        starter.join()
        late.stop()


class FlakyMemoryFileSystem(MemoryFileSystem):
    """Fails the first read of every path the way a throttled store does (a fault moto cannot produce)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed: set[str] = set()

    def cat_file(self, path, start=None, end=None, **kwargs):
        if path not in self.failed:
            self.failed.add(path)
            raise OSError(errno.EBUSY, "SlowDown")
        return super().cat_file(path, start, end, **kwargs)


def test_read_many_retries_transient_failures_and_returns_permanent_ones():
    fs = FlakyMemoryFileSystem(skip_instance_cache=True)
    root = f"/flaky-{uuid.uuid4().hex}"
    fs.pipe({f"{root}/a": b"0123456789", f"{root}/b": b"abcdef"})
    got = read_many(fs, [f"{root}/a", f"{root}/b", f"{root}/missing"], [0, 2, 0], [4, None, 1])
    assert got[:2] == [b"0123", b"cdef"]
    assert isinstance(got[2], FileNotFoundError)


def test_read_many_reads_local_ranges_as_fsspec_does(tmp_path):
    fs = LocalFileSystem()
    (tmp_path / "a").write_bytes(b"0123456789")
    (tmp_path / "b").write_bytes(b"abcdef")
    paths = [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a"), str(tmp_path / "a"),
             str(tmp_path / "missing")]
    starts, ends = [0, 2, 8, 20, 0], [4, None, 64, 30, 1]
    got = read_many(fs, paths, starts, ends)
    assert got[:4] == [fs.cat_file(p, s, e) for p, s, e in zip(paths[:4], starts, ends, strict=False)]
    assert got[:4] == [b"0123", b"cdef", b"89", b""]
    assert isinstance(got[4], FileNotFoundError)
