"""`dicom-deid`: run, scan or check a job from the shell; user mistakes end in one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from .console import end_live, logging_to_stderr, quiet_interrupts, say, starting
from .startup import without_pandas

DEMO_ROOT = Path("dicom-deid-output")
DEMO_DEST = DEMO_ROOT / "deidentified"
DEMO_TABLES = DEMO_ROOT / "private-tables"
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
RESUME_HINT = ("dicom-deid: interrupted; run the same command again to resume (committed units are kept, "
               "the rest is redone)")
PROFILE_HELP = {
    "retain_uids": "Retain UIDs Option: keep Study, Series and SOP Instance UIDs instead of new ones",
    "retain_device_identity": "Retain Device Identity Option: keep device serial numbers, station names",
    "retain_patient_characteristics": "Retain Patient Characteristics Option: keep age, sex, size, weight",
    "retain_institution_identity": "Retain Institution Identity Option: keep institution names, addresses",
    "retain_long_full_dates": "Retain Longitudinal Temporal Information, Full Dates: keep dates and times",
    "retain_long_modified_dates": "Retain Longitudinal Temporal Information, Modified Dates: shift every "
                                  "date by a per-patient offset",
    "clean_descriptions": "Clean Descriptors Option: keep descriptions, with identifying text replaced",
    "clean_structured_content": "Clean Structured Content Option: keep SR content, identifying values "
                                "replaced",
    "clean_graphics": "Clean Graphics Option: keep graphic annotations, identifying text replaced",
    "retain_private_tags": "keep every private attribute (not a PS3.15 option: unsafe unless reviewed)",
    "retain_safe_private": "Retain Safe Private Option: keep only the private attributes of Table "
                           "E.3.10-1",
}
USAGES = {
    "run": "dicom-deid run [SOURCE DEST --tables TABLES] [options]",
    "scan": "dicom-deid scan SOURCE --out INVENTORY.parquet [options]",
    "status": "dicom-deid status TABLES [--json] [options]",
    "finalize": "dicom-deid finalize --tables TABLES [options]",
    "verify": "dicom-deid verify DEST --tables TABLES [--source SOURCE] [options]",
    "export-maps": "dicom-deid export-maps --tables TABLES --out DIR [options]",
}


def _secret_names() -> tuple[str, str]:
    """The secret's environment variables, imported when needed: the engine and Dask take seconds to load,
    and the first line a person sees should not wait for them."""
    from .deid.keys import SECRET_ENV
    from .secret import SECRET_FILE_ENV

    return SECRET_ENV, SECRET_FILE_ENV


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


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help line, in words a person reads ("off", not "False")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "%(default)" in text:
            return text
        if action.default is False:
            return f"{text} (default: off)"
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Mistakes in one line that names the subcommand and its usage, exit code 2."""

    def error(self, message: str):
        end_live()
        usage = USAGES.get(self.prog.split()[-1], self.prog + " COMMAND [options]")
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (usage: {usage}; see {self.prog} --help)\n")


def _fraction(text: str) -> float:
    """A fraction from 0 to 1, so that `5` (meant as 5%) is refused rather than meaning 500%."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (write 0.05 for 5%)")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


class _Filter(argparse.Action):
    """--include and --exclude into one ordered list of rules, as the AWS CLI reads them."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        rules = list(getattr(namespace, self.dest) or [])
        namespace.__setattr__(self.dest, [*rules, (option_string.lstrip("-"), value)])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dicom-deid")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """--version, looked up only when asked: reading the installed metadata costs every command ~50 ms."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"dicom-deid {_version()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    from .deid import FLAGS
    from .deid.profile import UNLISTED_MODES

    secret_env, secret_file_env = _secret_names()
    parser = _Parser(prog="dicom-deid", description="De-identify DICOM archives at scale.",
                     formatter_class=_Help)
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    run = commands.add_parser("run", usage=USAGES["run"], formatter_class=_Help,
                              help="de-identify SOURCE into DEST (no arguments: a demo on pydicom's "
                                   "test files)")
    run.add_argument("source", nargs="?", help="fsspec URL or path, or a CSV/Parquet listing of URLs")
    run.add_argument("dest", nargs="?", help="where de-identified objects and the _index/ Parquet go")
    run.add_argument("--tables", help="private location for linkage tables (never inside DEST)")
    run.add_argument("--secret-file", type=Path,
                     help=f"file holding the secret (default: env {secret_env} or {secret_file_env})")
    run.add_argument("--dry-run", action="store_true",
                     help="list, scan and plan; print the plan and what SOURCE changed since the last run")
    run.add_argument("--max-error-rate", type=_fraction, metavar="FRACTION",
                     help="exit 1 if more than this fraction (0 to 1) of objects is quarantined (default: "
                          "no limit)")
    run.add_argument("--verify", action="store_true",
                     help="check the finished run for leaks, losses and inconsistencies (see: verify); "
                          "exit 1 on any finding")
    units = run.add_argument_group("work units (a unit is a few whole studies, committed at once)")
    units.add_argument("--max-unit-objects", type=_positive, default=1000, metavar="N",
                       help="at most N objects in a unit (smaller jobs get smaller units)")
    units.add_argument("--max-unit-bytes", type=_positive, default=2**31, metavar="N",
                       help="at most N source bytes in a unit")
    units.add_argument("--shard", metavar="I/N",
                       help="run only shard I (0-based) of N on an embedded cluster, e.g. an array job's "
                            "index; then `finalize` once all are done (default: the whole job)")
    _filter_options(run)
    _patient_options(run)
    profile = run.add_argument_group("profile options (PS3.15 Annex E; with none: the Basic Profile)")
    for name in FLAGS:
        profile.add_argument(_flag(name), dest=name, action="store_true", help=PROFILE_HELP[name])
    profile.add_argument("--unlisted", choices=UNLISTED_MODES, default="safety-net",
                         help="attributes Table E.1-1 does not list: safety-net empties person names and "
                              "replaces UIDs; remove also removes every one the IOD does not require; keep "
                              "leaves them to the table alone")

    scan = commands.add_parser("scan", usage=USAGES["scan"], formatter_class=_Help,
                               help="list and scan SOURCE; write the inventory table")
    scan.add_argument("source", help="fsspec URL or path, or a CSV/Parquet listing of URLs")
    scan.add_argument("--out", required=True,
                      help="Parquet URL for the inventory (it holds Patient IDs: a private table)")
    _filter_options(scan)

    status = commands.add_parser("status", usage=USAGES["status"], formatter_class=_Help,
                                 help="what a tables location says about its run")
    status.add_argument("tables", help="the --tables location of a run")
    status.add_argument("--json", action="store_true", help="print the status as one JSON object")

    finalize = commands.add_parser("finalize", usage=USAGES["finalize"], formatter_class=_Help,
                                   help="compact the tables of a sharded run once every shard is done "
                                        "(else name the missing shards)")
    finalize.add_argument("--tables", required=True, help="the --tables location the shards shared")

    verify = commands.add_parser("verify", usage=USAGES["verify"], formatter_class=_Help,
                                 help="check a finished run for leaks, losses and inconsistencies (exit 1 on "
                                      "any); report in TABLES/verify/")
    verify.add_argument("dest", help="the run's DEST")
    verify.add_argument("--tables", required=True, help="the run's --tables location")
    verify.add_argument("--source", help="where the inputs are now (default: where the run read them)")
    verify.add_argument("--validity-limit", type=int, default=100, metavar="N",
                        help="outputs (and their inputs) checked with dciodvfy when installed; 0: none")

    maps = commands.add_parser("export-maps", usage=USAGES["export-maps"], formatter_class=_Help,
                               help="write uid_map.csv and patient_map.csv (id_old,id_new)")
    maps.add_argument("--tables", required=True, help="the run's --tables location")
    maps.add_argument("--out", required=True,
                      help="folder (local or URL) for the CSV files (they link back to patients: private)")
    for sub in (run, scan, status, finalize, verify, maps):
        sub.add_argument("--storage-options", metavar="JSON", help="fsspec options, e.g. for an S3 endpoint")
        _output_options(sub)
    for sub in (run, scan, status):
        sub.add_argument("--config", metavar="TOML", help="settings from a file (SOURCE, DEST, tables, "
                         "[profile], storage_options without credentials, scheduler, limits); flags win")
    for sub in (run, scan, verify):
        _cluster_options(sub)
    for sub in (run, scan):
        sub.add_argument("--workers", type=_positive, metavar="N",
                         help="worker processes of the local cluster (default: one per core; a local "
                              "SOURCE of at most 1,000 files runs in this process unless this is given)")
    run.add_argument("--send-secret", action="store_true",
                     help="send the secret to workers (tls:// scheduler only; else they read their own)")
    return parser


def _filter_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("filters on SOURCE (globs relative to SOURCE; later ones win; "
                                   "default: every object)")
    for name, does in (("include", "keep"), ("exclude", "leave out")):
        group.add_argument(f"--{name}", dest="rules", action=_Filter, metavar="GLOB",
                           help=f"{does} objects whose path matches, e.g. '*.txt' ('*' spans folders)")


def _patient_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("patients and burned-in text (job settings: a rerun must repeat them)")
    group.add_argument("--pseudonymize-patients", action="store_true",
                       help="Patient ID and Patient's Name become a research ID keyed by the secret (the "
                            "same in every run); the patient map joins the private tables")
    group.add_argument("--crosswalk", metavar="FILE",
                       help="CSV or Parquet with columns patient_id, research_id[, research_name]: research "
                            "IDs that win where it has a row (implies --pseudonymize-patients; read by the "
                            "driver, never logged)")
    group.add_argument("--allow-burned-in", action="store_true",
                       help="write objects marked Burned In Annotation YES (else quarantined as "
                            "burned-in-annotation)")
    group.add_argument("--burned-in-unknown", choices=("quarantine", "allow"), default="quarantine",
                       help="objects of classes that often show burned-in text (secondary capture, "
                            "ultrasound, video, scanned documents) without Burned In Annotation YES or NO")


def _output_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("output (logs go to stderr and never hold patient data)")
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="DEBUG",
                       help="debug log lines too")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="WARNING",
                       help="only warnings and errors; no progress")
    group.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO",
                       type=str.upper, help="log threshold")
    if sub.prog.endswith(("run", "scan")):
        group.add_argument("--no-progress", action="store_true",
                           help="no bars or periodic progress lines (stage lines stay)")


def _cluster_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("Dask cluster (TLS settings default to the Dask configuration)")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="tcp:// or tls:// address of a Dask scheduler (default: a local cluster)")
    group.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate that signed the cluster's")
    group.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
    group.add_argument("--tls-key", metavar="PEM", help="this client's private key")
    group.add_argument("--dashboard-address", default="127.0.0.1:0", metavar="HOST:PORT",
                       help="the local cluster's dashboard (default: %(default)s, this machine only, any "
                            "free port)")


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
    return any(os.environ.get(name) for name in _secret_names())


def _demo_secret() -> bytes | None:
    """Each demo starts clean in its own folder (so a changed secret is never "a different job"), with
    the configured secret, else a random one."""
    for folder in (DEMO_DEST, DEMO_TABLES):
        if folder.exists():
            say(f"demo: replacing the earlier demo output in {folder}/")
            shutil.rmtree(folder)
    if _secret_in_environment():
        return None
    say("demo: no secret configured, using a random one: new UIDs are not reproducible across runs")
    return secrets.token_hex(32).encode()  # text, so the embedded cluster's environment can carry it


def _locations_and_secret(args: argparse.Namespace) -> bytes | None:
    """Fill in the demo's locations, or insist on the ones a real run needs; the secret to pass on."""
    if args.source is None:
        import pydicom

        if args.tables or args.secret_file:
            raise UsageError("--tables and --secret-file need SOURCE and DEST; with no SOURCE, `dicom-deid "
                             f"run` is a demo that writes to ./{DEMO_ROOT}/")
        args.source = str(Path(pydicom.__file__).parent / "data" / "test_files")
        args.dest, args.tables = str(DEMO_DEST), str(DEMO_TABLES)
        return None if args.dry_run else _demo_secret()
    if args.dest is None:
        raise UsageError("DEST is required when SOURCE is given")
    if args.tables is None:
        raise UsageError("--tables is required: a private location, outside DEST, for linkage tables")
    secret = _read_secret(args.secret_file)
    if secret is None and not args.dry_run and not _secret_in_environment():
        raise UsageError("no secret: give --secret-file PATH or set {} or {} (keep it: the same secret gives "
                         "the same new UIDs in later runs)".format(*_secret_names()))
    return secret


def _run(args: argparse.Namespace) -> int:
    from . import job
    from .deid import FLAGS

    demo = args.source is None
    shard = job.parse_shard(args.shard) if args.shard else None
    secret = _locations_and_secret(args)
    flags = {name: True for name in FLAGS if getattr(args, name)}
    if args.unlisted != "safety-net":
        flags["unlisted"] = args.unlisted
    if shard and args.scheduler:
        raise UsageError("--shard runs its share on its own embedded cluster: leave out --scheduler")
    with _client(args) as client:
        result = job.run(args.source, args.dest, args.tables, client=client, secret=secret,
                         send_secret=args.send_secret, dashboard_address=args.dashboard_address,
                         workers=args.workers,
                         storage_options=_storage_options(args), dry_run=args.dry_run,
                         max_error_rate=args.max_error_rate, progress=_progress(args), rules=args.rules,
                         max_unit_objects=args.max_unit_objects, max_unit_bytes=args.max_unit_bytes,
                         shard=shard, verify=args.verify, pseudonymize_patients=args.pseudonymize_patients,
                         crosswalk=args.crosswalk, allow_burned_in=args.allow_burned_in,
                         burned_in_unknown=args.burned_in_unknown, **flags)
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


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and args.log_level in ("DEBUG", "INFO")


def _scan(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    from .console import stage
    from .filters import apply_filters
    from .ingest import scan_listing
    from .job import absolute, cluster
    from .listing import list_objects
    from .storage import filesystem, is_local, retry
    from .tables import write_table
    from .workers import check_workers

    options = _storage_options(args)
    source = absolute(args.source)
    fs, path = filesystem(source, options)
    if not retry(fs.exists, path):  # before a cluster starts, which takes seconds
        raise FileNotFoundError(f"no objects at {args.source}")

    def listed(client) -> pa.Table:
        with stage("listing SOURCE"):
            return apply_filters(list_objects(source, options, client=client), source, args.rules, options)

    # A local source is listed here anyway: list it before the cluster, so a bad listing file fails fast.
    listing = listed(None) if is_local(source) else None
    with _client(args) as given, cluster(given, dashboard_address=args.dashboard_address,
                                         workers=args.workers) as client:
        with stage("checking that every worker runs this version"):
            check_workers(client, None)
        listing = listed(client) if listing is None else listing
        inventory = scan_listing(listing, options, client, _progress(args))
    fs, path = filesystem(args.out, options)
    write_table(fs, path, inventory)
    unparsed = pc.sum(pc.is_valid(inventory["error"])).as_py() or 0
    print(f"scanned {inventory.num_rows} objects ({unparsed} headers did not parse) -> {args.out}")
    print(f"dicom-deid: warning: {args.out} holds Patient IDs: keep it private, like the linkage tables",
          file=sys.stderr)
    return 0


def _finalize(args: argparse.Namespace) -> int:
    from .finalize import Unfinished, describe, finalize_job

    try:
        summary = finalize_job(args.tables, _storage_options(args), progress=_progress(args))
    except Unfinished as exc:
        print(f"dicom-deid: not finalized: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(describe(summary))
    return 0 if not summary["failed_units"] else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    from .status import describe_status, job_status

    status = job_status(args.tables, _storage_options(args))
    print(json.dumps(status, indent=2) if args.json else describe_status(status))
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


def _with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Defaults from `--config FILE` for the subcommand named in argv, so that flags still win."""
    from .config import ConfigError, load_config

    argv = sys.argv[1:] if argv is None else argv
    found = argparse.ArgumentParser(add_help=False)
    found.add_argument("--config")
    path = found.parse_known_args(argv)[0].config
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((a for a in argv if a in commands.choices), None)
    if not path or command is None:
        return
    sub = commands.choices[command]
    try:
        sub.set_defaults(**load_config(path, {a.dest for a in sub._actions} - {"help", "config"}))
    except ConfigError as exc:
        sub.error(str(exc))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Arguments, with a stray flag reported by the subcommand it was given to, with that one's usage."""
    parser = _parser()
    _with_config(parser, argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    args.log_level = args.log_level or "INFO"
    return args


def _starting(argv: list[str]) -> str | None:
    """What the live line names while a command that runs stages loads ("dicom-deid run"); None for the
    others, and where a line would stand in the way (help, version) or was declined (-q, --no-progress)."""
    declined = {"-h", "--help", "--version", "-q", "--quiet", "--no-progress"}
    levels = [after.upper() for flag, after in zip(argv, argv[1:], strict=False) if flag == "--log-level"]
    levels += [arg.split("=", 1)[1].upper() for arg in argv if arg.startswith("--log-level=")]
    if not argv or argv[0] not in ("run", "scan", "finalize") or declined & set(argv) or \
            levels[-1:] not in ([], ["DEBUG"], ["INFO"]):
        return None
    return f"dicom-deid {argv[0]}"


def main(argv: list[str] | None = None) -> int:
    """The `dicom-deid` command: parse, run, and turn user mistakes into one line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    before = signal.getsignal(signal.SIGINT)
    say_interrupted = quiet_interrupts(RESUME_HINT)
    try:
        with starting(_starting(argv)):  # on a terminal, a live line while the pipeline loads
            args = _parse(argv)
            command = {"run": _run, "scan": _scan, "status": _status, "finalize": _finalize,
                       "verify": _verify, "export-maps": _export_maps}[args.command]
            with logging_to_stderr(getattr(logging, args.log_level), _progress(args)), without_pandas():
                return command(args)
    except _user_errors() as exc:
        print(f"dicom-deid: error: {_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        say_interrupted()
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, before)


def entry() -> None:
    """Entry point of the `dicom-deid` console script. Once everything is written and flushed, the
    process ends without interpreter teardown: a native thread pool still winding down there has
    aborted finished runs ("terminate called without an active exception", exit -6)."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
