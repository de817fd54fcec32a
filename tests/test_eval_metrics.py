"""Evaluation metrics: COCO figures against pycocotools and by hand, and the privacy figures."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blurring import BlurConfig, blur_mask
from detection.detections import CLASS_NAMES, Detections
from eval.datasets import LabelledImage
from eval.metrics import (
    blur_outcome,
    coco_metrics,
    covered_fraction,
    overlaps_nothing,
    precision_recall,
    privacy_metrics,
    size_names,
    threshold_within_budget,
    union_area,
)

FACE, PLATE = 0, 1


def image(boxes: Detections, image_id: int = 1, width: int = 640, height: int = 480) -> LabelledImage:
    return LabelledImage(Path(f"{image_id}.jpg"), width, height, boxes, image_id)


def boxes(*rows: tuple[float, float, float, float], cls: int = FACE, scores=None) -> Detections:
    return Detections(list(rows), scores if scores is not None else [1.0] * len(rows), [cls] * len(rows))


# --- agreement with pycocotools -------------------------------------------------------------


def quarter(values: np.ndarray) -> np.ndarray:
    return np.round(values * 4) / 4


def random_case(seed: int) -> tuple[list[LabelledImage], list[Detections]]:
    """Random ground truth of every size, and predictions: jittered, missing, mislabelled and extra.

    Coordinates are quarter pixels, exact in float32 and through the 2-decimal COCO export.
    """
    rng = np.random.default_rng(seed)
    images, predictions = [], []
    for image_id in range(1, 9):
        n = rng.integers(0, 7)
        size = rng.uniform(6, 180, (n, 2))
        corner = rng.uniform(0, 1, (n, 2)) * ([640, 480] - size)
        gt = quarter(np.hstack([corner, corner + size]))
        cls = rng.integers(0, 2, n)
        kept = rng.random(n) < 0.8
        jitter = quarter(rng.normal(0, 0.12, (n, 4)) * np.tile(size, 2))
        pred = (gt + jitter)[kept]
        pred_cls = np.where(rng.random(n) < 0.1, 1 - cls, cls)[kept]
        extra = rng.integers(0, 4)
        extra_corner = rng.uniform(0, 500, (extra, 2))
        pred = np.vstack(
            [pred, quarter(np.hstack([extra_corner, extra_corner + rng.uniform(8, 120, (extra, 2))]))]
        )
        pred = np.hstack([np.minimum(pred[:, :2], pred[:, 2:] - 1), pred[:, 2:]])  # keep x2 > x1
        pred_cls = np.concatenate([pred_cls, rng.integers(0, 2, extra)])
        images.append(image(Detections(gt, np.ones(n), cls), image_id))
        predictions.append(Detections(pred, rng.uniform(0.01, 1, len(pred)), pred_cls))
    return images, predictions


def pycocotools_ap(images: list[LabelledImage], predictions: list[Detections]) -> dict[str, dict[str, float]]:
    """AP figures and AR@100 per class from pycocotools, on COCO dicts built here from the raw arrays."""
    gt = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}],
    }
    results = []
    for im, pred in zip(images, predictions, strict=True):
        gt["images"].append({"id": im.image_id, "width": im.width, "height": im.height})
        for (x1, y1, x2, y2), c in zip(im.boxes.xyxy.astype(float), im.boxes.class_id, strict=True):
            box = [x1, y1, x2 - x1, y2 - y1]
            annotation = {
                "id": len(gt["annotations"]) + 1,
                "image_id": im.image_id,
                "category_id": int(c) + 1,
            }
            gt["annotations"].append(annotation | {"bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        for (x1, y1, x2, y2), s, c in zip(pred.xyxy.astype(float), pred.scores, pred.class_id, strict=True):
            results.append(
                {
                    "image_id": im.image_id,
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": round(float(s), 5),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]  # maxDets 100 is index 2

    def mean(values: np.ndarray) -> float | None:
        return float(values[values > -1].mean()) if (values > -1).any() else None

    return {
        name: {
            "AP": mean(precision[:, :, k, 0, 2]),
            "AP50": mean(precision[0, :, k, 0, 2]),
            "AP75": mean(precision[5, :, k, 0, 2]),
            "AP_small": mean(precision[:, :, k, 1, 2]),
            "AP_medium": mean(precision[:, :, k, 2, 2]),
            "AP_large": mean(precision[:, :, k, 3, 2]),
            "AR100": mean(recall[:, k, 0, 2]),
        }
        for k, name in enumerate(CLASS_NAMES)
    }


@pytest.mark.parametrize("seed", range(6))
def test_ap_agrees_with_pycocotools_on_random_cases(seed):
    images, predictions = random_case(seed)
    ours = coco_metrics(images, predictions)
    reference = pycocotools_ap(images, predictions)
    for name in CLASS_NAMES:
        for key, expected in reference[name].items():
            assert ours[name][key] == pytest.approx(expected, abs=1e-6), (name, key)
    assert 0 < ours["face"]["AP"] < 1  # the cases are neither trivial nor hopeless


# --- known answers --------------------------------------------------------------------------


def test_perfect_predictions_score_one_and_no_predictions_zero():
    gt = Detections(
        [[10, 10, 60, 70], [100, 100, 300, 220], [400, 50, 420, 60]], [1, 1, 1], [FACE, PLATE, FACE]
    )
    perfect = coco_metrics([image(gt)], [Detections(gt.xyxy, [0.9, 0.8, 0.7], gt.class_id)])
    none = coco_metrics([image(gt)], [Detections()])
    for name in CLASS_NAMES:
        assert perfect[name]["AP"] == perfect[name]["AP50"] == perfect[name]["AP75"] == 1.0
        assert perfect[name]["recall50"] == 1.0
        assert none[name]["AP"] == none[name]["AP50"] == none[name]["recall50"] == 0.0


def test_images_sharing_an_id_are_refused_not_scored_as_one():
    labelled = image(Detections([[10, 10, 60, 70]], [1], [FACE]), image_id=3)
    empty = image(Detections(), image_id=3)
    found_in_the_empty_one = [Detections(), Detections([[10, 10, 60, 70]], [0.9], [FACE])]
    with pytest.raises(ValueError, match="image id 3 is given to several images"):
        coco_metrics([labelled, empty], found_in_the_empty_one)


def test_class_without_ground_truth_has_no_figures():
    figures = coco_metrics(
        [image(boxes((10, 10, 50, 50)))], [boxes((10, 10, 50, 50), cls=PLATE, scores=[0.9])]
    )
    assert figures["face"]["AP"] == 0.0
    assert set(figures["plate"].values()) == {None}


@pytest.mark.parametrize(
    ("height", "expected_ap"),
    [
        (100, 1.0),  # IoU 1: a match at all ten IoU thresholds
        (60, 0.3),  # IoU 0.6 exactly: a match at 0.5, 0.55 and 0.6 (COCO matches at IoU >= threshold)
        (59, 0.2),  # IoU 0.59: at 0.5 and 0.55
        (50, 0.1),  # IoU 0.5 exactly: at 0.5 only
        (49, 0.0),  # IoU 0.49: never
    ],
)
def test_one_shifted_box_scores_the_share_of_iou_thresholds_it_passes(height, expected_ap):
    gt, pred = boxes((0, 0, 100, 100)), boxes((0, 0, 100, height), scores=[0.9])
    figures = coco_metrics([image(gt)], [pred])["face"]
    assert figures["AP"] == pytest.approx(expected_ap, abs=1e-12)
    assert figures["AP50"] == (1.0 if height >= 50 else 0.0)
    assert figures["AP75"] == (1.0 if height >= 75 else 0.0)


def test_101_point_interpolation_by_hand():
    # Two faces, one found: precision 1 at the recall points 0, 0.01, ..., 0.5 -> 51 of 101.
    gt = boxes((0, 0, 50, 50), (100, 100, 150, 150))
    assert coco_metrics([image(gt)], [boxes((0, 0, 50, 50), scores=[0.9])])["face"]["AP50"] == pytest.approx(
        51 / 101
    )
    # One face, a false positive ranked above the hit: precision 1/2 at every recall point.
    ranked = boxes((300, 300, 350, 350), (0, 0, 50, 50), scores=[0.9, 0.8])
    assert coco_metrics([image(gt[:1])], [ranked])["face"]["AP50"] == pytest.approx(0.5)


# --- precision-recall sweep -----------------------------------------------------------------


def test_swept_curve_scores_each_threshold_on_its_own_boxes():
    gt = boxes((0, 0, 50, 50), (100, 100, 150, 150))
    widened = boxes((0, 0, 50, 50), (60, 60, 150, 150), (300, 300, 320, 320))  # the second box too loose
    exact = boxes((0, 0, 50, 50), (100, 100, 150, 150))
    by_threshold = {0.1: widened, 0.2: exact, 0.3: exact[:1]}
    curves = precision_recall([image(gt)], lambda t: [by_threshold[t]], [0.1, 0.2, 0.3])
    face = curves["face"]
    np.testing.assert_allclose(face.recall, [0.5, 1.0, 0.5])
    np.testing.assert_allclose(face.precision, [1 / 3, 1.0, 1.0])
    assert curves["plate"] is None
    empty = precision_recall([image(gt)], lambda t: [Detections()], [0.5])["face"]
    assert empty.recall[0] == 0 and np.isnan(empty.precision[0])


# --- blurred share, false blurs, sizes ------------------------------------------------------


def column_mask(columns: range, height: int = 40, width: int = 40, value: float = 1.0) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    mask[:, columns.start : columns.stop] = value
    return mask


def test_covered_fraction_on_hand_made_masks():
    box = np.array([[10, 10, 20, 20]], np.float32)
    assert covered_fraction(box, column_mask(range(0, 40)))[0] == 1.0
    assert covered_fraction(box, column_mask(range(10, 15)))[0] == 0.5
    assert covered_fraction(box, column_mask(range(10, 19)))[0] == pytest.approx(0.9)
    assert covered_fraction(box, column_mask(range(0, 40), value=0.5))[0] == 1.0  # 0.5 is under the mask
    assert covered_fraction(box, column_mask(range(0, 40), value=0.499))[0] == 0.0
    # Float box: the half pixels at either end count half.
    half = np.array([[10.5, 10, 20.5, 20]], np.float32)
    assert covered_fraction(half, column_mask(range(11, 21)))[0] == pytest.approx(0.95)
    # Only the part inside the image counts; a box wholly outside has nothing to hide.
    outside = np.array([[-10, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    np.testing.assert_allclose(covered_fraction(outside, column_mask(range(0, 10))), [1.0, 1.0])


@pytest.mark.parametrize(
    ("covered_pixels", "blurred"),
    [(100, True), (90, True), (89, False), (50, False), (0, False)],
)
def test_blurred_means_at_least_90_percent_of_the_box_under_the_mask(covered_pixels, blurred, monkeypatch):
    box_pixels = np.zeros(100, np.float32)
    box_pixels[:covered_pixels] = 1.0
    mask = np.zeros((40, 40), np.float32)
    mask[10:20, 10:20] = box_pixels.reshape(10, 10)
    monkeypatch.setattr("eval.metrics.blur_mask", lambda *args: mask)
    hidden, _ = blur_outcome(image(boxes((10, 10, 20, 20)), width=40, height=40), Detections(), BlurConfig())
    assert hidden.tolist() == [blurred]


def test_blurred_uses_the_real_mask_with_dilation_and_ellipse():
    gt = image(boxes((100, 100, 200, 200)), width=300, height=300)
    crisp = BlurConfig(margin=0.3, feather=0.0)
    # The same box is always blurred, whatever the class (the box itself is fully masked).
    for cls in (FACE, PLATE):
        assert blur_outcome(gt, boxes((100, 100, 200, 200), cls=cls), BlurConfig())[0].tolist() == [True]
    # A detection over the left half only: not blurred.
    assert blur_outcome(gt, boxes((100, 100, 150, 200)), BlurConfig(margin=0.0))[0].tolist() == [False]
    # A 60 px box centred in the 100 px face: dilated by 30% to 96 px, 92% as a rectangle (plate) ...
    small = (120, 120, 180, 180)
    as_plate = blur_mask(300, 300, boxes(small, cls=PLATE), crisp)
    assert covered_fraction(gt.boxes.xyxy, as_plate)[0] == pytest.approx(0.96**2, abs=0.01)
    assert blur_outcome(gt, boxes(small, cls=PLATE), crisp)[0].tolist() == [True]
    # ... but only the inscribed circle of radius 48 as a face: pi 48² / 100² = 72%, not blurred.
    as_face = blur_mask(300, 300, boxes(small, cls=FACE), crisp)
    assert covered_fraction(gt.boxes.xyxy, as_face)[0] == pytest.approx(np.pi * 0.48**2, abs=0.01)
    assert blur_outcome(gt, boxes(small, cls=FACE), crisp)[0].tolist() == [False]


def test_false_blurs_share_no_area_with_any_ground_truth():
    gt = Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [FACE, PLATE])
    dets = Detections(
        [[10, 0, 20, 10], [9, 0, 19, 10], [55, 55, 70, 70], [100, 100, 110, 110]],
        [0.9] * 4,
        [FACE, FACE, FACE, PLATE],  # the third is a face detection on a plate: still not a false blur
    )
    assert overlaps_nothing(dets, gt).tolist() == [True, False, False, True]
    assert overlaps_nothing(dets, Detections()).all()


def test_size_names_follow_coco_area_ranges():
    areas = np.array([0, 1023.9, 1024, 9215.9, 9216, 1e7])
    assert size_names(areas).tolist() == ["small", "small", "medium", "medium", "large", "large"]


def test_privacy_metrics_on_a_hand_made_set():
    faces = Detections([[0, 0, 20, 20], [100, 100, 150, 150], [200, 0, 400, 200]], [1, 1, 1], [FACE] * 3)
    images = [image(faces, 1, 640, 480), image(Detections(), 2, 640, 480)]
    detections = [
        # The first face exactly, the large face a little loose (IoU 0.91), a false blur far away.
        Detections([[0, 0, 20, 20], [190, 0, 400, 210], [500, 400, 520, 420]], [0.9, 0.8, 0.7], [FACE] * 3),
        Detections([[10, 10, 30, 30]], [0.6], [PLATE]),  # a plate where no plate is labelled
    ]
    figures = privacy_metrics(images, detections, BlurConfig())
    face = figures["face"]
    assert face["recall50"] == pytest.approx(2 / 3)
    assert face["boxes"] == {"all": 3, "small": 1, "medium": 1, "large": 1}
    assert face["blurred"] == {"all": pytest.approx(2 / 3), "small": 1.0, "medium": 0.0, "large": 1.0}
    assert face["false_blurs_per_image"] == 0.5  # one in two images
    assert face["detections_per_image"] == 1.5
    plate = figures["plate"]
    assert plate["recall50"] is None and plate["false_blurs_per_image"] is None
    assert set(plate["blurred"].values()) == {None}
    assert plate["detections_per_image"] == 0.5
    assert figures["all"] == face  # only faces are labelled
    # The false blur is 20x20 of 640x480 in the first image, none in the second (the plate there is of
    # a class this set does not label).
    assert face["false_blur_area"] == pytest.approx((400 / (640 * 480) + 0) / 2)
    assert face["false_blur_area_pooled"] == pytest.approx(400 / (2 * 640 * 480))
    assert plate["false_blur_area"] is None


def test_falsely_blurred_area_tells_a_small_patch_from_a_wheel_sized_one():
    face = image(boxes((0, 0, 20, 20)), 1, 1280, 720)
    small_patch = [boxes((0, 0, 20, 20), (600, 300, 620, 320))]  # a 20 px false blur
    wheel = [boxes((0, 0, 20, 20), (600, 300, 800, 500))]  # a 200 px one
    patch_figures = privacy_metrics([face], small_patch, BlurConfig())["face"]
    wheel_figures = privacy_metrics([face], wheel, BlurConfig())["face"]
    assert patch_figures["false_blurs_per_image"] == wheel_figures["false_blurs_per_image"] == 1.0
    assert patch_figures["false_blur_area"] == pytest.approx(400 / (1280 * 720))  # 0.04%
    assert wheel_figures["false_blur_area"] == pytest.approx(40_000 / (1280 * 720))  # 4.3%
    # Overlapping false blurs count their union once; boxes are clipped to the image.
    assert union_area(np.array([[0, 0, 10, 10], [5, 5, 15, 15], [-5, 90, 5, 110]]), 100, 100) == 100 + 75 + 50


def test_budget_needs_both_few_false_blurs_and_little_false_area():
    rows = [
        {"threshold": 0.1, "false_blurs_per_image": 0.4, "false_blur_area": 0.02},  # few, but large
        {"threshold": 0.2, "false_blurs_per_image": 0.8, "false_blur_area": 0.001},  # small, but many
        {"threshold": 0.3, "false_blurs_per_image": 0.5, "false_blur_area": 0.005},  # both at the limit
        {"threshold": 0.4, "false_blurs_per_image": 0.1, "false_blur_area": 0.001},
    ]
    assert threshold_within_budget(rows, 0.5, 0.005) == 0.3
    assert threshold_within_budget(rows, 0.5, 1.0) == 0.1
    assert threshold_within_budget(rows, 0.05, 1.0) is None
