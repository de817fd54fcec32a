"""A real job output to review: the repository's sample photos blurred by the real detector and blur code,
with the manifest and run summary the batch job writes, proposals included.

The batch job records proposals (boxes found but not blurred) once issue 27 lands; until then this
writes what it will: the default model runs once at `PROPOSAL_THRESHOLD`, the boxes at or over the
deployed thresholds are blurred, the others are the image's `detector` proposals. Rows and summary go
through the job's own manifest code (`write_rows`, `compact`) and settings (`output_settings`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np

from blurring import anonymize
from blurring.config import Config, output_settings, settings_digest
from blurring.image_io import BadImageError, decode_image, encode_image, output_format
from detection.detections import CLASS_NAMES
from detection.detector import Detector, model_id, resolve_models
from jobs.batch.manifest import AUDIT_DIR, TIMING_COLUMNS, compact, read_index, run_part_key, write_rows
from storage.objects import Storage

PROPOSAL_THRESHOLD = 0.05


def low_threshold_detector() -> Detector:
    """The default model at `PROPOSAL_THRESHOLD` for every class."""
    config = Config().detect
    return Detector(replace(config, thresholds=dict.fromkeys(CLASS_NAMES, PROPOSAL_THRESHOLD)))


def write_job_output(
    source: Storage, target: Storage, detector: Detector, config: Config | None = None
) -> str:
    """Blur every image of `source` into `target` as the batch job does, with its manifest (one run,
    compacted) and summary, with `config` (default: the defaults); return the run id."""
    config = config or Config()
    plan = resolve_models(config.detect, "cpu")
    settings = output_settings(config, model_id(plan.weights), plan.runtime, plan.precision)
    digest = settings_digest(settings)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    thresholds = config.detect.thresholds
    rows = []
    for item in source.list((".jpg", ".jpeg", ".png", ".webp")):
        common = {"key": item.key, "model_id": settings["model"], "settings_digest": digest}
        common |= {
            "etag": item.etag,
            "size": item.size,
            "run_id": run_id,
            **dict.fromkeys(TIMING_COLUMNS, 0.0),
        }
        try:
            decoded = decode_image(source.read(item.key), config.max_pixels)
        except BadImageError as error:
            failed = {"status": "failed", "error": str(error), "finished_at": datetime.now(timezone.utc)}
            rows.append(common | failed)
            continue
        found = detector.detect(decoded.pixels)
        floor = np.array([thresholds[CLASS_NAMES[c]] for c in found.class_id], np.float32)
        blurred, proposed = found[found.scores >= floor], found[found.scores < floor]
        pixels = anonymize(decoded.pixels, blurred, config.blur)
        target.write(
            item.key,
            encode_image(decoded, pixels, output_format(item.key), config.keep_metadata, config.quality),
        )
        boxes = blurred.to_records()
        rows.append(
            common
            | {
                "output_key": item.key,
                "status": "blurred",
                "error": "",
                "width": decoded.width,
                "height": decoded.height,
                "faces": sum(b["class"] == "face" for b in boxes),
                "plates": sum(b["class"] == "plate" for b in boxes),
                "boxes": boxes,
                "finished_at": datetime.now(timezone.utc),
                "proposals": [p | {"stage": "detector"} for p in proposed.to_records()],
            }
        )
    write_rows(target, run_part_key(run_id, "part", 0), rows)
    summary = {"run_id": run_id, "input": source.uri, "output": target.uri, "blurred": len(rows), "failed": 0}
    summary |= {"settings_digest": digest, "settings": settings}
    target.write(f"{AUDIT_DIR}/runs/{run_id}/summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    compact(target, read_index(target), [run_id])
    return run_id
