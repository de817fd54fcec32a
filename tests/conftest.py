"""Shared fixtures: paths to the shared labelled photos and one loaded default detector.

The tests keep their model exports (detection/runtime.py) in a cache of their own, removed at exit,
so they neither read nor fill the user's `~/.cache/streetblur`; Ray workers they start inherit it.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.detector import Detector

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"
SAMPLES = SHARED / "samples"

if "STREETBLUR_CACHE" not in os.environ:
    os.environ["STREETBLUR_CACHE"] = tempfile.mkdtemp(prefix="streetblur-test-cache-")
    atexit.register(shutil.rmtree, os.environ["STREETBLUR_CACHE"], ignore_errors=True)


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
