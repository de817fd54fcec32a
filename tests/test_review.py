"""The review page's API (Starlette's TestClient) on a real job output of the sample photos: the queue,
verdicts and their log, the re-blur from the original, and what the browser may and may not reach."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

from blurring import anonymize, blur_mask
from blurring.config import Config, load_config
from blurring.image_io import decode_image, encode_image, output_format
from detection.detections import Detections
from detection.detector import Detector
from jobs.batch.job import JobOptions, run_job
from jobs.batch.lease import LEASE_KEY, Lease
from jobs.batch.manifest import new_run_id, read_manifest_rows, run_part_key, write_rows, write_summary
from jobs.batch.verdicts import box_id, fold, in_random_slice, read_verdicts
from review import export as review_export
from review import reblur as review_reblur
from review.app import LOOPBACK_NAMES, ReviewSession, create_app
from review.export import export_dataset, review_stats, reviewed_images
from review.output import ReviewedOutput
from review.queue import NEAR_THRESHOLD, RANDOM_SLICE
from storage.objects import Storage
from tests.conftest import SAMPLES
from tests.review_output import write_job_output

PNG_SAMPLES = ("crowd_1.jpg", "dashcam_1.jpg")  # written as PNG inputs: lossless outputs, exact checks


def copy_samples(folder) -> None:
    """The sample photos (two as PNG) and one truncated file, as a job's input folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(SAMPLES.glob("*.jpg")):
        if path.name in PNG_SAMPLES:
            cv2.imwrite(str(folder / f"{path.stem}.png"), cv2.imread(str(path)))
        else:
            shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes((SAMPLES / "crowd_0.jpg").read_bytes()[:300])


@pytest.fixture(scope="module")
def job_output(tmp_path_factory):
    """(input folder, output folder) of a job over the samples, proposals included."""
    inputs, output = tmp_path_factory.mktemp("inputs"), tmp_path_factory.mktemp("output")
    copy_samples(inputs)
    write_job_output(Storage(str(inputs)), Storage(str(output)), Detector())
    return inputs, output


@pytest.fixture
def output(job_output, tmp_path) -> ReviewedOutput:
    """A fresh copy of the job's output for one test (verdicts change it)."""
    shutil.copytree(job_output[1], tmp_path / "out")
    return ReviewedOutput(Storage(str(tmp_path / "out")))


def seed_with_slice(keys: list[str]) -> str:
    """A seed whose random slice holds at least one of `keys` (five images: often none)."""
    return next(s for s in (f"seed-{i}" for i in range(1000)) if any(in_random_slice(k, s) for k in keys))


def client_of(output: ReviewedOutput, seed: str = "test", **options) -> TestClient:
    return TestClient(
        create_app(ReviewSession(output, "tester", seed), **options), base_url="http://127.0.0.1"
    )


def decoded(data: bytes) -> np.ndarray:
    return decode_image(data, 10**9).pixels.astype(int)


def rendered(output: ReviewedOutput, key: str, boxes: list[dict]) -> bytes:
    """What the job's blur code makes of `key`'s original with `boxes`: the reference re-render."""
    row = output.row(key)
    config = output.config(row)
    image = output.original(row)
    pixels = anonymize(image.pixels, Detections.from_records(boxes), config.blur)
    return encode_image(image, pixels, output_format(key), config.keep_metadata, config.quality)


def assert_changed_only_in(before: np.ndarray, after: np.ndarray, mask: np.ndarray, row: dict) -> None:
    """No pixel outside `mask` changed: the job blurs the boxes as it records them, and a re-render
    blurs the recorded ones."""
    assert not np.abs(before - after).max(axis=2)[~mask].any()


def test_queue_gives_each_image_its_reasons(output):
    rows = [r for r in output.rows().values() if r["status"] == "blurred"]
    seed = seed_with_slice([r["key"] for r in rows])
    queue = client_of(output, seed).get("/api/queue").json()
    assert queue["images"] == len(rows) == 5
    assert queue["failed"] == [{"key": "broken.jpg", "error": output.rows()["broken.jpg"]["error"]}]
    thresholds = Config().detect.thresholds
    expected = {}
    for row in rows:
        misses = [p for p in row["proposals"] if p["score"] >= thresholds[p["class"]] - NEAR_THRESHOLD]
        false = [b for b in row["boxes"] if b["score"] < thresholds[b["class"]] + NEAR_THRESHOLD]
        if in_random_slice(row["key"], seed) or misses or false:
            expected[row["key"]] = (in_random_slice(row["key"], seed), len(misses), len(false))
    assert any(miss for _, miss, _ in expected.values()), "the samples have near-threshold proposals"
    got = {
        item["key"]: (
            RANDOM_SLICE in item["reasons"],
            sum(r.startswith("likely miss") for r in item["reasons"]),
            sum(r.startswith("likely false blur") for r in item["reasons"]),
        )
        for item in queue["items"]
    }
    assert got == expected
    assert [item["random_slice"] for item in queue["items"]] == sorted(
        (item["random_slice"] for item in queue["items"]), reverse=True
    )


def test_a_false_blur_is_unblurred_from_the_original_and_logged(output):
    client = client_of(output)
    key = "dashcam_1.png"
    row = output.row(key)
    assert row["boxes"], "the model blurs something in this photo"
    assert output.config(row) == Config()  # the job's settings, read back from its summary
    target = row["boxes"][0]
    before = output.target.read(key)
    reply = client.post("/api/verdict", json={"key": key, "kind": "false", "id": box_id(target)})
    assert reply.status_code == 200, reply.text
    after = output.target.read(key)
    remaining = [b for b in row["boxes"] if box_id(b) != box_id(target)]
    assert after == rendered(output, key, remaining)  # from the original, never the blurred output
    original = output.original(output.row(key)).pixels.astype(int)
    mask = blur_mask(row["height"], row["width"], Detections.from_records([target]), Config().blur) > 0
    others = blur_mask(row["height"], row["width"], Detections.from_records(remaining), Config().blur) > 0
    assert (decoded(before)[mask & ~others] != original[mask & ~others]).any()
    assert (decoded(after)[mask & ~others] == original[mask & ~others]).all()
    verdict, reblur = read_verdicts(output.target)
    assert verdict["kind"] == "false" and verdict["who"] == "tester" and verdict["key"] == key
    assert verdict["image_sha256"] == hashlib.sha256(before).hexdigest()
    assert verdict["model_id"] == row["model_id"] and verdict["class"] == target["class"]
    assert box_id(verdict) == box_id(target) and "reason" in verdict and "at" in verdict
    assert reblur["kind"] == "reblur" and "-review-" in reblur["run_id"]
    assert reblur["old_sha256"] == hashlib.sha256(before).hexdigest()
    assert reblur["new_sha256"] == hashlib.sha256(after).hexdigest()
    manifest = {r["key"]: r for r in read_manifest_rows(output.target)}
    assert manifest[key]["run_id"] == reblur["run_id"]
    assert [box_id(b) for b in manifest[key]["boxes"]] == [box_id(b) for b in remaining]
    summary = json.loads(output.target.read(f"_streetblur/runs/{reblur['run_id']}/summary.json"))
    assert summary["review"] is True and summary["new_sha256"] == reblur["new_sha256"]
    assert manifest["crowd_0.jpg"] == {**output.rows()["crowd_0.jpg"]}  # others untouched
    shown = reply.json()["image"]
    assert [b["id"] for b in shown["false"]] == [box_id(target)]
    assert box_id(target) not in [b["id"] for b in shown["boxes"]]
    # the ids the page got before the re-render still name the same boxes after it
    assert [b["id"] for b in shown["boxes"]] == [box_id(b) for b in remaining]
    second = client.post("/api/verdict", json={"key": key, "kind": "false", "id": box_id(remaining[0])})
    assert second.status_code == 200, second.text
    assert output.target.read(key) == rendered(output, key, remaining[1:])


def test_a_drawn_box_is_blurred_there_and_nowhere_else(output):
    client = client_of(output)
    key = "crowd_1.png"
    row = output.row(key)
    box = [5.0, 5.0, 45.0, 35.0]
    assert not any(b["box"][0] < 45 and b["box"][1] < 35 for b in row["boxes"]), "a free corner"
    before = decoded(output.target.read(key))
    reply = client.post("/api/verdict", json={"key": key, "kind": "add", "class": "plate", "box": box})
    assert reply.status_code == 200, reply.text
    after = decoded(output.target.read(key))
    changed = (before != after).any(axis=2)
    drawn = Detections.from_records([{"class": "plate", "box": box}])
    mask = blur_mask(row["height"], row["width"], drawn, Config().blur) > 0
    assert changed[5:35, 5:45].mean() > 0.5
    assert_changed_only_in(before, after, mask, row)
    added = [b for b in reply.json()["image"]["boxes"] if b["source"] == "review"]
    assert [(b["class"], b["box"]) for b in added] == [("plate", box)]


def test_an_accepted_proposal_is_blurred(output):
    client = client_of(output)
    key, proposal = next(
        (r["key"], p) for r in output.rows().values() if r["status"] == "blurred" for p in r["proposals"]
    )
    row = output.row(key)
    reply = client.post("/api/verdict", json={"key": key, "kind": "accept", "id": box_id(proposal)})
    assert reply.status_code == 200, reply.text
    assert output.target.read(key) == rendered(output, key, [*row["boxes"], proposal])
    image = reply.json()["image"]
    assert box_id(proposal) in [b["id"] for b in image["boxes"] if b["source"] == "review"]
    assert box_id(proposal) not in [p["id"] for p in image["proposals"]]


def test_verdicts_fold_in_order_and_reviewed_is_recorded(output):
    client = client_of(output)
    key = "crowd_1.png"
    row = output.row(key)
    box = {"class": "face", "box": [5.0, 5.0, 45.0, 35.0]}
    client.post("/api/verdict", json={"key": key, "kind": "add", **box})
    reply = client.post("/api/verdict", json={"key": key, "kind": "false", **box})
    assert reply.status_code == 200, reply.text
    assert output.target.read(key) == rendered(output, key, row["boxes"])  # added, then taken back out
    reply = client.post("/api/verdict", json={"key": key, "kind": "reviewed"})
    assert reply.json()["image"]["reviewed"] is True
    assert [e["kind"] for e in read_verdicts(output.target)] == [
        "add",
        "reblur",
        "false",
        "reblur",
        "reviewed",
    ]


def test_the_browser_reaches_only_the_outputs_and_boxes_of_the_manifest(output):
    client = client_of(output)
    for key in ("../etc/passwd", "/etc/passwd", "_streetblur/manifest.json", "broken.jpg", "crowd_0.JPG"):
        assert client.get("/api/output", params={"key": key}).status_code == 404
        assert client.get("/api/image", params={"key": key}).status_code == 404
        reply = client.post("/api/verdict", json={"key": key, "kind": "reviewed"})
        assert reply.status_code == 404
    key = "dashcam_1.png"
    row = output.row(key)
    for wrong in (
        {"kind": "false", "id": "face:0.0,0.0,9.0,9.0"},
        {"kind": "accept", "id": box_id(row["boxes"][0])},
    ):
        assert client.post("/api/verdict", json={"key": key, **wrong}).status_code == 400
    for drawn in ([0, 0, 1, 1], [0, 0, "x", 3], ["NaN", 0, 50, 50], [0, 0, "inf", 50]):
        body = {"key": key, "kind": "add", "class": "face", "box": drawn}
        assert client.post("/api/verdict", json=body).status_code == 400
    car = {"key": key, "kind": "add", "class": "car", "box": [0, 0, 50, 50]}
    assert client.post("/api/verdict", json=car).status_code == 400
    assert (
        client.get("/api/original", params={"key": key, "box": "face:0.0,0.0,900.0,900.0"}).status_code == 400
    )
    reviewed = json.dumps({"key": key, "kind": "reviewed"})
    plain = client.post("/api/verdict", content=reviewed, headers={"content-type": "text/plain"})
    assert plain.status_code == 400  # what a form or fetch of another site may send without preflight
    foreign = {"content-type": "application/json", "origin": "http://evil.example"}
    assert client.post("/api/verdict", content=reviewed, headers=foreign).status_code == 400
    assert read_verdicts(output.target) == []  # nothing refused was recorded
    box = row["boxes"][0]
    reply = client.get("/api/original", params={"key": key, "box": box_id(box)})
    assert reply.status_code == 200
    crop = cv2.imdecode(np.frombuffer(reply.content, np.uint8), cv2.IMREAD_COLOR)
    x1, y1, x2, y2 = box["box"]
    original = output.original(row).pixels
    assert crop.shape[:2] == (np.ceil(y2) - np.floor(y1), np.ceil(x2) - np.floor(x1))
    assert (
        crop == original[int(np.floor(y1)) : int(np.ceil(y2)), int(np.floor(x1)) : int(np.ceil(x2))]
    ).all()
    (look,) = read_verdicts(output.target)
    assert look["kind"] == "look" and box_id(look) == box_id(box) and look["who"] == "tester"
    assert client.get("/api/image", params={"key": key}).json()["looks"] == 1


def test_a_token_guards_every_request_and_only_loopback_names_are_served(output):
    client = client_of(output, token="s3cret", allowed_hosts=["127.0.0.1"])
    assert client.get("/api/queue").status_code == 403
    assert client.get("/static/review.js").status_code == 403
    assert client.get("/api/queue", headers={"Authorization": "token wrong"}).status_code == 403
    assert client.get("/api/queue", headers={"Authorization": "token s3cret"}).status_code == 200
    page = client.get("/?token=s3cret")  # redirected to / with the token as a cookie
    assert page.status_code == 200 and "streetblur review" in page.text
    assert client.get("/api/queue").status_code == 200
    other = TestClient(create_app(ReviewSession(output, "t", "s"), allowed_hosts=["127.0.0.1"]))
    assert other.get("/api/queue", headers={"host": "evil.example"}).status_code == 400


def test_the_page_is_served(output):
    client = client_of(output)
    assert "review.js" in client.get("/").text
    assert "keydown" in client.get("/static/review.js").text


def test_s3_output_is_reviewed_in_place(s3_endpoint, tmp_path):
    inputs = tmp_path / "inputs"
    copy_samples(inputs)
    source = Storage("s3://photos/raw", s3_endpoint)
    for path in sorted(inputs.iterdir()):
        source.write(path.name, path.read_bytes())
    target = Storage("s3://photos/blurred", s3_endpoint)
    write_job_output(source, target, Detector())
    output = ReviewedOutput(target)
    client = client_of(output)
    key = "dashcam_1.png"
    box = output.row(key)["boxes"][0]
    reply = client.post("/api/verdict", json={"key": key, "kind": "false", "id": box_id(box)})
    assert reply.status_code == 200, reply.text
    remaining = output.rows()[key]["boxes"]
    assert box_id(box) not in [box_id(b) for b in remaining]
    assert target.read(key) == rendered(output, key, remaining)
    assert [e["kind"] for e in read_verdicts(target)] == ["false", "reblur"]
    assert {r["key"]: r for r in read_manifest_rows(target)}[key]["run_id"].split("-")[1] == "review"


def test_the_command_says_what_is_missing_and_imports_the_server_only_when_run(output, monkeypatch, capsys):
    import subprocess
    import sys

    from jobs.cli import main, review

    uri = output.target.uri
    assert main.main(["review", uri, "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main.main(["review", "export", uri]) == 2
    assert "--out" in capsys.readouterr().err
    assert main.main(["review", "stats", uri, "more"]) == 2
    monkeypatch.setattr(review, "find_spec", lambda name: None)
    assert main.main(["review", uri]) == 2
    assert "pip install 'streetblur[review]'" in capsys.readouterr().err
    code = "import sys; from jobs.cli.main import build_parser; build_parser(); print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "starlette" not in loaded and "uvicorn" not in loaded and "'review" not in loaded


def test_stats_export_and_training_follow_the_verdicts(output, tmp_path, capsys):
    from jobs.cli import main
    from jobs.training.dataset import write_yolo_dataset

    rows = {k: r for k, r in output.rows().items() if r["status"] == "blurred"}
    seed = seed_with_slice(sorted(rows))
    in_slice = sorted(k for k in rows if in_random_slice(k, seed))
    others = sorted(k for k in rows if k not in in_slice and rows[k]["boxes"])
    assert in_slice and len(others) >= 2
    client = client_of(output, seed)
    drawn = {"kind": "add", "class": "face", "box": [1.0, 1.0, 21.0, 31.0]}
    expected = {"images": 0, "true_boxes": 0, "missed": 0, "blurred_boxes": 0, "false_blurs": 0}
    for key in in_slice:  # one blur false (where there is one), one box drawn
        boxes = rows[key]["boxes"]
        if boxes:
            client.post("/api/verdict", json={"key": key, "kind": "false", "id": box_id(boxes[0])})
        client.post("/api/verdict", json={"key": key, **drawn})
        client.post("/api/verdict", json={"key": key, "kind": "reviewed"})
        false = 1 if boxes else 0
        expected["images"] += 1
        expected["true_boxes"] += len(boxes) - false + 1
        expected["missed"] += 1
        expected["blurred_boxes"] += len(boxes)
        expected["false_blurs"] += false
    labelled, background = others[0], others[1]
    client.post("/api/verdict", json={"key": labelled, "kind": "reviewed"})
    for box in rows[background]["boxes"]:
        client.post("/api/verdict", json={"key": background, "kind": "false", "id": box_id(box)})
    client.post("/api/verdict", json={"key": background, "kind": "reviewed"})
    stats = review_stats(output, seed)["random_slice"]
    expected["miss_rate"] = round(expected["missed"] / expected["true_boxes"], 4)
    rate = expected["false_blurs"] / expected["blurred_boxes"] if expected["blurred_boxes"] else None
    expected["false_blur_rate"] = None if rate is None else round(rate, 4)
    assert stats == expected | {"images_in_slice": len(in_slice)}
    assert main.main(["review", "stats", output.target.uri, "--seed", seed]) == 0
    assert json.loads(capsys.readouterr().out)["random_slice"] == stats

    result = export_dataset(output, tmp_path / "ds", seed, max_background=1.0)
    provenance = json.loads((tmp_path / "ds" / "provenance.json").read_text())
    assert provenance["dataset_id"] == result["dataset_id"]
    splits = {e["key"]: e["split"] for e in provenance["images"]}
    assert splits == {**dict.fromkeys(in_slice, "heldout"), labelled: "train", background: "train"}
    for entry in provenance["images"]:
        image = tmp_path / "ds" / entry["split"] / "images" / entry["file"]
        assert hashlib.sha256(image.read_bytes()).hexdigest()[:20] == image.stem
        lines = (image.parent.parent / "labels" / f"{image.stem}.txt").read_text().splitlines()
        assert len(lines) == entry["boxes"]
        assert (entry["boxes"] == 0) == (entry["key"] == background)
    assert export_dataset(output, tmp_path / "ds", seed, max_background=0.0)["counts"]["train"] == 1
    with pytest.raises(ValueError, match="not a review export"):
        export_dataset(output, tmp_path, seed)

    _, counts = write_yolo_dataset({}, tmp_path / "train-ds", review_exports=(tmp_path / "ds",))
    trained = sorted(p.name for p in (tmp_path / "train-ds" / "train" / "labels").iterdir())
    assert len(trained) == 1 and trained[0].startswith("review-")
    assert not (tmp_path / "train-ds" / "dev").exists() and list(counts.values()) == [1]
    with pytest.raises(ValueError, match="not a dataset written by"):
        write_yolo_dataset({}, tmp_path / "train-ds2", review_exports=(tmp_path / "inputs-none",))


def test_a_box_keeps_its_id_between_the_manifests_float32_and_json():
    written = {"class": "face", "box": [123.45, 10.05, 200.0, 220.15]}  # as a re-render writes it
    stored = {"class": "face", "box": [float(np.float32(v)) for v in written["box"]]}  # as read back
    assert box_id(written) == box_id(stored)
    assert box_id(written) != box_id({"class": "plate", "box": written["box"]})


def test_a_manifest_written_before_proposals_reads_as_empty_and_queues(job_output, tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.batch.manifest import MANIFEST_SCHEMA
    from review.queue import image_reasons

    shutil.copytree(job_output[1], tmp_path / "out")
    target = Storage(str(tmp_path / "out"))
    old_schema = pa.schema([f for f in MANIFEST_SCHEMA if f.name != "proposals"])
    index = json.loads(target.read("_streetblur/manifest.json"))
    for part in index["parts"]:  # rewritten as a job before the column wrote them
        rows = pq.read_table(io.BytesIO(target.read(part["key"]))).to_pylist()
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), buffer)
        target.write(part["key"], buffer.getvalue())
    output = ReviewedOutput(target)
    assert all(row["proposals"] == [] for row in output.rows().values())
    queue = client_of(output).get("/api/queue").json()
    assert not any(r.startswith("likely miss") for item in queue["items"] for r in item["reasons"])
    key = next(k for k, r in output.rows().items() if r["status"] == "blurred")
    assert client_of(output).get("/api/image", params={"key": key}).json()["proposals"] == []
    verifier = {"class": "face", "score": 0.8, "box": [0, 0, 9, 9], "stage": "verifier"}
    row = {"key": "k", "boxes": [], "proposals": [verifier]}
    assert image_reasons(row, {"face": 0.35}, "seed-without-k") == [
        "disagreement: verifier rejected a face (0.80)"
    ]


def test_videos_are_neither_queued_nor_served(output):
    key = "walk.mp4"
    seed = seed_with_slice([key])
    output.refresh(output.row("dashcam_1.png") | {"key": key, "output_key": key})  # as if a video's row
    assert key not in [item["key"] for item in client_of(output, seed).get("/api/queue").json()["items"]]
    assert client_of(output, seed).get("/api/image", params={"key": key}).status_code == 404
    photos = [k for k, row in output.rows().items() if row["status"] == "blurred" and k != key]
    assert client_of(output, seed).get("/api/queue").json()["images"] == len(photos)
    in_slice = review_stats(output, seed)["random_slice"]["images_in_slice"]
    assert in_slice == sum(in_random_slice(k, seed) for k in photos)


def test_a_verdict_on_an_image_a_job_wrote_again_is_refused_and_keeps_the_jobs_blurs(job_output, tmp_path):
    inputs, _ = job_output
    output = ReviewedOutput(Storage(str(tmp_path / "out")))
    shutil.copytree(job_output[1], tmp_path / "out")
    client, key = client_of(output), "crowd_0.jpg"
    shown = client.get("/api/image", params={"key": key}).json()
    lower = load_config(overrides={"detect.thresholds.face": 0.05})  # a later job blurs more
    write_job_output(Storage(str(inputs)), output.target, Detector(lower.detect), lower)
    rewritten = output.target.read(key)
    reply = client.post("/api/verdict", json={"key": key, "kind": "false", "id": shown["boxes"][0]["id"]})
    assert reply.status_code == 409 and "reload" in reply.json()["error"]
    assert output.target.read(key) == rewritten and read_verdicts(output.target) == []
    reloaded = client.get("/api/image", params={"key": key}).json()  # the later job's boxes
    assert len(reloaded["boxes"]) > len(shown["boxes"])
    target = reloaded["boxes"][-1]
    assert (
        client.post("/api/verdict", json={"key": key, "kind": "false", "id": target["id"]}).status_code == 200
    )
    kept = next(b for b in read_manifest_rows(output.target) if b["key"] == key)["boxes"]
    assert {box_id(b) for b in kept} == {b["id"] for b in reloaded["boxes"]} - {target["id"]}


def test_two_reviewers_keep_each_others_verdicts(output, monkeypatch):
    key = "crowd_0.jpg"
    bob_output = ReviewedOutput(output.target)
    alice, bob = client_of(output), client_of(bob_output)
    job_boxes = output.row(key)["boxes"]
    assert bob.get("/api/image", params={"key": key}).status_code == 200
    drawn = [
        {"class": "face", "box": [2.0, 2.0, 30.0, 30.0]},
        {"class": "face", "box": [40.0, 2.0, 70.0, 30.0]},
    ]
    bob_replies = []
    read_original = ReviewedOutput.original

    def original(self, row):  # Bob posts while Alice's re-render reads the original
        if self is output and not bob_replies:
            bob_replies.append(bob.post("/api/verdict", json={"key": key, "kind": "add", **drawn[1]}))
        return read_original(self, row)

    monkeypatch.setattr(ReviewedOutput, "original", original)
    assert alice.post("/api/verdict", json={"key": key, "kind": "add", **drawn[0]}).status_code == 200
    assert bob_replies[0].status_code == 409  # Alice's re-render holds the output's lease
    assert [v["kind"] for v in read_verdicts(output.target)] == ["add", "reblur"]
    assert bob.post("/api/verdict", json={"key": key, "kind": "add", **drawn[1]}).status_code == 200
    expected = job_boxes + [box | {"score": None} for box in drawn]
    assert output.target.read(key) == rendered(output, key, expected)
    latest = next(r for r in read_manifest_rows(output.target) if r["key"] == key)
    assert {box_id(b) for b in latest["boxes"]} == {box_id(b) for b in expected}


def test_a_verdict_the_output_cannot_show_is_not_logged(output):
    client, key = client_of(output), "crowd_0.jpg"
    before = output.target.read(key)
    with Lease(output.target, "a-job", wait_s=0):  # a job writes the output
        reply = client.post(
            "/api/verdict", json={"key": key, "kind": "add", "class": "face", "box": [2, 2, 30, 30]}
        )
    assert reply.status_code == 409
    assert read_verdicts(output.target) == [] and output.target.read(key) == before


def test_an_original_whose_orientation_changed_is_refused(tmp_path):
    from PIL import Image

    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    upright = cv2.imread(str(SAMPLES / "crowd_2.jpg"))
    stored = Image.fromarray(cv2.cvtColor(np.ascontiguousarray(np.rot90(upright)), cv2.COLOR_BGR2RGB))
    exif = stored.getexif()
    exif[0x0112] = 6  # stored sideways, shown upright
    stored.save(inputs / "sideways.jpg", exif=exif.tobytes(), quality=95)
    write_job_output(Storage(str(inputs)), Storage(str(out)), Detector())
    output = ReviewedOutput(Storage(str(out)))
    client = client_of(output)
    row = output.row("sideways.jpg")
    assert (row["width"], row["height"]) == upright.shape[1::-1]
    path = inputs / "sideways.jpg"
    data, stat = bytearray(path.read_bytes()), path.stat()
    for entry, at in (
        (b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00", 8),
        (b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06", 9),
    ):
        if entry in data:  # Orientation, SHORT, 1 value: 6 (Intel or Motorola byte order)
            data[bytes(data).index(entry) + at] = 1  # edited in place: same size, same ETag (mtime kept)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = output.target.read("sideways.jpg")
    reply = client.post(
        "/api/verdict", json={"key": "sideways.jpg", "kind": "add", "class": "face", "box": [2, 2, 30, 30]}
    )
    assert reply.status_code == 400 and "changed" in reply.json()["error"]
    assert output.target.read("sideways.jpg") == before and read_verdicts(output.target) == []


def test_the_original_is_shown_only_inside_boxes_the_job_found(output):
    client, key = client_of(output), "crowd_0.jpg"
    quarter = {
        "class": "face",
        "box": [0.0, 0.0, output.row(key)["width"] / 2, output.row(key)["height"] / 2],
    }
    assert client.post("/api/verdict", json={"key": key, "kind": "add", **quarter}).status_code == 200
    drawn = box_id(quarter)
    assert drawn in {b["id"] for b in client.get("/api/image", params={"key": key}).json()["boxes"]}
    assert client.get("/api/original", params={"key": key, "box": drawn}).status_code == 400
    job_box = box_id(output.row(key)["boxes"][0])
    assert client.get("/api/original", params={"key": key, "box": job_box}).status_code == 200


def test_verdicts_on_a_replaced_photo_do_not_carry_over(job_output, tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(job_output[0], inputs)
    output = ReviewedOutput(Storage(str(tmp_path / "out")))
    shutil.copytree(job_output[1], tmp_path / "out")
    client, key = client_of(output), "crowd_2.jpg"
    assert (
        client.post(
            "/api/verdict", json={"key": key, "kind": "add", "class": "face", "box": [2, 2, 30, 30]}
        ).status_code
        == 200
    )
    assert client.post("/api/verdict", json={"key": key, "kind": "reviewed"}).status_code == 200
    shutil.copy(SAMPLES / "dashcam_0.jpg", inputs / key)  # another photo at the same key
    write_job_output(Storage(str(inputs)), output.target, Detector())
    fresh = ReviewedOutput(output.target)
    image = client_of(fresh).get("/api/image", params={"key": key}).json()
    assert not image["reviewed"] and all(b["source"] == "detector" for b in image["boxes"])
    assert key not in {row["key"] for row, _ in reviewed_images(fresh)}


def test_a_failed_export_leaves_the_earlier_one(output, tmp_path, monkeypatch):
    client = client_of(output)
    for key in ("crowd_0.jpg", "crowd_2.jpg"):
        assert client.post("/api/verdict", json={"key": key, "kind": "reviewed"}).status_code == 200
    out_dir = tmp_path / "export"
    first = export_dataset(output, out_dir, "test")
    files = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*"))
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return write_example(*args)

    write_example = review_export._write_example
    monkeypatch.setattr(review_export, "_write_example", failing)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(output, out_dir, "test")
    assert sorted(p.relative_to(out_dir) for p in out_dir.rglob("*")) == files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []
    monkeypatch.setattr(review_export, "_write_example", write_example)
    assert export_dataset(output, out_dir, "test")["dataset_id"] == first["dataset_id"]


def test_ipv6_loopback_is_served(output):
    client = TestClient(create_app(ReviewSession(output, "t", "s"), allowed_hosts=LOOPBACK_NAMES))
    assert client.get("/api/queue", headers={"host": "[::1]:8765"}).status_code == 200


def test_an_image_whose_run_has_no_summary_is_listed_and_the_rest_is_reviewed(output):
    key = "crowd_0.jpg"
    output.refresh(output.row(key) | {"run_id": "20991231T000000Z-killed"})  # a run killed before its summary
    queue = client_of(output, seed_with_slice([key])).get("/api/queue").json()
    assert [f["key"] for f in queue["failed"] if "no summary.json" in f["error"]] == [key]
    assert queue["items"] and key not in [item["key"] for item in queue["items"]]


def test_a_job_that_redoes_a_reviewed_image_keeps_the_boxes_reviewers_added(tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    for name in ("crowd_0.jpg", "dashcam_0.jpg"):
        shutil.copy(SAMPLES / name, inputs / name)
    options = JobOptions(str(inputs), str(out), actors=1, batch_size=2)
    run_job(options)
    output = ReviewedOutput(Storage(str(out)))
    client, key = client_of(output), "crowd_0.jpg"
    drawn = {"class": "face", "box": [2.0, 2.0, 30.0, 30.0]}
    assert client.post("/api/verdict", json={"key": key, "kind": "add", **drawn}).status_code == 200
    proposal = output.row(key)["proposals"][0]  # under the threshold: the next job proposes it again
    accepted = {"kind": "accept", "id": box_id(proposal)}
    assert client.post("/api/verdict", json={"key": key, **accepted}).status_code == 200
    assert client.post("/api/verdict", json={"key": key, "kind": "reviewed"}).status_code == 200
    summary = run_job(replace(options, overwrite=True))  # redone from the detector
    assert summary["blurred"] == 2
    rows = {row["key"]: row for row in read_manifest_rows(output.target)}
    assert rows[key]["run_id"] == summary["run_id"]
    assert box_id(drawn) in {box_id(b) for b in rows[key]["boxes"]}
    assert [box_id(b) for b in rows[key]["boxes"]].count(box_id(proposal)) == 1  # blurred once...
    assert box_id(proposal) not in {box_id(p) for p in rows[key]["proposals"]}  # ...and no longer a miss
    assert output.target.read(key) == rendered(ReviewedOutput(output.target), key, rows[key]["boxes"])
    assert all(b["score"] < 1 for b in rows["dashcam_0.jpg"]["boxes"])  # no review there: detections only
    state = fold(read_verdicts(output.target), rows)[key]
    assert not state.reviewed  # the job redid it: it needs a new look
    assert box_id(drawn) not in {box_id(b) for b in state.job_boxes(rows[key])}  # the reviewer's box
    image = client_of(ReviewedOutput(output.target)).get("/api/image", params={"key": key}).json()
    assert [b["source"] for b in image["boxes"] if b["id"] == box_id(drawn)] == ["review"]
    later = (inputs / key).stat().st_mtime_ns + 10**9
    os.utime(inputs / key, ns=(later, later))  # touched: another ETag, the same photo
    assert run_job(options)["blurred"] == 1
    row = next(r for r in read_manifest_rows(output.target) if r["key"] == key)
    assert box_id(drawn) in {box_id(b) for b in row["boxes"]}


def test_rows_of_a_job_that_was_running_when_the_page_synced_are_read_again(output):
    client, key = client_of(output), "crowd_0.jpg"
    shown = output.row(key)
    job = new_run_id()
    started = output.summary(shown["run_id"]) | {"run_id": job, "finished": False}
    write_summary(output.target, job, started)  # a job starts...
    assert client.post("/api/verdict", json={"key": "crowd_2.jpg", "kind": "reviewed"}).status_code == 200
    extra = {"class": "face", "score": 0.9, "box": [40.0, 2.0, 70.0, 30.0]}  # ...blurs one more face, dies
    later = shown | {"run_id": job, "boxes": shown["boxes"] + [extra], "finished_at": shown["finished_at"]}
    write_rows(output.target, run_part_key(job, "part", 0), [later])
    reply = client.post("/api/verdict", json={"key": key, "kind": "false", "id": box_id(shown["boxes"][0])})
    assert reply.status_code == 409  # not a re-render of the rows the page showed, which lack that face
    assert box_id(extra) in {b["id"] for b in client.get("/api/image", params={"key": key}).json()["boxes"]}


def test_a_re_render_that_lost_the_lease_writes_nothing(output, monkeypatch):
    client, key = client_of(output), "crowd_0.jpg"
    before = output.target.read(key)
    read_original = ReviewedOutput.original

    def original(self, row):  # the reviewer's process stalls past its lease; a job takes it over
        output.target.write(LEASE_KEY, json.dumps({"run_id": "a-job", "expires_at": 0}).encode())
        return read_original(self, row)

    monkeypatch.setattr(ReviewedOutput, "original", original)
    reply = client.post(
        "/api/verdict", json={"key": key, "kind": "add", "class": "face", "box": [2, 2, 30, 30]}
    )
    assert reply.status_code == 409 and "lost the lease" in reply.json()["error"]
    assert output.target.read(key) == before and read_verdicts(output.target) == []


def test_a_verdict_that_cannot_be_logged_is_taken_off_the_output(output, monkeypatch):
    client, key = client_of(output), "crowd_0.jpg"
    before = output.target.read(key)

    def append_fails(*args):
        raise RuntimeError("could not append")

    monkeypatch.setattr(review_reblur, "append_verdicts", append_fails)
    with pytest.raises(RuntimeError, match="could not append"):
        client.post(
            "/api/verdict", json={"key": key, "kind": "false", "id": box_id(output.row(key)["boxes"][0])}
        )
    assert output.target.read(key) == before and read_verdicts(output.target) == []
