"""Predict a patient's dose with a network, at its working resolution, back on the patient's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from data_prep.errors import PatientDataError
from data_prep.patient import Patient
from dosepred.data.transforms import LEFT_RIGHT_AXIS, REFERENCE_DOSE_GY, flip_left_right, patient_to_sample, resize_to
from dosepred.networks import create_network

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelError(ValueError):
    """A model folder or weights file that cannot be used."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} asked for, but no CUDA device is available")
    return torch.device(name)


class Predictor:
    """A network ready to predict: ``predict(patient)`` returns the dose in Gy, zero outside the mask."""

    def __init__(self, network: nn.Module, *, resolution: int, device: torch.device, amp: bool = True,
                 patch_size: int | None = None) -> None:
        self.network = network.to(device).eval()
        self.resolution = resolution
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.patch_size = patch_size

    @classmethod
    def from_model_dir(cls, folder: str | Path, *, device: torch.device) -> Predictor:
        """Load ``config.json`` and ``model.safetensors`` from a model folder (pickles are never loaded)."""
        folder = Path(folder)
        if folder.is_file():
            raise ModelError(f"{folder}: give a model folder holding {WEIGHTS_FILE} and {CONFIG_FILE}; "
                             "pickled checkpoints (.pt, .pth, .ckpt) are refused")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                raise ModelError(f"{folder}: not a model folder (missing {name})")
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            network = create_network(**config["network"])
            network.load_state_dict(load_file(folder / WEIGHTS_FILE))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelError(f"{folder / CONFIG_FILE}: invalid model config ({error})") from None
        except (SafetensorError, RuntimeError, OSError) as error:
            raise ModelError(f"{folder / WEIGHTS_FILE}: cannot load weights ({error})") from None
        return cls(network, resolution=config["data"]["resolution"], device=device,
                   patch_size=config.get("inference", {}).get("patch_size"))

    def predict(self, patient: Patient, *, tta: bool = True) -> np.ndarray:
        """The predicted dose (Gy) on the patient's grid; test-time augmentation averages in the mirror image."""
        return self.predict_with_uncertainty(patient, tta=tta)[0]

    @torch.inference_mode()
    def predict_with_uncertainty(self, patient: Patient, *, tta: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The dose and, from models with a second output channel, its uncertainty (both Gy, zero outside the
        possible-dose mask); the uncertainty is None for single-output models."""
        if patient.ct.ndim != 3:
            raise PatientDataError(patient.source or patient.id, "expected a 3D patient")
        sample = patient_to_sample(patient)
        sample.pop("dose", None)
        if patient.shape != (self.resolution,) * 3:
            sample = resize_to(self.resolution)(sample)
        output = self.predict_volume(torch.as_tensor(sample["image"]).as_subclass(torch.Tensor), tta=tta)[None]
        if tuple(output.shape[2:]) != patient.shape:
            output = F.interpolate(output, size=patient.shape, mode="trilinear", align_corners=False)
        channels = output[0].clamp_(min=0).mul_(REFERENCE_DOSE_GY).cpu().numpy() * patient.possible_dose_mask
        return channels[0], (channels[1] if len(channels) > 1 else None)

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.patch_size and self.patch_size < batch.shape[-1]:
                output = sliding_window_inference(batch, (self.patch_size,) * 3, 1, self.network, overlap=0.25)
            else:
                output = self.network(batch)
        return output.float()
