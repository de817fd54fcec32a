"""Labelled moving-crop clips, clips of a video's labelled frames, and the per-object figures of video
blurring."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detection.detections import CLASS_NAMES, Detections
from eval.datasets import LabelledImage
from eval.sequences import moving_crop, sequence_figures, video_frame_clip, video_frame_runs

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


def test_video_frames_become_runs_of_consecutive_frames_with_linked_objects(tmp_path):
    plate = CLASS_NAMES.index("plate")
    frame = np.full((90, 160, 3), 60, np.uint8)
    cv2.imwrite(str(tmp_path / "frame.jpg"), frame)
    images = []
    for video, seconds in (("drive.mp4", [12, 10, 11, 14, 15]), ("other.mp4", [3, 4])):
        for t in seconds:
            # one plate moving right 10 px a second; a second plate appears at 11 s, far from the first
            xyxy = [[10 * t, 20, 10 * t + 30, 30]] + ([[120, 60, 150, 70]] if t == 11 else [])
            path = tmp_path / f"{video}#t={t}.jpg"
            path.write_bytes((tmp_path / "frame.jpg").read_bytes())
            boxes = Detections(xyxy, [1.0] * len(xyxy), [plate] * len(xyxy))
            images.append(LabelledImage(path, 160, 90, boxes, len(images)))
    runs = video_frame_runs(images)
    assert [times.tolist() for times, _ in runs] == [[10, 11, 12], [14, 15], [3, 4]]
    assert [im.path.name for im in runs[0][1]] == [
        "drive.mp4#t=10.jpg",
        "drive.mp4#t=11.jpg",
        "drive.mp4#t=12.jpg",
    ]
    clip = video_frame_clip(*runs[0])
    assert len(clip.frames) == 3 and clip.frames[0].shape == (90, 160, 3)
    first, second = clip.objects[1].tolist()
    assert clip.objects[0].tolist() == [first] and clip.objects[2].tolist() == [first] and second != first
    with pytest.raises(ValueError, match="not a video's frame"):
        video_frame_runs([LabelledImage(tmp_path / "frame.jpg", 160, 90, Detections(), 0)])
