"""A deterministic synthetic head-and-neck patient: the embedded default when OpenKBP is absent.

Geometry is defined in millimetres around the grid centre, so every grid size shows the same anatomy
(at 128^3 it has OpenKBP's field of view). Axes follow the OpenKBP files: 0 anterior->posterior,
1 patient right->left, 2 superior->inferior. The dose is plan-like: each PTV at its prescription
with slight heterogeneity, a Gaussian falloff outside it, a low exponential bath through the body, and
nothing outside the possible-dose mask (the body over the treated length).
"""

from __future__ import annotations

import numpy as np

from dosepred.io.patient import AIR_HU, GRID_SHAPE, PRESCRIPTION_GY, Patient

#: OpenKBP's typical spacing at 128^3 (mm); a smaller grid gets coarser voxels over the same field.
BASE_SPACING = (4.688, 4.688, 3.0)
PHANTOM_ID = "phantom"

Ellipsoid = tuple[tuple[float, float, float], tuple[float, float, float]]  # centre, radii (mm)
#: Targets: a right-sided primary (PTV70) inside its high-risk margin (PTV63) and bilateral nodes (PTV56).
TARGETS: dict[str, list[Ellipsoid]] = {
    "PTV70": [((-12, -16, 0), (30, 30, 45))],
    "PTV63": [((-8, -12, 10), (38, 40, 60))],
    "PTV56": [((0, -40, 40), (24, 22, 60)), ((0, 40, 40), (24, 22, 60))],
}
ORGANS: dict[str, Ellipsoid] = {
    "Brainstem": ((20, 0, -95), (12, 13, 28)),
    "RightParotid": ((5, -48, -25), (16, 11, 20)),
    "LeftParotid": ((5, 48, -25), (16, 11, 20)),
    "Larynx": ((-25, 0, 55), (14, 16, 22)),
}


def make_phantom(shape: tuple[int, int, int] = GRID_SHAPE, *, seed: int = 0) -> Patient:
    """Build the phantom on a grid of ``shape``; the same ``shape`` and ``seed`` give identical arrays."""
    spacing = tuple(round(BASE_SPACING[i] * GRID_SHAPE[i] / shape[i], 6) for i in range(3))
    # mm from the grid centre: a = anterior(-)/posterior(+), r = right(-)/left(+), s = superior(-)/inferior(+)
    a, r, s = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing[i] for i, n in enumerate(shape)],
                          indexing="ij", sparse=True)

    def radius(ellipsoid: Ellipsoid) -> np.ndarray:
        """Normalised ellipsoidal radius: < 1 inside."""
        (ca, cr, cs), (ra, rr, rs) = ellipsoid
        return np.sqrt(((a - ca) / ra) ** 2 + ((r - cr) / rr) ** 2 + ((s - cs) / rs) ** 2)

    def tube(ca: float, cr: float, ra: float, rr: float, top: float) -> np.ndarray:
        return (((a - ca) / ra) ** 2 + ((r - cr) / rr) ** 2 <= 1) & (s >= top)

    full = np.ones(shape, dtype=bool)
    # A rounded head on a neck that widens into the shoulders towards the inferior edge.
    head = radius(((0, 0, -100), (95, 78, 90))) <= 1
    half_width = np.clip(65.0 + 2.5 * (s - 90.0), 65.0, 220.0)
    neck = ((a / 85.0) ** 2 + (r / half_width) ** 2 <= 1) & (s > -100) & (s < 185)
    body = full & (head | neck)
    possible_dose = body & (s > -130) & (s < 140)
    jaw = ((-20, 0, 5), (42, 50, 40))
    mandible = (radius(jaw) <= 1) & (radius(((-20, 0, 5), (34, 42, 40))) > 1) & (a < -5)
    structures = {roi: radius(ellipsoid) <= 1 for roi, ellipsoid in ORGANS.items()}
    structures |= {
        "SpinalCord": tube(28, 0, 6, 6, -67),
        "Esophagus": tube(14, 0, 7, 9, 60),
        "Mandible": mandible,
    }
    distance = {target: np.min([(radius(e) - 1) * np.mean(e[1]) for e in parts], axis=0)
                for target, parts in TARGETS.items()}  # approximate mm outside each target
    structures |= {target: d <= 0 for target, d in distance.items()}
    structures = {roi: full & mask & possible_dose for roi, mask in structures.items()}

    ct = np.full(shape, AIR_HU, dtype=np.float32)
    ct[body] = 40.0  # soft tissue
    ct[body & ~((a / 75.0) ** 2 + (r / (half_width - 8)) ** 2 <= 1) & (s > -60)] = -90.0  # subcutaneous fat
    ct[full & (tube(45, 0, 16, 18, -60) | mandible) & body & ~structures["SpinalCord"]] = 700.0  # bone
    ct[full & tube(-18, 0, 7, 8, 40) & body & ~structures["Larynx"]] = -950.0  # airway
    noise = np.random.default_rng(seed).normal(0.0, 12.0, size=int(body.sum()))
    ct[body] += noise.astype(np.float32)

    dose = np.zeros(shape, dtype=np.float32)
    for target, d in distance.items():
        falloff = np.where(d <= 0, 1.0, np.exp(-0.5 * (d / 12.0) ** 2))
        bath = 0.3 * np.exp(-np.maximum(d, 0) / 50.0)
        dose = np.maximum(dose, PRESCRIPTION_GY[target] * np.maximum(falloff, bath))
    dose *= 1.0 + 0.03 * np.cos(a / 17.0) * np.cos(r / 23.0)  # mild heterogeneity
    return Patient(
        id=PHANTOM_ID,
        ct=np.round(ct),
        structures=structures,
        possible_dose_mask=possible_dose,
        spacing=spacing,  # type: ignore[arg-type]
        dose=np.round(dose * possible_dose, 3),
        source="synthetic phantom",
    )
