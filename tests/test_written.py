"""`apply`'s result writes itself: the same bytes pydicom's writer gives, from the raw elements the walk made,
and pydicom's writer itself for anything changed since or any other option."""

from __future__ import annotations

import copy
import pickle
import warnings
from io import BytesIO

import pydicom
import pytest
from pydicom import dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian
from test_dataset_api import CORPUS, readable

from pipeline.deid import DeidError, Profile, apply
from pipeline.deid.written import Deidentified

SECRET = "written-test"


@pytest.fixture(scope="module")
def datasets() -> list[tuple[object, pydicom.Dataset]]:
    return readable()


def by_pydicom(out: pydicom.Dataset, **options) -> bytes:
    """What pydicom's own writer makes of the dataset (on a copy: it converts some elements in place)."""
    buffer = BytesIO()
    dcmwrite(buffer, copy.deepcopy(out), **options)
    return buffer.getvalue()


def saved(out: pydicom.Dataset, **options) -> bytes:
    buffer = BytesIO()
    out.save_as(buffer, **options)
    return buffer.getvalue()


def ct_small() -> Deidentified:
    out, _ = apply(pydicom.dcmread(get_testdata_file("CT_small.dcm")), secret=SECRET)
    return out


@pytest.mark.parametrize("profile", [Profile(), Profile(retain_private_tags=True, retain_uids=True,
                                                         clean_descriptions=True)], ids=["basic", "options"])
@pytest.mark.parametrize("enforce", [False, True], ids=["as-is", "file-format"])
def test_the_result_writes_what_pydicoms_writer_writes(datasets, profile, enforce):
    written = itself = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, ds in datasets:
            try:
                out, _ = apply(ds, profile, secret=SECRET)
            except DeidError:
                continue
            assert isinstance(out, Deidentified)
            expected = by_pydicom(out, enforce_file_format=enforce)
            itself += out._encoded() is not None
            assert saved(out, enforce_file_format=enforce) == expected, path
            written += 1
    assert written >= (400 if CORPUS.exists() else 20)
    assert itself >= 0.8 * written  # most results write themselves: else this test proves nothing of it


def test_a_compressed_and_a_native_file_write_themselves():
    for name in ("CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        out, _ = apply(pydicom.dcmread(get_testdata_file(name)), secret=SECRET)
        assert out._encoded() is not None, name
        assert saved(out) == by_pydicom(out), name


def change_name(out):
    out.PatientName = "Changed^Name"


def drop_date(out):
    del out[0x00080020]


def implicit(out):
    out.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def preamble(out):
    out.preamble = b"\1" * 128


def read_a_value(out):
    assert out.SOPInstanceUID  # reading converts the raw element in place


def charset(out):
    out.SpecificCharacterSet = "ISO_IR 192"


@pytest.mark.parametrize("change", [change_name, drop_date, implicit, preamble, read_a_value, charset])
def test_a_result_changed_after_apply_is_written_as_pydicom_writes_it(change):
    out = ct_small()
    change(out)
    assert saved(out) == by_pydicom(out)
    if change is change_name:
        assert b"Changed^Name" in saved(out)


def test_other_options_go_to_pydicoms_writer():
    out = ct_small()
    with pytest.raises(ValueError):  # the file meta says explicit VR: pydicom refuses the conflict
        out.save_as(BytesIO(), implicit_vr=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert saved(out, write_like_original=False) == by_pydicom(out, enforce_file_format=True)


def test_a_path_is_written_and_overwritten_only_when_allowed(tmp_path):
    out = ct_small()
    target = tmp_path / "out.dcm"
    out.save_as(target)
    assert target.read_bytes() == by_pydicom(out)
    with pytest.raises(FileExistsError):
        out.save_as(str(target), overwrite=False)
    assert pydicom.dcmread(target).SOPInstanceUID == out.SOPInstanceUID


def test_copies_write_what_they_hold():
    out = ct_small()
    for other in (copy.deepcopy(out), pickle.loads(pickle.dumps(out))):
        other.PatientID = "copy"
        assert saved(other) == by_pydicom(other)
        assert saved(out) == by_pydicom(out) != saved(other)
