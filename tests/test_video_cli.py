"""`streetblur blur` on videos: one file, and a folder of photos and videos with a truncated one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest

from jobs.cli.main import main
from tests.conftest import SAMPLES
from tests.video_clips import write_clip


def _frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_folder_of_photos_and_videos_with_a_truncated_video(tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "drive").mkdir(parents=True)
    shutil.copy(SAMPLES / "crowd_1.jpg", folder / "crowd_1.jpg")
    write_clip(folder / "drive" / "walk.mp4", frames=10)
    whole = (folder / "drive" / "walk.mp4").read_bytes()
    (folder / "drive" / "cut.mov").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    boxes = tmp_path / "boxes.json"
    assert (
        main(["blur", str(folder), "-o", str(out), "--set", "video.crf=23", "--detections", str(boxes)]) == 1
    )
    err = capsys.readouterr().err
    assert "2 blurred, 1 failed of 1 images and 2 videos" in err
    assert f"failed: {folder / 'drive' / 'cut.mov'}: " in err
    assert (out / "crowd_1.jpg").exists()
    assert _frame_count(out / "drive" / "walk.mp4") == 10
    assert (out / "drive" / "walk.mp4.detections.parquet").exists()
    assert sorted(p.name for p in (out / "drive").iterdir()) == ["walk.mp4", "walk.mp4.detections.parquet"]
    records = {Path(r["input"]).name: r for r in json.loads(boxes.read_text())["images"]}
    assert records["walk.mp4"]["frames"] == 10 and records["walk.mp4"]["streams_dropped"] == []
    assert records["walk.mp4"]["detections_file"] == str(out / "drive" / "walk.mp4.detections.parquet")
    assert records["cut.mov"]["status"] == "failed" and records["cut.mov"]["output"] is None
    assert records["crowd_1.jpg"]["detections"] and records["crowd_1.jpg"]["status"] == "blurred"


def test_one_video_to_another_container_and_usage_errors(tmp_path, capsys):
    source = tmp_path / "walk.mp4"
    write_clip(source, frames=6)
    assert main(["blur", str(source), "-o", str(tmp_path / "walk-blurred.mkv")]) == 0
    with av.open(str(tmp_path / "walk-blurred.mkv")) as container:
        assert container.format.name == "matroska,webm"
        assert [s.type for s in container.streams] == ["video", "audio"]
    # Matroska has no place for GoPro's GPS stream: the run says so
    assert "not carried: stream #2 data bin_data (GoPro MET): the matroska output" in capsys.readouterr().err
    with av.open(str(tmp_path / "walk-blurred.mkv")) as result, av.open(str(source)) as original:
        times = [float(f.pts * f.time_base) for f in result.decode(video=0)]
        assert times == pytest.approx(
            [float(f.pts * f.time_base) for f in original.decode(video=0)], abs=1e-3
        )
    assert main(["blur", str(source), "-o", str(tmp_path / "walk.avi")]) == 1  # no variable rate in AVI
    assert "cannot hold a variable frame rate" in capsys.readouterr().err
    assert not (tmp_path / "walk.avi").exists()
    with pytest.raises(SystemExit):
        main(["blur", "--help"])
    assert main(["blur", str(source), "-o", str(tmp_path / "walk.jpg")]) == 2
    assert "a video is written as a video" in capsys.readouterr().err
