from __future__ import annotations

import numpy as np
import torch

from data_prep.patient import Patient
from dosepred.data.dataset import PatientSamples, stack
from dosepred.data.transforms import INPUT_CHANNELS, RandFlipLeftRightd, flip_left_right, patient_to_sample, resize_to


def lateral_patient() -> Patient:
    """Right parotid at low axis-1 indices (patient right), left parotid at high ones; a dose on the right."""
    shape = (8, 10, 6)
    right, left = np.zeros(shape, bool), np.zeros(shape, bool)
    right[2:4, 1:3, 2:4] = True
    left[2:4, 7:9, 2:4] = True
    dose = np.zeros(shape, np.float32)
    dose[:, :5] = 35.0
    return Patient(id="lr", ct=np.zeros(shape), structures={"RightParotid": right, "LeftParotid": left},
                   possible_dose_mask=np.ones(shape, bool), spacing=(3.0, 3.0, 3.0), dose=dose)


def test_sample_channels() -> None:
    patient = lateral_patient()
    patient.structures["PTV63"] = patient.structures["RightParotid"].copy()
    sample = patient_to_sample(patient)
    image = sample["image"]
    assert image.shape == (len(INPUT_CHANNELS), 8, 10, 6)
    assert torch.allclose(image[1].max(), torch.tensor(0.9))  # PTV63: 63 / 70
    assert image[0].max() <= 1 and image[0].min() >= 0
    assert torch.allclose(sample["dose"].max(), torch.tensor(0.5))  # 35 Gy / 70 Gy


def test_left_right_flip_swaps_the_parotid_channels() -> None:
    patient = lateral_patient()
    image = patient_to_sample(patient)["image"]
    right, left = INPUT_CHANNELS.index("RightParotid"), INPUT_CHANNELS.index("LeftParotid")
    flipped = flip_left_right(image)
    # The mirrored patient's right parotid is the original left parotid, mirrored: back on the right side.
    assert torch.equal(flipped[right], torch.flip(image[left], dims=(1,)))
    assert torch.equal(flipped[left], torch.flip(image[right], dims=(1,)))
    assert flipped[right][:, :5].sum() > 0 and flipped[right][:, 5:].sum() == 0
    assert torch.equal(flip_left_right(flipped), image)


def test_random_flip_moves_dose_and_masks_with_the_image() -> None:
    sample = patient_to_sample(lateral_patient())
    flip = RandFlipLeftRightd(prob=1.0)
    out = flip(sample)
    assert torch.equal(out["dose"], torch.flip(sample["dose"], dims=(2,)))
    assert out["dose"][0, :, 5:].min() == 0.5  # the dose moved to the (new) right side's mirror
    assert torch.equal(out["image"], flip_left_right(sample["image"]))


def test_resize_keeps_masks_as_occupancy(phantom_small) -> None:
    sample = resize_to(16)(patient_to_sample(phantom_small))
    assert sample["image"].shape[1:] == (16, 16, 16)
    assert set(torch.unique(sample["possible_dose_mask"]).tolist()) <= {0.0, 1.0}
    assert 0 < float(sample["image"][9].mean()) < 1


def test_augmentation_is_a_function_of_the_seed(tiny_packs) -> None:
    data = PatientSamples.from_source(tiny_packs / "train", resolution=32, augment=True)
    a, b = data.sample(0, seed=5), data.sample(0, seed=5)
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in ("image", "dose"))
    batch = stack([data.sample(i, seed=i) for i in range(3)])
    assert batch["image"].shape == (3, 10, 32, 32, 32) and batch["dose"].shape == (3, 1, 32, 32, 32)


def test_attached_volumes_are_augmented_with_the_dose(tiny_packs) -> None:
    data = PatientSamples.from_source(tiny_packs / "train", resolution=32, augment=True)
    data.attach("teacher_dose", [torch.as_tensor(data.dataset[i]["dose"]).repeat(2, 1, 1, 1) for i in range(len(data))])
    moved = 0
    for seed in range(8):
        item = data.sample(1, seed=seed)
        dose, attached = torch.as_tensor(item["dose"]), torch.as_tensor(item["teacher_dose"])
        torch.testing.assert_close(attached, dose.repeat(2, 1, 1, 1))
        moved += not torch.equal(dose, torch.as_tensor(data.dataset[1]["dose"]))
    assert moved > 0  # some seeds did augment
    assert stack([data.sample(0, seed=0)])["teacher_dose"].shape == (1, 2, 32, 32, 32)
