from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep import pack
from data_prep.errors import PatientDataError
from data_prep.patient import Patient


def assert_within_pack_tolerance(original: Patient, packed: Patient) -> None:
    assert packed.id == original.id and packed.spacing == original.spacing
    assert np.abs(packed.ct - original.ct).max() <= 1.0
    assert np.abs(packed.dose.astype(np.float64) - original.dose).max() < 0.01
    assert not packed.dose[original.dose == 0].any()  # zero dose stays exactly zero
    np.testing.assert_array_equal(packed.possible_dose_mask, original.possible_dose_mask)
    assert list(packed.structures) == list(original.structures)
    for roi, mask in original.structures.items():
        np.testing.assert_array_equal(packed.structures[roi], mask)


def test_pack_round_trip_real(sample_patients, tmp_path: Path) -> None:
    for patient in sample_patients:
        pack.write_patient(patient, tmp_path / f"{patient.id}.dpk")
        assert_within_pack_tolerance(patient, pack.read_patient(tmp_path / f"{patient.id}.dpk"))
        assert (tmp_path / f"{patient.id}.dpk").stat().st_size < 400 * 1024


def test_pack_round_trip_phantom(phantom_small, tmp_path: Path) -> None:
    pack.write_patient(phantom_small, tmp_path / "p.dpk")
    assert_within_pack_tolerance(phantom_small, pack.read_patient(tmp_path / "p.dpk"))


def test_pack_without_dose_and_with_fractional_ct(phantom_small, tmp_path: Path) -> None:
    patient = Patient(id="pt_x", ct=phantom_small.ct + 0.3, structures=phantom_small.structures,
                      possible_dose_mask=phantom_small.possible_dose_mask, spacing=phantom_small.spacing)
    pack.write_patient(patient, tmp_path / "x.dpk")
    again = pack.read_patient(tmp_path / "x.dpk")
    assert again.dose is None
    assert np.abs(again.ct - patient.ct).max() <= 0.5  # not whole HU: rounded, then coded losslessly
    np.testing.assert_array_equal(again.possible_dose_mask, patient.possible_dose_mask)


def test_whole_mgy_doses_stay_within_9_5_mgy(tmp_path: Path, phantom_small) -> None:
    dose = np.zeros(phantom_small.shape, dtype=np.float32)
    values = np.arange(1, 1 + phantom_small.possible_dose_mask.sum()) % 80_000 / 1000.0  # every mGy value
    dose[phantom_small.possible_dose_mask] = values
    patient = Patient(id="d", ct=phantom_small.ct, structures={}, possible_dose_mask=phantom_small.possible_dose_mask,
                      spacing=phantom_small.spacing, dose=dose)
    pack.write_patient(patient, tmp_path / "d.dpk")
    assert np.abs(pack.read_patient(tmp_path / "d.dpk").dose.astype(np.float64) - dose).max() <= 0.0095 + 1e-5


@pytest.mark.parametrize("damage", ["truncate", "magic", "garble"])
def test_corrupt_pack_file(phantom_small, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "p.dpk"
    pack.write_patient(phantom_small, path)
    data = path.read_bytes()
    data = {"truncate": data[:-100], "magic": b"XXXX" + data[4:],
            "garble": data[:200] + bytes(len(data) - 200)}[damage]
    path.write_bytes(data)
    with pytest.raises(PatientDataError, match="p.dpk"):
        pack.read_patient(path)
