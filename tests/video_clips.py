"""Short test videos written with PyAV: real face and plate crops from `samples/` moving over a
plain textured background, with an AAC audio track, a GoPro-style `gpmd` data track and a timecode,
at a variable frame rate. The exact box of every pasted crop is returned with the video."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from tests.conftest import SAMPLES, sample_labels

WIDTH, HEIGHT = 640, 360
TIME_BASE = Fraction(1, 1000)


def sample_crops() -> list[tuple[np.ndarray, np.ndarray]]:
    """A face (crowd_1.jpg) and a plate (dashcam_1.jpg) from the samples, each with context around
    it: `(crop, box of the object inside the crop)`."""
    labels = sample_labels()
    crops = []
    for name, index, pad in (("crowd_1.jpg", 0, 0.5), ("dashcam_1.jpg", 0, 0.6)):
        image = cv2.imread(str(SAMPLES / name))
        x1, y1, x2, y2 = labels[name].xyxy[index]
        mx, my = pad * (x2 - x1), pad * (y2 - y1) * 2
        c0, r0 = max(int(x1 - mx), 0), max(int(y1 - my), 0)
        c1, r1 = min(int(x2 + mx), image.shape[1]), min(int(y2 + my), image.shape[0])
        crops.append((image[r0:r1, c0:c1].copy(), np.array([x1 - c0, y1 - r0, x2 - c0, y2 - r0], np.float32)))
    return crops


def background() -> np.ndarray:
    """A smooth colour gradient with a fixed pattern of soft blobs: something for the codec to hold."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.stack([80 + 60 * xs / WIDTH, 90 + 50 * ys / HEIGHT, 120 + 40 * np.sin(xs / 40)], axis=-1)
    return cv2.GaussianBlur(image.astype(np.uint8), (0, 0), 2)


def frame_times(frames: int) -> list[int]:
    """Presentation times in milliseconds at a variable rate: 40 ms steps with a 10 ms wobble."""
    return [i * 40 + (7 if i % 3 == 1 else 0) for i in range(frames)]


def write_clip(
    path: Path, frames: int = 24, faststart: bool = True, rotation: int = 0, keyframe_every: int = 250
) -> list[np.ndarray]:
    """Write the test MP4 to `path` (displayed turned `rotation` degrees counterclockwise, with B-frames
    and a keyframe at most every `keyframe_every` frames); returns, per frame, the exact (N, 4) boxes of
    the objects in the coded pixels."""
    crops = sample_crops()
    base = background()
    options = {"movflags": "faststart"} if faststart else {}
    boxes_per_frame = []
    with av.open(str(path), "w", format="mp4", options=options) as output:
        output.metadata["location"] = "+48.8577+002.2950/"
        output.metadata["title"] = "not carried"
        video = output.add_stream("libx264", rate=25, options={"crf": "12", "g": str(keyframe_every)})
        turns = rotation // 90 % 4
        video.width, video.height = (HEIGHT, WIDTH) if turns % 2 else (WIDTH, HEIGHT)
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = TIME_BASE
        video.metadata["timecode"] = "01:00:00:00"
        if rotation:
            video.set_display_rotation(rotation)
        audio = output.add_stream("aac", rate=48000)
        gps = output.add_data_stream("bin_data")
        gps.codec_tag = "gpmd"
        for index, pts in enumerate(frame_times(frames)):
            image = base.copy()
            boxes = []
            for number, (crop, box) in enumerate(crops):
                h, w = crop.shape[:2]
                x = 20 + index * 3 if number == 0 else 400 - index * 3  # towards each other, apart
                y = 40 + number * 120 + (index % 5) * 2
                image[y : y + h, x : x + w] = crop
                boxes.append(box + np.array([x, y, x, y], np.float32))
            image, boxes = coded(image, np.array(boxes), turns)
            boxes_per_frame.append(boxes)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = pts, TIME_BASE
            output.mux(video.encode(frame))
            tone = np.sin(np.arange(1920, dtype=np.float32) / 10)[None] * 0.1
            sound = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 48000, index * 1920
            output.mux(audio.encode(sound))
            packet = av.Packet(f"GPS fix {index}".encode())
            packet.stream, packet.pts, packet.dts, packet.time_base = gps, pts, pts, TIME_BASE
            packet.duration = 40
            output.mux(packet)
        output.mux(video.encode())
        output.mux(audio.encode())
    return boxes_per_frame


def coded(upright: np.ndarray, boxes: np.ndarray, turns: int) -> tuple[np.ndarray, np.ndarray]:
    """The coded pixels that, turned `turns` quarter turns counterclockwise for display, show
    `upright`; and `boxes` moved with them."""
    image = upright
    for _ in range(turns):
        height = image.shape[0]
        image = np.rot90(image, -1)
        boxes = np.stack([height - boxes[:, 3], boxes[:, 0], height - boxes[:, 1], boxes[:, 2]], axis=1)
    return np.ascontiguousarray(image), boxes
