"""From a Patient to tensors: the model input, the target dose and the loss mask.

Input channels (``INPUT_CHANNELS``), chosen over one channel per ROI:
  0 CT, HU clipped to [-1000, 1500] and scaled to [0, 1] (air 0, dense bone 1). The window keeps soft
    tissue, bone and air apart while capping metal and noise.
  1 target level: the prescription of the highest PTV covering the voxel / 70 Gy (0.8, 0.9, 1.0). The
    three PTVs differ only by prescription, so one channel with the level carries what three binary
    channels would, and it is monotone in the dose the plan aims for.
  2-8 the seven organs at risk, one binary channel each, so each can be spared differently.
  9 the possible-dose mask.
Target: dose / 70 Gy. All volumes may be resampled to a cubic working grid (e.g. 64^3 on CPU).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Resized

from data_prep.patient import CT_FILE_OFFSET, OARS, PRESCRIPTION_GY, Patient

REFERENCE_DOSE_GY = 70.0
CT_WINDOW_HU = (-CT_FILE_OFFSET, 1500.0)
INPUT_CHANNELS = ("CT", "target level", *OARS, "possible dose mask")
#: Channel pairs exchanged by a left-right flip.
LEFT_RIGHT_CHANNELS = (INPUT_CHANNELS.index("RightParotid"), INPUT_CHANNELS.index("LeftParotid"))
#: The patient's right-left axis among the spatial axes of a channel-first volume.
LEFT_RIGHT_AXIS = 1
#: The volumes of a sample; "teacher_dose" (teachers' mean and spread) exists only when distilling.
VOLUME_KEYS = ("image", "dose", "possible_dose_mask", "teacher_dose")


def patient_to_sample(patient: Patient) -> dict[str, object]:
    """A channel-first sample: ``image`` (10, *shape), ``possible_dose_mask`` (1, ...), ``dose`` (1, ...)."""
    low, high = CT_WINDOW_HU
    ct = (np.clip(patient.ct, low, high) - low) / (high - low)
    level = np.zeros(patient.shape, dtype=np.float32)
    for target, gy in PRESCRIPTION_GY.items():
        if target in patient.structures:
            np.maximum(level, patient.structures[target] * np.float32(gy / REFERENCE_DOSE_GY), out=level)
    oars = [patient.structures.get(roi, np.zeros(patient.shape, dtype=bool)) for roi in OARS]
    image = np.stack([ct, level, *oars, patient.possible_dose_mask]).astype(np.float32)
    sample: dict[str, object] = {
        "id": patient.id,
        "image": torch.from_numpy(image),
        "possible_dose_mask": torch.from_numpy(patient.possible_dose_mask[None].astype(np.float32)),
    }
    if patient.dose is not None:
        sample["dose"] = torch.from_numpy((patient.dose / REFERENCE_DOSE_GY)[None].astype(np.float32))
    return sample


def resize_to(resolution: int) -> Resized:
    """Resample every volume to ``resolution``^3: area averaging keeps masks as occupancy fractions."""
    return Resized(keys=VOLUME_KEYS, spatial_size=(resolution,) * 3, mode=("area", "area", "nearest", "area"),
                   allow_missing_keys=True)


def flip_left_right(image: torch.Tensor) -> torch.Tensor:
    """Mirror an input across the sagittal plane; the left and right parotid channels trade places."""
    flipped = torch.flip(image, dims=(LEFT_RIGHT_AXIS + 1,))
    right, left = LEFT_RIGHT_CHANNELS
    order = list(range(flipped.shape[0]))
    order[right], order[left] = left, right
    return flipped[order]


class RandFlipLeftRightd(RandomizableTransform, MapTransform):
    """With probability ``prob``, mirror the sample left-right, swapping the parotid channels of ``image``."""

    def __init__(self, keys: KeysCollection = VOLUME_KEYS, prob: float = 0.5) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        for key in self.key_iterator(out):
            volume = torch.as_tensor(out[key])
            out[key] = flip_left_right(volume) if key == "image" else torch.flip(volume, dims=(LEFT_RIGHT_AXIS + 1,))
        return out
