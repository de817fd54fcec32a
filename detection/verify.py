"""Second stage of detection: zoom-in re-detection of the proposals the detector is not sure of.

Proposals are grouped as the tile merge groups boxes, and each group is cut out with context around
it (a square `context` times its longer side), scaled so the object's longer side is `object_px`, and
pasted into a cell of a small canvas (`canvas_px` square, cells of `object_px * context`). The detector
then runs again on the canvases, and a proposal's *zoom score* is the best score of a box of its class
found where it was pasted (IoU at least `ZOOM_MATCH_IOU` with it); 0 when none. The object is now
larger than the detector saw it in its tile, and its context different: a texture that looked like a
face at 15 px often does not at 48 px, while a real face does. `cascade_score` combines both scores;
`blurred_by_cascade` is the one rule, of the deployed detector and of evaluation, for which boxes blur.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from detection.detections import CLASS_NAMES, Detections, intersection_areas, pairwise_iou
from detection.tiling import merge_boxes, merge_groups

ZOOM_MATCH_IOU = 0.3  # a box found in a cell confirms the proposal pasted there at this IoU or more


def cascade_score(detector_score: np.ndarray, zoom_score: np.ndarray) -> np.ndarray:
    """The verifier's score of proposals: the mean of the detector's and the zoom score (on dev it ranks
    real proposals above false ones better than either score alone, or their geometric mean)."""
    return (np.asarray(detector_score, np.float64) + np.asarray(zoom_score, np.float64)) / 2


def blurred_by_cascade(
    detections: Detections,
    zoom_scores: np.ndarray | None,
    thresholds: dict[str, float],
    proposal_thresholds: dict[str, float],
    verify_thresholds: dict[str, float],
) -> np.ndarray:
    """Per box: True when it blurs, as sure (score at least its class's `thresholds`) or, with
    `zoom_scores` (None: verification off), as a verified proposal (score at least its class's
    `proposal_thresholds` and `cascade_score` at least its `verify_thresholds`).

    `zoom_scores` is NaN for boxes that were not verified; such a proposal is an error, never a pass.
    """
    sure = detections.scores >= _per_box(thresholds, detections.class_id)
    if zoom_scores is None:
        return sure
    proposal = ~sure & (detections.scores >= _per_box(proposal_thresholds, detections.class_id))
    if np.isnan(zoom_scores[proposal]).any():
        raise ValueError("a proposal below its sure threshold was not verified")
    combined = cascade_score(detections.scores, np.nan_to_num(zoom_scores, nan=0.0))
    return sure | (proposal & (combined >= _per_box(verify_thresholds, detections.class_id)))


def proposed_boxes(detections: Detections, proposal_thresholds: dict[str, float]) -> np.ndarray:
    """Per box: True when it scores at least its class's proposal threshold (sure boxes included)."""
    return detections.scores >= _per_box(proposal_thresholds, detections.class_id)


def needs_verifying(
    detections: Detections, thresholds: dict[str, float], proposal_thresholds: dict[str, float]
) -> np.ndarray:
    """Per box: True for a proposal, at least its class's proposal threshold and below its sure one."""
    below_sure = detections.scores < _per_box(thresholds, detections.class_id)
    return proposed_boxes(detections, proposal_thresholds) & below_sure


def zoom_scores(
    image: np.ndarray,
    proposals: Detections,
    detect: Callable[[list[np.ndarray]], list[Detections]],
    merge_overlap: float,
    object_px: int,
    context: float,
    canvas_px: int,
) -> np.ndarray:
    """The zoom score of each of `proposals` (boxes in `image`'s pixels, before the tile merge), found by
    `detect` (a batch of BGR canvases -> their detections, at a low threshold) on canvases built as the
    module says. Proposals are grouped as the tile merge groups them (`merge_overlap`), and each group's
    union is zoomed once: its score is every member's. Every group is zoomed, so that a group's score
    does not depend on which other groups share its canvas."""
    scores = np.full(len(proposals), np.nan)
    if not len(proposals):
        return scores
    groups = merge_groups(proposals, merge_overlap)
    unions = merge_boxes(proposals, merge_overlap)
    zoomed = np.arange(len(unions))
    cell = max(1, round(object_px * context))
    per_side = max(1, canvas_px // cell)
    per_canvas = per_side * per_side
    canvases, expected = [], []  # expected: (canvas, box where the object lands in it)
    for i, group in enumerate(zoomed):
        if i % per_canvas == 0:
            canvases.append(np.full((per_side * cell, per_side * cell, 3), 114, np.uint8))
        row, col = divmod(i % per_canvas, per_side)
        crop, landed = _zoomed(image, unions.xyxy[group], object_px, cell)
        y0, x0 = row * cell, col * cell
        canvases[-1][y0 : y0 + cell, x0 : x0 + cell] = crop
        expected.append((len(canvases) - 1, landed + np.array([x0, y0, x0, y0]), unions.class_id[group]))
    found = detect(canvases) if canvases else []
    for group, (canvas, landed, cls) in zip(zoomed, expected, strict=True):
        dets = found[canvas][found[canvas].class_id == cls]
        matching = pairwise_iou(landed[None], dets.xyxy)[0] >= ZOOM_MATCH_IOU
        scores[groups == group] = float(dets.scores[matching].max()) if matching.any() else 0.0
    return scores


def _zoomed(image: np.ndarray, box: np.ndarray, object_px: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """A `cell` square crop of `image` centred on `box`, scaled so its longer side is `object_px`
    (padded with grey beyond the image), and where the box lands in it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0)
    scale = object_px / side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    # Affine map: image point p -> (p - centre) * scale + cell / 2
    matrix = np.array([[scale, 0, cell / 2 - cx * scale], [0, scale, cell / 2 - cy * scale]], np.float32)
    grey = (114, 114, 114)  # ultralytics' letterbox padding
    crop = cv2.warpAffine(image, matrix, (cell, cell), flags=cv2.INTER_LINEAR, borderValue=grey)
    landed = np.array([x1 - cx, y1 - cy, x2 - cx, y2 - cy]) * scale + cell / 2
    return crop, landed


def covered_by(boxes: Detections, others: Detections, fraction: float) -> np.ndarray:
    """Per box of `boxes`: True when one box of `others` covers more than `fraction` of its area."""
    if not len(boxes) or not len(others):
        return np.zeros(len(boxes), bool)
    inter = intersection_areas(boxes.xyxy, others.xyxy)
    return (inter / np.maximum(boxes.area[:, None], 1e-9) > fraction).any(axis=1)


def _per_box(thresholds: dict[str, float], class_id: np.ndarray) -> np.ndarray:
    return np.array([thresholds.get(name, math.inf) for name in CLASS_NAMES], np.float64)[class_id]
