"""Clinical ROI names -> the structures a model knows: a shipped, editable synonym table (``roi_names.yaml``).

A clinic names its contours its own way (TG-263 ``Parotid_L``, ``PTV_7000``, ``BrainStem``); the models know
OpenKBP's ten structures. ``map_rois`` sorts a patient's ROI names into those ten, the body outline and
the rest, which the caller reports: nothing is dropped silently.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dosepred.io import safe_yaml
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import OARS, PRESCRIPTION_GY, TARGETS

DEFAULT_TABLE = Path(__file__).with_name("roi_names.yaml")
BODY = "Body"
#: "PTV" + a number + an optional unit, nothing else: PTV70, PTV_7000, PTV 70Gy, ptv-70.0.
_PTV_NAME = re.compile(r"ptv[\s_\-]*(\d+(?:[.,]\d+)?)[\s_\-]*(c?gy)?", re.IGNORECASE)


class UnmappedRoiWarning(UserWarning):
    """ROIs of a patient that no model input takes (listed so a user can map them)."""


def normalise(name: str) -> str:
    """The form names are compared in: lower case, no spaces, '_', '-' or '.'."""
    return re.sub(r"[\s_\-.]", "", name).lower()


def prescription_in_name(name: str) -> float | None:
    """The prescription (Gy) a PTV's name carries, or None when it is not such a name.

    Numbers of 100 and more, or with the unit cGy, are in cGy (``PTV_7000`` is 70 Gy).
    """
    match = _PTV_NAME.fullmatch(name.strip())
    if match is None:
        return None
    value = float(match.group(1).replace(",", "."))
    unit = (match.group(2) or "").lower()
    return value / 100 if unit == "cgy" or (unit != "gy" and value >= 100) else value


@dataclass(frozen=True)
class RoiNames:
    """The synonym table: normalised name -> structure (one of ``OARS`` or ``BODY``), named targets in Gy."""

    synonyms: dict[str, str]
    targets: dict[str, float] = field(default_factory=dict)
    target_tolerance_gy: float = 3.5

    @classmethod
    def load(cls, path: str | Path | None = None, *, prescriptions: dict[str, float] | None = None) -> RoiNames:
        """Read a table (the shipped one by default); ``prescriptions`` (ROI name -> Gy) add to its targets."""
        path = Path(path) if path is not None else DEFAULT_TABLE
        try:
            content = safe_yaml.load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise PatientDataError(path, f"cannot read the ROI name table ({type(error).__name__})") from None
        if not isinstance(content, dict):
            raise PatientDataError(path, "the ROI name table must be a mapping (see dosepred/io/roi_names.yaml)")
        synonyms: dict[str, str] = {}
        structures = content.get("structures") or {}
        unknown = set(structures) - set(OARS) if isinstance(structures, dict) else set()
        if not isinstance(structures, dict) or unknown:
            raise PatientDataError(path, f"'structures' maps each of {', '.join(OARS)} to a list of names"
                                   + (f"; unknown: {sorted(unknown)}" if unknown else ""))
        for structure, names in [*structures.items(), (BODY, content.get("body") or [])]:
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise PatientDataError(path, f"the names of {structure} must be a list of strings")
            for name in names:
                taken = synonyms.setdefault(normalise(name), structure)
                if taken != structure:
                    raise PatientDataError(path, f"the name {name!r} stands for both {taken} and {structure}")
        listed = content.get("targets") or {}
        if not isinstance(listed, dict) or not all(isinstance(name, str) for name in listed):
            raise PatientDataError(path, "'targets' maps each target's name to its prescription (Gy)")
        targets = {**listed, **(prescriptions or {})}
        tolerance = content.get("target_tolerance_gy", 3.5)
        if not all(isinstance(gy, (int, float)) and gy > 0 for gy in targets.values()) \
                or not isinstance(tolerance, (int, float)) or tolerance < 0:
            raise PatientDataError(path, "target prescriptions and target_tolerance_gy must be positive numbers (Gy)")
        return cls(synonyms, {normalise(name): float(gy) for name, gy in targets.items()}, float(tolerance))

    def target_level(self, prescription_gy: float) -> str | None:
        """The model's target (PTV56, PTV63, PTV70) nearest to a prescription, within the tolerance."""
        nearest = min(TARGETS, key=lambda target: abs(PRESCRIPTION_GY[target] - prescription_gy))
        return nearest if abs(PRESCRIPTION_GY[nearest] - prescription_gy) <= self.target_tolerance_gy else None

    def structure_of(self, name: str) -> str | None:
        """The structure a ROI name stands for (an OAR, a target or ``BODY``), or None."""
        key = normalise(name)
        if key in self.synonyms:
            return self.synonyms[key]
        prescription = self.targets.get(key, prescription_in_name(name))
        return None if prescription is None else self.target_level(prescription)


@dataclass
class RoiMapping:
    """Where each ROI name of one patient went."""

    structures: dict[str, list[str]]  # structure (OpenKBP name or BODY) -> the patient's ROI names
    unmapped: list[str]

    def table(self) -> list[tuple[str, str]]:
        """(ROI name, structure or '-') for every ROI, for reports."""
        rows = [(name, structure) for structure, names in self.structures.items() for name in names]
        return sorted(rows + [(name, "-") for name in self.unmapped])


def map_rois(names: list[str], table: RoiNames, where: str | Path) -> RoiMapping:
    """Sort ROI names into structures; warns (``UnmappedRoiWarning``) with every name that maps to none.

    Several names may map to one structure (their masks are joined by the caller).
    """
    structures: dict[str, list[str]] = {}
    unmapped: list[str] = []
    for name in names:
        structure = table.structure_of(name)
        if structure is None:
            unmapped.append(name)
        else:
            structures.setdefault(structure, []).append(name)
    warn_unmapped(unmapped, where, "map them in a ROI name table (--roi-names) or give a target's prescription (--ptv)")
    return RoiMapping(structures, unmapped)


def warn_unmapped(names: list[str], where: str | Path, hint: str, why: str = "not known to the model") -> None:
    """Warn (``UnmappedRoiWarning``) that these ROIs or ROI files are left out, if there are any."""
    if names:
        warnings.warn(UnmappedRoiWarning(f"{where}: {len(names)} ROI(s) left out, {why}: "
                                         f"{', '.join(sorted(names))} ({hint})"), stacklevel=3)
