"""`streetblur eval-video` on a small labelled folder (clips made from its photos) and on runs of
plates-dashcam's real video frames: figures with tracking on and off."""

from __future__ import annotations

import json
import shutil

from eval.datasets import load_split
from jobs.cli.main import main
from tests.conftest import DATASETS, SAMPLES, requires_datasets, sample_labels


def test_eval_video_scores_tracking_on_and_off(tmp_path, capsys):
    data = tmp_path / "set"
    data.mkdir()
    images, annotations = [], []
    for number, (name, boxes) in enumerate(sample_labels().items()):
        if not name.startswith("dashcam"):
            continue
        shutil.copy(SAMPLES / name, data / name)
        images.append({"id": number, "file_name": name, "width": 1280, "height": 720})
        for x1, y1, x2, y2 in boxes.xyxy.tolist():
            bbox = [x1, y1, x2 - x1, y2 - y1]
            annotations.append({"id": len(annotations), "image_id": number, "category_id": 1, "bbox": bbox})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "plate"}]}
    (data / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "report"
    args = ["eval-video", "--data", str(data), "--split", "all", "--clips", "2", "--frames", "8"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 2 and report["frames"] == 8
    off, on = report["off"], report["on"]
    assert off["objects"] == on["objects"] > 0 and off["object_frames"] == on["object_frames"]
    for tracked in (on, report["on_without_verdict"]):  # tracks only add boxes, with verdicts or not
        assert tracked["blurred_fraction"] >= off["blurred_fraction"]
        assert (
            tracked["leaked_objects"] <= off["leaked_objects"]
            and tracked["false_boxes"] >= off["false_boxes"]
        )
    assert 0 <= report["verdict_boxes"] <= report["track_boxes"]
    assert "| on, without track verdicts |" in (out / "report.md").read_text()
    assert "| on |" in (out / "report.md").read_text() and "| off |" in capsys.readouterr().out


@requires_datasets
def test_eval_video_on_runs_of_real_dashcam_frames(tmp_path):
    root = DATASETS / "plates-dashcam"
    dev = load_split(root, "dev")
    seconds = {im.path.name: float(im.path.name.split("#t=")[1][:-4]) for im in dev}
    present = {(im.path.name.split("#")[0], seconds[im.path.name]) for im in dev}
    alone = [(v, t) for v, t in present if (v, t - 1) not in present and (v, t + 1) not in present]
    out = tmp_path / "report"
    args = ["eval-video", "--clips-from", "video-frames", "--data", str(root), "--clips", "2"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clips_from"] == "video-frames" and report["clips"] == 2
    assert report["single_frames_left_out"] == len(alone)  # frames one second apart make a clip
    off, on = report["off"], report["on"]
    assert off["objects"] == on["objects"] and off["object_frames"] == on["object_frames"]
    assert 0 < off["objects"] < off["object_frames"]  # plates seen in several frames are one object
    assert off["object_frames"] <= sum(len(im.boxes) for im in dev)
    assert off["blurred_fraction"] > 0.5  # the detector finds most plates of these frames
    assert on["blurred_fraction"] >= off["blurred_fraction"] and on["leaked_objects"] <= off["leaked_objects"]
    assert "consecutive video frames" in (out / "report.md").read_text()
