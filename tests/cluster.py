"""A real Dask cluster as its own processes (`dask scheduler`, `dask worker`), on 127.0.0.1 only."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_SECONDS = 120  # a loaded two-core machine can take a while to import Dask in three processes


@dataclass
class Processes:
    """The scheduler's address and where each process's output goes."""

    address: str
    logs: list[Path]

    def log_bytes(self) -> bytes:
        return b"".join(path.read_bytes() for path in self.logs)


def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]  # the `dask` command of this interpreter


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own group: the worker's nanny children go too
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@contextmanager
def dask_processes(folder: Path, worker_env: dict[str, str], *, nworkers: int = 2,
                   tls: dict[str, str] | None = None) -> Iterator[Processes]:
    """A scheduler and `dask worker --nworkers N --nthreads 1` with the given environment, stopped after."""
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    security = []
    if tls:
        security = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_DEID_")}
    started: list[subprocess.Popen] = []
    logs = [folder / "scheduler.log", folder / "worker.log"]
    try:
        with logs[0].open("wb") as out:
            started.append(subprocess.Popen(
                _dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                      "127.0.0.1:0", "--scheduler-file", str(scheduler_file), "--protocol",
                      "tls" if tls else "tcp", *security),
                env=base_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder))
        deadline = time.monotonic() + START_SECONDS
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or started[0].poll() is not None:
                raise RuntimeError("the scheduler did not start: " + logs[0].read_text()[-2000:])
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        with logs[1].open("wb") as out:
            started.append(subprocess.Popen(
                _dask("worker", "--scheduler-file", str(scheduler_file), "--nworkers", str(nworkers),
                      "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", *security),
                env={**base_env, **worker_env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=folder))
        yield Processes(address, logs)
    finally:
        for process in reversed(started):
            _stop(process)


def tls_files(folder: Path) -> dict[str, str]:
    """A CA and one certificate it signed for 127.0.0.1, used by scheduler, workers and client alike."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicom-deid test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {name: str(path) for name, path in paths.items()}
