"""The batch job against an S3 that misbehaves: moto behind `tests.s3_fault_proxy.FaultProxy`, which
answers some requests with 500/503/SlowDown, drops some uploads midway, cuts some downloads midway,
loses some replies after the server acted, and delays some replies.

`storage.objects`'s retries (botocore's standard mode, 8 attempts; 4 tries of a cut download) and the
lease's read-back must ride these out: every input ends with its right status, once, and nothing
unblurred or partial is ever published.
"""

from __future__ import annotations

import io
import os
import time

import boto3
import cv2
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError
from PIL import Image

from detection.detections import Detections
from eval.datasets import load_split
from jobs.batch.manifest import AUDIT_DIR, read_manifest_rows
from storage.objects import Storage
from tests.conftest import DATASETS, requires_datasets
from tests.s3_fault_proxy import FaultProxy

# The job's faults, per request. An attempt fails outright for a PUT with odds 0.04 * 3 + 0.08 + 0.04
# = 0.24, for a GET 0.04 * 4 + 0.08 = 0.24; a slow reply still succeeds. storage.objects makes 8 attempts
# (`total_max_attempts`), and tries a cut download 4 times, so a request is lost only if all fail:
# 0.24 ** 8 = 1e-5, about 1e-3 for the ~60 requests of a run; botocore's retry quota (500 tokens, 5-10
# a retry, ~15 retries a run) is far from spent.
JOB_RATES = {
    "internal_error": 0.04,
    "service_unavailable": 0.04,
    "slow_down": 0.04,
    "drop_upload": 0.08,
    "drop_download": 0.08,
    "lost_reply": 0.04,  # stored, but the client hears nothing: its retry meets its own write
    "slow": 0.1,
}
# Each method draws from its own seeded stream, so the counts of a run are the same whatever the
# interleaving (the n-th PUT meets the same fate), as long as the job's requests stay the same. This
# seed injects every kind at least once for anything from 10 to 20 reads and from 10 to 20 writes
# (checked by simulating the proxy's draws); should a change in the job leave a kind at 0, pick another.
JOB_SEED = 194
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})  # `max_attempts: 1` is 2 tries


@pytest.fixture(scope="module")
def inputs(s3_endpoint) -> dict[str, bytes]:
    """12 real photos and 2 undecodable files, uploaded straight to moto under s3://photos/raw/."""
    photos = {}
    for name in ("plates-dashcam", "faces-crowd"):
        images = load_split(DATASETS / name, "val")
        for image in images[:: len(images) // 6][:6]:
            photos[f"{name}/{image.path.name}"] = image.path.read_bytes()
    jpeg = next(iter(photos.values()))
    photos |= {"bad/x.jpg": b"not a jpeg", "bad/truncated.jpg": jpeg[: len(jpeg) // 2]}
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for key, data in photos.items():
        client.put_object(Bucket="photos", Key=f"raw/{key}", Body=data)
    return photos


@pytest.fixture(scope="module")
def faulty_run(s3_endpoint, inputs):
    """The job, in-process on a local Ray, with every S3 request through the fault proxy; its summary,
    the faults injected, the output's URI and the rates."""
    import ray

    from jobs.batch.job import JobOptions, run_job

    output = "s3://photos/out"
    with FaultProxy(s3_endpoint, JOB_RATES, seed=JOB_SEED) as proxy:
        try:
            summary = run_job(JobOptions("s3://photos/raw", output, endpoint_url=proxy.url, actors=1))
        finally:
            ray.shutdown()
            print("faults injected:", dict(proxy.counts))
    return summary, proxy.counts, output, JOB_RATES


def decode_whole(data: bytes) -> np.ndarray:
    """The pixels, or an error if the file is cut short (OpenCV alone would pad a cut JPEG with grey)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # raises on a truncated file
    if data[:2] == b"\xff\xd8":
        assert data.rstrip(b"\0").endswith(b"\xff\xd9"), "JPEG without its end marker"
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None
    return pixels


@requires_datasets
def test_the_job_rides_out_s3_faults_and_publishes_only_whole_blurred_images(faulty_run, inputs, s3_endpoint):
    summary, counts, output, rates = faulty_run
    missing = [fault for fault in rates if not counts[fault]]
    assert not missing, f"never injected: {missing}; pick another JOB_SEED ({dict(counts)})"
    bad = {"bad/x.jpg", "bad/truncated.jpg"}
    assert (summary["inputs"], summary["blurred"], summary["failed"]) == (len(inputs), len(inputs) - 2, 2)

    rows = read_manifest_rows(Storage(output, s3_endpoint))  # straight from moto
    assert sorted(r["key"] for r in rows) == sorted(inputs)  # every input exactly once
    for row in rows:
        assert row["status"] == ("failed" if row["key"] in bad else "blurred"), row
        if row["status"] == "blurred":
            assert row["output_key"] == row["key"] and not row["error"], row
        else:
            assert "decode" in row["error"] or "not an image" in row["error"], row  # not an S3 error

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = output.removeprefix("s3://photos/") + "/"
    listed = client.list_objects_v2(Bucket="photos", Prefix=prefix)["Contents"]
    published = {o["Key"][len(prefix) :] for o in listed if not o["Key"].startswith(f"{prefix}{AUDIT_DIR}/")}
    assert published == {r["key"] for r in rows if r["status"] == "blurred"}  # none for failed rows
    blurred_boxes = 0
    for row in rows:
        if row["status"] != "blurred":
            continue
        data = client.get_object(Bucket="photos", Key=prefix + row["key"])["Body"].read()
        blurred, original = decode_whole(data), decode_whole(inputs[row["key"]])
        assert data != inputs[row["key"]] and blurred.shape == original.shape, row["key"]
        for x1, y1, x2, y2 in Detections.from_records(row["boxes"]).xyxy.astype(int):
            if (x2 - x1) * (y2 - y1) >= 64:
                inside = np.abs(blurred[y1:y2, x1:x2].astype(int) - original[y1:y2, x1:x2]).mean()
                assert inside > 1.0, (row["key"], (x1, y1, x2, y2), inside)
                blurred_boxes += 1
    assert blurred_boxes >= 6  # the check above is not vacuous


def test_proxy_drops_an_upload_midway_without_forwarding_any_of_it(s3_endpoint):
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    direct.put_object(Bucket="photos", Key="kept/a.jpg", Body=b"kept")
    with FaultProxy(s3_endpoint, {"drop_upload": 1.0}) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, config=NO_RETRIES)
        with pytest.raises(ConnectionClosedError):
            client.put_object(Bucket="photos", Key="dropped/a.jpg", Body=os.urandom(200_000))
        assert client.get_object(Bucket="photos", Key="kept/a.jpg")["Body"].read() == b"kept"  # GETs pass
    assert proxy.counts == {"drop_upload": 1, "forwarded": 1}
    assert direct.list_objects_v2(Bucket="photos", Prefix="dropped/")["KeyCount"] == 0


def test_proxy_relays_requests_and_replies_whole_and_slow_replies_late(s3_endpoint):
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    data = os.urandom(100_000)
    with FaultProxy(s3_endpoint, {"slow": 1.0}, slow_s=(0.3, 0.3)) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, config=NO_RETRIES)
        started = time.perf_counter()
        client.put_object(Bucket="photos", Key="relay/a b#c.jpg", Body=data)
        assert time.perf_counter() - started >= 0.3
        assert client.get_object(Bucket="photos", Key="relay/a b#c.jpg")["Body"].read() == data
        assert client.head_object(Bucket="photos", Key="relay/a b#c.jpg")["ContentLength"] == len(data)
        assert [o["Key"] for o in client.list_objects_v2(Bucket="photos", Prefix="relay/")["Contents"]] == [
            "relay/a b#c.jpg"
        ]
    assert proxy.counts == {"slow": 4}
    assert direct.get_object(Bucket="photos", Key="relay/a b#c.jpg")["Body"].read() == data
    assert not proxy._server.connections  # closed on exit


def test_proxy_can_lose_the_reply_of_a_request_it_forwarded(s3_endpoint):
    with FaultProxy(s3_endpoint, {"lost_reply": 1.0}) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, config=NO_RETRIES)
        with pytest.raises(ConnectionClosedError):
            client.put_object(Bucket="photos", Key="lost/a.jpg", Body=b"stored all the same")
    assert proxy.counts == {"lost_reply": 1}
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    assert direct.get_object(Bucket="photos", Key="lost/a.jpg")["Body"].read() == b"stored all the same"


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("internal_error", 500, "InternalError"),
        ("service_unavailable", 503, "ServiceUnavailable"),
        ("slow_down", 503, "SlowDown"),
    ],
)
def test_proxy_answers_s3_errors_without_forwarding(s3_endpoint, fault, status, code):
    with FaultProxy(s3_endpoint, {fault: 1.0}) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, config=NO_RETRIES)
        with pytest.raises(client.exceptions.ClientError) as raised:
            client.put_object(Bucket="photos", Key=f"errors/{fault}", Body=b"x")
    error = raised.value.response
    assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (status, code)
    assert proxy.counts == {fault: 1}
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    assert direct.list_objects_v2(Bucket="photos", Prefix="errors/")["KeyCount"] == 0


def test_storage_read_survives_downloads_cut_midway(s3_endpoint):
    data = os.urandom(300_000)
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket="photos", Key="cut/a.jpg", Body=data)
    with FaultProxy(s3_endpoint, {"drop_download": 0.3}, seed=0) as proxy:
        storage = Storage("s3://photos/cut", proxy.url)
        reads = [storage.read("a.jpg") for _ in range(10)]
    assert proxy.counts["drop_download"] > 0
    assert all(read == data for read in reads)
