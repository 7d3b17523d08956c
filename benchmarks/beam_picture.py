"""Picture of the beam-geometry channels of one patient, to check that the strips point the right way.

Top row: the axial slice through the centre of the highest target, with the CT, the strip of the 0 deg
(anterior) beam, the strip of the 80 deg beam (from the patient's left, 10 deg anterior of lateral), the
beam coverage of all 9 beams and the reference dose. Rows are axis 0 (anterior at the top), columns axis 1
(the patient's right on the left, the radiological view).

    python benchmarks/beam_picture.py ../shared/openkbp/sample/validation-pats/pt_201 -o benchmarks/results/beam_channels.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dosepred.io import sources
from dosepred.data.geometry import OPENKBP_BEAM_ANGLES, beam_coverage, beam_strips, target_proximity
from dosepred.data.transforms import target_level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patient", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/beam_channels.png"))
    args = parser.parse_args()
    patient = sources.read_patient(args.patient)
    level = target_level(patient)
    k = int(np.round(np.nonzero(level == level.max())[2].mean()))
    panels = {
        "CT": patient.ct[:, :, k],
        "0° beam strip": beam_strips(level, patient.spacing, 0.0)[:, :, k],
        "80° beam strip": beam_strips(level, patient.spacing, 80.0)[:, :, k],
        "coverage (9 beams)": beam_coverage(level, patient.spacing, OPENKBP_BEAM_ANGLES)[:, :, k] * patient.possible_dose_mask[:, :, k],
        "target proximity": target_proximity(level > 0, patient.spacing)[:, :, k] * patient.possible_dose_mask[:, :, k],
        "reference dose": patient.dose[:, :, k] if patient.dose is not None else np.zeros_like(level[:, :, k]),
    }
    figure = Figure(figsize=(18, 3.4))
    for axis, (title, image) in zip(figure.subplots(1, len(panels)), panels.items()):
        axis.imshow(image, cmap="gray" if title == "CT" else "viridis")
        axis.contour(level[:, :, k] > 0, levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(title)
        axis.set_xlabel("axis 1: patient's right → left")
        axis.set_ylabel("axis 0: anterior → posterior")
    figure.suptitle(f"{patient.id}, axial slice {k}; red: targets")
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
