"""The Ray batch job end to end, against a real S3-compatible server (moto) and a real Ray head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import cv2
import numpy as np
import pytest

from detection.detections import Detections
from eval.datasets import load_split
from jobs.batch.job import JobOptions, run_job
from jobs.batch.manifest import AUDIT_DIR, read_index, read_manifest_rows, uncompacted_runs
from storage.objects import Storage
from tests.conftest import AWS_ENV, DATASETS, SAMPLES, free_port, requires_datasets
from tests.odd_inputs import odd_inputs

REPO = Path(__file__).resolve().parents[1]
COMPARED = ["key", "output_key", "status", "error", "width", "height", "faces", "plates", "etag", "size"]


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> dict[str, tuple[bytes, str]]:
    """Upload ~20 real labelled photos plus the odd-input matrix to s3://photos/raw/."""
    inputs = {}
    for name, count in (("faces-crowd", 8), ("plates-dashcam", 8), ("plates-roboflow", 4)):
        images = load_split(DATASETS / name, "val")
        for image in images[:: max(1, len(images) // count)][:count]:
            inputs[f"{name}/{image.path.name}"] = (image.path.read_bytes(), "blurred")
    inputs |= odd_inputs()
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for key, (data, _) in inputs.items():
        client.put_object(Bucket="photos", Key=f"raw/{key}", Body=data)
    client.put_object(Bucket="photos", Key="raw/notes.txt", Body=b"not an image suffix: ignored")
    return inputs


def manifest(storage: Storage) -> list[dict]:
    """The compacted state of the output's manifest (every run compacted into it)."""
    assert not uncompacted_runs(storage, read_index(storage))
    return read_manifest_rows(storage)


def job_args(endpoint: str, output: str) -> list[str]:
    return ["--input", "s3://photos/raw", "--output", output, "--endpoint-url", endpoint, "--block-rows", "4"]


@pytest.fixture(scope="module")
def first_run(s3_endpoint, bucket):
    """One uninterrupted run in-process (local Ray), then a second run over the same output."""
    options = JobOptions("s3://photos/raw", "s3://photos/blurred", endpoint_url=s3_endpoint, block_rows=4)
    import ray

    first = run_job(options)
    second = run_job(options)
    ray.shutdown()
    return first, second


@requires_datasets
def test_every_input_is_accounted_for_once_with_the_right_status(first_run, bucket, s3_endpoint):
    first, _ = first_run
    rows = manifest(Storage("s3://photos/blurred", s3_endpoint))
    assert sorted(r["key"] for r in rows) == sorted(bucket)  # exactly once each; notes.txt not an input
    for row in rows:
        assert row["status"] == bucket[row["key"]][1], row
        assert (row["error"] == "") == (row["status"] == "blurred"), row
    assert (
        first["blurred"] + first["failed"] == len(bucket) and first["skipped"] == first["skipped_failed"] == 0
    )
    # the proposals left unblurred (verification off: under their class's threshold) ride along
    proposed = [p for r in rows for p in r["proposals"]]
    assert proposed and {p["stage"] for p in proposed} == {"detector"}
    assert all(r["proposals"] == [] for r in rows if r["status"] == "failed")
    errors = {r["key"]: r["error"] for r in rows}
    assert "empty" in errors["bad/zero-bytes.jpg"]
    assert "not an image" in errors["bad/text-named.jpg"]
    assert "decode" in errors["bad/truncated.jpg"]


@requires_datasets
def test_failed_inputs_have_no_output_and_blurred_ones_changed_inside_their_boxes(
    first_run, bucket, s3_endpoint
):
    output = Storage("s3://photos/blurred", s3_endpoint)
    written = {o.key for o in output.list()}
    changed_boxes = 0
    for row in manifest(output):
        if row["status"] != "blurred":
            assert row["key"] not in written
            continue
        assert row["output_key"] == row["key"] and row["key"] in written
        blurred = cv2.imdecode(np.frombuffer(output.read(row["key"]), np.uint8), cv2.IMREAD_COLOR)
        original = cv2.imdecode(np.frombuffer(bucket[row["key"]][0], np.uint8), cv2.IMREAD_COLOR)  # upright
        assert blurred.shape[:2] == original.shape[:2] == (row["height"], row["width"])
        boxes = Detections.from_records(row["boxes"])
        assert len(boxes) == row["faces"] + row["plates"]
        for x1, y1, x2, y2 in boxes.xyxy.astype(int):
            inside = np.abs(blurred[y1:y2, x1:x2].astype(int) - original[y1:y2, x1:x2]).mean()
            if (x2 - x1) * (y2 - y1) >= 64:
                assert inside > 1.0, (row["key"], (x1, y1, x2, y2), inside)
                changed_boxes += 1
    assert changed_boxes >= 20
    stored = cv2.imdecode(
        np.frombuffer(bucket["odd/exif-rotated.jpg"][0], np.uint8), cv2.IMREAD_IGNORE_ORIENTATION
    )
    upright = cv2.imdecode(
        np.frombuffer(output.read("odd/exif-rotated.jpg"), np.uint8), cv2.IMREAD_IGNORE_ORIENTATION
    )
    assert upright.shape[:2] == stored.shape[1::-1]  # the output's pixels are stored upright


@requires_datasets
def test_second_run_processes_nothing(first_run, bucket):
    _, second = first_run
    assert second["skipped"] == len(bucket)
    assert second["blurred"] == second["failed"] == 0
    assert second["skipped_failed"] == sum(status == "failed" for _, status in bucket.values()) > 0


@requires_datasets
def test_killed_run_then_rerun_ends_like_an_uninterrupted_run(first_run, bucket, s3_endpoint):
    env = {**os.environ, **AWS_ENV}
    command = [sys.executable, "-m", "jobs.cli", "run", *job_args(s3_endpoint, "s3://photos/killed")]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    output = Storage("s3://photos/killed", s3_endpoint)
    deadline = time.monotonic() + 300
    while not list(output.list((".parquet",), under=f"{AUDIT_DIR}/runs/")) and time.monotonic() < deadline:
        assert process.poll() is None, "the job ended before it could be killed"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not any(o.key == f"{AUDIT_DIR}/manifest.json" for o in output.list())  # really cut short

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["skipped"] >= 4  # the flushed part of the killed run was not redone
    assert summary["skipped"] + summary["blurred"] + summary["failed"] == len(bucket)

    reference = Storage("s3://photos/blurred", s3_endpoint)
    resumed, uninterrupted = manifest(output), manifest(reference)
    assert [{k: r[k] for k in COMPARED} for r in resumed] == [
        {k: r[k] for k in COMPARED} for r in uninterrupted
    ]
    for a, b in zip(resumed, uninterrupted, strict=True):
        boxes_a, boxes_b = Detections.from_records(a["boxes"]), Detections.from_records(b["boxes"])
        np.testing.assert_allclose(boxes_a.xyxy, boxes_b.xyxy, atol=0.5)
        if a["status"] == "blurred":
            image_a = cv2.imdecode(np.frombuffer(output.read(a["key"]), np.uint8), cv2.IMREAD_UNCHANGED)
            image_b = cv2.imdecode(np.frombuffer(reference.read(b["key"]), np.uint8), cv2.IMREAD_UNCHANGED)
            assert np.abs(image_a.astype(int) - image_b).mean() < 0.5


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on loopback (auth disabled: nothing but this machine can reach it).

    `ray start --block` runs in its own process group, so stopping it stops this head only.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray = str(Path(sys.executable).with_name("ray"))
    gcs, dashboard = free_port(), free_port()
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            "--include-dashboard=true",
            # Ports of its own, not Ray's fixed defaults, which another Ray on this machine may hold
            # (its job agent then never starts, and no job is accepted).
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard}"
    # Ready means a job can be submitted: the head answers `ray job list` before its job agent runs.
    probe = [ray, "job", "submit", "--address", address, "--", sys.executable, "-c", "pass"]
    deadline = time.monotonic() + 240
    while subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode:
        assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not accept jobs"
        time.sleep(2)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=120)


@requires_datasets
def test_ray_job_submit_runs_the_entrypoint_on_the_cluster(ray_head, bucket, s3_endpoint, first_run):
    address, env = ray_head
    ray = str(Path(sys.executable).with_name("ray"))
    runtime_env = json.dumps({"env_vars": AWS_ENV})
    submitted = subprocess.run(
        [
            ray,
            "job",
            "submit",
            "--address",
            address,
            "--runtime-env-json",
            runtime_env,
            "--",
            str(Path(sys.executable).with_name("streetblur")),
            "run",
            *job_args(s3_endpoint, "s3://photos/submitted"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
    assert "succeeded" in submitted.stdout.lower()
    rows = manifest(Storage("s3://photos/submitted", s3_endpoint))
    reference = manifest(Storage("s3://photos/blurred", s3_endpoint))
    assert [(r["key"], r["status"], r["faces"], r["plates"]) for r in rows] == [
        (r["key"], r["status"], r["faces"], r["plates"]) for r in reference
    ]


def test_the_run_command_prints_progress_lines_and_a_summary_not_rays_own_output(tmp_path):
    """A new local Ray, as a user's first `streetblur run` starts it: Ray's progress blocks and info
    logs stay off the console; `--verbose` would bring them back."""
    source = tmp_path / "in"
    source.mkdir()
    for name in ("crowd_0.jpg", "dashcam_0.jpg"):
        (source / name).write_bytes((SAMPLES / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [
        sys.executable,
        "-m",
        "jobs.cli",
        "run",
        "--input",
        str(source),
        "--output",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["inputs"], summary["blurred"], summary["failed"]) == (2, 2, 0)
    assert "progress: 2/2 done, 0 failed" in done.stderr  # no terminal here: log lines, not a bar
    for ray_output in ("Started a local Ray instance", "Execution plan", "logging_progress", "Progress bars"):
        assert ray_output not in done.stderr
    # Ray's C++ core in the driver, and its notice that a new local Ray turned token authentication on
    for ray_output in ("has constructor arguments in the object store", "Token authentication"):
        assert ray_output not in done.stderr


def test_without_actors_the_job_waits_on_an_empty_cluster_and_runs_once_a_node_joins(tmp_path):
    """An autoscaling cluster starts with no worker: the detector pool waits for CPUs, then grows."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # loopback only
    ray = str(Path(sys.executable).with_name("ray"))
    gcs = f"127.0.0.1:{free_port()}"

    def start_node(*args: str) -> subprocess.Popen:
        command = [ray, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        return subprocess.Popen(command, env=env, start_new_session=True, **quiet)

    nodes = [start_node("--head", f"--port={gcs.split(':')[1]}", "--num-cpus=0", "--include-dashboard=false")]
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ray, "status", "--address", gcs], env=env, capture_output=True).returncode:
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(2)
        source, output = tmp_path / "in", tmp_path / "out"
        source.mkdir()
        for name in ("crowd_0.jpg", "crowd_1.jpg", "dashcam_0.jpg", "dashcam_1.jpg"):
            (source / name).write_bytes((SAMPLES / name).read_bytes())
        command = [sys.executable, "-m", "jobs.cli", "run", "--address", gcs]
        command += ["--input", str(source), "--output", str(output)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        job = subprocess.Popen(command, cwd=REPO, env=env, **pipes)
        time.sleep(20)  # started, and found no CPU for a detector actor
        assert job.poll() is None and not list(output.glob("*.jpg"))
        nodes.append(start_node(f"--address={gcs}", "--num-cpus=2"))
        stdout, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stderr[-3000:]
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert (summary["blurred"], summary["failed"], summary["actors"]) == (4, 0, "autoscaling")
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(timeout=120)
