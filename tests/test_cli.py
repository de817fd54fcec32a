"""`streetblur blur` end to end on real photos: outputs, reports, failures, EXIF and options.

Runs `jobs.cli.main.main` in-process (each call loads the default model itself), plus one run of the
installed `streetblur` console script.
"""

import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blurring import BlurConfig, anonymize
from blurring.config import Config
from blurring.image_io import decode_image
from blurring.pipeline import blur_image_bytes
from detection.detections import CLASS_NAMES, Detections
from detection.detector import DEFAULT_THRESHOLDS
from jobs.cli.main import build_parser, main
from jobs.cli.options import config_from_args
from tests.conftest import SAMPLES

CROWD = SAMPLES / "crowd_0.jpg"  # 400x267 with several faces
DASHCAM = SAMPLES / "dashcam_0.jpg"  # 1280x720
LIMIT = 10**9
ORIENTATION, MAKE, MODEL = 0x0112, 0x010F, 0x0110


def blur(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """Run `streetblur blur ARGS` in-process; exit code and stderr."""
    code = main(["blur", *map(str, args)])
    return code, capsys.readouterr().err


def read_pixels(path: Path) -> np.ndarray:
    """Decoded pixels of a written file, exactly as the pipeline decodes (BGR, upright)."""
    return decode_image(path.read_bytes(), LIMIT).pixels


def read_report(path: Path) -> dict:
    return json.loads(path.read_text())


def boxes_of(record: dict) -> Detections:
    return Detections.from_records(record["detections"])


def far_from_boxes(shape: tuple[int, ...], dets: Detections, grow: float = 0.5) -> np.ndarray:
    """True where a pixel lies outside every box grown by `grow` of its size on each side."""
    far = np.ones(shape[:2], bool)
    for x1, y1, x2, y2 in dets.xyxy:
        w, h = x2 - x1, y2 - y1
        r0, r1 = max(int(np.floor(y1 - grow * h)), 0), int(np.ceil(y2 + grow * h))
        c0, c1 = max(int(np.floor(x1 - grow * w)), 0), int(np.ceil(x2 + grow * w))
        far[r0:r1, c0:c1] = False
    return far


def box_slices(box: np.ndarray) -> tuple[slice, slice]:
    """The pixels wholly inside a box."""
    x1, y1, x2, y2 = box
    return slice(int(np.ceil(y1)), int(np.floor(y2))), slice(int(np.ceil(x1)), int(np.floor(x2)))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def sideways_copy(path: Path, orientation: int = 6) -> bytes:
    """A real photo stored rotated, with the EXIF orientation that turns it upright, and camera tags."""
    with Image.open(path) as image:
        upright = image.convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "StreetCam"
    exif[MODEL] = "SC-1000"
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def crowd_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`streetblur blur crowd_0.jpg -o out.png --detections report.json` with defaults, run once."""
    folder = tmp_path_factory.mktemp("crowd_run")
    output, report = folder / "out.png", folder / "report.json"
    code = main(["blur", str(CROWD), "-o", str(output), "--detections", str(report)])
    return {"code": code, "output": output, "report": read_report(report)}


# ---------------------------------------------------------------- 1. one photo in, one out


def test_png_output_changes_the_boxes_and_nothing_far_from_them(crowd_run):
    assert crowd_run["code"] == 0
    source, output = read_pixels(CROWD), read_pixels(crowd_run["output"])
    assert output.shape == source.shape == (267, 400, 3)
    dets = boxes_of(crowd_run["report"]["images"][0])
    assert len(dets.of_class("face")) >= 1, "the default model finds no face in crowd_0.jpg"
    changed = np.any(output != source, axis=2)
    for box in dets.xyxy:  # every box is obscured
        rows, cols = box_slices(box)
        assert changed[rows, cols].any(), f"box {box} left untouched"
    assert max(mean_abs_diff(output[box_slices(b)], source[box_slices(b)]) for b in dets.xyxy) > 5
    far = far_from_boxes(source.shape, dets)
    assert far.mean() > 0.2  # the comparison below covers a real part of the photo
    assert np.array_equal(output[far], source[far])  # lossless output: byte-identical away from boxes


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_output_has_the_format_of_its_extension(capsys, tmp_path: Path, suffix: str):
    output, report = tmp_path / f"out{suffix}", tmp_path / "report.json"
    code, err = blur(capsys, CROWD, "-o", output, "--detections", report)
    assert code == 0, err
    with Image.open(output) as written:
        assert written.format == {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[suffix]
        assert written.size == (400, 267)
    source, pixels = read_pixels(CROWD), read_pixels(output)
    dets = boxes_of(read_report(report)["images"][0])
    assert len(dets) >= 1
    inside = max(mean_abs_diff(pixels[box_slices(b)], source[box_slices(b)]) for b in dets.xyxy)
    far = far_from_boxes(source.shape, dets)
    outside = mean_abs_diff(pixels[far], source[far])  # only re-encoding noise there
    assert outside < 3
    assert inside > outside + 3
    assert not list(tmp_path.glob(".*"))  # no partial file left behind


def test_output_into_an_existing_folder_keeps_the_name(capsys, tmp_path: Path):
    code, err = blur(capsys, CROWD, "-o", tmp_path)
    assert code == 0, err
    assert read_pixels(tmp_path / CROWD.name).shape == (267, 400, 3)


# ---------------------------------------------------------------- 2. --detections report


def test_detections_report_has_the_documented_shape(crowd_run, detector):
    report = crowd_run["report"]
    assert set(report) >= {"model", "images"}
    # the weights that ran: on CPU, the INT8 model shipped beside streetblur-n.pt
    assert report["model"] == detector.model_id
    assert re.fullmatch(r"streetblur-n_int8_openvino_model@[0-9a-f]{12}", report["model"]), report["model"]
    assert len(report["images"]) == 1
    record = report["images"][0]
    assert set(record) >= {"input", "output", "status", "width", "height", "detections"}
    assert record["input"] == str(CROWD)
    assert record["output"] == str(crowd_run["output"])
    assert record["status"] == "blurred"
    assert (record["width"], record["height"]) == (400, 267)
    assert record["detections"]
    for det in record["detections"]:
        assert set(det) == {"class", "score", "box"}
        assert det["class"] in CLASS_NAMES
        assert DEFAULT_THRESHOLDS[det["class"]] <= det["score"] <= 1.0
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= record["width"]
        assert 0 <= y1 < y2 <= record["height"]
    # the report lists what the default detector finds in the decoded photo
    expected = detector.detect(read_pixels(CROWD))
    reported = boxes_of(record)
    assert len(reported) == len(expected)
    order_r, order_e = np.lexsort(reported.xyxy.T[::-1]), np.lexsort(expected.xyxy.T[::-1])
    assert np.allclose(reported.xyxy[order_r], expected.xyxy[order_e], atol=0.01)
    assert np.array_equal(reported.class_id[order_r], expected.class_id[order_e])


# ---------------------------------------------------------------- 3. a folder with bad files


def test_folder_blurs_good_photos_and_names_every_failure(capsys, tmp_path: Path):
    source, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    (source / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "crowd_0.jpg", source / "a.jpg")
    shutil.copy(SAMPLES / "crowd_1.jpg", source / "b.jpg")
    shutil.copy(DASHCAM, source / "sub" / "c.jpg")
    (source / "empty.jpg").write_bytes(b"")
    whole = (SAMPLES / "crowd_2.jpg").read_bytes()
    (source / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (source / "text.jpg").write_text("not a photo at all\n" * 50)
    (source / "readme.txt").write_text("ignored: not an image suffix\n")

    code, err = blur(capsys, source, "-o", out, "--detections", report)

    assert code != 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.jpg", "b.jpg", "sub/c.jpg"]  # mirrors the input tree; nothing for the bad ones
    for name, sample in [("a.jpg", "crowd_0.jpg"), ("b.jpg", "crowd_1.jpg"), ("sub/c.jpg", "dashcam_0.jpg")]:
        assert read_pixels(out / name).shape == read_pixels(SAMPLES / sample).shape
    reasons = {"empty.jpg": "empty", "truncated.jpg": "cannot decode", "text.jpg": "not an image"}
    for name, reason in reasons.items():
        lines = [line for line in err.splitlines() if str(source / name) in line]
        assert lines, f"{name} not named on stderr:\n{err}"
        assert any(reason in line for line in lines), f"{name}: reason {reason!r} missing:\n{err}"
    assert re.search(r"\b3 blurred, 3 failed of 6 images", err), err
    for good in ("a.jpg", "b.jpg", "c.jpg"):
        assert not any(good in line and "fail" in line for line in err.splitlines())

    records = {Path(r["input"]).name: r for r in read_report(report)["images"]}
    assert set(records) == {"a.jpg", "b.jpg", "c.jpg", "empty.jpg", "truncated.jpg", "text.jpg"}
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        assert records[name]["status"] == "blurred" and Path(records[name]["output"]).exists()
    assert (records["c.jpg"]["width"], records["c.jpg"]["height"]) == (1280, 720)
    for name in ("empty.jpg", "truncated.jpg", "text.jpg"):
        assert records[name]["status"] == "failed"
        assert records[name]["output"] is None and records[name]["error"]
        assert records[name]["detections"] == []


def test_folder_run_survives_an_output_that_cannot_be_written(capsys, tmp_path: Path):
    source, out = tmp_path / "in", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "crowd_0.jpg", source / "a.jpg")
    shutil.copy(SAMPLES / "crowd_1.jpg", source / "sub" / "b.jpg")
    shutil.copy(SAMPLES / "crowd_2.jpg", source / "z.jpg")
    out.mkdir()
    (out / "sub").write_text("a file where the output folder should go\n")
    code, err = blur(capsys, source, "-o", out)
    assert code == 1
    assert read_pixels(out / "a.jpg").shape == (267, 400, 3)
    assert read_pixels(out / "z.jpg").shape == read_pixels(SAMPLES / "crowd_2.jpg").shape  # after the failure
    assert any(str(source / "sub" / "b.jpg") in line for line in err.splitlines()), err
    assert re.search(r"\b2 blurred, 1 failed of 3 images", err), err


# ---------------------------------------------------------------- 4. one bad file


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("truncated", "cannot decode"),
        ("header", "cannot decode"),
        ("empty", "empty"),
        ("text", "not an image"),
    ],
)
def test_single_bad_file_fails_with_a_one_line_reason_and_no_output(capsys, tmp_path: Path, content, reason):
    data = CROWD.read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(
        {"truncated": data[: len(data) // 2], "header": data[:100], "empty": b"", "text": b"hello\n" * 40}[
            content
        ]
    )
    output = tmp_path / "out" / "bad.jpg"
    code, err = blur(capsys, bad, "-o", output)
    assert code != 0
    assert not output.exists() and not output.parent.exists()
    assert "Traceback" not in err
    assert any(str(bad) in line and reason in line for line in err.splitlines()), err


@pytest.mark.parametrize("cut", [100, 1000])
def test_pipeline_fails_closed_on_a_cut_file(detector, cut: int):
    """`blur_image_bytes` reports a failure for a file cut short; it neither raises nor returns pixels."""
    outcome = blur_image_bytes(CROWD.read_bytes()[:cut], "JPEG", detector, Config())
    assert outcome.status == "failed"
    assert outcome.output is None
    assert "cannot decode" in outcome.error


def test_unwritable_output_format_fails_without_output(capsys, tmp_path: Path):
    code, err = blur(capsys, CROWD, "-o", tmp_path / "out.gif")
    assert code != 0
    assert "cannot write .gif" in err
    assert not (tmp_path / "out.gif").exists()


def test_missing_input_is_a_usage_error(capsys, tmp_path: Path):
    code, err = blur(capsys, tmp_path / "nope.jpg", "-o", tmp_path / "out.jpg")
    assert code == 2
    assert "nope.jpg" in err and "no such file" in err


# ---------------------------------------------------------------- 5. EXIF


def test_rotated_photo_comes_out_upright_with_its_exif(capsys, tmp_path: Path):
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(sideways_copy(CROWD, 6))
    with Image.open(rotated) as stored:
        assert stored.size == (267, 400)  # stored sideways
    output, report = tmp_path / "out.png", tmp_path / "report.json"
    code, err = blur(capsys, rotated, "-o", output, "--detections", report)
    assert code == 0, err
    with Image.open(output) as written:
        assert written.size == (400, 267)  # the pixels themselves are upright
        exif = written.getexif()
    assert exif.get(ORIENTATION, 1) == 1  # and no viewer rotates them again
    assert exif[MAKE] == "StreetCam" and exif[MODEL] == "SC-1000"
    record = read_report(report)["images"][0]
    assert (record["width"], record["height"]) == (400, 267)
    # upright, not upside down: matches the original photo away from the boxes
    source, pixels = read_pixels(CROWD), np.array(Image.open(output).convert("RGB"))[..., ::-1]
    far = far_from_boxes(source.shape, boxes_of(record))
    assert mean_abs_diff(pixels[far], source[far]) < 4
    assert mean_abs_diff(pixels[far], source[::-1, ::-1][far]) > 10


def test_strip_metadata_writes_no_exif(capsys, tmp_path: Path):
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(sideways_copy(CROWD, 8))
    output = tmp_path / "out.jpg"
    code, err = blur(capsys, rotated, "-o", output, "--strip-metadata")
    assert code == 0, err
    with Image.open(output) as written:
        assert written.size == (400, 267)
        assert len(written.getexif()) == 0
        assert "exif" not in written.info
    source = read_pixels(CROWD)
    assert mean_abs_diff(read_pixels(output), source) < mean_abs_diff(read_pixels(output), source[::-1, ::-1])


def test_alpha_of_a_png_survives_blurring(capsys, tmp_path: Path):
    with Image.open(CROWD) as image:
        rgba = image.convert("RGBA")
    alpha = np.array(rgba.convert("L"))[::-1]
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "in.png")
    code, err = blur(capsys, tmp_path / "in.png", "-o", tmp_path / "out.png")
    assert code == 0, err
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "RGBA" and written.size == (400, 267)
        assert np.array_equal(np.array(written.getchannel("A")), alpha)


# ---------------------------------------------------------------- 6. pixel limit


@pytest.mark.parametrize("how", ["flag", "set"])
def test_max_pixels_fails_larger_images(capsys, tmp_path: Path, how: str):
    output = tmp_path / "out.jpg"
    option = ["--max-pixels", 400 * 267 - 1] if how == "flag" else ["--set", f"max_pixels={400 * 267 - 1}"]
    code, err = blur(capsys, CROWD, "-o", output, *option)
    assert code != 0
    assert "too many pixels" in err and str(CROWD) in err
    assert not output.exists()


# ---------------------------------------------------------------- 7. options reach the pipeline


def test_face_threshold_keeps_only_confident_faces(capsys, tmp_path: Path, crowd_run):
    default = boxes_of(crowd_run["report"]["images"][0])
    faces = default.of_class("face")
    assert len(faces) >= 1 and (faces.scores < 0.99).any()  # so 0.99 must drop at least one
    report = tmp_path / "report.json"
    code, err = blur(
        capsys, CROWD, "-o", tmp_path / "out.jpg", "--threshold", "face=0.99", "--detections", report
    )
    assert code == 0, err
    strict = boxes_of(read_report(report)["images"][0])
    assert len(strict.of_class("face")) < len(faces)
    assert (strict.of_class("face").scores >= 0.99).all()
    # the plate threshold is untouched
    assert len(strict.of_class("plate")) == len(default.of_class("plate"))


@pytest.mark.parametrize("text", ["face", "=0.5"])
def test_malformed_threshold_is_a_usage_error(capsys, tmp_path: Path, text: str):
    code, err = blur(capsys, CROWD, "-o", tmp_path / "out.jpg", "--threshold", text)
    assert code == 2
    assert "KEY=VALUE" in err
    assert not (tmp_path / "out.jpg").exists()


def test_threshold_for_an_unknown_class_is_a_usage_error(capsys, tmp_path: Path):
    code, err = blur(capsys, CROWD, "-o", tmp_path / "out.jpg", "--threshold", "cat=0.5")
    assert code == 2
    assert "cat" in err


@pytest.mark.parametrize(
    ("args", "mode"), [(["--mode", "pixelate"], "pixelate"), (["--set", "blur.mode=solid"], "solid")]
)
def test_blur_mode_reaches_the_blur(capsys, tmp_path: Path, args: list, mode: str):
    output, report = tmp_path / "out.png", tmp_path / "report.json"
    code, err = blur(capsys, CROWD, "-o", output, "--detections", report, *args)
    assert code == 0, err
    dets = boxes_of(read_report(report)["images"][0])
    assert len(dets) >= 1
    source, pixels = read_pixels(CROWD), read_pixels(output)
    expected = anonymize(source, dets, BlurConfig(mode=mode))
    gaussian = anonymize(source, dets, BlurConfig())
    assert mean_abs_diff(pixels, expected) < 0.05  # (boxes in the report are rounded to 0.01 px)
    assert mean_abs_diff(pixels, gaussian) > 10 * mean_abs_diff(pixels, expected) + 0.05
    if mode == "solid":  # one colour fills each box (the largest box wins where boxes overlap)
        rows, cols = box_slices(dets.xyxy[np.argmax(dets.area)])
        assert len(np.unique(pixels[rows, cols].reshape(-1, 3), axis=0)) == 1


def test_tile_size_reaches_the_detector(capsys, tmp_path: Path, monkeypatch):
    import detection.detector

    calls = []
    plan_views = detection.detector.plan_views

    def spy(width, height, tile_size, overlap, whole_image):
        views = plan_views(width, height, tile_size, overlap, whole_image)
        calls.append((width, height, tile_size, len(views)))
        return views

    monkeypatch.setattr(detection.detector, "plan_views", spy)
    output = tmp_path / "out.jpg"
    code, err = blur(capsys, DASHCAM, "-o", output, "--set", "detect.tile_size=0")
    assert code == 0, err
    assert calls == [(1280, 720, 0, 1)]  # one untiled view of the 1280x720 frame
    assert read_pixels(output).shape == (720, 1280, 3)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("detect.no_such_option=1", "unknown option detect.no_such_option"),
        ("nonsense=3", "unknown option nonsense"),
        ("blur.mode=smudge", "unknown blur mode"),
        ("detect.tile_size", "KEY=VALUE"),
    ],
)
def test_bad_set_is_a_usage_error(capsys, tmp_path: Path, setting: str, message: str):
    code, err = blur(capsys, CROWD, "-o", tmp_path / "out.jpg", "--set", setting)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.jpg").exists()


def test_missing_output_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["blur", str(CROWD)])
    assert info.value.code == 2
    assert "--output" in capsys.readouterr().err


# ---------------------------------------------------------------- the installed console script


def test_console_script_blurs_a_photo(tmp_path: Path):
    script = Path(sys.executable).with_name("streetblur")
    assert script.exists(), script
    output, report = tmp_path / "out.jpg", tmp_path / "report.json"
    done = subprocess.run(
        [str(script), "blur", str(CROWD), "-o", "out.jpg", "--detections", "report.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(output) as written:
        assert written.format == "JPEG" and written.size == (400, 267)
    record = read_report(report)["images"][0]
    assert record["status"] == "blurred" and record["detections"]


class _BrokenDetector:
    """Stands in for a detector whose inference fails, as on a GPU error or a corrupt model."""

    model_id = "broken"

    def __init__(self, config) -> None:
        pass

    def screen_batch(self, images):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_an_image_whose_detection_failed_is_never_written(capsys, monkeypatch, tmp_path: Path):
    monkeypatch.setattr("detection.detector.Detector", _BrokenDetector)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(SAMPLES / "crowd_0.jpg", folder / "a.jpg")
    shutil.copyfile(SAMPLES / "dashcam_0.jpg", folder / "b.jpg")
    code, err = blur(capsys, folder, "-o", tmp_path / "out", "--detections", tmp_path / "report.json")
    assert code == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jpg"))
    assert err.count("detection failed: RuntimeError: CUDA error") >= 2
    records = read_report(tmp_path / "report.json")["images"]
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all(r["output"] is None for r in records)


# ---------------------------------------------------------------- 7. never over an input


def files_and_bytes(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_output_that_is_the_input_or_inside_it_is_refused(capsys, tmp_path: Path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(CROWD, photos / "a.jpg")
    (tmp_path / "link").symlink_to(photos)
    before = files_and_bytes(tmp_path)
    monkeypatch.chdir(tmp_path)
    for output in (photos, "photos/.", "./photos", tmp_path / "link", photos / "blurred", "link/out"):
        code, err = blur(capsys, photos, "-o", output)
        assert code == 2, (output, err)
        assert "is the input folder" in err, err
    assert files_and_bytes(tmp_path) == before  # originals untouched, nothing written


def test_output_folder_above_the_input_folder_is_refused(capsys, tmp_path: Path, monkeypatch):
    """`blur x/photos -o x` mirrors `x/photos/photos/a.jpg` onto `x/photos/a.jpg`, an original."""
    photos = tmp_path / "x" / "photos"
    (photos / "photos").mkdir(parents=True)
    shutil.copy(CROWD, photos / "a.jpg")
    shutil.copy(DASHCAM, photos / "photos" / "a.jpg")
    before = files_and_bytes(tmp_path)
    monkeypatch.chdir(tmp_path)
    for output in (tmp_path / "x", "x", "x/.", tmp_path):
        code, err = blur(capsys, "x/photos", "-o", output)
        assert code == 2, (output, err)
        assert "contains the input folder" in err, err
    assert files_and_bytes(tmp_path) == before


def test_an_output_file_that_is_an_input_file_is_refused_whatever_the_folders(capsys, tmp_path: Path):
    """A separate output folder whose subfolder links back into the input: the output would replace
    an input there."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(CROWD, photos / "sub" / "a.jpg")
    out.mkdir()
    (out / "sub").symlink_to(photos / "sub")
    before = files_and_bytes(photos)
    code, err = blur(capsys, photos, "-o", out)
    assert code == 2, err
    assert "input folder" in err, err
    assert files_and_bytes(photos) == before


def test_output_file_that_is_the_input_is_refused(capsys, tmp_path: Path, monkeypatch):
    photo = tmp_path / "a.jpg"
    shutil.copy(CROWD, photo)
    (tmp_path / "link.jpg").symlink_to(photo)
    before = files_and_bytes(tmp_path)
    monkeypatch.chdir(tmp_path)
    cases = [
        (photo, photo),
        ("a.jpg", "./a.jpg"),
        ("a.jpg", "link.jpg"),
        ("link.jpg", "a.jpg"),
        ("a.jpg", "."),
    ]
    for source, output in cases:
        code, err = blur(capsys, source, "-o", output)
        assert code == 2, (source, output, err)
        assert "is the input" in err, err
    assert files_and_bytes(tmp_path) == before


def test_two_inputs_that_would_write_one_output_are_refused(capsys, tmp_path: Path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy(CROWD, photos / "a.jpg")
    shutil.copy(SAMPLES / "crowd_1.jpg", photos / "a.JPG")  # one file on macOS and Windows
    code, err = blur(capsys, photos, "-o", out)
    assert code == 2, err
    assert "a.jpg" in err and "a.JPG" in err and "case" in err
    assert not out.exists()


def test_an_interrupted_write_leaves_the_old_output_and_no_partial_file(capsys, tmp_path: Path, monkeypatch):
    output = tmp_path / "out.jpg"
    output.write_bytes(b"previous output")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)  # fails after the bytes went to the temporary file
    code, err = blur(capsys, CROWD, "-o", output)
    assert code == 1 and "No space left" in err, err
    assert output.read_bytes() == b"previous output"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jpg"]


# ---------------------------------------------------------------- 8. one way to set options, every command


def test_threshold_flag_keeps_the_config_files_threshold_of_the_other_class(capsys, tmp_path: Path):
    """A plate threshold set in the YAML stays set when --threshold sets faces."""
    config = tmp_path / "no-plates.yaml"
    config.write_text("detect:\n  thresholds:\n    plate: 0.99\n")
    report = tmp_path / "boxes.json"

    def plate_and_face_scores(*options) -> dict[str, list[float]]:
        code, err = blur(capsys, DASHCAM, "-o", tmp_path / "out.jpg", *options, "--detections", report)
        assert code == 0, err
        [record] = read_report(report)["images"]
        return {
            name: [b["score"] for b in record["detections"] if b["class"] == name] for name in CLASS_NAMES
        }

    assert plate_and_face_scores("--threshold", "face=0.9")["plate"]  # the frame's plates, at the default
    scores = plate_and_face_scores("--config", config, "--threshold", "face=0.9")
    assert scores["plate"] == []  # the YAML's 0.99 was kept
    assert all(score >= 0.9 for score in scores["face"])


COMMANDS = {
    "blur": ["blur", "in.jpg", "-o", "out.jpg"],
    "run": ["run", "--input", "in", "--output", "out"],
    "eval": ["eval", "--data", "set", "--out", "report"],
    "calibrate": ["calibrate", "--data", "set"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_reads_config_file_flags_and_set_the_same_way(tmp_path: Path, command: str):
    config = tmp_path / "options.yaml"
    config.write_text(
        "detect:\n  imgsz: 800\n  device: cuda:1\n  thresholds:\n    plate: 0.05\n    face: 0.2\n"
    )
    argv = [*COMMANDS[command], "--config", str(config), "--model", "a.pt", "b.pt", "--device", "cpu"]
    argv += ["--set", "detect.thresholds.face=0.3", "--set", "blur.mode=pixelate"]
    if command != "calibrate":  # calibrate chooses the thresholds
        argv += ["--threshold", "face=0.4"]
    config_used = config_from_args(build_parser().parse_args(argv))
    assert config_used.detect.thresholds == {"face": 0.3, "plate": 0.05}  # --set wins, per class
    assert config_used.detect.models == ("a.pt", "b.pt")
    assert (config_used.detect.device, config_used.detect.imgsz, config_used.blur.mode) == (
        "cpu",
        800,
        "pixelate",
    )


# ---------------------------------------------------------------- 9. the command line answers at once


class _NoModelExpected:
    """Stands in for the detector where a command must stop before loading any model."""

    def __init__(self, config) -> None:
        raise AssertionError("a model was loaded before the usage error")


def test_a_photo_into_a_new_folder_given_with_a_slash(capsys, tmp_path: Path):
    code, err = blur(capsys, CROWD, "-o", f"{tmp_path / 'new' / 'folder'}/")
    assert code == 0, err
    assert read_pixels(tmp_path / "new" / "folder" / CROWD.name).shape == (267, 400, 3)


@pytest.mark.parametrize(
    ("output", "message"),
    [("newdir", "end it with / to write into a new folder"), ("out.gif", "cannot write .gif")],
)
def test_an_output_that_names_no_format_is_a_usage_error_before_any_model_loads(
    capsys, monkeypatch, tmp_path: Path, output: str, message: str
):
    monkeypatch.setattr("detection.detector.Detector", _NoModelExpected)
    code, err = blur(capsys, CROWD, "-o", tmp_path / output)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


HEAVY = ("torch", "ray", "ultralytics", "cv2", "openvino")


@pytest.mark.parametrize(
    "argv", [[], ["blur"], ["run"], ["eval"], ["calibrate"], ["audit"], ["train"], ["quantize"]]
)
def test_help_and_usage_errors_load_no_heavy_package(argv: list[str]):
    """`--help`, `COMMAND --help` and argparse's usage errors answer without torch, Ray or OpenCV."""
    code = f"""
import sys
from jobs.cli.main import main
for argv in ({[*argv, "--help"]!r}, {[*argv, "--no-such-option"]!r}):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(name for name in {HEAVY!r} if name in sys.modules))
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"streetblur {version('streetblur')}"


def test_help_says_what_every_command_does_and_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "`audit` a labelled set, `train` or `quantize` a model." in text  # the whole sentence
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--batch-size N", "(default: 4)", "(default: 0.5)", "(default: 2.0)", "(default: 64)"):
        assert shown in text, shown
    assert "(default: None)" not in text


def test_the_run_options_reach_the_job_and_its_exit_status(monkeypatch, capsys):
    """Every `run` option is a `JobOptions` field with the same default; a run above the failed
    fraction exits 1."""
    import dataclasses

    from jobs.batch.job import JobOptions

    seen = []

    def run_job(options, address=None) -> dict:
        seen.append(options)
        return {"failed": 3, "failed_fraction_exceeded": len(seen) > 1}

    monkeypatch.setattr("jobs.batch.job.run_job", run_job)
    base = ["run", "--input", "in", "--output", "out"]
    assert main(base) == 0
    defaults = {f.name: f.default for f in dataclasses.fields(JobOptions)}
    given = dataclasses.asdict(seen[0])
    for name in ("actor_cpus", "actor_gpus", "batch_size", "block_rows", "max_failed_fraction"):
        assert given[name] == defaults[name], name
    for name in ("max_input_bytes", "actor_memory_gb", "lease_wait_s", "suffixes"):
        assert given[name] == defaults[name], name
    options = ["--max-failed-fraction", "0.1", "--max-input-bytes", "1000", "--actor-memory-gb", "3"]
    assert main([*base, *options, "--lease-wait", "5"]) == 1
    assert (seen[1].max_failed_fraction, seen[1].max_input_bytes) == (0.1, 1000)
    assert (seen[1].actor_memory_gb, seen[1].lease_wait_s) == (3.0, 5.0)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["failed_fraction_exceeded"] is True


def help_default(capsys, command: str, option: str) -> str:
    """What `streetblur COMMAND --help` gives as the default of `option`."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries = re.split(r"\n  (?=-)", capsys.readouterr().out.split("\noptions:\n", 1)[1])  # one an option
    [entry] = [" ".join(e.split()) for e in entries if e.split()[0] in (option, f"{option},")]
    return re.search(r"\(default: ([^)]*)\)", entry).group(1)


def test_the_defaults_that_help_shows_are_the_ones_that_apply(capsys):
    """The help shows copies of values that heavy modules own (jobs/cli/defaults.py): they agree."""
    from detection.detector import DEFAULT_MODEL
    from eval.audit import AUDIT_THRESHOLD
    from jobs.batch.job import INPUT_SUFFIXES, JobOptions
    from jobs.cli import defaults
    from jobs.training.labels import SELF_LABEL_THRESHOLD, SHIPPED_PSEUDO_LABELS

    assert (defaults.DEFAULT_MODEL, defaults.INPUT_SUFFIXES) == (DEFAULT_MODEL.resolve(), INPUT_SUFFIXES)
    assert defaults.DEFAULT_PSEUDO_LABELS == SHIPPED_PSEUDO_LABELS.resolve()
    assert defaults.VIDEO_CHUNK_MB == JobOptions("in", "out").video_chunk_mb
    assert help_default(capsys, "train", "--self-label-threshold") == str(SELF_LABEL_THRESHOLD)
    assert help_default(capsys, "audit", "--audit-threshold") == str(AUDIT_THRESHOLD)
    config = Config()
    shown = {
        "--tile-size": config.detect.tile_size,
        "--tile-overlap": config.detect.tile_overlap,
        "--panorama": config.detect.panorama,
        "--mode": config.blur.mode,
        "--margin": config.blur.margin,
        "--max-pixels": config.max_pixels,
        "--threshold": " ".join(f"{name}={score}" for name, score in config.detect.thresholds.items()),
    }
    for option, value in shown.items():
        assert help_default(capsys, "blur", option) == str(value), option
    [model] = config.detect.models
    assert help_default(capsys, "blur", "--model").endswith(
        str(Path(model).relative_to(defaults.WEIGHTS.parents[1]))
    )


def test_rays_core_lines_stay_off_the_console_and_the_rest_passes_as_it_comes():
    """`streetblur run` without --verbose: the lines Ray's C++ core writes to the driver's stderr (they
    are in Ray's log folder) are dropped; all else goes through, a progress bar's partial line at once."""
    code = """
import os, sys
from jobs.ray_cluster import quiet_ray_core
quiet_ray_core()
os.write(2, b"[2026-12-07 04:32:58,956 E 8505 8505] core_worker.cc:2465: Actor ... max_restarts > 0.\\n")
print("a log line", file=sys.stderr, flush=True)
os.write(2, b"\\r 50%|#####")
sys.stdin.readline()  # the test reads the partial line first
os.write(2, b"[2026-12-07 04:32:59,001 W 8505 8512] task_manager.cc:1: retry\\n[2026-12-07 04:33:00,001 F")
os.write(2, b" 8505 8505] raylet_client.cc:1: fatal\\n\\r100%|##########\\n")
"""
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", code]
    process = subprocess.Popen(command, cwd=repo, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + 120
    while b"50%|#####" not in seen:  # before the process goes on: a progress bar is not held back
        assert time.monotonic() < deadline and process.poll() is None, seen
        if select.select([process.stderr], [], [], 1)[0]:
            seen += os.read(process.stderr.fileno(), 4096)
    seen += process.communicate(b"\n", timeout=120)[1]
    assert process.returncode == 0, seen
    fatal = b"[2026-12-07 04:33:00,001 F 8505 8505] raylet_client.cc:1: fatal\n"
    assert seen == b"a log line\n\r 50%|#####" + fatal + b"\r100%|##########\n"
