"""Outputs are the same bytes, under the same keys, with the same quarantine reasons, as when the digest
list was made: a speed-up or refactoring that changes any output fails here, on a cluster and in the
driver's own process (a small job) alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from digests import DIGESTS, fixed_archive, run_digests
from samples import SECRET

import pipeline
from pipeline.deid.keys import SECRET_ENV

ROOT = Path(__file__).resolve().parents[1]


def _same_as_stored(tmp_path: Path, objects: int) -> None:
    found = run_digests(tmp_path / "source", tmp_path / "dest", tmp_path / "tables")
    stored = DIGESTS.read_text().splitlines()
    assert len(found) == len(stored) == objects
    assert [line for line in found if line not in stored] == []  # what changed, if anything, is named
    assert found == stored


def test_a_fixed_archive_gives_the_stored_outputs_on_a_cluster(tmp_path, dask_client):
    fixed_archive(tmp_path / "source")
    result = pipeline.run(str(tmp_path / "source"), str(tmp_path / "dest"), tables=str(tmp_path / "tables"),
                          client=dask_client, secret=SECRET)
    assert result.ok
    _same_as_stored(tmp_path, result.objects)


def test_a_small_job_runs_in_the_driver_and_gives_the_same_outputs(tmp_path):
    fixed_archive(tmp_path / "source")
    env = {**os.environ, SECRET_ENV: SECRET.decode(),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "source"), str(tmp_path / "dest"),
            "--tables", str(tmp_path / "tables"), "-v"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "running in this process" in done.stderr and "starting a local Dask cluster" not in done.stderr
    assert "Dask" not in done.stderr  # no scheduler, no worker, no dashboard: the units run here
    _same_as_stored(tmp_path, len(DIGESTS.read_text().splitlines()))
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing new" in again.stdout
    assert "running in this process" not in again.stderr  # nothing to run: no worker, not even here
