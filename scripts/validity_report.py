"""How many de-identified corpus files dciodvfy finds no new error in, and what the others have.

Usage: python scripts/validity_report.py [CORPUS] [--profile FLAG ...] [--cache FILE] [--json]

For every file of CORPUS (default ../shared/corpus, its MANIFEST.csv when present) that dciodvfy
reads completely and that the engine's byte path de-identifies (Basic Profile unless --profile
flags are given), dciodvfy checks the input and the output; an output passes when it has no error
its input did not have. Errors are compared with their values, UIDs and quoted text blanked, so
that an error the input already had still matches after its value was replaced. Prints the
figure and the remaining new errors grouped by message. Results of dciodvfy are cached by the
SHA-256 of the bytes checked (--cache), so a rerun only validates what changed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.deid import DeidError, Profile
from pipeline.deid.stream import deidentify_bytes

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
SECRET = "validity-report"
UNREADABLE = re.compile(r"Information Object Not found|not valid DICOM|read failed")
# Names of attributes and modules stay; values, UIDs and quoted or single characters do not.
_VALUE = re.compile(r"(?<!Element=)(?<!Module=)(?<!attribute )<[^>]*>")
_UID = re.compile(r"\b\d+(?:\.\d+){2,}\b|(?<=UID )\d[\d.]*")
_QUOTED = re.compile(r"\"[^\"]*\"|= '.'")


def signature(line: str) -> str:
    """An error message without the values that de-identification changes."""
    return " ".join(_QUOTED.sub("", _UID.sub("UID", _VALUE.sub("<>", line))).split())


@dataclass
class Report:
    """Files checked, files that passed, and the new errors of the others."""

    checked: int = 0
    passed: int = 0
    unreadable: int = 0
    refused: int = 0
    failures: dict[str, set[str]] = field(default_factory=dict)  # path -> new error signatures

    @property
    def figure(self) -> float:
        return self.passed / self.checked if self.checked else 0.0

    def by_message(self) -> dict[str, list[str]]:
        """Each new error message with the files that have it, most frequent first."""
        groups: dict[str, list[str]] = defaultdict(list)
        for path, errors in sorted(self.failures.items()):
            for error in errors:
                groups[error].append(path)
        return dict(sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])))


class Validator:
    """dciodvfy over bytes, remembered by their digest."""

    def __init__(self, cache: Path | None) -> None:
        self.cache_path = cache
        self.cache: dict[str, list[str]] = {}
        if cache is not None and cache.exists():
            self.cache = json.loads(cache.read_text())
        self.scratch = Path(tempfile.mkdtemp(prefix="validity-"))

    def lines(self, data: bytes) -> list[str]:
        """dciodvfy's error lines for a file's bytes."""
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.cache:
            target = self.scratch / "file.dcm"
            target.write_bytes(data)
            run = subprocess.run(["dciodvfy", str(target)], capture_output=True, text=True,
                                 errors="replace")
            self.cache[digest] = [line for line in (run.stdout + run.stderr).splitlines()
                                  if line.startswith("Error")]
        return self.cache[digest]

    def save(self) -> None:
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_text(json.dumps(self.cache, sort_keys=True))
        (self.scratch / "file.dcm").unlink(missing_ok=True)
        self.scratch.rmdir()


def corpus_files(corpus: Path) -> list[str]:
    manifest = corpus / "MANIFEST.csv"
    if manifest.exists():
        with open(manifest, newline="", encoding="utf-8") as f:
            return [row["path"] for row in csv.DictReader(f)]
    return sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*")
                  if p.is_file() and "LICENSES" not in p.parts)


def report(corpus: Path, profile: Profile, cache: Path | None = None) -> Report:
    """Validate every readable corpus file's output against its input."""
    result, validator = Report(), Validator(cache)
    try:
        for path in corpus_files(corpus):
            data = (corpus / path).read_bytes()
            before = validator.lines(data)
            if any(UNREADABLE.search(line) for line in before):
                result.unreadable += 1
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = deidentify_bytes(data, profile, secret=SECRET).data
            except DeidError:
                result.refused += 1
                continue
            result.checked += 1
            new = {signature(e) for e in validator.lines(out)} - {signature(e) for e in before}
            if new:
                result.failures[path] = new
            else:
                result.passed += 1
    finally:
        validator.save()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--profile", nargs="*", default=[], metavar="FLAG",
                        help="profile flags to switch on, e.g. retain_uids clean_descriptions")
    parser.add_argument("--cache", type=Path, help="JSON file remembering dciodvfy's findings")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = report(args.corpus, Profile(**dict.fromkeys(args.profile, True)), args.cache)
    if args.json:
        print(json.dumps({"checked": result.checked, "passed": result.passed,
                          "figure": result.figure, "unreadable": result.unreadable,
                          "refused": result.refused, "by_message": result.by_message()}))
        return
    print(f"{result.passed} of {result.checked} readable, de-identified files "
          f"({result.figure:.1%}) have no dciodvfy error their input did not have "
          f"({result.unreadable} inputs dciodvfy cannot read, {result.refused} refused by the engine)")
    for message, paths in result.by_message().items():
        print(f"{len(paths):4}  {message}\n      e.g. {', '.join(paths[:3])}")


if __name__ == "__main__":
    sys.exit(main())
