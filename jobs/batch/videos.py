"""The batch job's videos: a detector actor given a video key blurs the whole file (`video.pipeline`) on
its own disk, writes the output under the same key and its boxes to the audit trail, and returns the
manifest's view of it. One actor per video: its frames stream through the detector the actor already
holds."""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

from blurring.config import Config
from detection.detector import Detector
from jobs.batch.manifest import AUDIT_DIR
from storage.objects import Storage
from video.pipeline import VideoOutcome, blur_video


def detections_key(key: str) -> str:
    """Where the boxes of the video `key` are kept: under the audit folder, beside the manifest."""
    return f"{AUDIT_DIR}/videos/{key}.detections.parquet"


def blur_stored_video(
    key: str, source: Storage, target: Storage, detector: Detector, config: Config
) -> VideoOutcome:
    """Blur the video `key` of `source` into `target` under the same key, its boxes under
    `detections_key(key)`. A local input is read in place; an S3 one is downloaded to a temporary
    folder first. Files are streamed, never held in memory whole. Nothing is written to `target`
    unless the video was blurred whole."""
    with tempfile.TemporaryDirectory(prefix="streetblur-video-") as scratch:
        folder = Path(scratch)
        suffix = PurePosixPath(key).suffix.lower()
        if source.is_s3:
            local = folder / f"input{suffix}"
            source.download(key, local)
        else:
            local = source.root / key
        output, audit = folder / f"output{suffix}", folder / "detections.parquet"
        outcome = blur_video(local, output, detector, config, folder / "parts", audit)
        if outcome.status == "blurred":
            try:
                target.upload(audit, detections_key(key))
                target.upload(output, key)
            except Exception as error:  # noqa: BLE001 -- recorded in the manifest, job goes on
                outcome.status, outcome.output = "failed", None
                outcome.error = f"write failed: {type(error).__name__}: {error}"
        return outcome
