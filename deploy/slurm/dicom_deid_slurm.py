"""Run `dicom-deid` on SLURM: dask-jobqueue submits the Dask workers as batch jobs, this process drives."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

SECRET_FILE_ENV = "DICOM_DEID_SECRET_FILE"
USAGE = "%(prog)s [cluster options] -- run SOURCE DEST --tables TABLES [dicom-deid run options]"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Cluster options, and the dicom-deid command after `--`."""
    parser = argparse.ArgumentParser(usage=USAGE, description=__doc__)
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs to start (default 4)")
    parser.add_argument("--cores", type=int, default=16, help="cores per job (default 16)")
    parser.add_argument("--memory", default="64GB", help="memory per job (default 64GB)")
    parser.add_argument("--processes", type=int, default=4,
                        help="Dask worker processes per job; threads = cores / processes (default 4)")
    parser.add_argument("--walltime", default="12:00:00", help="per job (default 12:00:00)")
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    parser.add_argument("--account", help="SLURM account to charge")
    parser.add_argument("--interface", help="network interface workers reach the scheduler on, e.g. ib0")
    parser.add_argument("--local-directory", default="${TMPDIR:-/tmp}",
                        help="node-local scratch for workers (default $TMPDIR)")
    parser.add_argument("--log-directory", default="dicom-deid-logs", help="worker job logs")
    parser.add_argument("--secret-file", type=Path, default=os.environ.get(SECRET_FILE_ENV),
                        help=f"secret on a filesystem the nodes share (default ${SECRET_FILE_ENV})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="dicom-deid arguments, after --")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the dicom-deid command after --, e.g. -- run SOURCE DEST --tables TABLES")
    if args.secret_file is None or not args.secret_file.is_file():
        parser.error(f"--secret-file (or ${SECRET_FILE_ENV}) must name a readable file the nodes share")
    args.secret_file = args.secret_file.resolve()
    return args


def cluster_options(args: argparse.Namespace) -> dict:
    """SLURMCluster arguments: every worker job reads the secret from the same file the driver does."""
    return {
        "cores": args.cores,
        "processes": args.processes,
        "memory": args.memory,
        "walltime": args.walltime,
        "queue": args.partition,
        "account": args.account,
        "interface": args.interface,
        "job_name": "dicom-deid-worker",
        "local_directory": args.local_directory,
        "log_directory": args.log_directory,
        "python": sys.executable,
        "job_script_prologue": [f"export {SECRET_FILE_ENV}={shlex.quote(str(args.secret_file))}"],
        "scheduler_options": {"dashboard_address": ":8787"},
    }


def main(argv: list[str] | None = None) -> int:
    """Start the workers, run the command against their scheduler, and release the jobs at the end."""
    from dask_jobqueue import SLURMCluster

    args = parse(argv)
    with SLURMCluster(**cluster_options(args)) as cluster:
        cluster.scale(jobs=args.jobs)
        print(f"Dask dashboard: {cluster.dashboard_link}", file=sys.stderr)
        command = [sys.executable, "-m", "pipeline.cli", *args.command]
        command += ["--scheduler", cluster.scheduler_address]
        env = {**os.environ, SECRET_FILE_ENV: str(args.secret_file)}
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
