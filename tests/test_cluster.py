"""A Dask cluster of separate processes: the embedded cluster's bytes, and the secret never sent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import dask
import distributed.client
import distributed.comm.tcp
import pytest
from cluster import dask_processes, tls_files
from samples import SECRET, poison_objects, study_objects, tree, write_tree

import pipeline
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


class Sent:
    """Every frame this process writes to a TCP or TLS connection (before TLS encrypts it)."""

    def __init__(self, monkeypatch) -> None:
        self.frames: list[bytes] = []
        original = distributed.comm.tcp.to_frames

        async def recording(*args, **kwargs):
            frames = await original(*args, **kwargs)
            self.frames += [bytes(frame) for frame in frames]
            return frames

        monkeypatch.setattr(distributed.comm.tcp, "to_frames", recording)

    def holds(self, needle: bytes) -> bool:
        return any(needle in frame for frame in self.frames)


@pytest.fixture
def no_default_client(monkeypatch):
    """This process as a fresh `dicom-deid` process sees it: no current Dask client to fall back on."""
    monkeypatch.setattr(distributed.client, "_global_clients", weakref.WeakValueDictionary())


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    poison = {name: data for name, (data, _) in poison_objects().items()}
    write_tree(root / "src", {**study_objects(3, 3, seed="cluster"), **poison})
    (root / "secret").write_bytes(SECRET + b"\n")
    return root


@pytest.fixture(scope="module")
def remote(archive, tmp_path_factory):
    """`dask scheduler` and `dask worker --nworkers 2 --nthreads 1`; workers read a mounted secret file."""
    with dask_processes(tmp_path_factory.mktemp("remote"),
                        {"DICOM_DEID_SECRET_FILE": str(archive / "secret")}) as processes:
        yield processes


def _dicom(dest: Path) -> dict[str, bytes]:
    return {key: data for key, data in tree(dest).items() if key.endswith(".dcm")}


def _cli_args(archive: Path, out: Path) -> list[str]:
    return ["run", str(archive / "src"), str(out / "dest"), "--tables", str(out / "tables"), "--secret-file",
            str(archive / "secret"), "--max-unit-objects", "3", "--no-progress"]


@pytest.fixture(scope="module")
def embedded(archive, tmp_path_factory) -> dict[str, bytes]:
    """The reference: the CLI with its own embedded cluster, in a process of its own."""
    out = tmp_path_factory.mktemp("embedded")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_DEID_")}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *_cli_args(archive, out)], env=env,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = _dicom(out / "dest")
    assert len(outputs) == 9
    return outputs


def test_cli_on_a_separate_cluster_writes_the_embedded_bytes(archive, remote, embedded, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *_cli_args(archive, tmp_path), "--scheduler",
                           remote.address], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _dicom(tmp_path / "dest") == embedded
    scan = subprocess.run([sys.executable, "-m", "pipeline.cli", "scan", str(archive / "src"), "--out",
                           str(tmp_path / "inventory.parquet"), "--scheduler", remote.address],
                          capture_output=True, text=True, timeout=300)
    listed = len(tree(archive / "src"))
    assert scan.returncode == 0 and f"scanned {listed} objects" in scan.stdout, scan.stderr
    assert SECRET not in remote.log_bytes()


def test_api_with_a_client_that_is_not_the_default(archive, remote, embedded, tmp_path, monkeypatch,
                                                   no_default_client):
    sent = Sent(monkeypatch)
    with distributed.Client(remote.address, set_as_default=False) as client:
        result = pipeline.run(str(archive / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"),
                              client=client, secret=SECRET, max_unit_objects=3)
    assert result.ok and result.written == 9
    assert _dicom(tmp_path / "dest") == embedded
    # Every unit's task went through these frames, and none of them holds the secret.
    assert sent.holds(b"run_unit") and not sent.holds(SECRET)
    assert SECRET not in remote.log_bytes()


def test_the_embedded_cluster_gets_the_secret_outside_any_message(archive, embedded, tmp_path, monkeypatch,
                                                                  no_default_client):
    sent = Sent(monkeypatch)
    # workers=2 asks for the embedded cluster: a job this small would otherwise run in this process.
    result = pipeline.run(str(archive / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"),
                          secret=SECRET, max_unit_objects=3, workers=2)
    assert result.ok and _dicom(tmp_path / "dest") == embedded
    assert sent.holds(b"run_unit") and not sent.holds(SECRET)


def test_send_secret_over_tls_and_never_over_tcp(archive, remote, embedded, tmp_path, monkeypatch, capsys,
                                                 no_default_client):
    code = main([*_cli_args(archive, tmp_path / "tcp"), "--scheduler", remote.address, "--send-secret"])
    assert code == 2 and "--send-secret needs a tls:// scheduler" in capsys.readouterr().err
    tls = tls_files(tmp_path / "tls")
    flags = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    with dask_processes(tmp_path / "cluster", {}, nworkers=1, tls=tls) as processes:  # workers hold no secret
        assert processes.address.startswith("tls://")
        code = main([*_cli_args(archive, tmp_path / "tls-run"), "--scheduler", processes.address, *flags])
        assert code == 2 and "has no de-identification secret" in capsys.readouterr().err
        sent = Sent(monkeypatch)
        code = main([*_cli_args(archive, tmp_path / "tls-run"), "--scheduler", processes.address, *flags,
                     "--send-secret"])
        assert code == 0, capsys.readouterr().err
        assert sent.holds(SECRET)  # sent, as asked, inside TLS: this also shows `Sent` sees what is sent
        capsys.readouterr()
        config = {"distributed.comm.tls.ca-file": tls["ca"], "distributed.comm.tls.client.cert": tls["cert"],
                  "distributed.comm.tls.client.key": tls["key"]}
        with dask.config.set(config):  # no flags: the TLS files come from the Dask configuration
            code = main(["run", str(archive / "src"), str(tmp_path / "dry" / "dest"), "--tables",
                         str(tmp_path / "dry" / "tables"), "--scheduler", processes.address, "--dry-run"])
        assert code == 0 and "would process 13 objects" in capsys.readouterr().out
    assert _dicom(tmp_path / "tls-run" / "dest") == embedded


def _other_code(root: Path) -> str:
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    with (root / "pipeline" / "execute.py").open("a") as f:
        f.write("# an edit that makes this copy another version\n")
    return str(root)


def _no_project(root: Path) -> str:
    (root / "pipeline").mkdir(parents=True)
    # What importing it does in an environment where dicom-deid is not installed.
    (root / "pipeline" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pipeline'\", name='pipeline')\n")
    return str(root)


@pytest.mark.parametrize(("case", "expected"), [
    ("no secret", "has no de-identification secret: set DICOM_DEID_SECRET or DICOM_DEID_SECRET_FILE"),
    ("another secret", "holds another de-identification secret than the driver"),
    ("another version", "install the same version everywhere"),
    ("no project", "cannot run dicom-deid (ModuleNotFoundError"),
])
def test_a_worker_that_cannot_take_part_is_one_line(case, expected, archive, tmp_path, capsys):
    env = {"DICOM_DEID_SECRET_FILE": str(archive / "secret")}
    if case == "no secret":
        env = {}
    elif case == "another secret":
        env = {"DICOM_DEID_SECRET": "another secret"}
    elif case == "another version":
        env["PYTHONPATH"] = _other_code(tmp_path / "code")
    elif case == "no project":
        env["PYTHONPATH"] = _no_project(tmp_path / "code")
    with dask_processes(tmp_path / "cluster", env, nworkers=1) as processes:
        code = main([*_cli_args(archive, tmp_path), "--scheduler", processes.address, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dicom-deid: error: worker tcp://127.0.0.1:") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "dest").exists()



def test_the_embedded_dashboard_listens_on_this_machine_only_unless_asked():
    from pipeline.job import local_cluster

    def bound(cluster) -> set[str]:
        return {s.getsockname()[0] for s in cluster.scheduler.http_server._sockets.values()}

    with local_cluster(1) as cluster:
        assert bound(cluster) == {"127.0.0.1"}
    with local_cluster(1, dashboard_address="0.0.0.0:0") as cluster:
        assert bound(cluster) == {"0.0.0.0"}


def test_the_embedded_cluster_wakes_its_event_loops_rarely():
    """Each wake-up of a worker's event loop takes the GIL from de-identification: Dask's defaults (a tick
    every 20 ms, a memory check every 100 ms, system metrics every 500 ms) cost ~13% of a job's CPU."""
    from distributed import Client

    from pipeline.job import local_cluster

    def intervals(dask_worker) -> dict[str, float]:  # client.run passes the worker by this name
        return {name: pc.callback_time for name, pc in dask_worker.periodic_callbacks.items()}

    with local_cluster(1) as cluster, Client(cluster) as client:
        (worker,) = client.run(intervals).values()
        assert (worker["tick"], worker["monitor"], worker["memory_monitor"]) == (1000, 2000, 500)
        assert intervals(cluster.scheduler)["tick"] == 1000
