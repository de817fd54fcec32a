"""`anonymize` and `blur_mask` on real street photos with their real ground-truth boxes.

Unrecoverability criterion: the box is resampled to 16 x 16 pixels (INTER_AREA) whatever its size, and
its detail is the variance of the Laplacian there, i.e. its structure at ~4-8 cycles across the box,
the scale at which faces are told apart and plate characters read. A box counts as unrecoverable when
its detail after anonymisation is below 5% of the original's. Measured on the size-normalised box, the
criterion means the same for a 17 px face and a 300 px one; a fixed 5x5 Gaussian fails it at every size.
"""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np
import pytest

from blurring import BlurConfig, anonymize, blur_mask
from detection.detections import CLASS_NAMES, Detections
from eval.datasets import LabelledImage, load_dataset
from tests.conftest import DATASETS, SAMPLES, sample_labels, skip_without_datasets

NOT_SHIPPED = {  # photos too large to ship in samples/, read from the labelled set they come from
    "crowd_3": ("faces-crowd", "maksssksksss506.jpg"),
    "dashcam_3": ("plates-dashcam", "nightride_type3_001.mp4#t=112.jpg"),
}
MODES = ("gaussian", "pixelate", "solid")
DETAIL_SIDE = 16  # boxes are compared at this size, whatever their size in the photo
MAX_DETAIL = 0.05  # unrecoverable: less than this fraction of the original detail is left


@cache
def not_shipped(sample: str) -> LabelledImage:
    """One of NOT_SHIPPED, with its labels as published."""
    name, file = NOT_SHIPPED[sample]
    return next(im for im in load_dataset(DATASETS / name, raw_labels=True) if im.path.name == file)


def load(sample: str, scale: float = 1.0) -> tuple[np.ndarray, Detections]:
    """A sample photo and its ground-truth boxes (faces or plates), both resized by `scale`: one of
    samples/, or one of NOT_SHIPPED (skipped when the labelled sets are absent)."""
    if sample in NOT_SHIPPED:
        skip_without_datasets()
        path, detections = not_shipped(sample).path, not_shipped(sample).boxes
    else:
        path = SAMPLES / f"{sample}.jpg"
        detections = sample_labels()[path.name]
    image = cv2.imread(str(path))
    if scale != 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    return image, detections.scaled(scale)


def touched(box: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of every pixel the box overlaps (unclipped)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return slice(math.floor(y1), math.ceil(y2)), slice(math.floor(x1), math.ceil(x2))


def inside(box: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the pixels wholly inside the box, clipped to non-negative indices."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return slice(max(math.ceil(y1), 0), math.floor(y2)), slice(max(math.ceil(x1), 0), math.floor(x2))


def dilated(box: np.ndarray, margin: float) -> np.ndarray:
    """The box grown by `margin` of its width/height on every side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    return np.array([x1 - mx, y1 - my, x2 + mx, y2 + my])


def union(shape: tuple[int, int], boxes: list[np.ndarray], pixels=touched) -> np.ndarray:
    """Boolean image of the pixels that `pixels` selects for any of `boxes`."""
    out = np.zeros(shape, bool)
    for box in boxes:
        rows, cols = pixels(box)
        out[max(rows.start, 0) : max(rows.stop, 0), max(cols.start, 0) : max(cols.stop, 0)] = True
    return out


def detail(image: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the box resampled to DETAIL_SIDE x DETAIL_SIDE grey pixels."""
    crop = image[inside(box)]
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey.astype(np.float32), (DETAIL_SIDE, DETAIL_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(small, cv2.CV_32F).var())


def detail_left(original: np.ndarray, processed: np.ndarray, box: np.ndarray) -> float:
    """Fraction of the box's detail that survives in `processed`."""
    return detail(processed, box) / detail(original, box)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sample", ["crowd_0", "crowd_2", "dashcam_0"])
def test_outside_mask_is_byte_identical(sample: str, mode: str) -> None:
    image, detections = load(sample)
    before = image.copy()
    config = BlurConfig(mode=mode)
    out = anonymize(image, detections, config)
    mask = blur_mask(*image.shape[:2], detections, config)
    assert np.array_equal(image, before)
    assert out.shape == image.shape and out.dtype == np.uint8 and out is not image
    outside = mask == 0
    assert outside.mean() > 0.5
    assert np.array_equal(out[outside], image[outside])
    for box in detections.xyxy:
        assert not np.array_equal(out[touched(box)], image[touched(box)])


BOX_CASES = {  # sample, index of the box, image scale, range of the box's larger side in pixels
    "small-face": ("crowd_0", 1, 1.0, (15, 20)),
    "small-plate": ("dashcam_1", 2, 1.0, (55, 60)),
    "medium-face": ("crowd_1", 0, 1.0, (100, 110)),
    "large-plate": ("dashcam_3", 0, 1.0, (230, 240)),
    "large-face": ("crowd_3", 0, 1.0, (190, 195)),
    "huge-face": ("crowd_3", 0, 1.6, (300, 320)),
}


@pytest.mark.parametrize("case", BOX_CASES)
def test_gaussian_destroys_detail_at_every_size(case: str) -> None:
    sample, index, scale, (low, high) = BOX_CASES[case]
    image, detections = load(sample, scale)
    box = detections.xyxy[index]
    assert low <= max(box[2:] - box[:2]) <= high
    out = anonymize(image, detections[[index]])
    assert detail_left(image, out, box) < MAX_DETAIL
    # The criterion tells a size-scaled blur from a fixed small one: 5x5 keeps far more at any size.
    assert detail_left(image, cv2.GaussianBlur(image, (5, 5), 0), box) > 4 * MAX_DETAIL


@pytest.mark.parametrize("case", BOX_CASES)
def test_gaussian_matches_full_resolution_blur_of_box_size(case: str) -> None:
    """Inside the box the output is the whole image blurred with sigma = strength * larger side, even
    where the blur runs on a shrunk region: real context around the box, no visible approximation."""
    sample, index, scale, _ = BOX_CASES[case]
    image, detections = load(sample, scale)
    box = detections.xyxy[index]
    sigma = BlurConfig().strength * float(max(box[2:] - box[:2]))
    kernel = 2 * math.ceil(3 * sigma) + 1
    reference = cv2.GaussianBlur(image, (kernel, kernel), sigma, borderType=cv2.BORDER_REFLECT)
    out = anonymize(image, detections[[index]])
    assert np.abs(out[inside(box)].astype(int) - reference[inside(box)]).max() <= 2


def test_fixed_kernel_leaves_large_boxes_nearly_intact() -> None:
    image, detections = load("crowd_3", 1.6)
    box = detections.xyxy[0]
    assert detail_left(image, cv2.GaussianBlur(image, (5, 5), 0), box) > 0.9
    assert detail_left(image, anonymize(image, detections), box) < MAX_DETAIL


def check_mask(mask: np.ndarray, detections: Detections, margin: float) -> None:
    """1 on every pixel of every box, 0 beyond the dilated boxes, soft values only in the margin."""
    assert mask.dtype == np.float32 and mask.min() >= 0 and mask.max() <= 1
    boxes = union(mask.shape, list(detections.xyxy))
    grown = union(mask.shape, [dilated(b, margin) for b in detections.xyxy])
    assert (mask[boxes] == 1).all()
    assert (mask[~grown] == 0).all()
    soft = (mask > 0) & (mask < 1)
    assert not (soft & boxes).any() and not (soft & ~grown).any()


CONFIGS = [BlurConfig(), BlurConfig(margin=0.0, feather=0.0), BlurConfig(margin=0.1, feather=0.3)]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "no-margin", "thin-margin-wide-feather"])
@pytest.mark.parametrize("sample", ["crowd_0", "crowd_2", "dashcam_0", "dashcam_1"])
def test_mask_covers_boxes_and_stops_at_dilated_box(sample: str, config: BlurConfig) -> None:
    image, detections = load(sample)
    check_mask(blur_mask(*image.shape[:2], detections, config), detections, config.margin)


@pytest.mark.parametrize(
    ("sample", "config"),
    [("crowd_3", BlurConfig(margin=0.25, feather=0.2)), ("dashcam_3", BlurConfig(margin=0.1, feather=0.3))],
)
def test_soft_edge_ends_at_the_box_without_a_step(sample: str, config: BlurConfig) -> None:
    """A feather wider than the margin is narrowed to fit it, so the mask climbs to 1 gradually."""
    image, detections = load(sample)
    mask = blur_mask(*image.shape[:2], detections[[0]], config)
    steps = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert 0 < steps <= 0.25


@pytest.mark.parametrize("sample", ["crowd_2", "dashcam_0"])
def test_feather_gives_soft_edge_only_when_asked(sample: str) -> None:
    image, detections = load(sample)
    soft = blur_mask(*image.shape[:2], detections, BlurConfig())
    hard = blur_mask(*image.shape[:2], detections, BlurConfig(feather=0.0))
    assert ((soft > 0) & (soft < 1)).sum() > 20 * len(detections)
    assert set(np.unique(hard)) == {0.0, 1.0}


@pytest.mark.parametrize(("sample", "corner"), [("crowd_2", 0.0), ("crowd_0", 0.0), ("dashcam_1", 1.0)])
def test_faces_are_ellipses_and_plates_rectangles(sample: str, corner: float) -> None:
    image, detections = load(sample)
    height, width = image.shape[:2]
    config = BlurConfig(feather=0.0)
    checked = 0
    for i, box in enumerate(detections.xyxy):  # one box at a time: a neighbour's mask may reach the corner
        x1, y1, x2, y2 = dilated(box, config.margin)
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            continue
        row, col = math.floor(y1) + 1, math.ceil(x2) - 2  # just inside the dilated box's top-right corner
        assert blur_mask(height, width, detections[[i]], config)[row, col] == corner
        rectangle = blur_mask(height, width, detections[[i]], BlurConfig(feather=0.0, face_ellipse=False))
        assert rectangle[row, col] == 1.0
        checked += 1
    assert checked


def test_anonymize_applies_exactly_blur_mask() -> None:
    image, detections = load("dashcam_3")
    config = BlurConfig(mode="solid")
    out = anonymize(image, detections[[0]], config)
    mask = blur_mask(*image.shape[:2], detections[[0]], config)
    fill = out[inside(detections.xyxy[0])][0, 0].astype(np.float64)
    expected = image * (1.0 - mask[..., None]) + fill * mask[..., None]
    assert np.abs(out - expected).max() <= 0.5 + 1e-3
    assert (out[mask == 1] == fill).all()


def colours(pixels: np.ndarray) -> int:
    """Number of distinct BGR colours."""
    return len(np.unique(pixels.reshape(-1, 3), axis=0))


def test_pixelate_turns_box_into_a_few_cells() -> None:
    image, detections = load("crowd_1")
    box = detections.xyxy[0]
    out = anonymize(image, detections, BlurConfig(mode="pixelate"))
    assert colours(image[inside(box)]) > 1000
    assert colours(out[inside(box)]) <= 8 * 8  # cells of ~18 px (108 / 6): at most 8 x 8 touch the box


def test_solid_fills_box_with_mean_colour() -> None:
    image, detections = load("crowd_1")
    box = detections.xyxy[0]
    out = anonymize(image, detections, BlurConfig(mode="solid"))
    pixels = out[inside(box)].reshape(-1, 3)
    assert (pixels == pixels[0]).all()
    region = image[union(image.shape[:2], [dilated(box, BlurConfig().margin)])]
    assert np.abs(pixels[0] - region.mean(axis=0)).max() <= 1


@pytest.mark.parametrize("grey", [False, True])
def test_no_boxes_returns_an_equal_copy(grey: bool) -> None:
    image, _ = load("crowd_0")
    if grey:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    before = image.copy()
    out = anonymize(image, Detections())
    assert out is not image and out.dtype == image.dtype and np.array_equal(out, before)
    assert np.array_equal(image, before)
    assert not blur_mask(*image.shape[:2], Detections(), BlurConfig()).any()


@pytest.mark.parametrize("mode", MODES)
def test_box_partly_outside_the_image(mode: str) -> None:
    image, detections = load("crowd_3")
    real = detections.xyxy[0]  # a 193 x 190 face, moved to hang over the top-left corner
    moved = Detections([real - np.array([179, 169, 179, 169])], [1.0], [CLASS_NAMES.index("face")])
    box = moved.xyxy[0]
    assert box[0] < 0 < box[2] and box[1] < 0 < box[3]
    config = BlurConfig(mode=mode)
    out = anonymize(image, moved, config)
    mask = blur_mask(*image.shape[:2], moved, config)
    assert (mask[: math.ceil(box[3]), : math.ceil(box[2])] == 1).all()
    assert np.array_equal(out[mask == 0], image[mask == 0])
    if mode == "gaussian":
        assert detail_left(image, out, box) < MAX_DETAIL
    gone = moved.scaled(1.0, (-1000.0, 0.0))
    assert np.array_equal(anonymize(image, gone, config), image)


@pytest.mark.parametrize("mode", MODES)
def test_greyscale_image(mode: str) -> None:
    colour, detections = load("crowd_2")
    image = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    config = BlurConfig(mode=mode)
    out = anonymize(image, detections, config)
    mask = blur_mask(*image.shape, detections, config)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[mask == 0], image[mask == 0])
    for box in detections.xyxy:
        assert not np.array_equal(out[inside(box)], image[inside(box)])
        if mode == "gaussian":
            assert detail_left(image, out, box) < MAX_DETAIL


def overlapping_boxes(sample: str) -> tuple[np.ndarray, Detections]:
    """A photo's real boxes plus, overlapping half of its second box, a plate box of the same size."""
    image, detections = load(sample)
    box = detections.xyxy[1]
    shifted = box + np.array([1, 0, 1, 0]) * (box[2] - box[0]) / 2
    plate = Detections([shifted], [1.0], [CLASS_NAMES.index("plate")])
    return image, Detections.concat([detections, plate])


@pytest.mark.parametrize("mode", MODES)
def test_overlapping_boxes(mode: str) -> None:
    image, detections = overlapping_boxes("crowd_2")
    config = BlurConfig(mode=mode)
    out = anonymize(image, detections, config)
    mask = blur_mask(*image.shape[:2], detections, config)
    check_mask(mask, detections, config.margin)
    assert np.array_equal(out[mask == 0], image[mask == 0])
    singles = [blur_mask(*image.shape[:2], detections[[i]], config) for i in range(len(detections))]
    assert np.array_equal(mask, np.max(singles, axis=0))
    for i, single in enumerate(singles):
        # Where one box's mask dominates, the output is what that box alone would give.
        dominant = single > np.max(singles[:i] + singles[i + 1 :], axis=0)
        alone = anonymize(image, detections[[i]], config)
        assert dominant.sum() > 100 and np.array_equal(out[dominant], alone[dominant])
        if mode == "gaussian":
            assert detail_left(image, out, detections.xyxy[i]) < MAX_DETAIL


def test_rejects_bad_input() -> None:
    image, detections = load("crowd_0")
    with pytest.raises(ValueError):
        BlurConfig(mode="swirl")
    with pytest.raises(ValueError):
        anonymize(image.astype(np.float32), detections)
    with pytest.raises(ValueError):
        anonymize(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA), detections)
