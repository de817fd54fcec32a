"""`streetblur calibrate`: thresholds within a false-blur budget, consistent with `streetblur eval`."""

from dataclasses import replace

import cv2
import pytest

from blurring.pipeline import load_config
from detection.detections import Detections
from eval.calibrate import calibrate
from eval.datasets import LabelledImage, load_split
from eval.evaluate import run_evaluation
from jobs.cli import main
from tests.conftest import DATASETS, requires_datasets
from tests.test_eval_datasets import other_photos_named

pytestmark = requires_datasets


@pytest.fixture(scope="module")
def sets():
    return [
        load_split(DATASETS / "faces-crowd", "dev")[:10],
        load_split(DATASETS / "plates-dashcam", "dev")[:6],
    ]


@pytest.mark.parametrize("budget", [0.1, 0.5])
def test_the_chosen_threshold_is_the_lowest_within_the_false_blur_budget(sets, budget):
    results = {r.name: r for r in calibrate(sets, load_config(), budget, progress=False)}
    assert set(results) == {"face", "plate"}
    assert (results["face"].images, results["plate"].images) == (10, 6)  # each class on the sets labelling it
    for result in results.values():
        within = [r for r in result.rows if r["false_blurs_per_image"] <= budget]
        assert result.chosen == min(r["threshold"] for r in within)
        lower = [r for r in result.rows if r["threshold"] < result.chosen]
        assert all(r["false_blurs_per_image"] > budget for r in lower)
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
    assert "## plate: 20 images" in out.read_text()


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


def test_cli_calibrates_on_the_whole_of_a_folder_named_like_a_shared_set(tmp_path, capsys):
    root = other_photos_named(tmp_path / "street-faces-plates")
    out = tmp_path / "calibration.md"
    assert main(["calibrate", "--data", str(root), "--out", str(out)]) == 0
    assert "## plate: 3 images" in out.read_text()  # all of them, not a split
