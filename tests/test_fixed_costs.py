"""A job costs its objects and little else: the command runs a small local job, and its rerun, without Dask,
pandas or the S3 stack loaded and without starting a process; the embedded cluster's workers never load
pandas either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from distributed import Client
from samples import SECRET, study_objects, write_tree

import pipeline
from pipeline.deid.keys import SECRET_ENV
from pipeline.job import local_cluster
from pipeline.startup import without_pandas

ROOT = Path(__file__).resolve().parents[1]
# The whole command in a fresh interpreter, then what it loaded and which processes it started.
COMMAND = """
import json, os, subprocess, sys
started = []
spawn = subprocess.Popen._execute_child
subprocess.Popen._execute_child = lambda self, args, *rest: started.append(args) or spawn(self, args, *rest)
fork = os.fork
os.fork = lambda: started.append("fork") or fork()
from pipeline.cli import main
code = main(sys.argv[1:])
heavy = sorted(name for name in ("pandas", "distributed", "dask", "aiohttp", "s3fs", "botocore")
               if name in sys.modules)
print(json.dumps({"code": code, "loaded": heavy, "started": len(started)}), file=sys.stderr)
"""


def _python(script: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, SECRET_ENV: SECRET.decode(),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True,
                          timeout=600)


def _command(*argv: str) -> dict:
    done = _python(COMMAND, *argv)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_a_small_local_job_loads_no_dask_pandas_or_s3_stack_and_starts_no_process(tmp_path):
    write_tree(tmp_path / "src", study_objects(3, 4, seed="small"))
    argv = ("run", str(tmp_path / "src"), str(tmp_path / "dest"), "--tables", str(tmp_path / "tables"))
    first = _command(*argv)
    assert first == {"code": 0, "loaded": [], "started": 0}
    assert len(list((tmp_path / "dest").rglob("*.dcm"))) == 12
    assert _command(*argv) == {"code": 0, "loaded": [], "started": 0}  # the rerun: nothing new


def test_pandas_is_blocked_only_while_the_command_runs():
    script = ("from pipeline.startup import without_pandas\n"
              "with without_pandas():\n"
              "    try:\n        import pandas\n    except ImportError:\n        print('blocked')\n"
              "import pyarrow as pa\nimport pandas\nprint(type(pa.table({'a': [1]}).to_pandas()).__name__)\n")
    done = _python(script)
    assert done.stdout.split() == ["blocked", "DataFrame"], done.stderr


def test_the_block_leaves_a_process_that_has_pandas_alone():
    import pandas

    with without_pandas():
        import pandas as again
    assert again is pandas


def test_the_embedded_clusters_workers_do_not_load_pandas(tmp_path):
    write_tree(tmp_path / "src", study_objects(2, 3, seed="workers"))
    with local_cluster(1, key=SECRET) as cluster, Client(cluster) as client:
        result = pipeline.run(str(tmp_path / "src"), str(tmp_path / "dest"), tables=str(tmp_path / "tables"),
                              client=client, secret=SECRET)
        assert result.ok and result.written == 6  # the worker wrote table parts: pyarrow converted rows
        assert list(client.run(lambda: "pandas" in sys.modules).values()) == [False]
