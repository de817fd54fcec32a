"""Shared fixtures: paths to the shared labelled photos and one loaded default detector."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.detector import Detector

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"
SAMPLES = SHARED / "samples"


@pytest.fixture(scope="session")
def detector() -> Detector:
    """The default model, loaded once for the whole test session."""
    return Detector()


@pytest.fixture(scope="session")
def dashcam_plate() -> tuple[np.ndarray, np.ndarray]:
    """A real 1280x720 dashcam frame with one labelled plate of typical size (~120 px), and its box."""
    from eval.datasets import load_dataset

    single = [im for im in load_dataset(DATASETS / "plates-dashcam") if len(im.boxes) == 1]
    image = min(single, key=lambda im: abs(im.boxes.xyxy[0, 2] - im.boxes.xyxy[0, 0] - 120))
    return cv2.imread(str(image.path)), image.boxes.xyxy[0]
