"""`streetblur calibrate`: thresholds within a false-blur budget, consistent with `streetblur eval`."""

import pytest

from eval.calibrate import calibrate
from eval.datasets import load_split
from eval.report import run_evaluation
from jobs.cli import main
from jobs.pipeline import load_config
from tests.conftest import DATASETS


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
