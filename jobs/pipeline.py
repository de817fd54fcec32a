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


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["detect.imgsz=960", "blur.mode=pixelate"]` -> dotted overrides, values parsed as YAML."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _build(cls: type, values: dict[str, Any], prefix: str):
    """`cls(**values)`, nested dataclasses built too, each value checked against its default's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown option {prefix}{key}; known: {', '.join(prefix + k for k in fields)}")
        spec = fields[key]
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{key}: expected a mapping of options, got {value!r}")
            value = _build(type(default), value, f"{prefix}{key}.")
        elif isinstance(default, dict):
            value = {**default, **value}
        elif isinstance(default, tuple):
            value = (value,) if isinstance(value, str) else tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and type(value) is not type(default):
            raise ValueError(f"{prefix}{key}: expected {type(default).__name__}, got {value!r}")
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


def blur_images(inputs: list[tuple[bytes, str]], detector: Detector, config: Config) -> list[Outcome]:
    """Blur every face and plate in encoded images `(bytes, output format)`, detected in one batch.

    Fails closed: any failure while decoding, detecting, blurring or encoding an image gives that
    image `status="failed"` with a reason and no output, so an image whose detection failed can
    never be published unblurred. A failure of the batched detection is retried image by image,
    so one bad image does not fail the others.
    """
    outcomes = [Outcome("failed") for _ in inputs]
    decoded = {}
    for outcome, (data, _) in zip(outcomes, inputs, strict=True):
        start = time.perf_counter()
        try:
            image = decode_image(data, config.max_pixels)
        except BadImageError as error:
            outcome.error = str(error)
            continue
        finally:
            outcome.timings_ms["decode"] = _ms_since(start)
        decoded[id(outcome)] = image
        outcome.width, outcome.height = image.width, image.height
    todo = [o for o in outcomes if id(o) in decoded]
    start = time.perf_counter()
    found = _detect(detector, [decoded[id(o)].pixels for o in todo])
    for outcome, (_, output_format) in zip(outcomes, inputs, strict=True):
        if id(outcome) not in decoded:
            continue
        result = found[todo.index(outcome)]
        outcome.timings_ms["detect"] = round(_ms_since(start) / len(todo), 1)
        if isinstance(result, Exception):
            outcome.error = f"detection failed: {type(result).__name__}: {result}"
            continue
        try:
            lap = time.perf_counter()
            blurred = anonymize(decoded[id(outcome)].pixels, result, config.blur)
            outcome.timings_ms["blur"] = _ms_since(lap)
            lap = time.perf_counter()
            output = encode_image(
                decoded[id(outcome)], blurred, output_format, config.keep_metadata, config.quality
            )
            outcome.timings_ms["encode"] = _ms_since(lap)
        except Exception as error:  # noqa: BLE001 -- any failure must fail closed, with its reason
            outcome.error = f"blurring failed: {type(error).__name__}: {error}"
            continue
        outcome.status, outcome.output, outcome.detections = "blurred", output, result
    return outcomes


def blur_image_bytes(data: bytes, output_format: str, detector: Detector, config: Config) -> Outcome:
    """`blur_images` for one image."""
    return blur_images([(data, output_format)], detector, config)[0]


def _detect(detector: Detector, images: list) -> list[Detections | Exception]:
    """Detections per image; an image whose detection raised gets the exception instead."""
    if not images:
        return []
    try:
        return list(detector.detect_batch(images))
    except Exception as error:  # noqa: BLE001 -- reported per image, never swallowed
        if len(images) == 1:
            return [error]
        return [_detect(detector, [image])[0] for image in images]


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
