"""Labelled moving-crop clips and the per-object figures of video blurring."""

from __future__ import annotations

import numpy as np

from detection.detections import CLASS_NAMES, Detections
from eval.sequences import moving_crop, sequence_figures

FACE = CLASS_NAMES.index("face")


def test_moving_crop_boxes_follow_the_labelled_object():
    image = np.full((600, 900, 3), 40, np.uint8)
    image[200:260, 20:70] = 255  # the "object", and its label
    truth = Detections([[20, 200, 70, 260]], [1.0], [FACE])
    clip = moving_crop(image, truth, frames=12, size=(320, 240))
    assert len(clip.frames) == 12 and clip.frames[0].shape == (240, 320, 3)
    assert any(len(b) == 0 for b in clip.boxes) and any(len(b) == 1 for b in clip.boxes)  # it pans past
    for i, (frame, boxes) in enumerate(zip(clip.frames, clip.boxes, strict=True)):
        for x1, y1, x2, y2 in boxes.xyxy:
            inner = frame[int(y1) + 2 : int(y2) - 2, int(x1) + 2 : int(x2) - 2]
            if i % 5 != 4 and inner.size:  # not a motion-blurred frame
                assert inner.mean() > 200, i


def test_leak_flicker_and_blurred_fraction_per_object():
    box = Detections([[10, 10, 30, 30]], [1.0], [FACE])
    other = Detections([[60, 10, 80, 30]], [1.0], [FACE])
    truth = [Detections.concat([box, other])] * 5
    objects = [np.array([0, 1])] * 5
    covered = [box, box, Detections(), box, Detections.concat([box, other])]  # object 0 missed in frame 2
    figures = sequence_figures(truth, objects, covered, (100, 50))
    assert figures["objects"] == 2 and figures["object_frames"] == 10
    assert figures["leaked_objects"] == 2  # 0 flickers once, 1 is visible until the last frame
    assert figures["flicker_frames"] == 1  # only object 0's frame 2 lies between blurred frames
    assert figures["blurred_fraction"] == 5 / 10
    assert figures["leak_rate"] == 1.0 and figures["flicker_rate"] == 1 / 10
