"""Before a job starts: every Dask worker runs the driver's code and holds the job's secret."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

from .job import JobError
from .secret import secret_problem

WAIT_FOR_WORKERS_SECONDS = 60


class WorkerError(JobError):
    """A worker that cannot take part in the job (no project, other code, other secret): one line."""


@cache
def code_identity() -> dict[str, str]:
    """The installed version and a digest of the package's files, so an edited copy counts as another."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json") and p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        version = metadata.version("dicom-deid")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "code": digest.hexdigest()[:12]}


def probe(fingerprint: str | None) -> dict:
    """What a worker says about itself: its code, and why it cannot use the job's secret (if it cannot)."""
    return {**code_identity(), "secret": secret_problem(fingerprint) if fingerprint else None}


def _problem(address: str, answer, mine: dict[str, str]) -> str | None:
    if isinstance(answer, BaseException):  # unpickling `probe` failed: the project is not importable there
        # Dask wraps an error it cannot send back as Exception(repr of the error).
        why = answer.args[0] if type(answer) is Exception and answer.args else repr(answer)
        return (f"worker {address} cannot run dicom-deid ({why}); install "
                f"dicom-deid {mine['version']} in the workers' environment")
    if (answer["version"], answer["code"]) != (mine["version"], mine["code"]):
        return (f"worker {address} runs dicom-deid {answer['version']} (code {answer['code']}) but the "
                f"driver runs {mine['version']} (code {mine['code']}): install the same version everywhere")
    return f"worker {address} {answer['secret']}" if answer["secret"] else None


def check_workers(client, fingerprint: str | None) -> None:
    """Ask every worker for its code and secret fingerprint; refuse the job, in one line, on any mismatch."""
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_SECONDS)
    except TimeoutError as exc:
        raise WorkerError(f"no Dask worker joined the scheduler at {client.scheduler.address} within "
                          f"{WAIT_FOR_WORKERS_SECONDS} s") from exc
    mine = code_identity()
    answers = client.run(probe, fingerprint, on_error="return")
    problems = [p for p in (_problem(a, answers[a], mine) for a in sorted(answers)) if p]
    if problems:
        more = f" (and {len(problems) - 1} more workers)" if len(problems) > 1 else ""
        raise WorkerError(problems[0] + more)
