"""`streetblur calibrate`: thresholds within a false-blur budget, consistent with `streetblur eval`."""

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from blurring.config import Config, load_config
from detection.detections import CLASS_NAMES, Detections
from eval.calibrate import calibrate
from eval.datasets import LabelledImage, load_split
from eval.evaluate import DetectionPass, run_evaluation
from eval.report import write_report
from jobs.cli.main import main
from tests.conftest import DATASETS, requires_datasets
from tests.test_eval_datasets import other_photos_named

pytestmark = requires_datasets


@pytest.fixture(scope="module")
def sets():
    return [
        load_split(DATASETS / "faces-crowd", "dev")[:10],
        load_split(DATASETS / "plates-dashcam", "dev")[:6],
    ]


@pytest.mark.parametrize(("budget", "area_budget"), [(0.1, 1.0), (0.5, 0.005), (5.0, 0.001)])
def test_the_chosen_threshold_is_the_lowest_within_the_false_blur_budget(sets, budget, area_budget):
    results = {
        r.name: r for r in calibrate(sets, load_config(), budget, progress=False, max_false_area=area_budget)
    }
    assert set(results) == {"face", "plate"}
    assert (results["face"].images, results["plate"].images) == (10, 6)  # each class on the sets labelling it

    def within(row: dict) -> bool:
        return row["false_blurs_per_image"] <= budget and row["false_blur_area"] <= area_budget

    for result in results.values():
        assert result.chosen == min(r["threshold"] for r in result.rows if within(r))
        lower = [r for r in result.rows if r["threshold"] < result.chosen]
        assert lower and not any(within(r) for r in lower)
        chosen = next(r for r in result.rows if r["threshold"] == result.chosen)
        assert all(chosen["blurred"] >= r["blurred"] for r in result.rows if r["threshold"] > result.chosen)


def test_a_blurred_target_chooses_the_highest_threshold_that_reaches_it(sets):
    results = {
        r.name: r
        for r in calibrate(sets, load_config(), targets={"face": 0.9, "plate": 1.01}, progress=False)
    }
    face = results["face"]
    assert face.rule == "blurred >= 0.9"
    reaching = [r["threshold"] for r in face.rows if r["blurred"] >= 0.9]
    assert reaching, "the lowest thresholds blur nearly every labelled face"
    assert face.chosen == max(reaching)
    assert all(r["blurred"] < 0.9 for r in face.rows if r["threshold"] > face.chosen)
    assert results["plate"].chosen is None  # a fraction above 1 is never reached


def test_calibrated_figures_match_what_eval_reports_at_that_threshold(sets):
    face = next(r for r in calibrate(sets, load_config(), 0.3, progress=False) if r.name == "face")
    row = next(r for r in face.rows if r["threshold"] == 0.3)
    config = load_config(None, {"detect.thresholds": {"face": 0.3}})
    evaluated = run_evaluation(sets[0], [config], progress=False).models[0].privacy["deployed"]["face"]
    assert row["blurred"] == pytest.approx(evaluated["blurred"]["all"])
    assert row["false_blurs_per_image"] == pytest.approx(evaluated["false_blurs_per_image"])


def test_cli_prints_the_thresholds_to_set(tmp_path, capsys):
    out = tmp_path / "calibration.md"
    args = ["calibrate", "--data", str(DATASETS / "plates-roboflow"), "--split", "dev", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "--set detect.thresholds.plate=" in printed and "face" not in printed.splitlines()[-1]
    assert "## plate, detect.thresholds: 20 images" in out.read_text()


def test_pooled_sets_whose_image_ids_collide_are_scored_image_by_image(tmp_path, dashcam_plate):
    """Set 1's only image has its plate painted over; set 2's image with the same id shows that plate,
    unlabelled. Scored per image, set 1's plate is never found, whatever the threshold."""
    frame, box = dashcam_plate
    x1, y1, x2, y2 = box.astype(int)
    painted = frame.copy()
    painted[y1 - 10 : y2 + 10, x1 - 20 : x2 + 20] = 128
    cv2.imwrite(str(tmp_path / "painted.png"), painted)
    cv2.imwrite(str(tmp_path / "original.png"), frame)
    height, width = frame.shape[:2]
    plate = Detections([box], [1.0], [1])
    hidden = LabelledImage(tmp_path / "painted.png", width, height, plate, image_id=0)
    unlabelled = LabelledImage(tmp_path / "original.png", width, height, Detections(), image_id=0)
    labelled = replace(load_split(DATASETS / "plates-dashcam", "dev")[0], image_id=1)
    results = calibrate([[hidden], [unlabelled, labelled]], load_config(), progress=False)
    plates = next(r for r in results if r.name == "plate")
    assert plates.boxes == 1 + len(labelled.boxes)
    for row in plates.rows:
        assert row["recall50"] * plates.boxes <= len(labelled.boxes) + 1e-6, row


@pytest.fixture(scope="module")
def street() -> tuple[list[LabelledImage], dict[Path, Detections]]:
    """Street photos labelling faces and plates, and boxes a detector could give them, made from the
    labels: each face found loosely (1.6 times its size: IoU 0.39, never a hit at IoU 0.5, but its
    blur covers the face) at scores from 0.02 to 0.9; each plate exactly, at 0.5; and the first face
    of each photo also as a plate at 0.9, so that a plate's blur hides that face."""
    images = [im for im in load_split(DATASETS / "street-faces-plates", "dev") if len(im.boxes)][:20]
    levels = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    unmerged = {}
    for n, image in enumerate(images):
        faces, plates = image.boxes[image.boxes.class_id == 0], image.boxes[image.boxes.class_id == 1]
        centre, half = (
            (faces.xyxy[:, :2] + faces.xyxy[:, 2:]) / 2,
            (faces.xyxy[:, 2:] - faces.xyxy[:, :2]) * 0.8,
        )
        scores = levels[(n + np.arange(len(faces))) % len(levels)]
        loose = Detections(np.hstack([centre - half, centre + half]), scores, [0] * len(faces))
        exact = Detections(plates.xyxy, [0.5] * len(plates), [1] * len(plates))
        cover = Detections(faces.xyxy[:1], [0.9] * len(faces[:1]), [1] * len(faces[:1]))
        unmerged[image.path] = Detections.concat([loose, exact, cover])
    return images, unmerged


def fake_detection_pass(unmerged: dict[Path, Detections]) -> DetectionPass:
    """A `DetectionPass` that returns the given boxes of each image instead of running a detector."""
    return lambda images, config, max_pixels, label, progress: ([unmerged[im.path] for im in images], 0.0)


def test_calibrate_and_eval_give_the_same_figures_for_the_same_detections(monkeypatch, street):
    """Both blur with the mask of every detection (here a plate's box over a face), as `anonymize` does."""
    images, unmerged = street
    monkeypatch.setattr("eval.calibrate.detection_pass_in_process", fake_detection_pass(unmerged))
    face = next(r for r in calibrate([images], Config(), progress=False) if r.name == "face")
    for row in (r for r in face.rows if r["threshold"] in (0.05, 0.3, 0.7)):
        config = load_config(None, {"detect.thresholds": {"face": row["threshold"]}})
        evaluation = run_evaluation(
            images, [config], progress=False, detection_pass=fake_detection_pass(unmerged)
        )
        evaluated = evaluation.models[0].privacy["deployed"]["face"]
        assert row["blurred"] == evaluated["blurred"]["all"], row
        assert row["recall50"] == evaluated["recall50"] == 0  # no loose box is a hit
        assert row["false_blurs_per_image"] == evaluated["false_blurs_per_image"]


def fake_zoom_pass(images, config, unmerged, proposal_thresholds, label, progress):
    """Zoom scores made up from the boxes' own: every box at or above its proposal threshold gets one."""
    limit = np.array([proposal_thresholds[name] for name in CLASS_NAMES])
    return [np.where(d.scores >= limit[d.class_id], (d.scores * 7) % 1, np.nan) for d in unmerged]


def test_with_verification_calibrate_chooses_both_stages_as_eval_scores_them(monkeypatch, street):
    images, unmerged = street
    monkeypatch.setattr("eval.calibrate.detection_pass_in_process", fake_detection_pass(unmerged))
    monkeypatch.setattr("eval.calibrate.zoom_pass", fake_zoom_pass)
    monkeypatch.setattr("eval.evaluate.zoom_pass", fake_zoom_pass)
    config = load_config(overrides={"detect.verify": "on"})
    results = calibrate([images], config, progress=False, proposal_targets={"face": 0.9, "plate": 0.95})
    by_option = {(r.name, r.option): r for r in results}
    assert {option for _, option in by_option} == {"thresholds", "proposal_thresholds", "verify_thresholds"}
    proposals = by_option["face", "proposal_thresholds"]
    reaching = [r["threshold"] for r in proposals.rows if r["blurred"] >= 0.9]
    assert proposals.chosen == max(reaching)
    verifier = by_option["face", "verify_thresholds"]
    for row in (r for r in verifier.rows if r["threshold"] in (0.1, 0.3, 0.6)):
        overrides = {
            "detect.verify": "on",
            "detect.proposal_thresholds.face": proposals.chosen,
            "detect.proposal_thresholds.plate": by_option["plate", "proposal_thresholds"].chosen,
            "detect.verify_thresholds.face": row["threshold"],
        }
        evaluation = run_evaluation(
            images,
            [load_config(None, overrides)],
            progress=False,
            detection_pass=fake_detection_pass(unmerged),
        )
        evaluated = evaluation.models[0].privacy["deployed"]["face"]
        assert row["blurred"] == evaluated["blurred"]["all"], row
        assert row["false_blurs_per_image"] == evaluated["false_blurs_per_image"]
        assert row["false_blur_area"] == evaluated["false_blur_area"]
    # A lower verify threshold lets more proposals blur: never fewer objects blurred.
    blurred = [r["blurred"] for r in sorted(verifier.rows, key=lambda r: r["threshold"])]
    assert blurred == sorted(blurred, reverse=True) and blurred[0] > blurred[-1]


def test_the_reported_target_thresholds_are_those_calibrate_chooses(monkeypatch, street, tmp_path):
    """The same rule on the same figure: the highest swept threshold whose blurred fraction reaches the
    target, though the loose faces never reach any recall at IoU 0.5."""
    images, unmerged = street
    monkeypatch.setattr("eval.calibrate.detection_pass_in_process", fake_detection_pass(unmerged))
    targets = {"face": 0.9, "plate": 0.95}
    chosen = {r.name: r.chosen for r in calibrate([images], Config(), targets=targets, progress=False)}
    assert chosen["face"] is not None and chosen["plate"] == 0.5
    evaluation = run_evaluation(
        images, [Config()], 0.9, progress=False, detection_pass=fake_detection_pass(unmerged)
    )
    assert evaluation.models[0].thresholds["target"]["face"] == chosen["face"]
    write_report(evaluation, tmp_path)
    report = (tmp_path / "report.md").read_text()
    title = "## Privacy at the highest thresholds whose blurred fraction reaches 0.9"
    assert title in report
    face_row = next(line for line in report.split(title)[1].splitlines() if "| face |" in line)
    assert f"| face | {chosen['face']:.3f} |" in face_row


def test_cli_calibrates_on_the_whole_of_a_folder_named_like_a_shared_set(tmp_path, capsys):
    root = other_photos_named(tmp_path / "street-faces-plates")
    out = tmp_path / "calibration.md"
    assert main(["calibrate", "--data", str(root), "--out", str(out)]) == 0
    assert "## plate, detect.thresholds: 3 images" in out.read_text()  # all of them, not a split
