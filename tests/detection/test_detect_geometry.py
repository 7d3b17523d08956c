"""Boxes, anchors, connected-component boxes and RoI align of the detection module."""

import numpy as np
import pytest
import torch

from dosepred.detection.anchors import level_anchors, pyramid_anchors
from dosepred.detection.boxes import BoxCoder, batched_nms, box_iou, nms
from dosepred.detection.data import structure_boxes
from dosepred.detection.roi import pyramid_level, pyramid_roi_align, roi_align


def test_detect_iou_uses_far_edges():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 0.0, 1.0])


def test_detect_box_coding_round_trip_with_stage_weights():
    reference = torch.tensor([[10.0, 12.0, 20.0, 30.0], [0.0, 0.0, 4.0, 2.0]])
    target = torch.tensor([[11.0, 10.0, 25.0, 28.0], [1.0, 0.5, 3.0, 2.5]])
    coder = BoxCoder((20.0, 20.0, 10.0, 10.0))
    deltas = coder.encode_single(target, reference)
    assert deltas[0, 0].item() == pytest.approx(20 * (18 - 15) / 10)  # centre shift in widths, times the weight
    assert torch.allclose(coder.decode_single(deltas, reference), target, atol=1e-4)


def test_detect_nms_keeps_the_best_of_each_overlapping_group():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = torch.tensor([0.8, 0.9, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    # the same boxes as two classes: a box only suppresses boxes of its own class
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 1]), 0.5).tolist() == [1, 3, 2]


def test_detect_anchors_tile_the_level_with_the_right_shapes():
    anchors = level_anchors(8.0, 4, (0.5, 1.0, 2.0), height=3, width=2)
    assert anchors.shape == (3 * 2 * 3, 4)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    assert torch.allclose(widths * heights, torch.full((18,), 64.0))
    assert torch.allclose(heights[:3] / widths[:3], torch.tensor([0.5, 1.0, 2.0]))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres[0].tolist() == [2.0, 2.0] and centres[3].tolist() == [6.0, 2.0]  # position-major, x fastest
    assert [len(level) for level in pyramid_anchors((4.0, 8.0), (2, 4), (1.0,), 16)] == [64, 16]


def test_detect_one_box_per_connected_component_per_slice():
    mask = np.zeros((10, 12, 3), dtype=bool)
    mask[1:3, 1:4, 0] = True  # rows 1-2, columns 1-3
    mask[3, 4, 0] = True  # touches the first diagonally: the same 8-connected component
    mask[6:9, 8:10, 0] = True  # a second component
    mask[6:9, 8:10, 1] = True  # same place one slice down: its own box, not merged across slices
    mask[0, 11, 2] = True  # a 1-pixel fragment: no box
    boxes = structure_boxes(mask)
    assert sorted(boxes[0]) == [(1, 1, 5, 4), (8, 6, 10, 9)]
    assert boxes[1] == [(8, 6, 10, 9)]
    assert 2 not in boxes


def test_detect_roi_align_samples_bin_centres():
    size = 16
    x = torch.arange(size).float()[None].expand(size, size) + 0.5  # each pixel holds its centre's coordinate
    features = torch.stack([x, x.T])[None]
    pooled = roi_align(torch.cat([features, 2 * features]), torch.tensor([[2.0, 3.0, 10.0, 7.0]] * 2),
                       torch.tensor([0, 1]), image_size=size, output_size=4)
    assert pooled[0, 0, 0].tolist() == pytest.approx([3.0, 5.0, 7.0, 9.0])
    assert pooled[0, 1, :, 0].tolist() == pytest.approx([3.5, 4.5, 5.5, 6.5])
    assert torch.allclose(pooled[1], 2 * pooled[0])
    # a coarser level (stride 2) of the same coordinate field gives the same bin centres inside the image
    coarse = torch.nn.functional.avg_pool2d(features, 2)
    assert torch.allclose(roi_align(coarse, torch.tensor([[4.0, 4.0, 12.0, 12.0]]), torch.tensor([0]),
                                    image_size=size, output_size=2)[0, 0, 0], torch.tensor([6.0, 10.0]))


def test_detect_boxes_read_the_pyramid_level_of_their_size():
    boxes = torch.tensor([[0.0, 0, 3, 3], [0, 0, 8, 8], [0, 0, 30, 34], [0, 0, 120, 120]])
    assert pyramid_level(boxes, (4.0, 8.0, 16.0, 32.0)).tolist() == [0, 1, 3, 3]
    levels = [torch.full((1, 2, 64 // 2 ** k, 64 // 2 ** k), float(k)) for k in range(4)]
    pooled = pyramid_roi_align(levels, boxes[:3] + 10, torch.zeros(3, dtype=torch.long), anchor_sizes=(4.0, 8.0, 16.0, 32.0),
                               image_size=128, output_size=2)
    assert pooled[:, 0, 0, 0].tolist() == [0.0, 1.0, 3.0]
