"""dicom3tools' dciodvfy, a real validator, finds no encoding error that the engine introduced.

Module-level findings (a Type 1 attribute emptied by the first code of Z/D, a Type 2 sequence removed
by X/Z) are left to type-aware resolution of compound codes and are not counted here; every error
about values, VRs, lengths and multiplicities is.
"""

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pydicom.data
import pytest

from pipeline.deid import DeidError, apply, basic_profile, parse, serialize
from pipeline.deid.stream import deidentify_bytes

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
BUNDLED_DIR = Path(pydicom.data.__file__).parent / "test_files"
BUNDLED = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm", "JPEG2000.dcm",
           "waveform_ecg.dcm", "test-SR.dcm", "MR_small_bigendian.dcm",
           "SC_rgb_jpeg_dcmtk.dcm", "liver_1frame.dcm", "MR_small_RLE.dcm"]
MODULE_LEVEL = re.compile(r"Missing attribute|Empty attribute|present when condition|Bad Sequence number"
                          r"|does not reference|not listed in|needed to build DICOMDIR")
UNREADABLE = re.compile(r"Information Object Not found|not valid DICOM")
ENCODING = re.compile(r"Value Representation|Value Multiplicity|value length|Value invalid|"
                      r"Invalid|Bad attribute|Unrecognized|dubious", re.IGNORECASE)

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                reason="dciodvfy (Debian package dicom3tools) is not installed")


def dciodvfy(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace")
    return (run.stdout + run.stderr).splitlines()


def validatable(path: Path) -> bool:
    """Whether dciodvfy can read the input at all; a broken input is no baseline to compare with."""
    return not any(UNREADABLE.search(line) for line in dciodvfy(path))


def encoding_errors(path: Path) -> set[str]:
    found = set()
    for line in dciodvfy(path):
        if line.startswith("Error") and ENCODING.search(line) and not MODULE_LEVEL.search(line):
            found.add(re.sub(r"\[[^\]]*\]|= <.*|<[^>]*>\s*$", "", line).strip())
    return found


def through_datasets(data: bytes) -> bytes:
    return serialize(apply(parse(data), secret="validity")[0])


def through_bytes(data: bytes) -> bytes:
    return deidentify_bytes(data, basic_profile(), secret="validity").data


def new_errors(source: Path, tmp_path: Path, walker=through_bytes) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = walker(source.read_bytes())
    target = tmp_path / "out.dcm"
    target.write_bytes(out)
    return encoding_errors(target) - encoding_errors(source)


@pytest.mark.parametrize("walker", [through_datasets, through_bytes], ids=["dataset", "bytes"])
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_files_stay_valid(name, walker, tmp_path):
    assert validatable(BUNDLED_DIR / name)
    assert not new_errors(BUNDLED_DIR / name, tmp_path, walker)


def test_corpus_files_stay_valid(tmp_path):
    if not CORPUS.exists():
        pytest.skip("../shared/corpus is not present")
    checked, found = 0, {}
    for path in sorted(p for p in CORPUS.rglob("*.dcm") if "LICENSES" not in p.parts):
        if not validatable(path):
            continue
        try:
            errors = new_errors(path, tmp_path)
        except DeidError:
            continue
        checked += 1
        if errors:
            found[str(path.relative_to(CORPUS))] = errors
    assert checked > 300
    assert not found
