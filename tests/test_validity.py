"""dicom3tools' dciodvfy, a real validator, finds no error that the engine introduced.

Bundled files (always here): no new error of any kind, through either walker. Corpus: no new
encoding error (values, VRs, lengths, multiplicities), and at least FLOOR of the readable files gain
no error of any kind (scripts/validity_report.py prints the figure and what remains).
"""

import importlib.util
import re
import shutil
import sys
import warnings
from pathlib import Path

import pydicom.data
import pytest

from pipeline.deid import apply, basic_profile, parse, serialize
from pipeline.deid.stream import deidentify_bytes

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
BUNDLED_DIR = Path(pydicom.data.__file__).parent / "test_files"
BUNDLED = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm", "JPEG2000.dcm",
           "waveform_ecg.dcm", "test-SR.dcm", "MR_small_bigendian.dcm",
           "SC_rgb_jpeg_dcmtk.dcm", "liver_1frame.dcm", "MR_small_RLE.dcm"]
MODULE_LEVEL = re.compile(r"Missing attribute|Empty attribute|present when condition|Bad Sequence number"
                          r"|does not reference|not listed in|needed to build DICOMDIR")
ENCODING = re.compile(r"Value Representation|Value Multiplicity|value length|Value invalid|"
                      r"Invalid|Bad attribute|Unrecognized|dubious", re.IGNORECASE)
FLOOR = 0.99  # the share of readable corpus files whose output gains no dciodvfy error (100% today)

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                reason="dciodvfy (Debian package dicom3tools) is not installed")


def _report_module():
    spec = importlib.util.spec_from_file_location("validity_report", REPO / "scripts" / "validity_report.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validity_report = _report_module()


def through_datasets(data: bytes) -> bytes:
    return serialize(apply(parse(data), secret="validity")[0])


def through_bytes(data: bytes) -> bytes:
    return deidentify_bytes(data, basic_profile(), secret="validity").data


@pytest.fixture(scope="module")
def validator():
    checker = validity_report.Validator(None)
    yield checker
    checker.save()


@pytest.mark.parametrize("walker", [through_datasets, through_bytes], ids=["dataset", "bytes"])
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_files_stay_valid(name, walker, validator):
    source = (BUNDLED_DIR / name).read_bytes()
    before = validator.lines(source)
    assert not any(validity_report.UNREADABLE.search(line) for line in before)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = validator.lines(walker(source))
    signature = validity_report.signature
    assert not {signature(e) for e in after} - {signature(e) for e in before}


@pytest.fixture(scope="module")
def corpus_report(request):
    """One pass of scripts/validity_report.py over the corpus, dciodvfy's findings cached by digest."""
    if not CORPUS.exists():
        pytest.skip("../shared/corpus is not present")
    cache = request.config.cache.mkdir("dciodvfy") / "findings.json"
    return validity_report.report(CORPUS, basic_profile(), cache)


def test_corpus_files_gain_no_encoding_error(corpus_report):
    assert corpus_report.checked > 400
    encoding = {path: {e for e in errors if ENCODING.search(e) and not MODULE_LEVEL.search(e)}
                for path, errors in corpus_report.failures.items()}
    assert not {path: errors for path, errors in encoding.items() if errors}


def test_corpus_validity_figure_does_not_fall(corpus_report):
    assert corpus_report.checked > 400
    assert corpus_report.figure >= FLOOR, corpus_report.by_message()
