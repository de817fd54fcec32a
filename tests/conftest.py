"""Shared fixtures: the sample photos, the labelled sets, one loaded default detector, a moto S3 server.

`SAMPLES` is the repository's `samples/` (a few photos and their labels, shipped). `DATASETS` holds the
labelled sets (not shipped): `$STREETBLUR_DATASETS`, else `../shared/datasets` beside the repository;
tests that need them skip when the folder is absent (`requires_datasets`, `skip_without_datasets`).

The tests keep their model exports (detection/runtime.py) in a cache of their own, removed at exit,
so they neither read nor fill the user's `~/.cache/streetblur`; Ray workers they start inherit it.
"""

import atexit
import json
import os
import shutil
import socket
import tempfile
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
DATASETS = Path(os.environ.get("STREETBLUR_DATASETS") or REPO.parent / "shared" / "datasets")
NO_DATASETS = "labelled sets not found: set STREETBLUR_DATASETS or put them in ../shared/datasets"
requires_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason=NO_DATASETS)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

if "STREETBLUR_CACHE" not in os.environ:
    os.environ["STREETBLUR_CACHE"] = tempfile.mkdtemp(prefix="streetblur-test-cache-")
    atexit.register(shutil.rmtree, os.environ["STREETBLUR_CACHE"], ignore_errors=True)


def skip_without_datasets() -> None:
    """Skip the calling test when the labelled sets are absent: `requires_datasets` for fixtures and
    helpers, where a mark cannot go."""
    if not DATASETS.is_dir():
        pytest.skip(NO_DATASETS)


def sample_labels() -> dict[str, Detections]:
    """The ground-truth faces and plates of each sample photo (`samples/labels.json`), by file name."""
    labels = {}
    for name, boxes in json.loads((SAMPLES / "labels.json").read_text()).items():
        classes = [CLASS_NAMES.index(box["class"]) for box in boxes]
        labels[name] = Detections([box["box"] for box in boxes], np.ones(len(boxes)), classes)
    return labels


@pytest.fixture(scope="session")
def detector() -> Detector:
    """The default model, loaded once for the whole test session."""
    return Detector()


@pytest.fixture(scope="session")
def dashcam_plate() -> tuple[np.ndarray, np.ndarray]:
    """A real 1280x720 dashcam frame with one labelled plate of typical size (~120 px), and its box."""
    from eval.datasets import load_dataset

    skip_without_datasets()
    single = [im for im in load_dataset(DATASETS / "plates-dashcam") if len(im.boxes) == 1]
    image = min(single, key=lambda im: abs(im.boxes.xyxy[0, 2] - im.boxes.xyxy[0, 0] - 120))
    return cv2.imread(str(image.path)), image.boxes.xyxy[0]


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on loopback for the test module, empty but for a bucket `photos`, with the AWS
    test credentials in the environment (Ray workers the module starts inherit them)."""
    import boto3
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto's state lives in this process, shared by every server: start each module empty.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="photos")
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
