"""Cut large images into overlapping views, and merge the boxes found in them.

A *view* is a crop of the image that the model sees on its own: the overlapping tiles, plus one
whole-image view (the model downscales it) for objects larger than a tile. Boxes found in a view
are shifted back to image coordinates and merged class-wise across views.

Equirectangular 360-degree panoramas (2:1) wrap around horizontally: the image is extended on the
right by a copy of its left edge, so an object cut by the seam is seen whole; its box is then split
into the two pieces that lie at the right and left edges of the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detection.detections import Detections, intersection_areas


@dataclass(frozen=True)
class View:
    """A crop of the (possibly seam-extended) image: `image[y:y+height, x:x+width]`."""

    x: int
    y: int
    width: int
    height: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The pixels of this view (a numpy view, no copy)."""
        return image[self.y : self.y + self.height, self.x : self.x + self.width]


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length`, overlapping by at least `overlap`.

    `overlap` is a fraction of the tile size. Tiles are spread evenly, the last one flush with
    the end, so every pixel is covered and no tile sticks out of the image.
    """
    if length <= tile:
        return [0]
    step = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def plan_views(width: int, height: int, tile_size: int, overlap: float, whole_image: bool) -> list[View]:
    """Views for an image: tiles when it exceeds `tile_size` (0 disables tiling), plus the whole."""
    whole = View(0, 0, width, height)
    if tile_size <= 0 or max(width, height) <= tile_size:
        return [whole]
    tile_w, tile_h = min(tile_size, width), min(tile_size, height)
    tiles = [
        View(x, y, tile_w, tile_h)
        for y in tile_starts(height, tile_h, overlap)
        for x in tile_starts(width, tile_w, overlap)
    ]
    return [*tiles, whole] if whole_image else tiles


def is_panorama(width: int, height: int) -> bool:
    """True for a 2:1 image, the shape of a full equirectangular 360-degree panorama."""
    return abs(width - 2 * height) <= 1


def extend_seam(image: np.ndarray, pad: int) -> np.ndarray:
    """The panorama with its first `pad` columns appended on the right."""
    return np.concatenate([image, image[:, :pad]], axis=1)


def unwrap_seam(detections: Detections, width: int) -> Detections:
    """Map boxes found on a seam-extended panorama back onto the original `width`.

    A box wholly in the appended strip is moved to the left edge; a box across the seam becomes
    two boxes, the part left of the seam at the right edge and the rest at the left edge.
    """
    x1, x2 = detections.xyxy[:, 0], detections.xyxy[:, 2]
    inside = detections[x2 <= width]
    beyond = detections[x1 >= width].scaled(1.0, (-width, 0))
    across = detections[(x1 < width) & (x2 > width)]
    right_piece = across.xyxy.copy()
    right_piece[:, 2] = width
    left_piece = across.xyxy.copy()
    left_piece[:, 0] = 0
    left_piece[:, 2] -= width
    pieces = Detections(
        np.concatenate([right_piece, left_piece]),
        np.concatenate([across.scores, across.scores]),
        np.concatenate([across.class_id, across.class_id]),
    )
    return Detections.concat([inside, beyond, pieces])


def merge_boxes(detections: Detections, overlap_threshold: float) -> Detections:
    """Greedy class-wise non-maximum *merge*, the tile-merge step of SAHI.

    Boxes are visited by falling score; each unvisited box absorbs every other unvisited box of its
    class whose intersection covers more than `overlap_threshold` of the *smaller* box, and becomes
    their union with the highest score. Intersection-over-smaller (not IoU) is what joins a partial
    box cut by a tile border with the whole box from a neighbouring tile; the union (not the best
    box) is what keeps a blur mask covering every part of the object that any view saw.
    """
    if len(detections) < 2:
        return detections
    groups = merge_groups(detections, overlap_threshold)
    merged_boxes, merged_scores, merged_classes = [], [], []
    for group in range(groups.max() + 1):
        members = groups == group
        best = np.flatnonzero(members)[np.argmax(detections.scores[members])]
        boxes = detections.xyxy[members]
        merged_boxes.append(np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)]))
        merged_scores.append(detections.scores[best])
        merged_classes.append(detections.class_id[best])
    return Detections(np.stack(merged_boxes), merged_scores, merged_classes)


def merge_groups(detections: Detections, overlap_threshold: float) -> np.ndarray:
    """Per box, the index of the box of `merge_boxes`' result that it merges into."""
    xyxy, scores, class_id = detections.xyxy, detections.scores, detections.class_id
    area = detections.area
    groups = np.full(len(detections), -1)
    for i in np.argsort(-scores, kind="stable"):
        if groups[i] >= 0:
            continue
        inter = intersection_areas(xyxy[i : i + 1], xyxy)[0]
        smaller = np.maximum(np.minimum(area[i], area), 1e-9)
        group = (groups < 0) & (class_id == class_id[i]) & (inter / smaller > overlap_threshold)
        group[i] = True
        groups[group] = groups.max() + 1
    return groups
