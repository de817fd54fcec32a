"""Detection metrics: COCO figures computed by faster-coco-eval (a drop-in of pycocotools), and
privacy figures that ask what the blur would have hidden.

COCO figures (`coco_metrics`) follow pycocotools exactly: greedy matching by falling score, IoU
thresholds 0.50:0.05:0.95, 101-point interpolated precision, at most 100 detections per image and
class, size ranges on the ground-truth box area (small up to 32², medium 32² to 96², large above).
`precision_recall` sweeps score thresholds instead of ranking one set of boxes: the detector's tile
merge widens high-score boxes with the low-score ones it absorbs, so the boxes at a threshold are not
a subset of the boxes at a lower one, and each point is scored on its own.

Privacy figures (`privacy_metrics`) take the detections the deployed detector returns, of every class
(`eval.evaluate` and `eval.calibrate` both score them here), and define:
- *under the mask*: a pixel whose `blurring.blur_mask` value is at least `MASK_LEVEL` (0.5), i.e.
  where the anonymised pixel weighs at least as much as the original in the blend. The mask is the
  one `anonymize` applies, dilation, face ellipse and soft edge included;
- *blurred*: a ground-truth box with at least `BLURRED_COVERAGE` (90%) of its area under the mask.
  Each pixel counts by the area of its overlap with the box, so float boxes are measured exactly.
  Boxes of every class hide each other: a face under a plate's blur is blurred;
- *false blur*: a detection whose box shares no area with any ground-truth box, of any class, nor with
  a crowd region (COCO's `iscrowd`, which COCO's matching ignores too; crowd regions are never boxes
  to blur);
- *falsely blurred area*: the union of an image's false blurs' boxes (each box rounded to whole pixels),
  as a fraction of the image's area; `false_blur_area` averages it over images, `false_blur_area_pooled`
  divides the summed unions by the summed image areas (a 20 px false patch costs less than a
  wheel-sized one, which a count of false blurs cannot tell);
- *size*: COCO's ranges on the ground-truth box area as half-open bins, small < 32², medium < 96²,
  large >= 96² (COCO counts a box of exactly 32² or 96² in both neighbouring bins);
- *recall50*: COCO recall at IoU 0.5 (the share of ground-truth boxes matched by a detection).
Classes without ground truth in the images (the shared sets label one class each) get None for
every figure but `detections_per_image`: their detections cannot be judged.

A class's threshold for a blurred-fraction target (`threshold_for_blurred`) is the highest threshold of
`CALIBRATION_SWEEP` whose blurred fraction reaches it (`privacy_sweep`), for `streetblur calibrate
--target` and the target thresholds of `streetblur eval` alike.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from blurring import BlurConfig, blur_mask
from detection.detections import CLASS_NAMES, Detections, intersection_areas
from eval.datasets import LabelledImage

CATEGORY_ID = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}  # COCO category ids start at 1
MASK_LEVEL = 0.5  # a pixel is under the blur mask at this mask value or more
BLURRED_COVERAGE = 0.9  # share of a ground-truth box's area that must be under the mask
SIZE_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}
"""Half-open [low, high) ranges of box area in square pixels, COCO's sizes."""
CALIBRATION_SWEEP = tuple(
    round(t, 2) for t in [0.01, 0.02, 0.03, 0.05, 0.07, *[k / 20 for k in range(2, 19)]]
)
"""Score thresholds among which a class's threshold is chosen (`privacy_sweep`)."""


def ground_truth_coco(images: list[LabelledImage]) -> dict:
    """The labelled images as a COCO ground-truth dict (categories `face`=1, `plate`=2), crowd regions
    with `iscrowd` 1.

    `ValueError` when two images share an id: COCO would score them as one image, a detection in
    one matching a label of the other.
    """
    ids = [image.image_id for image in images]
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"image id {repeated} is given to several images; ids must be unique")
    annotations = []
    for image, boxes, crowd in ((im, b, c) for im in images for b, c in ((im.boxes, 0), (im.crowd, 1))):
        for (x1, y1, x2, y2), cls in zip(boxes.xyxy.tolist(), boxes.class_id, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image.image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
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


@dataclass(frozen=True)
class PRCurve:
    """Recall and precision at IoU 0.5 of one class, at each score threshold of a sweep.

    Precision is the share of detections matched to a ground-truth box (COCO's matching, so
    `recall * ground-truth boxes / detections`); NaN where there is no detection.
    """

    threshold: np.ndarray
    recall: np.ndarray
    precision: np.ndarray


def precision_recall(
    images: list[LabelledImage],
    detections_at: Callable[[float], list[Detections]],
    thresholds: Sequence[float],
) -> dict[str, PRCurve | None]:
    """Per class, the curve of `detections_at(t)` (detections per image) over the `thresholds` t.

    Each point is scored on its own detections, so the curve holds for detectors whose boxes change
    with the threshold (the tile merge). None for a class without ground truth.
    """
    gt_boxes = Detections.concat(image.boxes for image in images).counts()
    recall, found = [], []
    for threshold in thresholds:
        detections = detections_at(threshold)
        recall.append({name: row["recall50"] for name, row in coco_metrics(images, detections).items()})
        found.append(Detections.concat(detections).counts())
    curves: dict[str, PRCurve | None] = dict.fromkeys(CLASS_NAMES)
    for name in (name for name in CLASS_NAMES if gt_boxes[name]):
        class_recall = np.array([point[name] for point in recall])
        count = np.array([point[name] for point in found], np.float64)
        matched = class_recall * gt_boxes[name]
        precision = np.divide(matched, count, out=np.full(len(count), np.nan), where=count > 0)
        curves[name] = PRCurve(np.asarray(thresholds, np.float64), class_recall, precision)
    return curves


def covered_fraction(xyxy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per box of `xyxy` (N, 4): the share of its area inside the image that is under `mask`.

    A pixel counts by the area of its overlap with the box. A box with no area inside the image gets
    1.0: nothing of it can be seen.
    """
    height, width = mask.shape
    fractions = np.ones(len(xyxy))
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(xyxy, np.float64).reshape(-1, 4)):
        c0, c1 = max(math.floor(x1), 0), min(math.ceil(x2), width)
        r0, r1 = max(math.floor(y1), 0), min(math.ceil(y2), height)
        cols, rows = np.arange(c0, c1), np.arange(r0, r1)
        weight_x = np.clip(np.minimum(cols + 1, x2) - np.maximum(cols, x1), 0, 1)
        weight_y = np.clip(np.minimum(rows + 1, y2) - np.maximum(rows, y1), 0, 1)
        total = weight_x.sum() * weight_y.sum()
        if total > 0:
            under = (mask[r0:r1, c0:c1] >= MASK_LEVEL).astype(np.float64)
            fractions[i] = weight_y @ under @ weight_x / total
    return fractions


def overlaps_nothing(detections: Detections, ground_truth: Detections) -> np.ndarray:
    """Per detection: True when its box shares no area with any ground-truth box (a false blur)."""
    return ~(intersection_areas(detections.xyxy, ground_truth.xyxy) > 0).any(axis=1)


def false_blurs(detections: Detections, image: LabelledImage) -> np.ndarray:
    """Per detection: True when it is a false blur, sharing no area with any ground-truth box of `image`
    (of any class) nor with any of its crowd regions."""
    return overlaps_nothing(detections, Detections.concat([image.boxes, image.crowd]))


def union_area(xyxy: np.ndarray, width: int, height: int) -> int:
    """Pixels of a `height` x `width` image inside at least one box of `xyxy` (N, 4), each box's edges
    rounded to whole pixels and clipped to the image."""
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in np.rint(np.asarray(xyxy, np.float64).reshape(-1, 4)).astype(int):
        covered[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    return int(covered.sum())


def blur_outcome(
    image: LabelledImage, detections: Detections, blur: BlurConfig
) -> tuple[np.ndarray, np.ndarray]:
    """For one image: which ground-truth boxes are blurred by the mask of all `detections`, and which
    detections are false blurs."""
    mask = blur_mask(image.height, image.width, detections, blur)
    blurred = covered_fraction(image.boxes.xyxy, mask) >= BLURRED_COVERAGE - 1e-9  # float64 round-off
    return blurred, false_blurs(detections, image)


def size_names(areas: np.ndarray) -> np.ndarray:
    """`small`, `medium` or `large` for each box area (square pixels), by `SIZE_RANGES`."""
    names = np.empty(len(areas), dtype=object)
    for name, (low, high) in SIZE_RANGES.items():
        names[(areas >= low) & (areas < high)] = name
    return names


def privacy_metrics(
    images: list[LabelledImage], detections: list[Detections], blur: BlurConfig
) -> dict[str, dict]:
    """Privacy figures of the deployed detections, per class and for `all` labelled classes together.

    Each holds `recall50`, `boxes` and `blurred` (the blurred share) overall and by size,
    `false_blurs_per_image`, `false_blur_area` and `false_blur_area_pooled` (the falsely blurred share
    of the image area, averaged over images and pooled) and `detections_per_image`; see the module
    docstring for definitions.
    """
    per_image, false_boxes = [], []
    for image, dets in zip(images, detections, strict=True):
        blurred, false_blur = blur_outcome(image, dets, blur)
        per_image.append(
            (blurred, image.boxes.class_id, size_names(image.boxes.area), false_blur, dets.class_id)
        )
        false_boxes.append(dets[false_blur])
    columns = (np.concatenate(column) for column in zip(*per_image, strict=True))
    blurred, gt_class, gt_size, false_blur, det_class = columns
    image_areas = np.array([image.width * image.height for image in images], np.float64)
    recall = {name: row["recall50"] for name, row in coco_metrics(images, detections).items()}
    labelled = [k for k in range(len(CLASS_NAMES)) if (gt_class == k).any()]

    def figures(classes: list[int]) -> dict:
        gt, det = np.isin(gt_class, classes), np.isin(det_class, classes)
        selections = {"all": gt} | {size: gt & (gt_size == size) for size in SIZE_RANGES}
        matched = sum(recall[CLASS_NAMES[k]] * (gt_class == k).sum() for k in classes) if gt.any() else 0
        false_area = np.array(
            [
                union_area(boxes.xyxy[np.isin(boxes.class_id, classes)], image.width, image.height)
                for image, boxes in zip(images, false_boxes, strict=True)
            ],
            np.float64,
        )
        return {
            "recall50": float(matched / gt.sum()) if gt.any() else None,
            "boxes": {key: int(chosen.sum()) for key, chosen in selections.items()},
            "blurred": {
                key: float(blurred[chosen].mean()) if chosen.any() else None
                for key, chosen in selections.items()
            },
            "false_blurs_per_image": float(false_blur[det].sum() / len(images)) if gt.any() else None,
            "false_blur_area": float((false_area / image_areas).mean()) if gt.any() else None,
            "false_blur_area_pooled": float(false_area.sum() / image_areas.sum()) if gt.any() else None,
            "detections_per_image": float(det.sum() / len(images)),
        }

    per_class = {name: figures([k]) for k, name in enumerate(CLASS_NAMES)}
    return per_class | {"all": figures(labelled)}


def privacy_sweep(
    images: list[LabelledImage],
    detections_at: Callable[[dict[str, float]], list[Detections]],
    thresholds: dict[str, float],
    name: str,
    blur: BlurConfig,
) -> list[dict[str, float]]:
    """Class `name`'s figures with its threshold at each of `CALIBRATION_SWEEP` and the other classes at
    their `thresholds`: `threshold`, `blurred`, `recall50`, `false_blurs_per_image`, `false_blur_area`
    and `false_blur_area_pooled` per point.

    `detections_at(thresholds)` gives the detections per image at per-class thresholds; they are scored
    by `privacy_metrics`, so every class's boxes blur, as in `streetblur eval`.
    """
    rows = []
    for threshold in CALIBRATION_SWEEP:
        figures = privacy_metrics(images, detections_at(thresholds | {name: threshold}), blur)[name]
        rows.append(
            {
                "threshold": threshold,
                "blurred": figures["blurred"]["all"],
                "recall50": figures["recall50"],
                "false_blurs_per_image": figures["false_blurs_per_image"],
                "false_blur_area": figures["false_blur_area"],
                "false_blur_area_pooled": figures["false_blur_area_pooled"],
            }
        )
    return rows


def threshold_for_blurred(rows: list[dict[str, float]], target: float) -> float | None:
    """The highest threshold of a `privacy_sweep` whose blurred fraction reaches `target`, or None."""
    reaching = [row["threshold"] for row in rows if row["blurred"] >= target - 1e-9]
    return max(reaching) if reaching else None


def threshold_within_budget(
    rows: list[dict[str, float]], max_false_blurs: float, max_false_area: float
) -> float | None:
    """The lowest threshold of a `privacy_sweep` within both budgets: at most `max_false_blurs` false
    blurs per image and at most `max_false_area` of the image area falsely blurred (averaged over
    images), or None. A lower threshold blurs more, so this is the most the budgets allow."""
    meeting = [
        row["threshold"]
        for row in rows
        if row["false_blurs_per_image"] <= max_false_blurs + 1e-9
        and row["false_blur_area"] <= max_false_area + 1e-12
    ]
    return min(meeting) if meeting else None


def left_unblurred(
    images: list[LabelledImage], proposals: list[Detections], blurred: list[Detections], blur: BlurConfig
) -> dict[str, dict]:
    """Per class and `all` labelled classes: the real objects (ground-truth boxes) that the `proposals`
    would blur, and the share of them that `blurred` (what the two stages blur) leaves unblurred: with
    verification on, the real proposals the verifier rejected. None where no object was proposed."""
    proposed, kept, gt_class = [], [], []
    for image, offered, final in zip(images, proposals, blurred, strict=True):
        proposed.append(blur_outcome(image, offered, blur)[0])
        kept.append(blur_outcome(image, final, blur)[0])
        gt_class.append(image.boxes.class_id)
    proposed_all, kept_all, classes = (np.concatenate(c) for c in (proposed, kept, gt_class))
    labelled = [k for k in range(len(CLASS_NAMES)) if (classes == k).any()]

    def figures(chosen: np.ndarray) -> dict:
        offered = proposed_all & chosen
        lost = int((offered & ~kept_all).sum())
        return {
            "proposed": int(offered.sum()),
            "left_unblurred": lost,
            "fraction": lost / int(offered.sum()) if offered.any() else None,
        }

    per_class = {name: figures(classes == k) for k, name in enumerate(CLASS_NAMES)}
    return per_class | {"all": figures(np.isin(classes, labelled))}
