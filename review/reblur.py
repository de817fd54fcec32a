"""Re-render one image from its original after a verdict: boxes = blurred - false + added + accepted.

The published output is never blurred a second time: the original is read (and checked to be the one
the job read), blurred with the project's blur code and the job's own blur and output options, encoded
and written over the output in one atomic write (a new object on S3). A manifest row for it is written
as the only row of a run of its own (`RUN-review-...`), which `read_manifest_rows` reads at once and
the next job compacts into the state; that run's `summary.json` says it came from review, by whom,
and the output's old and new SHA-256, which the verdict log records too (a `reblur` entry).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

from blurring import anonymize
from blurring.image_io import decode_image, encode_image, output_format
from detection.detections import Detections
from jobs.batch.lease import Lease
from jobs.batch.manifest import TIMING_COLUMNS, run_part_key, write_rows, write_summary
from review.output import ReviewedOutput
from review.verdicts import ImageState, append_verdicts, box_id, now_iso


def review_run_id() -> str:
    """A run id that sorts after the job runs before it (`jobs.batch.manifest._order`), marked review."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-review-{now:%f}{uuid.uuid4().hex[:4]}"


def reblur(output: ReviewedOutput, key: str, state: ImageState, reviewer: str) -> dict:
    """Re-render `key`'s output from its original with the boxes `state` gives; write it, its manifest
    row and a `reblur` log entry; return that entry. Raises (writing nothing) when the original cannot
    be read or decoded, or is not the one the job read; `jobs.batch.lease.LeaseHeld` while a job writes
    the output."""
    row = output.row(key)
    boxes = state.corrected(row["boxes"] or [])
    config = output.config(row)
    decoded = decode_image(output.original(row), config.max_pixels)
    pixels = anonymize(decoded.pixels, Detections.from_records(boxes), config.blur)
    data = encode_image(
        decoded, pixels, output_format(row["output_key"]), config.keep_metadata, config.quality
    )
    run_id = review_run_id()
    with Lease(output.target, run_id, wait_s=0):
        old = output.target.read(row["output_key"])
        output.target.write(row["output_key"], data)
        blurred = {box_id(b) for b in boxes}
        new_row = {
            **row,
            "boxes": boxes,
            "faces": sum(b["class"] == "face" for b in boxes),
            "plates": sum(b["class"] == "plate" for b in boxes),
            "proposals": [p for p in row.get("proposals") or [] if box_id(p) not in blurred],
            **dict.fromkeys(TIMING_COLUMNS, 0.0),
            "run_id": run_id,
            "finished_at": datetime.now(timezone.utc),
        }
        write_rows(output.target, run_part_key(run_id, "part", 0), [new_row])
        entry = {
            "at": now_iso(),
            "who": reviewer,
            "kind": "reblur",
            "key": key,
            "output_key": row["output_key"],
            "model_id": row["model_id"],
            "run_id": run_id,
            "old_sha256": hashlib.sha256(old).hexdigest(),
            "new_sha256": hashlib.sha256(data).hexdigest(),
            "old_boxes": [{name: b[name] for name in ("class", "score", "box")} for b in row["boxes"] or []],
            "new_boxes": boxes,
        }
        summary = {
            "run_id": run_id,
            "review": True,
            "reviewer": reviewer,
            "input": output.source(row).uri,
            "output": output.target.uri,
            "key": key,
            "replaces_run": row["run_id"],
            "old_sha256": entry["old_sha256"],
            "new_sha256": entry["new_sha256"],
            "blurred": 1,
            "failed": 0,
            "settings_digest": row["settings_digest"],
            "settings": output.settings(row),
        }
        write_summary(output.target, run_id, summary)
        append_verdicts(output.target, [entry])
    output.refresh(new_row)
    return entry
