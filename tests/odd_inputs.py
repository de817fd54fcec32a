"""The matrix of awkward inputs, each made from a real photo, and what the job must do with each."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import SAMPLES

ORIENTATION = 0x0112


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def odd_inputs() -> dict[str, tuple[bytes, str]]:
    """`{key: (bytes, expected status)}`: bad files fail, odd but valid ones are blurred."""
    crowd = Image.open(SAMPLES / "crowd_0.jpg").convert("RGB")
    dashcam = Image.open(SAMPLES / "dashcam_0.jpg").convert("RGB")
    jpeg = (SAMPLES / "crowd_0.jpg").read_bytes()
    grey16 = np.asarray(crowd.convert("L"), np.uint16) * 257
    rgba = crowd.copy()
    rgba.putalpha(Image.fromarray(np.full(crowd.size[::-1], 200, np.uint8)))
    rotated = crowd.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says rotate back
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return {
        "bad/zero-bytes.jpg": (b"", "failed"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "failed"),
        "bad/text-named.jpg": (b"this is a text file, not a photo\n", "failed"),
        "odd/alpha.png": (_encode(rgba, "PNG"), "blurred"),
        "odd/grey-16bit.png": (_encode(Image.fromarray(grey16), "PNG"), "blurred"),
        "odd/greyscale.jpg": (_encode(crowd.convert("L"), "JPEG"), "blurred"),
        "odd/cmyk.jpg": (_encode(crowd.convert("CMYK"), "JPEG"), "blurred"),
        "odd/exif-rotated.jpg": (_encode(rotated, "JPEG", exif=exif), "blurred"),
        "odd/with space.jpg": (_encode(dashcam, "JPEG"), "blurred"),
        "odd/hash#t=12.jpg": (_encode(crowd, "JPEG"), "blurred"),
        "odd/straße-café-ü.webp": (_encode(crowd, "WEBP"), "blurred"),
    }


def write_inputs(root: Path, inputs: dict[str, bytes]) -> None:
    """Write `{key: bytes}` under `root`."""
    for key, data in inputs.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
