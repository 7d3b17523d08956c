from __future__ import annotations

from pathlib import Path

import pytest

from dosepred.io.errors import PatientDataError
from dosepred.io.roi_names import BODY, RoiNames, UnmappedRoiWarning, map_rois, prescription_in_name


@pytest.mark.parametrize("name, gy", [
    ("PTV70", 70), ("PTV_7000", 70), ("PTV 70Gy", 70), ("ptv-70.0", 70), ("PTV_63", 63), ("PTV5600", 56),
    ("PTV_6000cGy", 60), ("PTV_54Gy", 54),
    ("PTV70_eval", None), ("zPTV70", None), ("CTV_7000", None), ("GTV70", None), ("PTV_High", None), ("PTV", None),
])
def test_prescriptions_are_read_from_ptv_names_only(name: str, gy: float | None) -> None:
    assert prescription_in_name(name) == gy


def test_the_shipped_table_maps_tg263_and_common_names() -> None:
    names = ["Parotid_L", "parotid r", "BrainStem", "Spinal_Cord", "Bone_Mandible", "Esophagus", "Larynx", "EXTERNAL",
             "PTV_7000", "PTV63", "PTV_5600", "PTV_6000", "PTV_5000", "CTV_7000", "Couch", "Parotid_L"]
    with pytest.warns(UnmappedRoiWarning, match=r"3 ROI\(s\) left out.*: CTV_7000, Couch, PTV_5000"):
        mapping = map_rois(names, RoiNames.load(), "patient")
    assert mapping.structures == {
        "LeftParotid": ["Parotid_L", "Parotid_L"], "RightParotid": ["parotid r"], "Brainstem": ["BrainStem"],
        "SpinalCord": ["Spinal_Cord"], "Mandible": ["Bone_Mandible"], "Esophagus": ["Esophagus"], "Larynx": ["Larynx"],
        BODY: ["EXTERNAL"], "PTV70": ["PTV_7000"], "PTV63": ["PTV63", "PTV_6000"], "PTV56": ["PTV_5600"],
    }
    assert ("CTV_7000", "-") in mapping.table()


def test_prescriptions_given_by_name_and_a_clinic_table(tmp_path: Path) -> None:
    table = tmp_path / "names.yaml"
    table.write_text("structures:\n  LeftParotid: [GL_PAROTIDE_SIN]\nbody: [Corpo]\ntargets: {PTV_Boost: 70}\n"
                     "target_tolerance_gy: 1\n")
    names = RoiNames.load(table, prescriptions={"PTV_Low": 56})
    assert [names.structure_of(n) for n in ("gl parotide sin", "CORPO", "ptv boost", "PTV_Low", "PTV_6000", "Parotid_L")] \
        == ["LeftParotid", BODY, "PTV70", "PTV56", None, None]  # 60 Gy is 3 Gy from 63: beyond this table's 1 Gy


@pytest.mark.parametrize("content, message", [
    ("- a list\n", "must be a mapping"),
    ("structures:\n  Parotids: [P]\n", "unknown: \\['Parotids'\\]"),
    ("structures:\n  Larynx: Larynx\n", "must be a list of strings"),
    ("structures:\n  Larynx: [Cord]\n  SpinalCord: [Cord]\n", "stands for both"),
    ("targets: {PTV_High: -70}\n", "positive numbers"),
    ("structures: [\n", "cannot read the ROI name table"),
    ("targets: [PTV_High]\n", "'targets' maps each target's name"),
    ("structures: [{Larynx: [L]}]\n", "'structures' maps each of"),
])
def test_a_broken_table_is_refused_with_its_fault(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "t.yaml").write_text(content)
    with pytest.raises(PatientDataError, match=message):
        RoiNames.load(tmp_path / "t.yaml")
