"""What the review gives back: a YOLO dataset of the fully reviewed images (`export_dataset`), and the
miss and false-blur rates measured on the random slice (`review_stats`).

An image's true boxes, once it is fully reviewed, are its corrected boxes (`ImageState.corrected`);
the job blurred `ImageState.job_boxes`. Misses are the true boxes the job did not blur, false
blurs the boxes it blurred that are not true.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import cv2

from detection.detections import CLASS_NAMES, Detections
from eval.datasets import write_yolo_labels
from jobs.batch.verdicts import VERDICTS_KEY, ImageState, box_id, fold, in_random_slice, read_verdicts
from jobs.training.dataset import REVIEW_EXPORT_KIND
from review.output import ReviewedOutput
from video.config import is_video_key

PROVENANCE_FILE = "provenance.json"
TRAIN, HELDOUT = "train", "heldout"


def reviewed_images(output: ReviewedOutput) -> list[tuple[dict, ImageState]]:
    """The manifest row and state of every fully reviewed image, by key."""
    rows = output.rows()
    states = fold(read_verdicts(output.target), rows)
    return [
        (rows[key], state)
        for key, state in sorted(states.items())
        if state.reviewed and key in rows and rows[key]["status"] == "blurred"
    ]


def review_stats(output: ReviewedOutput, seed: str) -> dict:
    """Miss rate (true faces and plates the job did not blur, of all true ones) and false-blur rate (of
    the job's blurs, those that were no face or plate), on the fully reviewed images of the random
    slice alone; the same counts on every reviewed image, which the queue biases, for comparison."""
    figures = {}
    for name, in_slice in (("random_slice", True), ("all_reviewed", False)):
        images = true = missed = blurred = false = 0
        for row, state in reviewed_images(output):
            if in_slice and not in_random_slice(row["key"], seed):
                continue
            job = {box_id(b) for b in state.job_boxes(row)}
            corrected = {box_id(b) for b in state.corrected(row["boxes"] or [])}
            images += 1
            true, missed = true + len(corrected), missed + len(corrected - job)
            blurred, false = blurred + len(job), false + len(job - corrected)
        figures[name] = {
            "images": images,
            "true_boxes": true,
            "missed": missed,
            "miss_rate": round(missed / true, 4) if true else None,
            "blurred_boxes": blurred,
            "false_blurs": false,
            "false_blur_rate": round(false / blurred, 4) if blurred else None,
        }
    in_slice = [
        r
        for r in output.rows().values()
        if r["status"] == "blurred" and not is_video_key(r["key"]) and in_random_slice(r["key"], seed)
    ]
    figures["random_slice"]["images_in_slice"] = len(in_slice)
    return {"output": output.target.uri, "seed": seed, **figures}


def export_dataset(output: ReviewedOutput, out_dir: Path, seed: str, max_background: float = 0.25) -> dict:
    """Write the fully reviewed images of `output` as a two-class YOLO dataset in `out_dir` (replacing an
    earlier export there; any other existing folder is refused): the random slice's images in `heldout/`
    (never trained on), the others in `train/`, each an upright JPEG of its original named by the
    SHA-256 of its bytes, with its corrected boxes. Images with no face or plate are background; in
    `train/` at most `max_background` times the labelled images, those whose blurs were all false
    first. `provenance.json` says where each came from; its `dataset_id` hashes the content. The export
    is written beside `out_dir` and renamed into place whole: one that fails leaves the earlier one."""
    if out_dir.exists() and not _is_export(out_dir):
        raise ValueError(f"--out {out_dir} exists and is not a review export: choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        counts, dataset_id = _write_export(output, work, seed, max_background)
        if out_dir.exists():
            earlier = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent)) / "earlier"
            out_dir.rename(earlier)
            work.rename(out_dir)
            shutil.rmtree(earlier.parent)
        else:
            work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"out": str(out_dir), "dataset_id": dataset_id, "counts": counts}


def _write_export(
    output: ReviewedOutput, out_dir: Path, seed: str, max_background: float
) -> tuple[dict, str]:
    """Write the export of `export_dataset` into the empty folder `out_dir`; its counts and dataset id."""
    images = reviewed_images(output)
    heldout = [(row, state) for row, state in images if in_random_slice(row["key"], seed)]
    train = [(row, state) for row, state in images if not in_random_slice(row["key"], seed)]
    labelled = [(row, state) for row, state in train if state.corrected(row["boxes"] or [])]
    background = [(row, state) for row, state in train if not state.corrected(row["boxes"] or [])]
    background.sort(key=lambda item: (not item[1].job_boxes(item[0]), item[0]["key"]))
    kept_background = background[: int(max_background * len(labelled))]
    entries = []
    for split, chosen in ((TRAIN, labelled + kept_background), (HELDOUT, heldout)):
        for row, state in sorted(chosen, key=lambda item: item[0]["key"]):
            entries.append(_write_example(output, row, state, out_dir / split) | {"split": split})
    content = hashlib.sha256()
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        content.update(path.relative_to(out_dir).as_posix().encode() + b"\0" + path.read_bytes())
    counts = {
        "train": len(labelled) + len(kept_background),
        "train_background": len(kept_background),
        "background_left_out": len(background) - len(kept_background),
        "heldout": len(heldout),
    }
    provenance = {
        "kind": REVIEW_EXPORT_KIND,
        "dataset_id": content.hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "output": output.target.uri,
        "verdicts_sha256": hashlib.sha256(output.target.read(VERDICTS_KEY)).hexdigest() if images else None,
        "seed": seed,
        "counts": counts,
        "images": entries,
    }
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    names = dict(enumerate(CLASS_NAMES))
    (out_dir / "data.yaml").write_text(
        json.dumps({"train": "train/images", "val": "heldout/images", "names": names})
    )
    return counts, provenance["dataset_id"]


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / PROVENANCE_FILE).read_text()).get("kind") == REVIEW_EXPORT_KIND
    except (OSError, ValueError):
        return False


def _write_example(output: ReviewedOutput, row: dict, state: ImageState, part_dir: Path) -> dict:
    """Write one image (its original, upright, as JPEG) and its corrected labels; its provenance."""
    boxes = state.corrected(row["boxes"] or [])
    pixels = output.original(row).pixels
    ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise OSError(f"{row['key']}: could not encode")
    stem = hashlib.sha256(jpeg.tobytes()).hexdigest()[:20]
    for folder in ("images", "labels"):
        (part_dir / folder).mkdir(parents=True, exist_ok=True)
    (part_dir / "images" / f"{stem}.jpg").write_bytes(jpeg.tobytes())
    height, width = pixels.shape[:2]
    write_yolo_labels(Detections.from_records(boxes), width, height, part_dir / "labels" / f"{stem}.txt")
    reviewers = sorted({v["who"] for v in state.box_verdicts})
    return {"file": f"{stem}.jpg", "key": row["key"], "model_id": row["model_id"], "boxes": len(boxes)} | {
        "job_boxes": len(state.job_boxes(row)),
        "reviewers": reviewers,
    }
