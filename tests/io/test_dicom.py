from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM export needs the 'dicom' extra")
from dosepred.io.dicom import read_rt_dose, write_rt_dose  # noqa: E402


def test_rt_dose_round_trip_and_frame(phantom_small, tmp_path: Path) -> None:
    write_rt_dose(phantom_small, phantom_small.dose, tmp_path / "rd.dcm")
    np.testing.assert_allclose(read_rt_dose(tmp_path / "rd.dcm"), phantom_small.dose, atol=1e-6)
    ds = pydicom.dcmread(tmp_path / "rd.dcm")
    assert ds.Modality == "RTDOSE" and ds.DoseUnits == "GY"
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    s0, s1, s2 = phantom_small.spacing
    assert [float(v) for v in ds.PixelSpacing] == [s0, s1]
    assert float(ds.GridFrameOffsetVector[1]) == pytest.approx(s2)
    # The most superior slice (axis-2 index 0) is the last frame, at z = 0.
    assert float(ds.ImagePositionPatient[2]) + float(ds.GridFrameOffsetVector[-1]) == pytest.approx(0.0)
