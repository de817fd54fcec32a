"""Every option of the app in one `Config`, loaded from defaults, a YAML file and dotted overrides, and
the settings that decide an output's pixels and bytes (`output_settings`, `settings_digest`).

Each option is defined once in its own package (`DetectorConfig` in `detection`, `BlurConfig` in
`blurring`); `Config` gathers them with the image input/output options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blurring.blur import BlurConfig
from detection.detector import DetectorConfig
from video.config import VideoConfig


@dataclass(frozen=True)
class Config:
    """All options: `detect.*`, `blur.*`, `video.*` and the image input/output options below."""

    detect: DetectorConfig = field(default_factory=DetectorConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    max_pixels: int = 250_000_000  # larger images are refused (a 16k x 8k panorama is 134 M)
    keep_metadata: bool = True  # keep EXIF (orientation reset) and ICC profile in outputs
    quality: int = 95  # JPEG/WebP output quality
    video: VideoConfig = field(default_factory=VideoConfig)  # video encoding and tracks (video/)


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


# Options that decide how fast, not what: they leave every output pixel and byte as it is. `models`,
# `runtime` and `precision` are replaced by what really runs (`output_settings`).
SPEED_ONLY_OPTIONS = ("device", "batch_size", "threads", "models", "runtime", "precision")
# The second stage's options (detection.verify): with `detect.verify` off they change no pixel, so they
# are left out of the settings then, and outputs made before the stage existed keep their digest.
VERIFY_OPTIONS = (
    "verify",
    "proposal_thresholds",
    "verify_thresholds",
    "verify_object_px",
    "verify_context",
    "verify_imgsz",
)


def output_settings(
    config: Config, model: str, runtime: str, precision: str, video: bool = False
) -> dict[str, Any]:
    """Everything that decides an output's pixels and bytes: the weights that run (`model`, a
    `detection.detector.model_id`), the runtime and precision they run in, and every other option of
    `config` but the speed-only ones (`SPEED_ONLY_OPTIONS`). The `video` options count only for a
    `video` output: changing them redoes videos, not photos. A video with track verdicts links the
    proposals too, so their thresholds count for it even with verification off."""
    settings = dataclasses.asdict(config)
    if not video:
        del settings["video"]
    for name in SPEED_ONLY_OPTIONS:
        del settings["detect"][name]
    if config.detect.verify == "off":
        verdicts = video and config.video.tracking and config.video.track_verdict
        for name in VERIFY_OPTIONS:
            if not (verdicts and name == "proposal_thresholds"):
                del settings["detect"][name]
    return {"model": model, "runtime": runtime, "precision": precision, **settings}


def settings_digest(settings: dict[str, Any]) -> str:
    """A short SHA-256 of `output_settings`: equal digests, equal outputs for the same input."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        if dataclasses.is_dataclass(default) or isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{key}: expected a mapping, got {value!r}")
            if dataclasses.is_dataclass(default):
                value = _build(type(default), value, f"{prefix}{key}.")
            else:
                value = {**default, **value}  # e.g. aliases: add to the defaults, not replace them
        elif isinstance(default, tuple):
            if not isinstance(value, (str, list, tuple)):
                raise ValueError(f"{prefix}{key}: expected a list, got {value!r}")
            value = (value,) if isinstance(value, str) else tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, str) and isinstance(value, bool):
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if default is not None and type(value) is not type(default):
            raise ValueError(f"{prefix}{key}: expected {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)
