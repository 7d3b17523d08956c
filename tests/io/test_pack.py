from __future__ import annotations

import json
import lzma
import struct
from pathlib import Path

import numpy as np
import pytest

from dosepred.io import pack
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import Patient


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


def test_any_single_bit_flipped_after_writing_is_caught(phantom_small, tmp_path: Path) -> None:
    path = tmp_path / "p.dpk"
    pack.write_patient(phantom_small, path)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for at in [*rng.integers(0, len(data), 40), len(data) - 1]:  # header, streams and the checksum itself
        flipped = bytearray(data)
        flipped[at] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(flipped))
        with pytest.raises(PatientDataError):
            pack.read_patient(path)
    path.write_bytes(data)
    expected = pack.read_patient(path)
    path.write_bytes(b"DPK1" + data[4:-4])  # as written before the checksum: still read, alike
    read = pack.read_patient(path)
    np.testing.assert_array_equal(read.ct, expected.ct)
    np.testing.assert_array_equal(read.dose, expected.dose)


# --- nothing in a pack file is trusted ------------------------------------------------------------

def split(data: bytes) -> tuple[dict, bytes]:
    """A pack's header and streams (without its checksum)."""
    (length,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8 : 8 + length]), data[8 + length : -4]


def joined(header: dict, streams: bytes) -> bytes:
    """A pack with a valid checksum around whatever header it is given: the checks behind the checksum run."""
    return pack.sealed(json.dumps(header).encode(), streams)


@pytest.fixture
def packed(phantom_small, tmp_path: Path) -> Path:
    path = tmp_path / "p.dpk"
    pack.write_patient(phantom_small, path)
    return path


def read_changed(path: Path, **fields) -> PatientDataError:
    header, streams = split(path.read_bytes())
    path.write_bytes(joined({**header, **fields}, streams))
    with pytest.raises(PatientDataError) as caught:
        pack.read_patient(path)
    assert caught.value.where == str(path)
    return caught.value


@pytest.mark.parametrize("bad_id", ["../victim", "/tmp/victim", "..", "a/b", "", None, ["pt_1"]])
def test_an_unsafe_id_is_refused(packed: Path, bad_id) -> None:
    assert "patient id must be" in read_changed(packed, id=bad_id).problem


@pytest.mark.parametrize("shape", [[4096, 4096, 4096], [512, 512, 512], [0, 32, 32], [-32, 32, 32], [32, 32],
                                   [32.0, 32, 32], "32"])
def test_a_grid_out_of_bounds_is_refused_before_allocating(packed: Path, shape) -> None:
    assert "grid" in read_changed(packed, shape=shape).problem


@pytest.mark.parametrize(("field", "value"), [
    ("ct_box", [0, 33, 0, 32, 0, 32]), ("ct_box", [5, 4, 0, 32, 0, 32]), ("ct_box", [-1, 3, 0, 32, 0, 32]),
    ("mask_box", [0, 32, 0, 32]), ("dose_box", [0, 32, 0, 32, 0, 10**12]), ("ct_box", "all"),
    ("lengths", [-5, 10**9, 3]), ("lengths", [1, 2]), ("lengths", [1.5, 2, 3]),
    ("rois", ["PTV70", "PTV70"]), ("rois", ["Brainstem"] * 10**5), ("rois", ["Eye"]), ("rois", [[]]),
    ("ct_offset", float("nan")), ("ct_offset", 1e300), ("ct_offset", "0"), ("dose_base", 10**30),
])
def test_a_corrupt_header_field_is_refused(packed: Path, field: str, value) -> None:
    assert read_changed(packed, **{field: value}).problem  # and never an exception of another type


def test_a_box_that_disagrees_with_its_stream_is_refused(packed: Path) -> None:
    header, _ = split(packed.read_bytes())
    box = header["ct_box"]
    smaller = [box[0], box[1] - 1, *box[2:]]  # still inside the grid, but not what the stream codes
    assert "size differs from its box" in read_changed(packed, ct_box=smaller).problem


def test_a_mask_stream_that_inflates_beyond_its_box_is_refused(packed: Path) -> None:
    header, streams = split(packed.read_bytes())
    bomb = lzma.compress(bytes(64 * 2**20), format=lzma.FORMAT_RAW, filters=pack._LZMA_FILTERS)
    kept = streams[: sum(header["lengths"][:-1])]
    packed.write_bytes(joined({**header, "lengths": [*header["lengths"][:-1], len(bomb)]}, kept + bomb))
    with pytest.raises(PatientDataError, match="mask stream's size differs from its box"):
        pack.read_patient(packed)


def test_a_json_header_nested_too_deeply_is_refused(packed: Path) -> None:
    _, streams = split(packed.read_bytes())
    packed.write_bytes(pack.sealed(b"[" * 100_000, streams))
    with pytest.raises(PatientDataError, match="not valid JSON"):
        pack.read_patient(packed)
