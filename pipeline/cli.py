"""`dicom-deid`: run, scan or check a job from the shell; user mistakes end in one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

from .deid import FLAGS
from .deid.keys import SECRET_ENV
from .secret import SECRET_FILE_ENV

DEMO_ROOT = Path("dicom-deid-output")
DEMO_DEST = DEMO_ROOT / "deidentified"
DEMO_TABLES = DEMO_ROOT / "private-tables"
EXIT_FAILED, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A mistake in how the command was called."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "check your arguments, storage or credentials", not "the program is broken"."""
    from .job import JobError
    from .listing import ListingError
    from .secret import SecretError

    found: list[type[BaseException]] = [UsageError, JobError, ListingError, SecretError, OSError,
                                        json.JSONDecodeError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        found += [BotoCoreError, ClientError]
    except ImportError:
        pass
    return tuple(found)


def _message(exc: BaseException) -> str:
    kind = type(exc).__name__
    if kind in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return f"missing storage credentials (environment, profile, role or --storage-options): {exc}"
    if isinstance(exc, ConnectionError) or kind in ("EndpointConnectionError", "ConnectTimeoutError"):
        return f"cannot reach storage: {exc}"
    if isinstance(exc, FileNotFoundError):
        return f"not found: {exc.filename or exc}"
    if isinstance(exc, PermissionError):
        return f"permission denied (check credentials): {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"--storage-options is not valid JSON: {exc}"
    return str(exc) or type(exc).__name__


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-deid", description="De-identify DICOM archives at scale.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="de-identify SOURCE into DEST (no arguments: a demo on "
                                          "pydicom's test files)")
    run.add_argument("source", nargs="?", help="fsspec URL or path, or a CSV/Parquet listing of URLs")
    run.add_argument("dest", nargs="?", help="where de-identified objects and the _index/ Parquet go")
    run.add_argument("--tables", help="private location for linkage tables (never inside DEST)")
    run.add_argument("--secret-file", type=Path, help=f"file holding the secret (else env {SECRET_ENV})")
    run.add_argument("--dry-run", action="store_true", help="list, scan and plan; print what would run")
    run.add_argument("--max-error-rate", type=float, metavar="FRACTION",
                     help="exit 1 if more than this fraction of objects is quarantined")
    run.add_argument("--max-unit-objects", type=int, default=1000, metavar="N")
    run.add_argument("--max-unit-bytes", type=int, default=2**31, metavar="N")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--shard", metavar="I/N", help="run only shard I (0-based) of N, with no scheduler "
                                                    "(array jobs); then `finalize` once all are done")
    run.add_argument("--verify", action="store_true", help="verify the result at the end (see: verify)")
    profile = run.add_argument_group("profile options (PS3.15 Annex E)")
    for name in FLAGS:
        profile.add_argument(_flag(name), dest=name, action="store_true")

    scan = commands.add_parser("scan", help="list and scan SOURCE; write the inventory table")
    scan.add_argument("source")
    scan.add_argument("--out", required=True, help="Parquet URL for the inventory")

    status = commands.add_parser("status", help="what a tables location says about its run")
    status.add_argument("tables")
    finalize = commands.add_parser("finalize", help="compact the tables of a sharded run once every shard "
                                                    "is done (else name the missing shards)")
    finalize.add_argument("--tables", required=True)
    verify = commands.add_parser("verify", help="check a finished run for leaks, losses and inconsistencies "
                                                "(exit 1 on any); report in TABLES/verify/")
    verify.add_argument("dest")
    verify.add_argument("--tables", required=True)
    verify.add_argument("--source", help="where the inputs are now, if not where the run read them")
    verify.add_argument("--validity-limit", type=int, default=100, metavar="N",
                        help="outputs (and their inputs) checked with dciodvfy when installed; 0: none")

    maps = commands.add_parser("export-maps", help="write uid_map.csv and patient_map.csv (id_old,id_new)")
    maps.add_argument("--tables", required=True)
    maps.add_argument("--out", required=True, help="folder (local or URL) for the CSV files")
    for sub in (run, scan, status, finalize, verify, maps):
        sub.add_argument("--storage-options", metavar="JSON", help="fsspec options, e.g. for an S3 endpoint")
    for sub in (run, scan, verify):
        _cluster_options(sub)
    run.add_argument("--send-secret", action="store_true",
                     help="send the secret to workers (tls:// scheduler only; else they read their own)")
    return parser


def _cluster_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("Dask cluster (TLS settings default to the Dask configuration)")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="tcp:// or tls:// address of a Dask scheduler (default: a local cluster)")
    group.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate that signed the cluster's")
    group.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
    group.add_argument("--tls-key", metavar="PEM", help="this client's private key")
    group.add_argument("--dashboard-address", default="127.0.0.1:0", metavar="HOST:PORT",
                       help="the local cluster's dashboard (default: this machine only, any free port)")


def _storage_options(args: argparse.Namespace) -> dict | None:
    if not args.storage_options:
        return None
    options = json.loads(args.storage_options)
    if not isinstance(options, dict):
        raise UsageError("--storage-options must be a JSON object")
    return options


def _client(args: argparse.Namespace):
    """A client of the named scheduler, or nothing (the job then starts a local cluster)."""
    tls = (args.tls_ca_file, args.tls_cert, args.tls_key)
    if not args.scheduler:
        if any(tls):
            raise UsageError("--tls-ca-file, --tls-cert and --tls-key need --scheduler tls://...")
        return nullcontext(None)
    from distributed import Client
    from distributed.security import Security

    if any(tls) and not all(tls):
        raise UsageError("give all three of --tls-ca-file, --tls-cert and --tls-key, or none")
    # Without the flags, Security() takes the TLS files from the Dask configuration (distributed.comm.tls).
    security = Security(tls_ca_file=tls[0], tls_client_cert=tls[1], tls_client_key=tls[2],
                        require_encryption=True) if all(tls) else None
    try:
        return Client(args.scheduler, timeout="10s", set_as_default=False, security=security)
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {args.scheduler}: {exc}") from exc


def _read_secret(path: Path | None) -> bytes | None:
    from .secret import SecretError, read_secret_file

    if path is None:
        return None
    try:
        return read_secret_file(path)
    except SecretError as exc:
        raise UsageError(f"--secret-file: {exc}") from exc


def _secret_in_environment() -> bool:
    return bool(os.environ.get(SECRET_ENV) or os.environ.get(SECRET_FILE_ENV))


def _demo_secret() -> bytes | None:
    """The demo runs with no secret configured: a random one, and earlier demo output is replaced."""
    if _secret_in_environment():
        return None
    print("demo: no secret configured, using a random one: new UIDs are not reproducible across runs",
          file=sys.stderr)
    for folder in (DEMO_DEST, DEMO_TABLES):
        if folder.exists():
            shutil.rmtree(folder)
    return secrets.token_hex(32).encode()  # text, so the embedded cluster's environment can carry it


def _locations_and_secret(args: argparse.Namespace) -> bytes | None:
    """Fill in the demo's locations, or insist on the ones a real run needs; the secret to pass on."""
    if args.source is None:
        import pydicom

        args.source = str(Path(pydicom.__file__).parent / "data" / "test_files")
        args.dest, args.tables = str(DEMO_DEST), str(DEMO_TABLES)
        return None if args.dry_run else _demo_secret()
    if args.dest is None:
        raise UsageError("DEST is required when SOURCE is given")
    if args.tables is None:
        raise UsageError("--tables is required: a private location, outside DEST, for linkage tables")
    secret = _read_secret(args.secret_file)
    if secret is None and not args.dry_run and not _secret_in_environment():
        raise UsageError(f"no secret: give --secret-file PATH or set {SECRET_ENV} or {SECRET_FILE_ENV} (keep "
                         "it: the same secret gives the same new UIDs in later runs)")
    return secret


def _run(args: argparse.Namespace) -> int:
    from . import job

    demo = args.source is None
    secret = _locations_and_secret(args)
    if args.max_unit_objects < 1 or args.max_unit_bytes < 1:
        raise UsageError("--max-unit-objects and --max-unit-bytes must be positive")
    flags = {name: True for name in FLAGS if getattr(args, name)}
    shard = job.parse_shard(args.shard) if args.shard else None
    if shard and args.scheduler:
        raise UsageError("--shard runs its share on its own embedded cluster: leave out --scheduler")
    with _client(args) as client:
        result = job.run(args.source, args.dest, args.tables, client=client, secret=secret,
                         send_secret=args.send_secret, dashboard_address=args.dashboard_address,
                         storage_options=_storage_options(args), dry_run=args.dry_run,
                         max_error_rate=args.max_error_rate, progress=not args.no_progress,
                         max_unit_objects=args.max_unit_objects, max_unit_bytes=args.max_unit_bytes,
                         shard=shard, verify=args.verify, **flags)
    print(result.report)
    if demo and not args.dry_run:
        print(f"demo: de-identified files in {DEMO_DEST}/, linkage tables in {DEMO_TABLES}/")
    if not result.ok:
        why = (f"{len(result.failed_units)} units failed; run again to retry them" if result.failed_units
               else "verification found problems (see above)" if result.verified is False
               else f"quarantined {result.error_rate:.1%} of objects, above --max-error-rate")
        print(f"dicom-deid: run not OK: {why}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _scan(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from .job import cluster
    from .listing import list_objects
    from .scan import scan
    from .storage import filesystem
    from .tables import write_table
    from .workers import check_workers

    options = _storage_options(args)
    with _client(args) as given, cluster(given, dashboard_address=args.dashboard_address) as client:
        check_workers(client, None)
        inventory = scan(list_objects(args.source, options, client=client), options, client=client)
    fs, path = filesystem(args.out, options)
    write_table(fs, path, inventory)
    unparsed = pc.sum(pc.is_valid(inventory["error"])).as_py() or 0
    print(f"scanned {inventory.num_rows} objects ({unparsed} headers did not parse) -> {args.out}")
    return 0


def _finalize(args: argparse.Namespace) -> int:
    from .finalize import Unfinished, describe, finalize_job

    try:
        summary = finalize_job(args.tables, _storage_options(args))
    except Unfinished as exc:
        print(f"dicom-deid: not finalized: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(describe(summary))
    return 0 if not summary["failed_units"] else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    from .status import describe_status, job_status

    print(describe_status(job_status(args.tables, _storage_options(args))))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify

    if args.validity_limit < 0:
        raise UsageError("--validity-limit must not be negative")
    with _client(args) as client:
        result = verify(args.dest, args.tables, args.source, client=client,
                        storage_options=_storage_options(args), validity_limit=args.validity_limit)
    print(result.describe())
    return 0 if result.ok else EXIT_FAILED


def _export_maps(args: argparse.Namespace) -> int:
    from .maps import export_maps

    for name, rows in export_maps(args.tables, args.out, _storage_options(args)).items():
        print(f"{name}: {rows} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dicom-deid` console script."""
    args = _parser().parse_args(argv)
    command = {"run": _run, "scan": _scan, "status": _status, "finalize": _finalize, "verify": _verify,
               "export-maps": _export_maps}[args.command]
    try:
        return command(args)
    except _user_errors() as exc:
        print(f"dicom-deid: error: {_message(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
