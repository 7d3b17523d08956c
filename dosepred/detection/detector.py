"""The BLC detector (Zheng et al., ACCV 2020): BLRPN + a three-stage cascade semantic R-CNN with semantic flow.

Regions are classified by the cosine between their projection into the class-embedding space and each class's
embedding, so classes never seen in training are scored the same way as seen ones. BLRPN scores anchors the
same way against the seen classes and a learnt background embedding, which the cascade then uses (without
back-propagating into it: the background is what the RPN learnt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dosepred.detection.anchors import pyramid_anchors
from dosepred.detection.boxes import BoxCoder, batched_nms
from dosepred.detection.data import SEEN, WINDOWS_HU, class_index
from dosepred.detection.network import STAGE_BOX_WEIGHTS, Backbone, DetectorConfig, RPNHead, SemanticStage, cosine_logits
from dosepred.detection.roi import pyramid_roi_align
from dosepred.detection.targets import assign, sample

RPN_POSITIVE_IOU, RPN_NEGATIVE_IOU = 0.6, 0.3
CANDIDATES_PER_IMAGE = 1000


@dataclass
class Detections:
    """One image's detections, best first: boxes (D x 4), scores (D) and ROI indices (D)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class BLCDetector(nn.Module):
    def __init__(self, config: DetectorConfig, class_embeddings: torch.Tensor, background: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        semantic_dim = class_embeddings.shape[1]
        self.backbone = Backbone(config, in_channels=len(WINDOWS_HU))
        self.rpn = RPNHead(config, semantic_dim)
        self.stages = nn.ModuleList(SemanticStage(config, semantic_dim, receives_flow=config.semantic_flow and t > 0)
                                    for t in range(len(config.stage_ious)))
        self.register_buffer("class_embeddings", class_embeddings.clone())
        if config.blrpn:
            self.background = nn.Parameter(background.clone())  # starts at the word "background", then learnt
            self.rpn_log_scale = nn.Parameter(torch.tensor(2.3))
        else:
            self.register_buffer("background", background.clone())
        seen = class_index(SEEN)
        seen_position = torch.zeros(len(class_embeddings), dtype=torch.long)
        seen_position[seen] = torch.arange(1, len(seen) + 1)
        self.register_buffer("seen", seen, persistent=False)
        self.register_buffer("seen_position", seen_position, persistent=False)  # ROI index -> 1-based, 0 if unseen
        anchors = pyramid_anchors(config.anchor_sizes, config.strides, config.ratios, config.image_size)
        self.level_counts = [len(level) for level in anchors]
        self.register_buffer("anchors", torch.cat(anchors), persistent=False)
        self.rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.stage_coders = [BoxCoder(weights) for weights in STAGE_BOX_WEIGHTS]

    # --- shared -----------------------------------------------------------------------------------------------

    def _objectness(self, features: torch.Tensor, objectness: torch.Tensor | None, foreground: torch.Tensor) -> torch.Tensor:
        """Foreground probability of every anchor (B x N), for ranking proposals."""
        if objectness is not None:
            return objectness.sigmoid()
        classes = torch.cat([self.background[None], foreground])
        return torch.stack([1 - self.rpn.all_anchor_logits(image, classes, self.rpn_log_scale).softmax(dim=1)[:, 0]
                            for image in features])

    def _proposals(self, scores: torch.Tensor, deltas: torch.Tensor) -> list[torch.Tensor]:
        """Per image: the best anchors of each level, decoded, clipped, NMS'd across levels, at most ``rpn_post_nms``."""
        config, proposals = self.config, []
        for image_scores, image_deltas in zip(scores.detach(), deltas.detach(), strict=True):
            kept_boxes, kept_scores, kept_levels, start = [], [], [], 0
            for level, count in enumerate(self.level_counts):
                top = image_scores[start:start + count].topk(min(config.rpn_pre_nms, count)).indices + start
                kept_boxes.append(self.rpn_coder.decode_single(image_deltas[top], self.anchors[top]))
                kept_scores.append(image_scores[top])
                kept_levels.append(torch.full((len(top),), level))
                start += count
            boxes = torch.cat(kept_boxes).clamp(0, config.image_size)
            scores_, levels = torch.cat(kept_scores), torch.cat(kept_levels)
            big_enough = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(dim=1)
            boxes, scores_, levels = boxes[big_enough], scores_[big_enough], levels[big_enough]
            keep = batched_nms(boxes, scores_, levels, config.rpn_nms)[:config.rpn_post_nms]
            proposals.append(boxes[keep])
        return proposals

    def _semantic_chain(self, roi_features: torch.Tensor, last_stage: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(deltas, semantic) of stages 0..``last_stage`` on the same regions, each stage's semantic flowing on."""
        outputs, semantic = [], None
        for stage in self.stages[:last_stage + 1]:
            deltas, semantic = stage(roi_features, semantic)
            outputs.append((deltas, semantic))
        return outputs

    def _roi_features(self, levels: list[torch.Tensor], boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        return pyramid_roi_align(levels, boxes, image_index, anchor_sizes=self.config.anchor_sizes,
                                 image_size=self.config.image_size, output_size=self.config.roi_size)

    # --- training ---------------------------------------------------------------------------------------------

    def losses(self, images: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Training losses for a batch; ``targets`` holds each image's boxes and ROI indices (unseen ones ignored)."""
        config = self.config
        levels = self.backbone(images)
        features, deltas, objectness = self.rpn(levels)
        seen_classes = self.class_embeddings[self.seen]
        seen_targets = []
        for boxes, labels in targets:
            position = self.seen_position[labels]
            seen_targets.append((boxes[position > 0], position[position > 0], boxes[position == 0]))

        rpn_class, rpn_box = [], []
        for image, (gt_boxes, gt_classes, unseen_boxes) in enumerate(seen_targets):
            assignment = assign(self.anchors, gt_boxes, gt_classes, unseen_boxes, positive_iou=RPN_POSITIVE_IOU,
                                negative_iou=RPN_NEGATIVE_IOU, best_match=True)
            chosen = sample(assignment.labels, config.rpn_batch, 0.5)
            labels = assignment.labels[chosen]
            if objectness is None:  # BLRPN: background vs each seen class in the semantic space
                embedded = self.rpn.anchor_embeddings(features[image], chosen)
                logits = cosine_logits(embedded, torch.cat([self.background[None], seen_classes]), self.rpn_log_scale)
                rpn_class.append(F.cross_entropy(logits, labels))
            else:
                rpn_class.append(F.binary_cross_entropy_with_logits(objectness[image, chosen], (labels > 0).float()))
            positive = chosen[labels > 0]
            targets_ = self.rpn_coder.encode_single(assignment.matched_boxes[positive], self.anchors[positive])
            rpn_box.append(F.smooth_l1_loss(deltas[image, positive], targets_, beta=1 / 9, reduction="sum")
                           / max(1, len(chosen)))
        losses = {"rpn_class": torch.stack(rpn_class).mean(), "rpn_box": torch.stack(rpn_box).mean()}

        with torch.no_grad():
            scores = self._objectness(features, objectness, seen_classes)
        rois = self._proposals(scores, deltas)
        classes = torch.cat([self.background.detach()[None], seen_classes])
        for t, stage in enumerate(self.stages):
            boxes, image_index, labels, matched = [], [], [], []
            for image, (gt_boxes, gt_classes, unseen_boxes) in enumerate(seen_targets):
                candidates = torch.cat([rois[image], gt_boxes])  # ground truth as extra regions, as in Faster R-CNN
                iou = config.stage_ious[t]
                assignment = assign(candidates, gt_boxes, gt_classes, unseen_boxes, positive_iou=iou, negative_iou=iou)
                chosen = sample(assignment.labels, config.roi_batch, 0.25)
                boxes.append(candidates[chosen])
                image_index.append(torch.full((len(chosen),), image))
                labels.append(assignment.labels[chosen])
                matched.append(assignment.matched_boxes[chosen])
            boxes, image_index = torch.cat(boxes), torch.cat(image_index)
            labels, matched = torch.cat(labels), torch.cat(matched)
            stage_deltas, semantic = self._semantic_chain(self._roi_features(levels, boxes, image_index), t)[-1]
            logits = cosine_logits(semantic, classes, stage.log_scale)
            positive = labels > 0
            box_targets = self.stage_coders[t].encode_single(matched[positive], boxes[positive])
            weight = config.stage_loss_weights[t]
            losses[f"stage{t + 1}_class"] = weight * F.cross_entropy(logits, labels)
            losses[f"stage{t + 1}_box"] = weight * F.smooth_l1_loss(stage_deltas[positive], box_targets,
                                                                    reduction="sum") / max(1, len(labels))
            refined = self.stage_coders[t].decode_single(stage_deltas.detach(), boxes).clamp(0, config.image_size)
            rois = [refined[image_index == image] for image in range(len(seen_targets))]
        return losses

    # --- inference --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, images: torch.Tensor, class_ids: torch.Tensor, score_threshold: float = 1e-3) -> list[Detections]:
        """Detections of the classes ``class_ids`` (ROI indices: unseen for ZSD, all for GZSD) in each image.

        Proposals come from every class's embedding (the RPN looks for any structure it was told of); the
        scores average the three stages' class probabilities on the last stage's regions (Cascade R-CNN).
        """
        config = self.config
        levels = self.backbone(images)
        features, deltas, objectness = self.rpn(levels)
        proposals = self._proposals(self._objectness(features, objectness, self.class_embeddings), deltas)
        boxes = torch.cat(proposals)
        image_index = torch.cat([torch.full((len(p),), image) for image, p in enumerate(proposals)])
        for t in range(len(self.stages) - 1):
            stage_deltas, _ = self._semantic_chain(self._roi_features(levels, boxes, image_index), t)[-1]
            boxes = self.stage_coders[t].decode_single(stage_deltas, boxes).clamp(0, config.image_size)
        chain = self._semantic_chain(self._roi_features(levels, boxes, image_index), len(self.stages) - 1)
        final_boxes = self.stage_coders[len(self.stages) - 1].decode_single(chain[-1][0], boxes).clamp(0, config.image_size)
        classes = torch.cat([self.background[None], self.class_embeddings[class_ids]])
        probabilities = torch.stack([cosine_logits(semantic, classes, stage.log_scale).softmax(dim=1)
                                     for stage, (_, semantic) in zip(self.stages, chain, strict=True)]).mean(0)[:, 1:]
        results = []
        for image in range(len(images)):
            rows = (image_index == image).nonzero().squeeze(1)
            scores = probabilities[rows]
            region, column = (scores > score_threshold).nonzero(as_tuple=True)
            best = scores[region, column].topk(min(CANDIDATES_PER_IMAGE, len(region))).indices  # bounds the NMS work
            region, column = region[best], column[best]
            candidate_boxes, candidate_scores = final_boxes[rows][region], scores[region, column]
            keep = batched_nms(candidate_boxes, candidate_scores, column, config.class_nms)[:config.detections_per_image]
            results.append(Detections(candidate_boxes[keep], candidate_scores[keep], class_ids[column[keep]]))
        return results
