"""The review page in a real browser (Debian's chromium, driven by Playwright): draw a box with the mouse
on a blurred output, press the shortcut, and the verdict is logged and the image re-blurred there only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from blurring import blur_mask
from blurring.config import Config
from detection.detections import Detections
from detection.detector import Detector
from jobs.batch.verdicts import read_verdicts
from review.app import ReviewSession, create_app
from review.output import ReviewedOutput
from storage.objects import Storage
from tests.conftest import free_port
from tests.review_output import write_job_output
from tests.test_review import assert_changed_only_in, copy_samples, decoded

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture
def served(tmp_path):
    """The review page over a fresh job output of the samples, served by uvicorn on loopback."""
    copy_samples(tmp_path / "inputs")
    write_job_output(Storage(str(tmp_path / "inputs")), Storage(str(tmp_path / "out")), Detector())
    output = ReviewedOutput(Storage(str(tmp_path / "out")))
    port = free_port()
    app = create_app(ReviewSession(output, "browser", "test"), allowed_hosts=["127.0.0.1"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield output, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_a_box_drawn_with_the_mouse_is_logged_and_blurred_there_only(served):
    output, url = served
    key = "crowd_1.png"
    row = output.row(key)
    before = decoded(output.target.read(key))
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/?key={key}")
        page.wait_for_function(f"document.getElementById('key').textContent === {key!r}")
        page.wait_for_function("document.getElementById('canvas').width > 0")
        canvas = page.locator("canvas").bounding_box()
        scale = canvas["width"] / row["width"]
        start = (canvas["x"] + 8 * scale, canvas["y"] + 6 * scale)
        end = (canvas["x"] + 48 * scale, canvas["y"] + 40 * scale)
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=8)
        page.mouse.up()
        page.keyboard.press("p")
        page.wait_for_function("document.getElementById('status').textContent.includes('re-blurred')")
        browser.close()
    added, reblur = read_verdicts(output.target)
    assert (added["kind"], added["class"], added["key"], added["who"]) == ("add", "plate", key, "browser")
    assert added["box"] == pytest.approx([8, 6, 48, 40], abs=1.5)
    assert reblur["kind"] == "reblur" and reblur["new_boxes"][-1]["box"] == added["box"]
    after = decoded(output.target.read(key))
    x1, y1, x2, y2 = (round(v) for v in added["box"])
    assert (before[y1:y2, x1:x2] != after[y1:y2, x1:x2]).any(axis=2).mean() > 0.5
    mask = blur_mask(row["height"], row["width"], Detections.from_records([added]), Config().blur) > 0
    assert_changed_only_in(before, after, mask, row)
