"""Predict a patient's dose with a network, at its working resolution, back on the patient's grid."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from dosepred.io.patient import Patient, require_target
from dosepred.data.transforms import LEFT_RIGHT_AXIS, REFERENCE_DOSE_GY, flip_left_right, model_inputs, patient_to_sample
from dosepred.devices import fast_path
from dosepred.engine.config import MAX_RESOLUTION, MIN_RESOLUTION
from dosepred.models import ModelError, ModelFolder
from dosepred.networks import create_network



class Predictor:
    """A network ready to predict: ``predict(patient)`` returns the dose in Gy, zero outside the mask."""

    def __init__(self, network: nn.Module, *, resolution: int, device: torch.device, amp: bool = True,
                 patch_size: int | None = None, beam_angles: list[float] | None = None) -> None:
        self.amp = amp and fast_path(device)
        self.network = network.to(device).eval()
        if self.amp:
            self.network.to(memory_format=torch.channels_last_3d)
        self.resolution = resolution
        self.device = device
        self.patch_size = patch_size
        self.beam_angles = beam_angles

    @classmethod
    def from_folder(cls, folder: ModelFolder, *, device: torch.device, amp: bool = True) -> Predictor:
        """The dose network of a model folder read by ``dosepred.models.read_model``."""
        config = folder.config
        try:
            resolution, beam_angles = config["data"]["resolution"], config["data"].get("beam_angles")
            patch_size = config.get("inference", {}).get("patch_size")
            _check_settings(resolution, patch_size, beam_angles)
            network = folder.fitted(lambda: create_network(**config["network"]))
        except ModelError:
            raise
        except Exception as error:  # noqa: BLE001 - a config builds any network: its faults are the config's
            raise ModelError(f"{folder.path}: invalid dose model config ({type(error).__name__}: {error})") from None
        return cls(network, resolution=resolution, device=device, amp=amp, beam_angles=beam_angles,
                   patch_size=patch_size)

    def predict(self, patient: Patient, *, tta: bool = True, inputs: torch.Tensor | None = None) -> np.ndarray:
        """The predicted dose (Gy) on the patient's grid; test-time augmentation averages in the mirror image.
        ``inputs``: the patient's ``inputs(patient)`` when already computed (an ensemble's members share them)."""
        return self.predict_with_uncertainty(patient, tta=tta, inputs=inputs)[0]

    @torch.inference_mode()
    def predict_with_uncertainty(self, patient: Patient, *, tta: bool = True,
                                 inputs: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The dose and, from models with a second output channel, its uncertainty (both Gy, zero outside the
        possible-dose mask); the uncertainty is None for single-output models."""
        output = self.predict_volume(self.inputs(patient) if inputs is None else inputs, tta=tta)[None]
        if not torch.isfinite(output).all():
            raise ModelError(f"{patient.id}: the model's output holds NaN or infinite values")
        if tuple(output.shape[2:]) != patient.shape:
            output = F.interpolate(output, size=patient.shape, mode="trilinear", align_corners=False)
        channels = output[0].clamp_(min=0).mul_(REFERENCE_DOSE_GY).cpu().numpy() * patient.possible_dose_mask
        return channels[0], (channels[1] if len(channels) > 1 else None)

    def inputs(self, patient: Patient) -> torch.Tensor:
        """The model's input volume (C, r, r, r) for a patient, on the predictor's device.

        Raises:
            PatientDataError: the patient has no target (PTV) contoured.
        """
        require_target(patient)
        sample = patient_to_sample(patient, beam_angles=self.beam_angles)
        sample.pop("dose", None)
        batch = {key: value[None].to(self.device) for key, value in sample.items()}
        return model_inputs(batch, resolution=self.resolution)["image"][0]

    @torch.inference_mode()
    def predict_volume(self, image: torch.Tensor, *, tta: bool = True) -> torch.Tensor:
        """The raw output channels (dose / 70 Gy, ...) for one input volume at the working resolution."""
        image = image.to(self.device)
        output = self._forward(image[None])
        if tta:
            mirrored = self._forward(flip_left_right(image)[None])
            output = (output + torch.flip(mirrored, dims=(LEFT_RIGHT_AXIS + 2,))) / 2
        return output[0]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.amp:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.patch_size and self.patch_size < batch.shape[-1]:
                output = sliding_window_inference(batch, (self.patch_size,) * 3, 1, self.network, overlap=0.25)
            else:
                output = self.network(batch)
        return output.float()


def _check_settings(resolution: object, patch_size: object, beam_angles: object) -> None:
    """A model config's grid, patch and beams, checked before anything is built or allocated from them."""
    if type(resolution) is not int or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"data.resolution must be a whole number of voxels from {MIN_RESOLUTION} to "
                         f"{MAX_RESOLUTION}, not {resolution!r}")
    if patch_size is not None and (type(patch_size) is not int or not 8 <= patch_size <= resolution):
        raise ValueError(f"inference.patch_size must be a whole number from 8 to data.resolution, not {patch_size!r}")
    if beam_angles is not None and not (isinstance(beam_angles, list) and 0 < len(beam_angles) <= 360 and all(
            type(angle) in (int, float) and math.isfinite(angle) for angle in beam_angles)):
        raise ValueError(f"data.beam_angles must be a list of angles in degrees, not {beam_angles!r}")
