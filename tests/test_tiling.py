"""Tile planning, seam unwrapping and cross-tile merging, without a model."""

import numpy as np
import pytest

from detection.detections import Detections
from detection.tiling import extend_seam, is_panorama, merge_boxes, plan_views, tile_starts, unwrap_seam


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(1280, 640, 0.2), (720, 640, 0.2), (5000, 640, 0.25)]
)
def test_tiles_cover_every_pixel_with_the_overlap_asked(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, int)
    for s in starts:
        covered[s : s + tile] += 1
    assert covered.min() >= 1
    assert starts[0] == 0 and starts[-1] + tile == length
    gaps = np.diff(starts)
    assert (tile - gaps >= overlap * tile - 1).all()


def test_small_image_is_one_view_and_large_image_gets_tiles_plus_whole():
    assert len(plan_views(400, 300, 640, 0.2, True)) == 1
    views = plan_views(1280, 720, 640, 0.2, True)
    assert len(views) == 7  # 3 x 2 tiles + the whole image
    assert views[-1].width == 1280 and views[-1].height == 720
    assert len(plan_views(1280, 720, 0, 0.2, True)) == 1  # tiling off


def test_a_box_cut_by_a_tile_border_merges_with_the_whole_box_from_the_next_tile():
    whole = [600.0, 300.0, 700.0, 340.0]  # seen whole by the tile starting at x=320
    cut = [600.0, 301.0, 640.0, 339.0]  # the piece inside the tile ending at x=640
    other = [100.0, 100.0, 140.0, 120.0]
    dets = Detections([whole, cut, other], [0.9, 0.6, 0.8], [1, 1, 1])
    merged = merge_boxes(dets, 0.6)
    assert len(merged) == 2
    np.testing.assert_allclose(merged.xyxy[np.argmax(merged.scores)], whole)


def test_merge_keeps_classes_apart_and_takes_the_union_of_partial_boxes():
    dets = Detections(
        [[0, 0, 50, 50], [0, 0, 50, 50], [40, 0, 100, 50], [30, 0, 60, 50]],
        [0.9, 0.8, 0.7, 0.95],
        [0, 1, 0, 0],
    )
    merged = merge_boxes(dets, 0.6)
    faces = merged.of_class("face")
    assert len(merged.of_class("plate")) == 1
    # The 0.95 box [30,60] overlaps 2/3 of both face boxes, so it absorbs them into one union box.
    assert len(faces) == 1
    np.testing.assert_allclose(faces.xyxy[0], [0, 0, 100, 50])
    assert faces.scores[0] == pytest.approx(0.95)


def test_seam_box_is_split_onto_both_edges():
    width = 2000
    dets = Detections(
        [[1950, 10, 2050, 60], [2010, 5, 2040, 20], [100, 100, 200, 200]], [0.9, 0.8, 0.7], [0, 1, 1]
    )
    out = unwrap_seam(dets, width)
    boxes = {tuple(map(float, b)) for b in out.xyxy}
    assert (1950.0, 10.0, 2000.0, 60.0) in boxes  # right piece of the seam face
    assert (0.0, 10.0, 50.0, 60.0) in boxes  # left piece
    assert (10.0, 5.0, 40.0, 20.0) in boxes  # wholly in the copied strip -> moved to the left edge
    assert (100.0, 100.0, 200.0, 200.0) in boxes
    assert len(out) == 4


def test_panorama_shape_and_seam_extension():
    assert is_panorama(4096, 2048) and is_panorama(4097, 2048) and not is_panorama(1280, 720)
    image = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)
    extended = extend_seam(image, 3)
    assert extended.shape == (4, 11, 3)
    np.testing.assert_array_equal(extended[:, 8:], image[:, :3])
