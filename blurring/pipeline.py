"""One image, bytes in, blurred bytes out: decode, detect, blur, encode. Fails closed.

Its options are a `blurring.config.Config`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from blurring import anonymize
from blurring.config import Config
from blurring.image_io import BadImageError, DecodedImage, decode_image, encode_image
from detection.detections import Detections
from detection.detector import Detector, Screened


@dataclass
class Outcome:
    """What happened to one input. `output` is None unless `status == "blurred"`."""

    status: str  # "blurred" or "failed"
    error: str = ""
    output: bytes | None = None
    width: int = 0
    height: int = 0
    detections: Detections = field(default_factory=Detections)  # what was blurred
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The proposals that were not blurred, and per box the stage that left it so: "detector" (under its
    # class's threshold, with verification off) or "verifier" (rejected by it).
    proposals: Detections = field(default_factory=Detections)
    proposal_stages: tuple[str, ...] = ()

    def proposal_records(self) -> list[dict]:
        """The unblurred proposals as `Detections.to_records`, each with its `stage`."""
        records = self.proposals.to_records()
        return [
            record | {"stage": stage} for record, stage in zip(records, self.proposal_stages, strict=True)
        ]


def blur_images(
    inputs: list[tuple[bytes, str]],
    detector: Detector,
    config: Config,
    extra_boxes: list[Detections] | None = None,
) -> list[Outcome]:
    """Blur every face and plate in encoded images `(bytes, output format)`, detected in one batch, and
    in each image the boxes `extra_boxes` gives it (those reviewers added), which are blurred and
    recorded with the detections.

    Fails closed: any failure while decoding, detecting, blurring or encoding an image gives that
    image `status="failed"` with a reason and no output, so an image whose detection failed can
    never be published unblurred. A failure of the batched detection is retried image by image,
    so one bad image does not fail the others.
    """
    outcomes = [Outcome("failed") for _ in inputs]
    decoded: dict[int, DecodedImage] = {}
    for i, (data, _) in enumerate(inputs):
        start = time.perf_counter()
        try:
            decoded[i] = decode_image(data, config.max_pixels)
        except Exception as error:  # noqa: BLE001 -- BadImageError, or any decoder surprise
            outcomes[i].error = str(error) if isinstance(error, BadImageError) else _reason("decode", error)
        outcomes[i].timings_ms["decode"] = _ms_since(start)
    start = time.perf_counter()
    found = dict(zip(decoded, _detect(detector, [image.pixels for image in decoded.values()]), strict=True))
    detect_ms = round(_ms_since(start) / max(len(decoded), 1), 1)
    for i, image in decoded.items():
        outcome, result = outcomes[i], found[i]
        outcome.width, outcome.height = image.width, image.height
        outcome.timings_ms["detect"] = detect_ms
        if isinstance(result, Exception):
            outcome.error = _reason("detection", result)
            continue
        try:
            start = time.perf_counter()
            # The boxes as the manifest records them (to 0.01 px), so that a re-render from the record
            # (the review page) blurs exactly what the job blurred.
            extra = extra_boxes[i].clipped(image.width, image.height) if extra_boxes else Detections()
            boxes = Detections.from_records(_once(Detections.concat([result.blurred, extra]).to_records()))
            blurred = anonymize(image.pixels, boxes, config.blur)
            outcome.timings_ms["blur"] = _ms_since(start)
            start = time.perf_counter()
            output = encode_image(image, blurred, inputs[i][1], config.keep_metadata, config.quality)
            outcome.timings_ms["encode"] = _ms_since(start)
        except Exception as error:  # noqa: BLE001 -- any failure must fail closed, with its reason
            outcome.error = _reason("blurring", error)
            continue
        outcome.status, outcome.output, outcome.detections = "blurred", output, boxes
        outcome.proposals, outcome.proposal_stages = result.unblurred, result.stages
        if len(extra):  # proposals reviewers had accepted are blurred now: no longer proposals
            blurred_boxes = {_identity(r) for r in boxes.to_records()}
            records = result.unblurred.to_records()
            unblurred = [k for k, r in enumerate(records) if _identity(r) not in blurred_boxes]
            outcome.proposals = result.unblurred[unblurred]
            outcome.proposal_stages = tuple(result.stages[k] for k in unblurred)
    return outcomes


def blur_image_bytes(data: bytes, output_format: str, detector: Detector, config: Config) -> Outcome:
    """`blur_images` for one image."""
    return blur_images([(data, output_format)], detector, config)[0]


def _identity(record: dict) -> tuple:
    """A box record's class and corners (as the manifest records them, to 0.01 px)."""
    return record["class"], *record["box"]


def _once(records: list[dict]) -> list[dict]:
    """`records` without repeats of a box (a detection that is also a box reviewers added)."""
    kept: dict[tuple, dict] = {}
    for record in records:
        kept.setdefault(_identity(record), record)
    return list(kept.values())


def _detect(detector: Detector, images: list) -> list[Screened | Exception]:
    """`Detector.screen_batch` per image; an image whose detection raised gets the exception instead."""
    if not images:
        return []
    try:
        return list(detector.screen_batch(images))
    except Exception as error:  # noqa: BLE001 -- reported per image, never swallowed
        if len(images) == 1:
            return [error]
        return [_detect(detector, [image])[0] for image in images]


def _reason(stage: str, error: Exception) -> str:
    return f"{stage} failed: {type(error).__name__}: {error}"


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
