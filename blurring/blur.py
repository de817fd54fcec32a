"""Obscure detected faces and licence plates so they cannot be recovered.

Mask. Every box is first dilated by `margin` of its width/height on every side. A plate is masked by
that dilated rectangle, a face (with `face_ellipse`) by the ellipse inscribed in it. The ellipse
passes through the corners of the original box when ``margin >= (sqrt(2) - 1) / 2 ~ 0.21``; the
default 0.3 leaves room for a soft edge between the corners and the ellipse. The soft edge (`feather`
times the box's smaller side) lies just inside the dilated shape and is clamped so that it never
reaches the original box: every pixel that the original box touches has mask 1 (full replacement), at
any margin and feather. Boxes keep their true geometry when they stick out of the image; only the
pixels inside it are touched. Where masks overlap the larger value wins, and so does the replacement
of the box that gave it (the larger box, i.e. the stronger blur, on ties).

Gaussian rule. ``sigma = strength * L`` with L the larger side of the original box, kernel
``2 * ceil(3 * sigma) + 1``. A Gaussian keeps a pattern of n cycles per L at ``exp(-2 pi^2 k^2 n^2)``
of its amplitude; at k = 0.2 that is under 1e-3 for n >= 3, so even a full-range pattern ends below
half a grey level and is rounded away (erased, not just hidden: no deconvolution brings it back).
Telling faces apart needs roughly 8 cycles across the face and reading a plate about 2 per character,
10+ across the plate, so only the overall tone survives. The rule is relative to the box, so it holds
at any size. Only the dilated box plus the kernel radius is blurred; when sigma exceeds
`_WORK_SIGMA` pixels that region is shrunk (INTER_AREA) until sigma is `_WORK_SIGMA`, blurred, and
enlarged back (INTER_LINEAR), which costs the same for a 20 px box as for a 2000 px one.

Pixelate: the dilated box becomes cells of L / `pixel_cells` pixels (INTER_AREA down, INTER_NEAREST
up). Solid: the dilated box is filled with its mean colour, one value per channel, which reveals less
than the Gaussian's surviving tone and does not stand out as a black patch would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from detection.detections import CLASS_NAMES, Detections

MODES: tuple[str, ...] = ("gaussian", "pixelate", "solid")
_WORK_SIGMA = 6.0  # largest sigma (pixels) blurred at full resolution; larger blurs run on a shrunk copy
_FACE = CLASS_NAMES.index("face")


@dataclass(frozen=True)
class BlurConfig:
    """How `anonymize` obscures boxes; see the module docstring for the rules."""

    mode: str = "gaussian"  # "gaussian" | "pixelate" | "solid"
    margin: float = 0.3  # each box grows by this fraction of its width/height on every side
    face_ellipse: bool = True  # faces get the ellipse inscribed in the dilated box; plates stay rectangles
    feather: float = 0.1  # soft-edge width as a fraction of the box's smaller side (0 = hard edge)
    strength: float = 0.2  # gaussian sigma as a fraction of the box's larger side
    pixel_cells: int = 6  # pixelate: number of cells across the box's larger side

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown blur mode {self.mode!r}, expected one of {MODES}")
        if self.margin < 0 or self.feather < 0 or self.strength <= 0 or self.pixel_cells < 1:
            raise ValueError(f"invalid BlurConfig: {self}")


@dataclass(frozen=True)
class _BoxMask:
    """One box's mask over its region of interest (the dilated box clipped to the image)."""

    index: int  # position of the box in the Detections
    rows: slice
    cols: slice
    mask: np.ndarray  # float32 over rows x cols


def _box_masks(height: int, width: int, detections: Detections, config: BlurConfig) -> Iterator[_BoxMask]:
    """Masks of the boxes that touch the image, smallest box first."""
    for i in np.argsort(detections.area, kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in detections.xyxy[i])
        w, h = x2 - x1, y2 - y1
        if not (w > 0 and h > 0):
            continue
        mx, my = config.margin * w, config.margin * h
        dx1, dy1, dx2, dy2 = x1 - mx, y1 - my, x2 + mx, y2 + my
        c0, c1 = max(math.floor(dx1), 0), min(math.ceil(dx2), width)
        r0, r1 = max(math.floor(dy1), 0), min(math.ceil(dy2), height)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5  # pixel centres
        ys = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        feather = config.feather * min(w, h)
        if config.face_ellipse and detections.class_id[i] == _FACE:
            semi_x, semi_y = w / 2 + mx, h / 2 + my
            radius = np.sqrt(((xs - (x1 + x2) / 2) / semi_x) ** 2 + ((ys - (y1 + y2) / 2) / semi_y) ** 2)
            # Normalised radius of the box corners: the soft edge must stay outside it.
            room = max(1.0 - math.sqrt(2.0) / (1.0 + 2.0 * config.margin), 0.0)
            edge = min(feather / min(semi_x, semi_y), room)
            mask = _ramp(1.0 - radius, edge)
        else:
            inside_x = np.minimum(xs - dx1, dx2 - xs)  # distance in from the dilated box's edge
            inside_y = np.minimum(ys - dy1, dy2 - ys)
            mask = np.minimum(_ramp(inside_x, min(feather, mx)), _ramp(inside_y, min(feather, my)))
        # Every pixel the original box touches is fully replaced, whatever the rounding above.
        mask[_span(y1, y2, r0, r1), _span(x1, x2, c0, c1)] = 1.0
        yield _BoxMask(int(i), slice(r0, r1), slice(c0, c1), mask)


def _span(low: float, high: float, start: int, stop: int) -> slice:
    """The pixels [floor(low), ceil(high)) as a slice of the pixels [start, stop), clipped to them."""
    n = stop - start
    return slice(min(max(math.floor(low) - start, 0), n), min(max(math.ceil(high) - start, 0), n))


def _ramp(inside: np.ndarray, edge: float) -> np.ndarray:
    """0 at and beyond the shape's edge (inside <= 0), rising linearly to 1 at `edge` inside it."""
    if edge > 0:
        return np.clip(inside / edge, 0.0, 1.0)
    return (inside > 0).astype(np.float32)


def blur_mask(height: int, width: int, detections: Detections, config: BlurConfig) -> np.ndarray:
    """float32 (H, W) in [0, 1]: how much of the anonymised pixel replaces the original, per pixel.

    This is exactly the mask `anonymize` applies (dilation, ellipse and feathering included).
    """
    mask = np.zeros((height, width), np.float32)
    for box in _box_masks(height, width, detections, config):
        np.maximum(mask[box.rows, box.cols], box.mask, out=mask[box.rows, box.cols])
    return mask


def anonymize(image: np.ndarray, detections: Detections, config: BlurConfig = BlurConfig()) -> np.ndarray:
    """A new image (same shape and dtype) with every box obscured; the input is not modified.

    Takes uint8 BGR (H, W, 3) or greyscale (H, W). Pixels where `blur_mask` is 0 are byte-identical
    to the input; elsewhere the output is ``round(image * (1 - mask) + replacement * mask)``.
    """
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected a uint8 (H, W, 3) or (H, W) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.float32)
    replacement = image.copy()
    regions = []
    for box in _box_masks(height, width, detections, config):
        x1, y1, x2, y2 = (float(v) for v in detections.xyxy[box.index])
        region = mask[box.rows, box.cols]
        wins = (box.mask > 0) & (box.mask >= region)
        pixels = _replace(image, box.rows, box.cols, max(x2 - x1, y2 - y1), config)
        np.copyto(replacement[box.rows, box.cols], pixels, where=_per_channel(wins, image))
        np.maximum(region, box.mask, out=region)
        regions.append((box.rows, box.cols))
    out = image.copy()
    for rows, cols in regions:  # overlapping regions are simply composed twice, with the same result
        weight = _per_channel(mask[rows, cols], image)
        mixed = image[rows, cols] * (1.0 - weight)
        mixed += replacement[rows, cols] * weight
        np.copyto(out[rows, cols], np.rint(mixed, out=mixed).astype(np.uint8), where=weight > 0)
    return out


def _per_channel(values: np.ndarray, image: np.ndarray) -> np.ndarray:
    """`values` (H, W) shaped to broadcast against `image`, colour or greyscale."""
    return values if image.ndim == 2 else values[..., None]


def _replace(image: np.ndarray, rows: slice, cols: slice, size: float, config: BlurConfig) -> np.ndarray:
    """The anonymised pixels of `image[rows, cols]` for a box whose larger side is `size` pixels."""
    region = image[rows, cols]
    if config.mode == "solid":
        filled = np.empty_like(region)
        filled[...] = np.rint(region.mean(axis=(0, 1)))
        return filled
    if config.mode == "pixelate":
        cell = size / config.pixel_cells
        h, w = region.shape[:2]
        cells = (max(round(w / cell), 1), max(round(h / cell), 1))
        small = cv2.resize(region, cells, interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    return _gaussian(image, rows, cols, config.strength * size)


def _gaussian(image: np.ndarray, rows: slice, cols: slice, sigma: float) -> np.ndarray:
    """`image[rows, cols]` blurred with `sigma`, using the real pixels within the kernel radius around it."""
    height, width = image.shape[:2]
    pad = math.ceil(3 * sigma)
    r0, r1 = max(rows.start - pad, 0), min(rows.stop + pad, height)
    c0, c1 = max(cols.start - pad, 0), min(cols.stop + pad, width)
    context = image[r0:r1, c0:c1]
    h, w = context.shape[:2]
    if sigma <= _WORK_SIGMA:
        blurred = _gaussian_blur(context, sigma, sigma)
    else:
        shrink = _WORK_SIGMA / sigma
        small_w, small_h = max(round(w * shrink), 1), max(round(h * shrink), 1)
        small = cv2.resize(context, (small_w, small_h), interpolation=cv2.INTER_AREA)
        small = _gaussian_blur(small, sigma * small_w / w, sigma * small_h / h)
        blurred = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return blurred[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]


def _gaussian_blur(image: np.ndarray, sigma_x: float, sigma_y: float) -> np.ndarray:
    """cv2.GaussianBlur with odd kernels of 2 * ceil(3 sigma) + 1, mirroring at the image border."""
    ksize = (2 * math.ceil(3 * sigma_x) + 1, 2 * math.ceil(3 * sigma_y) + 1)
    return cv2.GaussianBlur(image, ksize, sigma_x, sigmaY=sigma_y, borderType=cv2.BORDER_REFLECT)
