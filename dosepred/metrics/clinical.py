"""Plan-quality numbers a physicist checks: homogeneity, conformity, Vx/Dx and plan objectives.

Dx (% of volume) is the dose at least x % of the structure receives (numpy's linear percentile 100 - x, as
the OpenKBP metrics); Dcc the dose the hottest ``cc`` receive; Vx the percent of the structure receiving at
least x Gy. Homogeneity index (ICRU 83): (D2 - D98) / D50. Paddick conformity index: TV_PIV^2 / (TV x PIV),
with PIV the volume (anywhere) receiving at least the prescription; for PTV56 and PTV63 the target volume
includes the higher targets inside it, which a simultaneous boost also brings to that dose.

Plan objectives (``constraints.yaml``, shipped and editable) are one line each, e.g. ``SpinalCord D0.1cc <
45 Gy`` or ``PTV70 V95% >= 95 %``: a structure, a metric (``Dmean``, ``Dmax``, ``D<n>cc``, ``D<n>%``,
``V<n>Gy``, ``V<n>%`` of the prescription), a comparison and a value: a dose in Gy or, for a target, in % of
its prescription (``PTV70 D95% >= 95 %``); a volume in % of the structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dosepred.io import safe_yaml
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import PRESCRIPTION_GY, ROIS, Patient
from dosepred.metrics.openkbp import dose_at_volume_cc

DEFAULT_CONSTRAINTS = Path(__file__).with_name("constraints.yaml")
_OBJECTIVE = re.compile(r"(?P<roi>\w+)\s+(?P<metric>Dmean|Dmax|D[\d.]+cc|D[\d.]+%|V[\d.]+Gy|V[\d.]+%)\s*"
                        r"(?P<op><=|>=|<|>)\s*(?P<value>[\d.]+)\s*(?P<unit>Gy|%)")


def dose_at_volume_percent(dose: np.ndarray, percent: float) -> float:
    """Dx: the dose at least ``percent`` % of the voxels receive."""
    return float(np.percentile(dose, 100.0 - percent))


def volume_at_dose(dose: np.ndarray, gy: float) -> float:
    """Vx: percent of the voxels receiving at least ``gy``."""
    return float(100.0 * np.mean(dose >= gy))


def homogeneity_index(target_dose: np.ndarray) -> float:
    """ICRU 83: (D2 - D98) / D50; 0 for a perfectly uniform target dose."""
    d2, d50, d98 = (dose_at_volume_percent(target_dose, p) for p in (2, 50, 98))
    return (d2 - d98) / d50 if d50 > 0 else float("nan")


def paddick_conformity_index(dose: np.ndarray, target: np.ndarray, prescription_gy: float) -> float:
    """Paddick's CI = TV_PIV^2 / (TV x PIV); 1 when the prescription isodose is exactly the target."""
    covered = dose >= prescription_gy
    tv, piv, tv_piv = int(target.sum()), int(covered.sum()), int((covered & target).sum())
    return tv_piv**2 / (tv * piv) if tv and piv else 0.0


@dataclass(frozen=True)
class Objective:
    roi: str
    metric: str
    op: str
    value: float
    unit: str
    source: str

    @property
    def text(self) -> str:
        return f"{self.roi} {self.metric} {self.op} {self.value:g} {self.unit}"

    def measure(self, dose: np.ndarray, mask: np.ndarray, voxel_volume_mm3: float) -> float:
        """The objective's metric for one structure, in the objective's unit: a dose in Gy or in % of the
        structure's prescription, a volume in % of the structure."""
        values = dose[mask].astype(np.float64)
        number = float(re.sub(r"[^\d.]", "", self.metric) or 0)
        if self.metric.startswith("V"):
            gy = number if self.metric.endswith("Gy") else PRESCRIPTION_GY[self.roi] * number / 100
            return volume_at_dose(values, gy)
        if self.metric == "Dmean":
            measured = float(values.mean())
        elif self.metric == "Dmax":
            measured = float(values.max())
        elif self.metric.endswith("cc"):
            measured = dose_at_volume_cc(values, number, voxel_volume_mm3)
        else:
            measured = dose_at_volume_percent(values, number)
        return measured if self.unit == "Gy" else 100 * measured / PRESCRIPTION_GY[self.roi]

    def met(self, measured: float) -> bool:
        return {"<": measured < self.value, "<=": measured <= self.value, ">": measured > self.value,
                ">=": measured >= self.value}[self.op]


def load_objectives(path: str | Path | None = None) -> list[Objective]:
    """Read plan objectives (the shipped head-and-neck set by default)."""
    path = Path(path) if path is not None else DEFAULT_CONSTRAINTS
    try:
        content = safe_yaml.load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PatientDataError(path, f"cannot read the plan objectives ({type(error).__name__})") from None
    if not isinstance(content, dict) or not isinstance(content.get("objectives"), list):
        raise PatientDataError(path, "expected 'objectives:', a list of {objective: 'ROI METRIC OP VALUE UNIT', source: ...}")
    objectives = []
    for entry in content["objectives"]:
        text = entry.get("objective", "") if isinstance(entry, dict) else ""
        match = _OBJECTIVE.fullmatch(str(text).strip())
        if match is None or match["roi"] not in ROIS:
            raise PatientDataError(path, f"objective {text!r} is not 'ROI METRIC OP VALUE UNIT' with ROI one of "
                                   f"{', '.join(ROIS)} and UNIT Gy or % (e.g. 'SpinalCord D0.1cc < 45 Gy')")
        objective = Objective(match["roi"], match["metric"], match["op"], float(match["value"]), match["unit"],
                              str(entry.get("source", "")))
        if problem := _unit_problem(objective):
            raise PatientDataError(path, f"objective {text!r}: {problem}")
        objectives.append(objective)
    return objectives


def _unit_problem(objective: Objective) -> str | None:
    """Why the objective's unit cannot be measured, if it cannot: a volume is a % of the structure, and a %
    of the prescription needs a structure that has one."""
    volume = objective.metric.startswith("V")
    if volume and objective.unit != "%":
        return "a V metric is the percent of the structure that receives the dose: give its value in %"
    of_prescription = objective.metric.endswith("%") if volume else objective.unit == "%"
    if of_prescription and objective.roi not in PRESCRIPTION_GY:
        return (f"{objective.roi} has no prescription, so a dose in % of it means nothing: give the dose in Gy "
                f"(a % of the prescription is for {', '.join(PRESCRIPTION_GY)})")
    return None


def check_objectives(patient: Patient, dose: np.ndarray, objectives: list[Objective]) -> list[dict[str, object]]:
    """One row per objective whose structure the patient has: the predicted value and whether it is met, and
    the same for the reference dose when the patient has one."""
    rows = []
    for objective in objectives:
        mask = patient.structures.get(objective.roi)
        if mask is None:
            continue
        row: dict[str, object] = {"objective": objective.text}
        for name, values in (("predicted", dose), ("reference", patient.dose)):
            if values is not None:
                measured = objective.measure(values, mask, patient.voxel_volume_mm3)
                row[name] = round(measured, 2)
                row[f"{name} met"] = objective.met(measured)
        row["source"] = objective.source
        rows.append(row)
    return rows


@dataclass(frozen=True)
class GammaCriteria:
    dose_percent: float = 3.0
    distance_mm: float = 2.0
    threshold_percent: float = 10.0

    @property
    def text(self) -> str:
        return f"{self.dose_percent:g} %/{self.distance_mm:g} mm, global, {self.threshold_percent:g} % threshold"


#: AAPM TG-218's default criteria.
TG218 = GammaCriteria()


def clinical_review(patient: Patient, dose: np.ndarray, objectives: list[Objective],
                    gamma: GammaCriteria | None = TG218) -> dict[str, object]:
    """One patient's plan-quality numbers for the predicted dose (and the reference, when there is one):
    gamma pass rate against the reference, per target HI, Paddick CI and V95 %, and the objectives."""
    targets: dict[str, dict[str, object]] = {}
    for roi, mask in patient.structures.items():
        if roi not in PRESCRIPTION_GY:
            continue
        prescription = PRESCRIPTION_GY[roi]
        # In a simultaneous boost the higher targets are meant to get this prescription too: they count as target.
        meant = np.logical_or.reduce([m for r, m in patient.structures.items() if PRESCRIPTION_GY.get(r, 0) >= prescription])
        targets[roi] = {name: {
            "HI": round(homogeneity_index(values[mask]), 4),
            "Paddick CI": round(paddick_conformity_index(values, meant, prescription), 4),
            "V95%": round(volume_at_dose(values[mask], 0.95 * prescription), 2),
            "D95% (Gy)": round(dose_at_volume_percent(values[mask], 95), 2),
        } for name, values in (("predicted", dose), ("reference", patient.dose)) if values is not None}
    review: dict[str, object] = {"targets": targets, "objectives": check_objectives(patient, dose, objectives)}
    if gamma is not None and patient.dose is not None:
        from dosepred.metrics.gamma import gamma_index  # torch: only when gamma is asked for

        result = gamma_index(patient.dose, dose, patient.spacing, dose_percent=gamma.dose_percent,
                             distance_mm=gamma.distance_mm, threshold_percent=gamma.threshold_percent)
        review["gamma"] = {"criteria": gamma.text, "pass_rate_percent": round(result.pass_rate, 2),
                           "voxels": result.evaluated}
    return review


def _mean_of_defined(values: list[float]) -> float:
    defined = [value for value in values if np.isfinite(value)]
    return float(np.mean(defined)) if defined else float("nan")


def summarise_reviews(reviews: dict[str, dict]) -> dict[str, object]:
    """Means over patients of ``clinical_review`` results: gamma pass rate, per target measure (predicted and
    reference), and per objective how many patients meet it with each dose."""
    rates = [r["gamma"]["pass_rate_percent"] for r in reviews.values() if "gamma" in r]
    targets: dict[str, dict[str, dict[str, float]]] = {}
    for review in reviews.values():
        for roi, by_dose in review["targets"].items():
            for dose_name, measures in by_dose.items():
                for measure, value in measures.items():
                    targets.setdefault(roi, {}).setdefault(measure, {}).setdefault(dose_name, []).append(value)
    objectives: dict[str, dict[str, object]] = {}
    for review in reviews.values():
        for row in review["objectives"]:
            entry = objectives.setdefault(row["objective"], {"patients": 0, "predicted met": 0, "reference met": 0})
            entry["patients"] += 1
            entry["predicted met"] += bool(row.get("predicted met"))
            entry["reference met"] += bool(row.get("reference met"))
    return {
        "gamma_pass_rate_percent": {"mean": float(np.mean(rates)), "min": float(min(rates)), "max": float(max(rates))}
        if rates else None,
        # A measure that is undefined for one patient (HI with a D50 of 0) leaves the others' mean standing.
        "targets": {roi: {measure: {name: _mean_of_defined(values) for name, values in by_name.items()}
                          for measure, by_name in measures.items()} for roi, measures in sorted(targets.items())},
        "objectives": objectives,
    }
