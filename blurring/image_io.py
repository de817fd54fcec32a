"""Decode any photo to upright 8-bit BGR pixels, and encode blurred pixels back with its metadata.

Pillow does the work: it reads JPEG, PNG, WebP, TIFF and BMP; applies the EXIF orientation
(`ImageOps.exif_transpose`); converts CMYK, palette, greyscale and 16-bit images. The pixels of
colour and greyscale JPEGs, most photos, are decoded by simplejpeg instead (libjpeg-turbo straight to
BGR: 3x faster than Pillow's RGB and its copies, the same pixels) and turned upright by the same
EXIF rule; Pillow still reads their size, EXIF and ICC profile from the header. Decoding fails
with `BadImageError`, a one-line reason, for anything that is not a complete image within the
pixel limit. The EXIF block is kept (orientation reset to upright, as the pixels now are; the
MakerNote, where cameras hide preview images of the unblurred scene, always removed) unless
metadata is stripped; the ICC colour profile is kept too. Alpha is carried through unchanged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Pillow's own decompression-bomb limit would pre-empt ours; `decode_image` enforces `max_pixels`.
Image.MAX_IMAGE_PIXELS = None

FORMAT_BY_SUFFIX = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
"""Output formats, chosen by the output file's extension."""

EXIF_ORIENTATION = 0x0112
EXIF_MAKER_NOTE = 0x927C
# EXIF orientation -> how to turn the stored pixels upright, as `ImageOps.exif_transpose` does
UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # turned 90 degrees anticlockwise: turn clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),  # turned 90 degrees clockwise: turn anticlockwise
}

_pillow_open = Image.open
"""Pillow's own opener. Importing ultralytics (the detector does) replaces `Image.open` with a wrapper
that, for any file Pillow cannot identify, tries to install and import pi-heif (ModuleNotFoundError
offline) instead of raising `UnidentifiedImageError`."""


class BadImageError(ValueError):
    """The input is not a complete, decodable image within the limits."""


@dataclass(frozen=True)
class DecodedImage:
    """Upright pixels of a photo and what is needed to write it back."""

    pixels: np.ndarray  # (H, W, 3) uint8 BGR, EXIF orientation applied
    alpha: np.ndarray | None  # (H, W) uint8, or None
    greyscale: bool  # the source had one colour channel
    exif: bytes | None  # EXIF block with orientation set to upright
    icc_profile: bytes | None

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]


def output_format(path: str | Path) -> str:
    """`JPEG`, `PNG` or `WEBP` from a file name's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise BadImageError(
            f"cannot write {suffix or 'files without extension'}: use one of "
            f"{', '.join(sorted(FORMAT_BY_SUFFIX))}"
        )
    return FORMAT_BY_SUFFIX[suffix]


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode image bytes; raise `BadImageError` for empty, truncated, non-image or oversized input."""
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        image = _pillow_open(io.BytesIO(data))
    except (UnidentifiedImageError, ImportError):  # ImportError: ultralytics' wrapper, if imported first
        raise BadImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as error:  # e.g. a header cut short
        raise BadImageError(f"cannot decode: {error}") from None
    count = image.width * image.height
    if count > max_pixels:
        raise BadImageError(f"too many pixels: {image.width}x{image.height} = {count} > limit {max_pixels}")
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        exif = image.getexif()  # from the header, as are the size and the ICC profile
        try:
            stored = simplejpeg.decode_jpeg(data, colorspace="BGR")
        except ValueError as error:
            raise BadImageError(f"cannot decode: {error}") from None
        orient = UPRIGHT.get(exif.get(EXIF_ORIENTATION, 1))
        pixels = np.ascontiguousarray(orient(stored)) if orient else stored
        alpha, greyscale = None, image.mode == "L"
    else:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise BadImageError(f"cannot decode: {error}") from None
        exif = image.getexif()
        upright = ImageOps.exif_transpose(image)
        pixels = _to_bgr8(upright)
        alpha = np.array(upright.getchannel("A")) if "A" in upright.getbands() else None
        if upright.mode == "P" and "transparency" in upright.info:
            alpha = np.array(upright.convert("RGBA").getchannel("A"))
        greyscale = upright.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    if EXIF_ORIENTATION in exif:
        exif[EXIF_ORIENTATION] = 1
    exif.get_ifd(ExifTags.IFD.Exif).pop(EXIF_MAKER_NOTE, None)
    return DecodedImage(
        pixels=pixels,
        alpha=alpha,
        greyscale=greyscale,
        exif=exif.tobytes() if len(exif) else None,
        icc_profile=image.info.get("icc_profile"),
    )


def _to_bgr8(image: Image.Image) -> np.ndarray:
    """8-bit BGR pixels; 16-bit and float greyscale are scaled, not clipped, to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.array(image).astype(np.float64)
        peak = 65535.0 if image.mode != "F" or values.max() > 1.0 else 1.0
        grey = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.array(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def encode_image(
    decoded: DecodedImage, pixels: np.ndarray, format: str, keep_metadata: bool = True, quality: int = 95
) -> bytes:
    """Encode blurred `pixels` in `format` with `decoded`'s alpha, colour mode and (optionally) metadata."""
    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if decoded.greyscale:
        image = Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY))
    else:
        image = Image.fromarray(rgb)
    if decoded.alpha is not None and format in ("PNG", "WEBP"):
        image.putalpha(Image.fromarray(decoded.alpha))
    options: dict = {}
    if format in ("JPEG", "WEBP"):
        options["quality"] = quality
    if keep_metadata:
        if decoded.exif:
            options["exif"] = decoded.exif
        if decoded.icc_profile:
            options["icc_profile"] = decoded.icc_profile
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()
