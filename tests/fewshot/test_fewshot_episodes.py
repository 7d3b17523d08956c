"""The episode sampler and the patch sets it draws from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dosepred.fewshot.data import CT_BASE, CT_NOVEL, EpisodeSampler, digits_patches
from tests.conftest import SAMPLE_PATIENTS, requires_openkbp


def _labels() -> torch.Tensor:
    # 7 classes of unequal size; class 6 has too few items for 3 shots + 4 queries.
    return torch.tensor([c for c, n in enumerate([9, 12, 7, 20, 8, 10, 5]) for _ in range(n)])


def test_fewshot_episode_classes_shots_and_no_overlap() -> None:
    labels = _labels()
    sampler = EpisodeSampler(labels, ways=5, shots=3, queries=4, seed=1)
    seen: set[int] = set()
    for _ in range(100):
        episode = sampler.sample()
        classes = episode.classes.tolist()
        assert len(set(classes)) == 5 and 6 not in classes
        seen.update(classes)
        assert len(episode.support) == 15 and len(episode.query) == 20
        assert not set(episode.support.tolist()) & set(episode.query.tolist())
        assert len(set(episode.support.tolist())) == 15 and len(set(episode.query.tolist())) == 20
        # Episode label i means class classes[i], for support and query alike.
        assert torch.equal(labels[episode.support], episode.classes[episode.support_labels])
        assert torch.equal(labels[episode.query], episode.classes[episode.query_labels])
        assert torch.bincount(episode.support_labels).tolist() == [3] * 5
    assert seen == {0, 1, 2, 3, 4, 5}


def test_fewshot_episodes_repeat_with_the_seed() -> None:
    first = [EpisodeSampler(_labels(), ways=3, shots=1, queries=2, seed=7).sample() for _ in range(2)]
    assert torch.equal(first[0].query, first[1].query) and torch.equal(first[0].support, first[1].support)
    other = EpisodeSampler(_labels(), ways=3, shots=1, queries=2, seed=8).sample()
    assert not torch.equal(first[0].query, other.query)


def test_fewshot_queries_come_from_other_patients_than_their_class_support() -> None:
    labels = _labels()
    groups = [f"patient_{i // 3}" for i in range(len(labels))]  # three items a patient, as slices of one organ
    sampler = EpisodeSampler(labels, ways=5, shots=2, queries=2, seed=3, groups=groups)
    for _ in range(200):
        episode = sampler.sample()
        for way in range(5):
            support = {groups[i] for i in episode.support[episode.support_labels == way].tolist()}
            query = {groups[i] for i in episode.query[episode.query_labels == way].tolist()}
            assert len(query) > 0 and not support & query
        assert torch.bincount(episode.query_labels).tolist() == [2] * 5
    # Class 2 (7 items: patients of 3, 3 and 1) leaves 1 query at worst once 2 support patients are out; class 4
    # (8 items: 3, 3, 2) leaves 2.
    assert sampler.eligible.tolist() == [0, 1, 3, 4, 5]
    with pytest.raises(ValueError, match="other sources"):
        EpisodeSampler(labels, ways=7, shots=2, queries=2, groups=groups)
    # One item a source: the same episodes as without groups (the digits).
    unique = EpisodeSampler(labels, ways=3, shots=1, queries=2, seed=7, groups=[str(i) for i in range(len(labels))])
    plain = EpisodeSampler(labels, ways=3, shots=1, queries=2, seed=7)
    assert all(torch.equal(a.query, b.query) for a, b in ((unique.sample(), plain.sample()) for _ in range(20)))


@pytest.mark.parametrize("ways, shots, queries", [(7, 3, 4), (1, 1, 1), (3, 0, 2), (3, 1, 21)])
def test_fewshot_sampler_rejects_impossible_episodes(ways: int, shots: int, queries: int) -> None:
    with pytest.raises(ValueError):
        EpisodeSampler(_labels(), ways=ways, shots=shots, queries=queries)


def test_fewshot_digits_patches() -> None:
    pytest.importorskip("sklearn")
    patches = digits_patches(("5", "6", "7", "8", "9"), size=32)
    assert patches.images.shape[1:] == (1, 32, 32) and len(patches) == len(patches.groups)
    assert 0.0 <= patches.images.min() and patches.images.max() <= 1.0
    assert sorted(patches.counts()) == ["5", "6", "7", "8", "9"] and min(patches.counts().values()) > 150


def test_fewshot_split_keeps_the_parotid_pair_novel() -> None:
    assert {"LeftParotid", "RightParotid"} <= set(CT_NOVEL) and not set(CT_BASE) & set(CT_NOVEL)


@requires_openkbp
def test_fewshot_ct_patches_are_centred_on_the_structure(tmp_path) -> None:
    from dosepred.io import sources
    from dosepred.fewshot.data import HU_WINDOW, ct_patches

    patient = sources.read_patient(SAMPLE_PATIENTS[2])
    patches = ct_patches(SAMPLE_PATIENTS[2], CT_NOVEL, size=16, slices=3)
    assert patches.images.shape[1:] == (1, 16, 16) and set(patches.groups) == {patient.id}
    for label, roi in enumerate(CT_NOVEL):
        assert patches.counts()[roi] == (min(3, int(patient.structures[roi].any((0, 1)).sum()))
                                         if roi in patient.structures else 0)
    # The first LeftParotid patch: its centre pixel is the windowed CT at the mask's centroid on that slice.
    mask = patient.structures["LeftParotid"]
    present = np.flatnonzero(mask.any((0, 1)))
    k = present[int(0.5 / 3 * len(present))]
    rows, cols = np.nonzero(mask[:, :, k])
    hu = patient.ct[round(rows.mean()), round(cols.mean()), k]
    expected = np.clip((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0, 1)
    first = patches.images[patches.labels == CT_NOVEL.index("LeftParotid")][0, 0]
    assert first[8, 8].item() == pytest.approx(float(expected))
