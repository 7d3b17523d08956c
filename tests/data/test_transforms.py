from __future__ import annotations

import numpy as np
import torch

from dosepred.io.patient import ROIS, Patient
from dosepred.data.augment import Augmentation
from dosepred.data.dataset import ExpandedSamples, PatientSamples
from dosepred.data.geometry import target_proximity
from dosepred.data.transforms import INPUT_CHANNELS, flip_left_right, input_channels, model_inputs, patient_to_sample


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


def expanded(patient: Patient, **kwargs) -> dict[str, torch.Tensor]:
    return model_inputs({key: value[None] for key, value in patient_to_sample(patient, **kwargs).items()})


def test_sample_channels() -> None:
    patient = lateral_patient()
    patient.structures["PTV63"] = patient.structures["RightParotid"].copy()
    inputs = expanded(patient)
    image = inputs["image"][0]
    assert image.shape == (len(INPUT_CHANNELS), 8, 10, 6)
    assert torch.allclose(image[1].max(), torch.tensor(0.9))  # PTV63: 63 / 70
    assert image[0].max() <= 1 and image[0].min() >= 0
    assert torch.allclose(inputs["dose"].max(), torch.tensor(0.5))  # 35 Gy / 70 Gy
    for roi in ("RightParotid", "LeftParotid", "PTV63"):  # the packed masks come back exactly
        assert torch.equal(inputs["structures"][0, ROIS.index(roi)].bool(), torch.from_numpy(patient.structures[roi]))
    assert torch.equal(image[INPUT_CHANNELS.index("RightParotid")], inputs["structures"][0, ROIS.index("RightParotid")])


def test_beam_channels_are_added_when_beam_angles_are_given() -> None:
    patient = lateral_patient()
    patient.structures["PTV70"] = patient.structures["RightParotid"].copy()
    image = expanded(patient, beam_angles=[0, 120, 240])["image"][0]
    assert image.shape[0] == len(input_channels([0])) == len(INPUT_CHANNELS) + 2
    coverage, proximity = image[-2], image[-1]
    inside = torch.from_numpy(patient.structures["PTV70"])
    assert torch.allclose(coverage[inside], torch.tensor(1.0), atol=1e-3)  # every beam crosses the target
    assert torch.allclose(proximity[inside], torch.tensor(1.0), atol=1e-3)
    assert 0 < float(proximity[~inside].max()) < 1


def test_proximity_in_the_box_of_the_needed_voxels_is_exactly_the_whole_volumes() -> None:
    rng = np.random.default_rng(0)
    targets = np.zeros((40, 36, 30), bool)
    targets[12:18, 20:25, 8:12] = True
    targets[30, 5, 20] = True  # a second, far target voxel: the box must hold it
    within = np.zeros_like(targets)
    within[5:25, 10:30, 4:16] = rng.random((20, 20, 12)) < 0.7
    spacing = (2.5, 2.0, 3.0)
    whole = target_proximity(targets, spacing)
    assert whole.min() > 0  # every voxel has a value without ``within``
    np.testing.assert_array_equal(target_proximity(targets, spacing, within=within), whole * within)


def test_left_right_flip_swaps_the_parotid_channels() -> None:
    image = expanded(lateral_patient())["image"][0]
    right, left = INPUT_CHANNELS.index("RightParotid"), INPUT_CHANNELS.index("LeftParotid")
    flipped = flip_left_right(image)
    # The mirrored patient's right parotid is the original left parotid, mirrored: back on the right side.
    assert torch.equal(flipped[right], torch.flip(image[left], dims=(1,)))
    assert torch.equal(flipped[left], torch.flip(image[right], dims=(1,)))
    assert flipped[right][:, :5].sum() > 0 and flipped[right][:, 5:].sum() == 0
    assert torch.equal(flip_left_right(flipped), image)


def test_batch_flip_moves_dose_and_masks_with_the_image() -> None:
    patient = lateral_patient()
    compact = {key: value[None] for key, value in patient_to_sample(patient).items()}
    mirror_only = Augmentation(flip_prob=1.0, affine_prob=0.0)
    out = model_inputs(mirror_only(compact, [0]))
    original = model_inputs(compact)
    assert torch.equal(out["dose"], torch.flip(original["dose"], dims=(3,)))
    assert out["dose"][0, 0, :, 5:].min() == 0.5  # the dose moved to the mirror side
    assert torch.equal(out["image"][0], flip_left_right(original["image"][0]))


def test_resize_keeps_masks_as_occupancy(phantom_small) -> None:
    inputs = model_inputs({key: value[None] for key, value in patient_to_sample(phantom_small).items()}, resolution=16)
    assert inputs["image"].shape[2:] == (16, 16, 16)
    assert set(torch.unique(inputs["possible_dose_mask"]).tolist()) <= {0.0, 1.0}
    assert 0 < float(inputs["image"][0, 9].mean()) < 1
    # the loss mask is the mask channel's coarse voxels at least half inside: no half-voxel offset between them
    occupancy = torch.nn.functional.avg_pool3d(torch.from_numpy(phantom_small.possible_dose_mask[None, None]).float(),
                                               phantom_small.shape[0] // 16)
    assert torch.equal(inputs["possible_dose_mask"], (occupancy >= 0.5).float())


def test_beam_rotation_turns_the_anatomy_about_the_long_axis() -> None:
    augmentation = Augmentation(flip_prob=0.0, affine_prob=0.0, beam_rotation_prob=1.0, beam_step_deg=90.0)
    flip, matrix = augmentation.draw(3)
    assert not flip and matrix is not None
    assert np.allclose(matrix[2], [0, 0, 1, 0])  # axis 2 (superior-inferior) stays put
    assert np.allclose(np.abs(matrix[:2, :2]), [[0, 1], [1, 0]])  # a quarter turn in the axial plane


def test_augmentation_is_a_function_of_the_seed(tiny_packs) -> None:
    data = PatientSamples.from_source(tiny_packs / "train", resolution=32, augmentation=Augmentation())
    a, b = data.batch([0], [5]), data.batch([0], [5])
    assert all(torch.equal(a[k], b[k]) for k in ("image", "dose", "structures"))
    batch = data.batch([0, 1, 2], [0, 1, 2])
    assert batch["image"].shape == (3, 10, 32, 32, 32) and batch["dose"].shape == (3, 1, 32, 32, 32)


def test_attached_volumes_are_augmented_with_the_dose(tiny_packs) -> None:
    data = PatientSamples.from_source(tiny_packs / "train", resolution=32, augmentation=Augmentation())
    data.attach("teacher_dose", [data.inputs(i)["dose"][0].repeat(2, 1, 1, 1) for i in range(len(data))])
    moved = 0
    for seed in range(8):
        item = data.batch([1], [seed])
        torch.testing.assert_close(item["teacher_dose"], item["dose"].repeat(1, 2, 1, 1, 1), atol=1e-6, rtol=0)
        moved += not torch.equal(item["dose"], data.inputs(1)["dose"])
    assert moved > 0  # some seeds did augment
    assert data.batch([0], [0])["teacher_dose"].shape == (1, 2, 32, 32, 32)


def test_expanded_samples_are_the_unaugmented_batches_computed_once(tiny_packs) -> None:
    samples = PatientSamples.from_source(tiny_packs / "train", resolution=16, augmentation=Augmentation())
    expanded = ExpandedSamples(samples)
    assert len(expanded) == len(samples) and expanded.resolution == 16
    once, each_time = expanded.batch([1, 0], seeds=[5, 6]), samples.batch([1, 0], None)  # seeds: ignored
    assert once.keys() == each_time.keys()
    assert all(torch.equal(once[key], each_time[key]) for key in once)
    assert once["image"].shape[2:] == (16, 16, 16)
