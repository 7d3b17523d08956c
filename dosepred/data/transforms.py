"""From a Patient to tensors: a compact sample kept in memory, expanded on the device into model inputs.

Input channels (``input_channels``), chosen over one channel per ROI:
  0 CT, HU clipped to [-1000, 1500] and scaled to [0, 1] (air 0, dense bone 1). The window keeps soft
    tissue, bone and air apart while capping metal and noise.
  1 target level: the prescription of the highest PTV covering the voxel / 70 Gy (0.8, 0.9, 1.0). The
    three PTVs differ only by prescription, so one channel with the level carries what three binary
    channels would, and it is monotone in the dose the plan aims for.
  2-8 the seven organs at risk, one binary channel each, so each can be spared differently.
  9 the possible-dose mask.
  10-11 (beam-aware models) beam coverage and target proximity, see ``dosepred.data.geometry``.
Target: dose / 70 Gy. Volumes may be resampled to a cubic working grid (e.g. 64^3) by area averaging,
so masks become occupancy fractions there.

A compact sample stores the CT as whole HU (int16, within the window), the ten ROIs and the possible-dose
mask as bits of one int16 volume, the beam channels as float16 and the dose as float32: 24 MB per 128^3
patient instead of 84 MB, so a whole training split stays in memory and travels to a GPU as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dosepred.io.patient import CT_FILE_OFFSET, OARS, PRESCRIPTION_GY, ROIS, Patient
from dosepred.data.geometry import beam_coverage, target_proximity

REFERENCE_DOSE_GY = 70.0
CT_WINDOW_HU = (-CT_FILE_OFFSET, 1500.0)
INPUT_CHANNELS = ("CT", "target level", *OARS, "possible dose mask")
BEAM_CHANNELS = ("beam coverage", "target proximity")
#: Channels of the image and of the structures exchanged by a left-right flip.
LEFT_RIGHT_CHANNELS = (INPUT_CHANNELS.index("RightParotid"), INPUT_CHANNELS.index("LeftParotid"))
LEFT_RIGHT_ROIS = (ROIS.index("RightParotid"), ROIS.index("LeftParotid"))
#: The patient's right-left axis among the spatial axes of a volume.
LEFT_RIGHT_AXIS = 1
#: Bit of the possible-dose mask in the packed masks; ROI r is bit r.
MASK_BIT = len(ROIS)
#: The targets' bits in the packed masks and their levels (prescription / 70 Gy).
_TARGET_BITS = [ROIS.index(roi) for roi in PRESCRIPTION_GY]
_LEVELS = torch.tensor([gy / REFERENCE_DOSE_GY for gy in PRESCRIPTION_GY.values()])


def input_channels(beam_angles: Sequence[float] | None = None) -> tuple[str, ...]:
    """The names of the model's input channels; beam-aware models have two more."""
    return INPUT_CHANNELS + (BEAM_CHANNELS if beam_angles else ())


def target_level(patient: Patient) -> np.ndarray:
    """The prescription of the highest target covering each voxel / 70 Gy (0 outside every target)."""
    level = np.zeros(patient.shape, dtype=np.float32)
    for target, gy in PRESCRIPTION_GY.items():
        if target in patient.structures:
            np.maximum(level, patient.structures[target] * np.float32(gy / REFERENCE_DOSE_GY), out=level)
    return level


def patient_to_sample(patient: Patient, *, beam_angles: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The compact sample of a patient on its own grid: ``ct`` (1, ...) int16 HU, ``masks`` (1, ...) int16
    bits, ``beams`` (2, ...) float16 when ``beam_angles`` are given, ``dose`` (1, ...) float32 when known."""
    ct = np.round(np.clip(patient.ct, *CT_WINDOW_HU)).astype(np.int16)
    masks = patient.possible_dose_mask.astype(np.int16) << MASK_BIT
    for bit, roi in enumerate(ROIS):
        if roi in patient.structures:
            masks |= patient.structures[roi].astype(np.int16) << bit
    sample = {"ct": torch.from_numpy(ct[None]), "masks": torch.from_numpy(masks[None])}
    if beam_angles:
        level = target_level(patient)
        mask = patient.possible_dose_mask.astype(bool)
        beams = np.stack([beam_coverage(level, patient.spacing, beam_angles) * mask,
                          target_proximity(level > 0, patient.spacing, within=mask)])
        sample["beams"] = torch.from_numpy(beams.astype(np.float16))
    if patient.dose is not None:
        sample["dose"] = torch.from_numpy((patient.dose / REFERENCE_DOSE_GY)[None].astype(np.float32))
    return sample


def model_inputs(batch: dict[str, torch.Tensor], *, resolution: int | None = None) -> dict[str, torch.Tensor]:
    """Expand a batch of compact samples, on whatever device it is, into float volumes at ``resolution``^3:
    ``image`` (N, C, ...), ``structures`` (N, 10, ...), ``possible_dose_mask`` (N, 1, ...), ``dose`` if known."""
    masks = batch["masks"]
    bits = torch.arange(MASK_BIT + 1, dtype=masks.dtype, device=masks.device).view(1, -1, 1, 1, 1)  # no int64 copies
    unpacked = ((masks >> bits) & 1).float()  # (N, 11, ...)
    structures, possible = unpacked[:, :MASK_BIT], unpacked[:, MASK_BIT:]
    level = (structures[:, _TARGET_BITS] * _LEVELS.to(masks.device).view(1, -1, 1, 1, 1)).amax(dim=1, keepdim=True)
    low, high = CT_WINDOW_HU
    ct = (batch["ct"].float().clamp(low, high) - low) / (high - low)  # HU to [0, 1]: air 0, dense bone 1
    parts = [ct, level, structures[:, : len(OARS)], possible]
    if "beams" in batch:
        parts.append(batch["beams"].float())
    out = {"image": torch.cat(parts, dim=1), "structures": structures, "possible_dose_mask": possible}
    if "dose" in batch:
        out["dose"] = batch["dose"].float()
    if resolution is not None and tuple(masks.shape[2:]) != (resolution,) * 3:
        out = {key: F.interpolate(value, size=(resolution,) * 3, mode="area") for key, value in out.items()}
        # the loss mask: coarse voxels at least half inside, centred where the other channels' averages are
        out["possible_dose_mask"] = (out["possible_dose_mask"] >= 0.5).float()
    return out


def flip_left_right(image: torch.Tensor) -> torch.Tensor:
    """Mirror a channel-first volume (C, ...) across the sagittal plane; the parotid channels trade places."""
    flipped = torch.flip(image, dims=(LEFT_RIGHT_AXIS + 1,))
    right, left = LEFT_RIGHT_CHANNELS
    order = list(range(flipped.shape[0]))
    order[right], order[left] = left, right
    return flipped[order]
