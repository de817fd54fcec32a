"""COCO detection metrics per class, computed by faster-coco-eval (a drop-in of pycocotools)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from detection.detections import CLASS_NAMES, Detections
from eval.datasets import LabelledImage

CATEGORY_ID = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}  # COCO category ids start at 1


def ground_truth_coco(images: list[LabelledImage]) -> dict:
    """The labelled images as a COCO ground-truth dict (categories `face`=1, `plate`=2)."""
    annotations = []
    for image in images:
        for (x1, y1, x2, y2), cls in zip(image.boxes.xyxy.tolist(), image.boxes.class_id, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image.image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "images": [
            {"id": im.image_id, "file_name": im.path.name, "width": im.width, "height": im.height}
            for im in images
        ],
        "annotations": annotations,
        "categories": [{"id": CATEGORY_ID[n], "name": n} for n in CLASS_NAMES],
    }


def predictions_coco(images: list[LabelledImage], predictions: list[Detections]) -> list[dict]:
    """Detections in COCO results format: the dataset's image ids, `bbox` as x, y, w, h."""
    return [
        {
            "image_id": image.image_id,
            "category_id": int(cls) + 1,
            "score": round(float(score), 5),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        }
        for image, dets in zip(images, predictions, strict=True)
        for (x1, y1, x2, y2), score, cls in zip(dets.xyxy.tolist(), dets.scores, dets.class_id, strict=True)
    ]


def coco_metrics(
    images: list[LabelledImage], predictions: list[Detections]
) -> dict[str, dict[str, float | None]]:
    """Per class: AP (mAP@[.5:.95]), AP50, AP75, AP by size, AR@100 and recall at IoU 0.5.

    A class without ground truth in `images` gets None for every figure.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ground_truth_coco(images))
        results = predictions_coco(images, predictions)
        dt = gt.loadRes(results) if results else COCO()
        evaluator = COCOeval_faster(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # [IoU, recall, category, area, maxDets]
    recall = evaluator.eval["recall"]  # [IoU, category, area, maxDets]
    iou_50, iou_75 = 0, 5
    areas = {"AP_small": 1, "AP_medium": 2, "AP_large": 3}

    def mean_valid(values: np.ndarray) -> float | None:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else None

    figures: dict[str, dict[str, float | None]] = {}
    for k, name in enumerate(CLASS_NAMES):
        has_gt = any((im.boxes.class_id == k).any() for im in images)
        row = {
            "AP": mean_valid(precision[:, :, k, 0, -1]),
            "AP50": mean_valid(precision[iou_50, :, k, 0, -1]),
            "AP75": mean_valid(precision[iou_75, :, k, 0, -1]),
            **{key: mean_valid(precision[:, :, k, a, -1]) for key, a in areas.items()},
            "AR100": mean_valid(recall[:, k, 0, -1]),
            "recall50": mean_valid(recall[iou_50, k, 0, -1]),
        }
        figures[name] = row if has_gt else dict.fromkeys(row)
    return figures
