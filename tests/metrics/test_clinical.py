"""Physicists' measures on cases with known answers, and gamma against pymedphys on a real patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dosepred.io.errors import PatientDataError
from dosepred.metrics.clinical import (check_objectives, dose_at_volume_percent, homogeneity_index, load_objectives,
                                       paddick_conformity_index, summarise_reviews, volume_at_dose)
from dosepred.metrics.gamma import gamma_index
from dosepred.metrics.openkbp import dose_at_volume_cc
from tests.conftest import SAMPLE, requires_openkbp


def test_a_uniform_target_dose_has_hi_0_and_a_dose_exactly_on_the_target_ci_1() -> None:
    target = np.zeros((20, 20, 20), dtype=bool)
    target[5:15, 5:15, 5:15] = True
    dose = np.where(target, 70.0, 10.0)
    assert homogeneity_index(dose[target]) == 0.0
    assert paddick_conformity_index(dose, target, 70.0) == 1.0
    spilled = dose.copy()
    spilled[15:17, 5:15, 5:15] = 70.0  # 200 voxels outside: PIV 1200, TV 1000, TV_PIV 1000
    assert paddick_conformity_index(spilled, target, 70.0) == pytest.approx(1000**2 / (1000 * 1200))
    assert volume_at_dose(dose[target], 66.5) == 100.0 and volume_at_dose(dose[target], 71) == 0.0


def test_a_measure_undefined_for_one_patient_leaves_the_others_mean() -> None:
    """HI is NaN where the predicted D50 is 0: it once made the whole table's mean NaN."""
    reviews = {name: {"targets": {"PTV70": {"predicted": {"HI": hi}}}, "objectives": []}
               for name, hi in (("pt_1", 0.1), ("pt_2", float("nan")), ("pt_3", 0.2))}
    assert summarise_reviews(reviews)["targets"]["PTV70"]["HI"]["predicted"] == pytest.approx(0.15)


def test_dx_and_dcc_on_a_ramp() -> None:
    ramp = np.linspace(0.0, 100.0, 1001)  # 1001 voxels of 1 mm^3: 0.1 cc = 100 voxels
    assert dose_at_volume_percent(ramp, 95) == pytest.approx(5.0)
    assert dose_at_volume_percent(ramp, 2) == pytest.approx(98.0)
    assert dose_at_volume_cc(ramp, 0.1, 1.0) == pytest.approx(90.0, abs=0.1)


def test_identical_doses_pass_everywhere_and_a_1mm_shift_stays_under_half_of_a_2mm_dta() -> None:
    axes = [np.arange(n) * s for n, s in zip((40, 40, 30), (2.0, 2.0, 2.5))]
    x, y, z = np.meshgrid(*axes, indexing="ij")

    def cloud(shift: float) -> np.ndarray:
        return 70 * np.exp(-((x - 40 - shift) ** 2 + (y - 40) ** 2 + (z - 37) ** 2) / (2 * 12.0**2))

    spacing = (2.0, 2.0, 2.5)
    assert gamma_index(cloud(0), cloud(0), spacing).pass_rate == 100.0
    shifted = gamma_index(cloud(0), cloud(1.0), spacing, max_gamma=2)
    assert shifted.pass_rate == 100.0 and np.nanmax(shifted.gamma) < 0.6  # 1 mm / 2 mm, plus the lattice's step
    far = gamma_index(cloud(0), cloud(6.0), spacing, max_gamma=2)  # 6 mm with 2 mm DTA: the steep shoulders fail
    assert 0 < far.pass_rate < 100


@requires_openkbp
def test_gamma_agrees_with_pymedphys_on_a_real_patient() -> None:
    pymedphys = pytest.importorskip("pymedphys")
    from dosepred.io.openkbp_csv import read_patient

    patient = read_patient(SAMPLE / "validation-pats" / "pt_201")
    centre = np.argwhere(patient.structures["PTV70"]).mean(0).astype(int)
    box = tuple(slice(c - 12, c + 12) for c in centre[:2]) + (slice(centre[2] - 8, centre[2] + 8),)
    reference = patient.dose[box]
    evaluation = np.roll(patient.dose, 1, axis=1)[box] * 1.03  # off by one voxel (5.4 mm) and 3 %
    axes = tuple(np.arange(n) * s for n, s in zip(reference.shape, patient.spacing))
    for dose_percent, distance in ((3, 2),):  # TG-218's; benchmarks/gamma.py compares more criteria
        theirs = pymedphys.gamma(axes, reference, axes, evaluation, dose_percent, distance, lower_percent_dose_cutoff=10,
                                 interp_fraction=10, max_gamma=1.1, global_normalisation=float(reference.max()),
                                 interp_algo="scipy")
        theirs_rate = 100 * np.mean(theirs[~np.isnan(theirs)] <= 1)
        ours = gamma_index(reference, evaluation, patient.spacing, dose_percent=dose_percent, distance_mm=distance)
        assert ours.evaluated == int((~np.isnan(theirs)).sum())
        assert abs(ours.pass_rate - theirs_rate) <= 0.5, (dose_percent, distance, ours.pass_rate, theirs_rate)


def test_shipped_objectives_load_and_check_against_reference_and_prediction(phantom_small) -> None:
    objectives = load_objectives()
    assert {o.roi for o in objectives} >= {"SpinalCord", "Brainstem", "LeftParotid", "PTV70"}
    rows = check_objectives(phantom_small, phantom_small.dose, objectives)
    assert rows and all(row["predicted"] == row["reference"] for row in rows)  # the same dose twice
    hot = phantom_small.dose + 100.0
    by_objective = {row["objective"]: row for row in check_objectives(phantom_small, hot, objectives)}
    assert by_objective["LeftParotid Dmean < 26 Gy"]["predicted met"] is False


def test_a_malformed_objective_is_refused(tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text("objectives:\n  - objective: Cord max < 45\n")
    with pytest.raises(PatientDataError, match="not 'ROI METRIC OP VALUE UNIT'"):
        load_objectives(tmp_path / "o.yaml")


def test_a_dose_in_percent_is_of_the_targets_prescription(phantom_small, tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text("objectives:\n  - objective: PTV70 D95% >= 95 %\n"
                                     "  - objective: PTV70 D95% >= 60 Gy\n  - objective: PTV70 Dmax <= 107 %\n")
    target = phantom_small.structures["PTV70"]
    d95, dmax = dose_at_volume_percent(phantom_small.dose[target], 95), float(phantom_small.dose[target].max())
    rows = check_objectives(phantom_small, phantom_small.dose, load_objectives(tmp_path / "o.yaml"))
    assert [row["predicted"] for row in rows] == [round(100 * d95 / 70, 2), round(d95, 2), round(100 * dmax / 70, 2)]


@pytest.mark.parametrize(("objective", "message"), [("SpinalCord V50% < 5 %", "SpinalCord has no prescription"),
                                                    ("SpinalCord Dmax < 70 %", "SpinalCord has no prescription"),
                                                    ("PTV70 V66.5Gy >= 95 Gy", "give its value in %")])
def test_an_objective_whose_unit_cannot_be_measured_is_refused(tmp_path: Path, objective: str, message: str) -> None:
    (tmp_path / "o.yaml").write_text(f"objectives:\n  - objective: {objective}\n")
    with pytest.raises(PatientDataError, match=message):
        load_objectives(tmp_path / "o.yaml")


def test_evaluate_prints_and_writes_the_clinical_review(phantom_split: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io import openkbp_csv

    for pid in ("pt_1", "pt_2"):  # a perfect prediction: the reference dose itself
        openkbp_csv.write_submission(openkbp_csv.read_dense(phantom_split / pid / "dose.csv"), tmp_path / f"{pid}.csv")
    result = CliRunner().invoke(app, ["evaluate", str(phantom_split), str(tmp_path), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "gamma pass rate (3 %/2 mm, global, 10 % threshold): mean 100.0 %" in result.output.replace("\n", "")
    clinical = json.loads((tmp_path / "s.json").read_text())["clinical"]
    assert set(clinical["patients"]) == {"pt_1", "pt_2"}
    assert all(c["predicted met"] == c["reference met"] for c in clinical["objectives"].values())
    assert clinical["targets"]["PTV70"]["HI"]["predicted"] == clinical["targets"]["PTV70"]["HI"]["reference"]
    bad = CliRunner().invoke(app, ["evaluate", str(phantom_split), str(tmp_path), "--gamma", "3,2"])
    assert bad.exit_code == 2 and "expected 3 positive numbers" in bad.output


def test_evaluate_json_is_strict_json_and_an_unwritable_path_is_a_message(phantom_split: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io import openkbp_csv

    for pid in ("pt_1", "pt_2"):  # an all-zero prediction: HI's D50 is 0, so HI is not a number
        openkbp_csv.write_submission(np.zeros((128, 128, 128), np.float32), tmp_path / f"{pid}.csv")
    result = CliRunner().invoke(app, ["evaluate", str(phantom_split), str(tmp_path), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    assert summary["clinical"]["patients"]["pt_1"]["targets"]["PTV70"]["predicted"]["HI"] is None
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(app, ["evaluate", str(phantom_split), str(tmp_path), "--json",
                                      str(tmp_path / "file" / "s.json")])
    assert result.exit_code == 2 and "cannot write" in result.output  # a message, not a traceback


def test_report_writes_one_self_contained_html(tiny_model: Path, phantom_split: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dosepred.cli import app

    result = CliRunner().invoke(app, ["report", "-i", str(phantom_split / "pt_1"), "-o", str(tmp_path / "r.html"),
                                      "-m", str(tiny_model), "--no-tta"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert "Research use only" in page and "Gamma pass rate (3 %/2 mm" in page and "SpinalCord D0.1cc &lt; 45 Gy" in page
    # the DVH and three slices each of the prediction, the reference and their difference; nothing fetched
    assert page.count("data:image/png;base64,") == 10 and "predicted − reference" in page
    assert "src='http" not in page
    refused = CliRunner().invoke(app, ["report", "-i", str(phantom_split), "-o", str(tmp_path / "r2.html"),
                                       "-m", str(tiny_model)])
    assert refused.exit_code == 2 and "a report is for one" in refused.output
    from dosepred.io import nifti
    from dosepred.io.phantom import make_phantom

    nifti.write_patient(make_phantom((128, 128, 64)), tmp_path / "flat")  # the model would squeeze it into 128^3
    refused = CliRunner().invoke(app, ["report", "-i", str(tmp_path / "flat"), "-o", str(tmp_path / "r3.html"),
                                       "-m", str(tiny_model)])
    assert refused.exit_code == 2 and "grid 128x128x64 differs" in refused.output.replace("\n", "")
    assert not (tmp_path / "r3.html").exists()
