"""Through the batch job, from a local folder and from S3: every labelled face and plate of the sample
photos is obscured in the job's output, checked on the output's pixels against the labels
(`samples/labels.json`), not only inside the boxes the job reported.

Each label (the pixels wholly inside its box) must be
- changed: its mean absolute difference from the input is above MIN_CHANGE grey levels;
- without detail: the variance of its Laplacian, at full resolution and on the box resampled to 16 x 16
  (`tests.test_blurring.detail`, where faces and plates are told apart), is below MAX_DETAIL of the
  input's in both;
- covered: the boxes the job reported give every one of its pixels full strength in the pipeline's
  mask (`blur_mask` == 1, margin and face ellipse included), so no strip of it is left sharp.
And the rest of the photo must be the input, only re-encoded: every 16 x 16 block (a JPEG MCU) at least
one block away from any pixel of the reported boxes' masks is byte-identical to the input written by the
job's own encoder without a blur, and those blocks are at least MIN_UNTOUCHED of the photo.

The photos are the samples on which the shipped model covers every label (samples/README.md).
"""

from __future__ import annotations

import math
import shutil

import boto3
import cv2
import numpy as np
import pytest

from blurring import blur_mask
from blurring.config import Config
from blurring.image_io import decode_image, encode_image
from detection.detections import Detections
from jobs.batch.job import JobOptions, run_job
from jobs.batch.manifest import read_manifest_rows
from storage.objects import Storage
from tests.conftest import SAMPLES, sample_labels
from tests.test_blurring import MAX_DETAIL, detail

PHOTOS = ("crowd_1.jpg", "crowd_2.jpg", "dashcam_0.jpg", "dashcam_1.jpg")
MIN_CHANGE = 8.0  # grey levels, mean over a label (measured: 15 to 65)
BLOCK = 16  # JPEG MCU side with 4:2:0 chroma subsampling, Pillow's default
MIN_UNTOUCHED = 0.25  # share of the photo in blocks far from every reported box (measured: 0.43 to 0.98)


@pytest.fixture(scope="module")
def outputs(s3_endpoint, tmp_path_factory) -> dict[str, Storage]:
    """The job's outputs of PHOTOS, run in-process on one local Ray: from a folder to a folder, and
    from s3://photos/raw to s3://photos/blurred."""
    import ray

    source, local = tmp_path_factory.mktemp("in"), tmp_path_factory.mktemp("out")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for name in PHOTOS:
        shutil.copyfile(SAMPLES / name, source / name)
        client.put_object(Bucket="photos", Key=f"raw/{name}", Body=(SAMPLES / name).read_bytes())
    try:
        run_job(JobOptions(str(source), str(local)))
        run_job(JobOptions("s3://photos/raw", "s3://photos/blurred", endpoint_url=s3_endpoint))
    finally:
        ray.shutdown()
    return {"local": Storage(str(local)), "s3": Storage("s3://photos/blurred", s3_endpoint)}


def job_output(output: Storage, name: str) -> tuple[np.ndarray, np.ndarray, Detections]:
    """The input's pixels, the job's output pixels, and the boxes the job reported for photo `name`."""
    [row] = [r for r in read_manifest_rows(output) if r["key"] == name]
    assert row["status"] == "blurred" and row["output_key"] == name, row
    before = cv2.imread(str(SAMPLES / name))
    after = cv2.imdecode(np.frombuffer(output.read(name), np.uint8), cv2.IMREAD_COLOR)
    assert after.shape == before.shape
    return before, after, Detections.from_records(row["boxes"])


def inside(box: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the pixels wholly inside `box`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return slice(max(math.ceil(y1), 0), math.floor(y2)), slice(max(math.ceil(x1), 0), math.floor(x2))


def sharpness(image: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the grey pixels wholly inside `box`, at full resolution."""
    grey = cv2.cvtColor(image[inside(box)], cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_labelled_face_and_plate_is_obscured_in_the_output(outputs, where, name):
    before, after, reported = job_output(outputs[where], name)
    mask = blur_mask(*before.shape[:2], reported, Config().blur)
    labels = sample_labels()[name]
    assert len(labels) > 0
    for box, label in zip(labels.xyxy, labels.class_names, strict=True):
        context = (name, label, box.round().tolist())
        change = np.abs(after[inside(box)].astype(int) - before[inside(box)]).mean()
        assert change > MIN_CHANGE, (*context, change)
        assert sharpness(after, box) < MAX_DETAIL * sharpness(before, box), context
        assert detail(after, box) < MAX_DETAIL * detail(before, box), context
        assert (mask[inside(box)] == 1).all(), context


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_photo_away_from_the_reported_boxes_is_the_input_only_reencoded(outputs, where, name):
    before, after, reported = job_output(outputs[where], name)
    config = Config()
    data = (SAMPLES / name).read_bytes()
    decoded = decode_image(data, config.max_pixels)
    written = encode_image(decoded, decoded.pixels, "JPEG", config.keep_metadata, config.quality)
    unblurred = cv2.imdecode(np.frombuffer(written, np.uint8), cv2.IMREAD_COLOR)

    height, width = before.shape[:2]
    rows, cols = -(-height // BLOCK), -(-width // BLOCK)
    masked = np.zeros((rows * BLOCK, cols * BLOCK), bool)
    masked[:height, :width] = blur_mask(height, width, reported, config.blur) > 0
    blocks = masked.reshape(rows, BLOCK, cols, BLOCK).any(axis=(1, 3)).astype(np.uint8)
    near = cv2.dilate(blocks, np.ones((3, 3), np.uint8))  # a masked block and its 8 neighbours
    untouched = np.kron(near == 0, np.ones((BLOCK, BLOCK), bool))[:height, :width]
    assert untouched.mean() >= MIN_UNTOUCHED
    assert np.array_equal(after[untouched], unblurred[untouched])
