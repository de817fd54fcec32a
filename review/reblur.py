"""Re-render one image from its original after a verdict: boxes = blurred - false + added + accepted.

The published output is never blurred a second time: the original is read (and checked to be the one
the job read), blurred with the project's blur code and the job's own blur and output options, encoded
and written over the output in one atomic write (a new object on S3). The verdict is logged after that
write, so the log never holds a verdict the output does not show. A manifest row for it is written
as the only row of a run of its own (`RUN-review-...`), which `read_manifest_rows` reads at once and
the next job compacts into the state; that run's `summary.json` says it came from review, by whom,
and the output's old and new SHA-256, which the verdict log records too (a `reblur` entry).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from blurring import anonymize
from blurring.image_io import encode_image, output_format
from detection.detections import Detections
from jobs.batch.lease import Lease
from jobs.batch.manifest import TIMING_COLUMNS, new_run_id, run_part_key, write_rows, write_summary
from jobs.batch.verdicts import append_verdicts, box_id, now_iso
from review.output import ReviewedOutput


def reblur(output: ReviewedOutput, key: str, verdict: dict, reviewer: str) -> list[dict]:
    """Apply the box `verdict` on `key` (made on its manifest row as the page showed it): re-render the
    output from its original with every box verdict of the log and this one, write it, its manifest row,
    and then log the verdict and a `reblur` entry; return both entries.

    All of it holds the output's lease, so no job and no other reviewer writes the image meanwhile; the
    log and the manifest are read again under it, so another reviewer's verdicts are kept. Raises,
    logging nothing: `jobs.batch.lease.LeaseHeld` while a job or another re-render holds the lease
    (`LeaseLost` if a job took it over meanwhile);
    `ImageChanged` when a job wrote `key` again since the page showed it; `ValueError` when
    the original cannot be read or is not the one the job read. A verdict is logged only once the output
    shows it."""
    shown = output.row(key)
    run_id = new_run_id("review-")  # later than the row of the job it corrects
    with Lease(output.target, run_id, wait_s=0) as lease:
        row, state = output.current(key, shown)
        state.box_verdicts.append(verdict)
        boxes = state.corrected(row["boxes"] or [])
        config = output.config(row)
        decoded = output.original(row)
        pixels = anonymize(decoded.pixels, Detections.from_records(boxes), config.blur)
        data = encode_image(
            decoded, pixels, output_format(row["output_key"]), config.keep_metadata, config.quality
        )
        old = output.target.read(row["output_key"])
        lease.verify()  # still held after the decode, blur and encode: `LeaseLost` if a job took it
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
        entry = {
            "at": now_iso(),
            "who": reviewer,
            "kind": "reblur",
            "key": key,
            "etag": row["etag"],
            "output_key": row["output_key"],
            "model_id": row["model_id"],
            "run_id": run_id,
            "replaces_run": row["run_id"],
            "old_sha256": hashlib.sha256(old).hexdigest(),
            "new_sha256": hashlib.sha256(data).hexdigest(),
            "old_boxes": [{name: b[name] for name in ("class", "score", "box")} for b in row["boxes"] or []],
            "new_boxes": boxes,
            "job_run": state.job_run(row),
            "job_boxes": state.job_boxes(row),
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
        try:
            append_verdicts(output.target, [verdict, entry])
        except Exception:
            output.target.write(row["output_key"], old)  # unlogged, so unpublished
            raise
        lease.verify()
        write_summary(output.target, run_id, summary)  # before the row: a row's run always has a summary
        write_rows(output.target, run_part_key(run_id, "part", 0), [new_row])
        output.refresh(new_row)
    return [verdict, entry]
