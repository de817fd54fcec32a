"""One image, bytes in, blurred bytes out: decode, detect, blur, encode. Fails closed.

`Config` gathers every option of every stage in one place, each defined once in its own package
(`DetectorConfig`, `BlurConfig`) and overridable from a YAML file or `key=value` pairs.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blurring import BlurConfig, anonymize
from detection.detections import Detections
from detection.detector import Detector, DetectorConfig
from jobs.image_io import BadImageError, decode_image, encode_image


@dataclass(frozen=True)
class Config:
    """All options: `detect.*`, `blur.*` and the image input/output options below."""

    detect: DetectorConfig = field(default_factory=DetectorConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    max_pixels: int = 250_000_000  # larger images are refused (a 16k x 8k panorama is 134 M)
    keep_metadata: bool = True  # keep EXIF (orientation reset) and ICC profile in outputs
    quality: int = 95  # JPEG/WebP output quality


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then a YAML file of the same nested shape, then dotted `overrides` (`detect.imgsz`)."""
    values: dict[str, Any] = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _build(Config, values, "")


def _build(cls: type, values: dict[str, Any], prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown option {prefix}{key}; known: {', '.join(prefix + k for k in fields)}")
        default = (
            fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else None
        )
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{prefix}{key}.")
        elif isinstance(default, dict):
            value = {**default, **value}
        elif key == "models" and isinstance(value, str):
            value = (value,)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


@dataclass
class Outcome:
    """What happened to one input. `output` is None unless `status == "blurred"`."""

    status: str  # "blurred" or "failed"
    error: str = ""
    output: bytes | None = None
    width: int = 0
    height: int = 0
    detections: Detections = field(default_factory=Detections)
    timings_ms: dict[str, float] = field(default_factory=dict)


def blur_image_bytes(data: bytes, output_format: str, detector: Detector, config: Config) -> Outcome:
    """Blur every face and plate in an encoded image; never returns pixels that were not checked.

    Any failure while decoding, detecting or blurring gives `status="failed"` with a reason and no
    output, so an image whose detection failed cannot be published unblurred.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round((now - clock) * 1000, 1)
        clock = now

    try:
        decoded = decode_image(data, config.max_pixels)
        lap("decode")
    except BadImageError as error:
        return Outcome("failed", error=str(error), timings_ms=timings)
    try:
        detections = detector.detect(decoded.pixels)
        lap("detect")
        blurred = anonymize(decoded.pixels, detections, config.blur)
        lap("blur")
        output = encode_image(decoded, blurred, output_format, config.keep_metadata, config.quality)
        lap("encode")
    except Exception as error:  # noqa: BLE001 -- any failure must fail closed, with its reason
        return Outcome(
            "failed",
            f"{type(error).__name__}: {error}",
            None,
            decoded.width,
            decoded.height,
            timings_ms=timings,
        )
    return Outcome("blurred", "", output, decoded.width, decoded.height, detections, timings)
