"""The safety net for attributes Table E.1-1 does not list, strict mode, and the per-attribute report."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian

from pipeline.deid import DeidError, Profile, action_for, deidentify, parse
from pipeline.deid.actions import rows
from pipeline.deid.rules import to_tag
from pipeline.deid.stream import deidentify_bytes
from pipeline.deid.unlisted import action

REPO = Path(__file__).resolve().parents[1]
PS33 = REPO.parent / "shared" / "ps3.3"
SECRET = b"safety-net-test-secret"
EVALUATOR = "Roe^Richard^Evaluator"
DEEP_EVALUATOR = "Smith^Deepest"
VENDOR_CLASS = "1.3.12.2.1107.5.9.1"  # a vendor's private SOP class: names a device, never a patient
WELL_KNOWN = "1.2.840.10008.5.1.4.1.1.2"


def _item(**attrs) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def ct_with_unlisted(syntax=None, sop_uid: str | None = None) -> bytes:
    """pydicom's CT with person names and UIDs where Table E.1-1 says nothing about them."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if sop_uid:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.EvaluatorName = EVALUATOR
    ds.FindingsGroupUIDTrial = ds.SOPInstanceUID  # an original instance UID, repeated unlisted
    ds.SegmentationTemplateUID = WELL_KNOWN
    ds.ReferencedSOPClassUID = VENDOR_CLASS
    deepest = _item(CodeValue="T-D0050", CodingSchemeDesignator="SRT", CodeMeaning="Tissue",
                    EvaluatorName=DEEP_EVALUATOR)
    middle = _item(CodeValue="1", CodingSchemeDesignator="99X", CodeMeaning="M",
                   EquivalentCodeSequence=Sequence([deepest]))
    outer = _item(CodeValue="2", CodingSchemeDesignator="99X", CodeMeaning="O",
                  AnatomicRegionModifierSequence=Sequence([middle]))
    ds.AnatomicRegionSequence = Sequence([outer])  # EvaluatorName at depth 3, all sequences unlisted
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


def both(data: bytes, profile: Profile):
    """The byte walker's result and the dataset walker's, which must be the same file."""
    fast = deidentify_bytes(data, profile, secret=SECRET)
    assert fast.fast
    slow = deidentify(parse(data), profile, secret=SECRET)
    buffer = io.BytesIO()
    slow.dataset.save_as(buffer, enforce_file_format=True)
    return fast, slow, buffer.getvalue()


def deepest(ds: Dataset) -> Dataset:
    return ds.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].EquivalentCodeSequence[0]


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_person_names_anywhere_are_emptied_and_uids_replaced_alike_by_both_walkers(syntax):
    data = ct_with_unlisted(syntax)
    original = pydicom.dcmread(io.BytesIO(data))
    fast, slow, slow_bytes = both(data, Profile())
    assert fast.data == slow_bytes and fast.uid_map == slow.uid_map and fast.actions == slow.actions
    out = pydicom.dcmread(io.BytesIO(fast.data))
    assert out.EvaluatorName == "" and deepest(out).EvaluatorName == ""  # present, empty: not Type 1
    for name in ("Roe", "Richard", "Smith", "Deepest"):
        assert name.encode() not in fast.data
    assert out.FindingsGroupUIDTrial == out.SOPInstanceUID == fast.uid_map[original.SOPInstanceUID]
    assert out.SegmentationTemplateUID == WELL_KNOWN and WELL_KNOWN not in fast.uid_map
    assert out.ReferencedSOPClassUID == VENDOR_CLASS and out.SOPClassUID == CTImageStorage
    assert deepest(out).CodeMeaning == "Tissue"  # the rest of the unlisted sequences stays


def test_keep_mode_is_the_table_alone():
    fast, _, slow_bytes = both(ct_with_unlisted(), Profile(unlisted="keep"))
    out = pydicom.dcmread(io.BytesIO(fast.data))
    assert fast.data == slow_bytes
    assert out.EvaluatorName == EVALUATOR and deepest(out).EvaluatorName == DEEP_EVALUATOR
    assert out.FindingsGroupUIDTrial != out.SOPInstanceUID


def test_strict_mode_removes_what_the_iod_does_not_require_and_keeps_what_it_does():
    data = ct_with_unlisted()
    fast, slow, slow_bytes = both(data, Profile(unlisted="remove"))
    assert fast.data == slow_bytes and fast.actions == slow.actions
    out = pydicom.dcmread(io.BytesIO(fast.data))
    for keyword in ("ConvolutionKernel", "SoftwareVersions", "FilterType", "EvaluatorName",
                    "AnatomicRegionSequence", "FindingsGroupUIDTrial"):  # Type 3 in a CT image, or in no IOD
        assert keyword not in out, keyword
    assert out.KVP == pydicom.dcmread(io.BytesIO(data)).KVP  # Type 2 in the CT Image module
    assert out.ImageType and out.Rows == 128 and out.SOPClassUID == CTImageStorage  # Type 1
    assert out.PixelData and out.PatientIdentityRemoved == "YES"
    assert action_for("ConvolutionKernel", Profile(unlisted="remove"), sop_class=CTImageStorage) == "X"
    assert action_for("KVP", Profile(unlisted="remove"), sop_class=CTImageStorage) == "K"


def test_decisions_by_type_and_registry():
    assert action_for("EvaluatorName") == "Z"  # optional everywhere: emptied
    assert action(int(to_tag("EvaluatorName")), Profile(), "1") == "d"  # Type 1: a dummy instead
    assert action(int(to_tag("EvaluatorName")), Profile(unlisted="remove"), "2") == "z"
    assert action_for("FindingsGroupUIDTrial") == "U" and action_for("SOPClassUID") == "K"
    assert action_for("EvaluatorName", Profile(unlisted="keep")) == "K"
    with pytest.raises(ValueError, match="unlisted must be one of"):
        Profile(unlisted="sometimes")


def test_every_registry_uid_is_kept():
    """pydicom's copy of the PS3.6 registry: every UID it lists is kept in an unlisted UI attribute."""
    from pydicom._uid_dict import UID_dictionary

    ds = pydicom.dcmread(io.BytesIO(ct_with_unlisted()))
    ds.SegmentationTemplateUID = list(UID_dictionary)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    fast, _, slow_bytes = both(buffer.getvalue(), Profile())
    assert fast.data == slow_bytes
    assert list(pydicom.dcmread(io.BytesIO(fast.data)).SegmentationTemplateUID) == list(UID_dictionary)


def test_actions_name_the_safety_net():
    fast = deidentify_bytes(ct_with_unlisted(), Profile(), secret=SECRET)
    found = {(attribute, tag, taken, source): n for attribute, tag, taken, source, n in rows(fast.actions)}
    assert found[("EvaluatorName", "(0014,2006)", "emptied", "safety-net")] == 2
    assert found[("FindingsGroupUIDTrial", "(0040,A021)", "new-uid", "safety-net")] == 1
    assert found[("SegmentationTemplateUID", "(3010,001F)", "kept", "safety-net")] == 1
    assert found[("PatientName", "(0010,0010)", "emptied", "table")] == 1
    assert found[("KVP", "(0018,0060)", "kept", "unlisted")] == 1
    strict = rows(deidentify_bytes(ct_with_unlisted(), Profile(unlisted="remove"), secret=SECRET).actions)
    assert ("ConvolutionKernel", "(0018,1210)", "removed", "strict", 1) in strict


def test_guard_still_refuses_a_removed_name_kept_elsewhere():
    ds = pydicom.dcmread(io.BytesIO(ct_with_unlisted()))
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    ds.add_new(0x00291001, "LT", f"reviewed by {EVALUATOR}")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    for walk in (lambda d: deidentify_bytes(d, Profile(retain_private_tags=True), secret=SECRET),
                 lambda d: deidentify(parse(d), Profile(retain_private_tags=True), secret=SECRET)):
        with pytest.raises(DeidError) as refused:
            walk(buffer.getvalue())
        assert refused.value.reason == "leak-guard"


def test_generated_unlisted_types_match_the_standard(tmp_path):
    if not PS33.exists():
        pytest.skip("../shared/ps3.3 is not present")
    subprocess.run([sys.executable, str(REPO / "scripts" / "generate_unlisted_types.py"), str(PS33),
                    str(tmp_path)], check=True, capture_output=True)
    shipped = REPO / "pipeline" / "deid" / "data" / "unlisted_types.json"
    assert (tmp_path / "unlisted_types.json").read_bytes() == shipped.read_bytes()


def test_command_line_names_the_mode_and_refuses_others(capsys):
    from pipeline.cli import _parser

    parser, run = _parser(), ["run", "src", "dest", "--tables", "t"]
    assert parser.parse_args(run).unlisted == "safety-net"
    assert parser.parse_args([*run, "--unlisted", "remove"]).unlisted == "remove"
    with pytest.raises(SystemExit) as refused:
        parser.parse_args([*run, "--unlisted", "sometimes"])
    assert refused.value.code == 2 and "invalid choice: 'sometimes'" in capsys.readouterr().err
