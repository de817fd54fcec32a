"""A real job output to review: the repository's sample photos blurred by the real pipeline
(`blurring.pipeline.blur_image_bytes`: the deployed two stages, so the rows carry the proposals that were
not blurred), with the manifest and run summary the batch job writes, through the job's own manifest
code (`write_rows`, `compact`) and settings (`output_settings`), without starting Ray.
"""

from __future__ import annotations

from datetime import datetime, timezone

from blurring.config import Config, output_settings, settings_digest
from blurring.image_io import output_format
from blurring.pipeline import blur_image_bytes
from detection.detector import Detector, model_id, resolve_models
from jobs.batch.manifest import (
    TIMING_COLUMNS,
    compact,
    new_run_id,
    read_index,
    run_part_key,
    write_rows,
    write_summary,
)
from storage.objects import Storage


def write_job_output(
    source: Storage, target: Storage, detector: Detector, config: Config | None = None
) -> str:
    """Blur every image of `source` into `target` as the batch job does, with its manifest (one run,
    compacted) and summary, with `config` (default: the defaults); return the run id."""
    config = config or Config()
    plan = resolve_models(config.detect, "cpu")
    settings = output_settings(config, model_id(plan.weights), plan.runtime, plan.precision)
    digest = settings_digest(settings)
    run_id = new_run_id()
    rows = []
    for item in source.list((".jpg", ".jpeg", ".png", ".webp")):
        common = {"key": item.key, "model_id": settings["model"], "settings_digest": digest}
        common |= {
            "etag": item.etag,
            "size": item.size,
            "run_id": run_id,
            **dict.fromkeys(TIMING_COLUMNS, 0.0),
        }
        outcome = blur_image_bytes(source.read(item.key), output_format(item.key), detector, config)
        if outcome.status != "blurred":
            failed = {"status": "failed", "error": outcome.error, "finished_at": datetime.now(timezone.utc)}
            rows.append(common | failed)
            continue
        target.write(item.key, outcome.output)
        boxes = outcome.detections.to_records()
        rows.append(
            common
            | {
                "output_key": item.key,
                "status": "blurred",
                "error": "",
                "width": outcome.width,
                "height": outcome.height,
                "faces": sum(b["class"] == "face" for b in boxes),
                "plates": sum(b["class"] == "plate" for b in boxes),
                "boxes": boxes,
                "finished_at": datetime.now(timezone.utc),
                "proposals": outcome.proposal_records(),
            }
        )
    write_rows(target, run_part_key(run_id, "part", 0), rows)
    summary = {"run_id": run_id, "input": source.uri, "output": target.uri, "blurred": len(rows), "failed": 0}
    summary |= {"settings_digest": digest, "settings": settings}
    write_summary(target, run_id, summary)
    compact(target, read_index(target), [run_id])
    return run_id
