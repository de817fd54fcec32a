"""`streetblur eval` on a small real subset: figures, report files and the command line."""

import argparse
import base64
import json
import math
from dataclasses import replace
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from faster_coco_eval import COCO, COCOeval_faster

from blurring.config import Config
from detection.detections import CLASS_NAMES, Detections
from detection.detector import DEFAULT_MODEL, DEFAULT_THRESHOLDS, Detector
from detection.tiling import merge_boxes
from eval.datasets import SHARED_DATASETS, load_dataset, load_split, split_dataset, with_label_fixes
from eval.evaluate import at_thresholds, best_of_groups, read_pixels, run_evaluation
from eval.report import write_report
from jobs.cli.main import build_parser
from tests.conftest import DATASETS, SAMPLES, requires_datasets
from tests.test_eval_datasets import other_photos_named

FACES = DATASETS / "faces-crowd"
SUBSET = 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def subset():
    return load_split(FACES, "val")[:SUBSET]


@pytest.fixture(scope="module")
def evaluation(detector, subset):
    dataset = {
        "root": str(FACES),
        "format": "coco",
        "split": "val",
        "class_map": SHARED_DATASETS[FACES.name].class_map,
    }
    return run_evaluation(subset, [Config(detect=detector.config)], dataset=dataset, progress=False)


@pytest.fixture(scope="module")
def report_dir(evaluation, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(evaluation, out)
    return out


@requires_datasets
def test_report_files_are_written(report_dir):
    names = {"report.md", "report.html", "report.json", "predictions.json", "ground_truth.json"}
    assert {p.name for p in report_dir.iterdir()} == names
    markdown = (report_dir / "report.md").read_text()
    for heading in ("## COCO metrics", "## Privacy at the deployed thresholds", "## Definitions"):
        assert heading in markdown
    assert "| streetblur-n.pt | face |" in markdown


class Tags(HTMLParser):
    """Every start tag and its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@requires_datasets
def test_html_is_self_contained_with_embedded_pngs(report_dir, evaluation):
    parser = Tags()
    parser.feed((report_dir / "report.html").read_text())
    parser.close()
    tags = [tag for tag, _ in parser.tags]
    assert "table" in tags and "h1" in tags
    images = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 1 + min(4, SUBSET)  # the PR curves, then the examples
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    links = [v for _, attrs in parser.tags for k, v in attrs.items() if k in ("src", "href") and v]
    assert all(link.startswith("data:") for link in links)


@requires_datasets
def test_json_has_the_documented_keys(report_dir, subset, detector):
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report) == {"created", "wall_time_s", "dataset", "settings", "examples", "models"}
    assert report["wall_time_s"] > 0
    assert report["dataset"]["images"] == SUBSET
    assert report["dataset"]["boxes"]["face"] == sum(len(im.boxes) for im in subset)
    assert report["settings"]["target_blurred"] == 0.95
    [model] = report["models"]
    assert set(model) == {
        "label", "model_id", "model_files", "predictions_file", "inference_s", "blur", "thresholds",
        "coco", "privacy", "raw_labels", "blurred_sweep", "pr_curve", "stages",
    }  # fmt: skip
    stages = model["stages"]
    assert set(stages) == {"proposal_thresholds", "verify_thresholds", "proposals", "left_unblurred"}
    assert set(stages["proposal_thresholds"]) == {"face", "plate"}
    assert stages["verify_thresholds"] is None  # verification is off by default
    lost = stages["left_unblurred"]["face"]
    assert 0 <= lost["left_unblurred"] <= lost["proposed"] and lost["fraction"] is not None
    # the proposals include every box the deployed detector keeps: they blur at least as many faces
    assert (
        stages["proposals"]["face"]["blurred"]["all"]
        >= model["privacy"]["deployed"]["face"]["blurred"]["all"]
    )
    assert model["predictions_file"] == "predictions.json"
    assert model["model_id"] == detector.model_id  # the weights that ran (INT8 on CPU)
    assert set(model["coco"]["face"]) == {
        "AP",
        "AP50",
        "AP75",
        "AP_small",
        "AP_medium",
        "AP_large",
        "AR100",
        "recall50",
    }
    assert set(model["coco"]["plate"].values()) == {None}  # faces-crowd labels no plates
    deployed = model["privacy"]["deployed"]
    assert set(deployed) == {"face", "plate", "all"}
    assert set(deployed["face"]) == {
        "recall50",
        "boxes",
        "blurred",
        "false_blurs_per_image",
        "false_blur_area",
        "false_blur_area_pooled",
        "detections_per_image",
    }
    assert set(deployed["face"]["blurred"]) == {"all", "small", "medium", "large"}
    assert model["thresholds"]["deployed"] == DEFAULT_THRESHOLDS
    curve = model["pr_curve"]["face"]
    assert len(curve["threshold"]) == len(curve["recall"]) == len(curve["precision"]) > 30
    assert model["pr_curve"]["plate"] is None


@requires_datasets
def test_predictions_are_coco_results_that_reproduce_the_reported_ap(report_dir, subset):
    gt = COCO(str(report_dir / "ground_truth.json"))
    results = json.loads((report_dir / "predictions.json").read_text())
    assert results and {r["image_id"] for r in results} <= {im.image_id for im in subset}
    assert all(
        set(r) == {"image_id", "category_id", "bbox", "score"} and len(r["bbox"]) == 4 for r in results
    )
    evaluator = COCOeval_faster(gt, gt.loadRes(str(report_dir / "predictions.json")), iouType="bbox")
    evaluator.params.catIds = [1]  # faces
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    reported = json.loads((report_dir / "report.json").read_text())["models"][0]["coco"]["face"]
    assert evaluator.stats[0] == pytest.approx(reported["AP"], abs=1e-3)
    assert evaluator.stats[1] == pytest.approx(reported["AP50"], abs=1e-3)


@requires_datasets
def test_deployed_figures_are_those_of_the_deployed_detector(detector, evaluation, subset):
    model = evaluation.models[0]
    for i in range(3):
        expected = detector.detect(read_pixels(subset[i], 10**9))
        np.testing.assert_array_equal(model.detections["deployed"][i].xyxy, expected.xyxy)
        np.testing.assert_array_equal(model.detections["deployed"][i].scores, expected.scores)
    # The PR curve passes through the deployed operating point.
    curve = model.curves["face"]
    at_deployed = curve.recall[np.searchsorted(curve.threshold, model.thresholds["deployed"]["face"])]
    assert at_deployed == pytest.approx(model.privacy["deployed"]["face"]["recall50"])


@pytest.mark.parametrize("sample", ["dashcam_0.jpg", "crowd_0.jpg"])
def test_boxes_before_the_merge_give_the_detector_at_any_threshold(detector, sample):
    image = cv2.imread(str(SAMPLES / sample))  # the 1280x720 frame is tiled: its merge joins views
    scan = Detector(
        replace(detector.config, thresholds={"face": 0.01, "plate": 0.01}, merge_overlap=math.inf)
    )
    unmerged = scan.detect(image)
    expected = Detector(replace(detector.config, verify="off")).detect(image)  # zoom scores: test_verify
    found = at_thresholds(unmerged, detector.config.thresholds, detector.config.merge_overlap)
    np.testing.assert_array_equal(found.xyxy, expected.xyxy)
    np.testing.assert_array_equal(found.class_id, expected.class_id)
    assert len(unmerged) > len(found)
    # The boxes COCO ranks, cut at any threshold, are the detector's boxes there (unwidened).
    best = best_of_groups(unmerged, detector.config.merge_overlap)
    for threshold in (0.02, 0.1, 0.25, 0.5):
        at = at_thresholds(unmerged, dict.fromkeys(CLASS_NAMES, threshold), detector.config.merge_overlap)
        cut = best[best.scores >= threshold]
        np.testing.assert_array_equal(cut.scores, at.scores)
        np.testing.assert_array_equal(cut.class_id, at.class_id)
        assert (cut.xyxy[:, :2] >= at.xyxy[:, :2]).all() and (cut.xyxy[:, 2:] <= at.xyxy[:, 2:]).all()


def test_best_of_groups_keeps_the_best_member_not_the_union():
    unmerged = Detections([[0, 0, 10, 10], [2, 0, 14, 10], [50, 50, 60, 60]], [0.9, 0.5, 0.7], [0, 0, 1])
    assert merge_boxes(unmerged, 0.6).xyxy.tolist()[0] == [0, 0, 14, 10]  # the second box joins the first
    best = best_of_groups(unmerged, 0.6)
    assert best.xyxy.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]
    np.testing.assert_allclose(best.scores, [0.9, 0.7])
    assert best.class_id.tolist() == [0, 1]
    assert len(best_of_groups(Detections(), 0.6)) == 0


def eval_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["eval", *argv])


@requires_datasets
def test_cli_writes_one_side_by_side_report_for_two_models(tmp_path, capsys):
    args = eval_args(
        "--data", str(DATASETS / "plates-roboflow"), "--split", "val", "--limit", "2",
        "--model", str(DEFAULT_MODEL), str(DEFAULT_MODEL), "--threshold", "plate=0.4",
        "--target-blurred", "0.5", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert args.run(args) == 0
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"predictions-streetblur-n.pt.json", "predictions-streetblur-n.pt-2.json"} <= names
    assert "predictions.json" not in names
    report = json.loads((out / "report.json").read_text())
    first, second = report["models"]
    assert (first["label"], second["label"]) == ("streetblur-n.pt", "streetblur-n.pt-2")
    assert first["thresholds"]["deployed"]["plate"] == 0.4
    assert first["coco"] == second["coco"] and first["privacy"] == second["privacy"]  # the same weights
    dataset = report["dataset"]
    assert (dataset["format"], dataset["split"], dataset["images"]) == ("yolo", "val", 2)
    assert dataset["class_map"] == {"license_plate": "plate"}
    assert report["settings"]["target_blurred"] == 0.5
    assert "streetblur-n.pt-2 plate: AP50" in capsys.readouterr().out
    assert "| streetblur-n.pt-2 | plate |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split", "val"], "no split rule"),
        (["--threshold", "car=0.3"], "thresholds for unknown classes"),
        (["--class-map", "x=car"], "bad class map clause"),
        (["--limit", "0"], "--limit"),
        (["--target-blurred", "1.5"], "target blurred fraction"),
    ],
)
def test_cli_refuses_bad_options_before_loading_a_model(tmp_path, argv, message):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "labels").mkdir()
    args = eval_args("--data", str(tmp_path), "--out", str(tmp_path / "out"), *argv)
    with pytest.raises(ValueError, match=message):
        args.run(args)


@requires_datasets
def test_cli_evaluates_a_folder_named_like_a_shared_set_as_the_folder_it_is(tmp_path):
    root = other_photos_named(tmp_path / "street-faces-plates")
    args = eval_args("--data", str(root), "--out", str(tmp_path / "out"))
    assert args.run(args) == 0
    dataset = json.loads((tmp_path / "out" / "report.json").read_text())["dataset"]
    assert (dataset["set"], dataset["split"], dataset["labels"], dataset["class_map"]) == (
        None,
        "all",
        "raw",
        None,
    )
    assert dataset["images"] == 3 and dataset["boxes"]["plate"] == sum(
        len(im.boxes) for im in load_dataset(root)
    )


@requires_datasets
def test_corrected_labels_are_reported_beside_the_raw_ones(tmp_path):
    """plates-roboflow val with its audit's added plate: the report shows both label sets, and the raw
    figures are those of an evaluation on the raw labels alone."""
    root = DATASETS / "plates-roboflow"
    raw = split_dataset(load_dataset(root, raw_labels=True), SHARED_DATASETS[root.name].split)["val"]
    corrected = with_label_fixes(raw, root)
    assert sum(len(im.boxes) for im in corrected) > sum(len(im.boxes) for im in raw)
    evaluation = run_evaluation(corrected, [Config()], progress=False, raw_images=raw)
    both = evaluation.models[0]
    alone = run_evaluation(raw, [Config()], progress=False).models[0]
    assert both.raw["privacy"]["plate"] == alone.privacy["deployed"]["plate"]
    assert both.raw["coco"]["plate"] == alone.coco["plate"]
    assert (
        both.privacy["deployed"]["plate"]["boxes"]["all"]
        == alone.privacy["deployed"]["plate"]["boxes"]["all"] + 1
    )
    write_report(evaluation, tmp_path)
    table = (tmp_path / "report.md").read_text().split("## Corrected and raw labels")[1].split("##")[0]
    assert "| plate | corrected |" in table and "| plate | raw |" in table
    with pytest.raises(ValueError, match="same order"):
        run_evaluation(corrected, [Config()], progress=False, raw_images=raw[::-1])
