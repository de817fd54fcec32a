"""Milliseconds to decode and encode a JPEG: the pipeline's own functions, Pillow, simplejpeg, OpenCV.

On real 1280x720 dashcam frames (`plates-dashcam` of `--data`: $STREETBLUR_DATASETS, else
../shared/datasets beside the repository) and on 8-megapixel JPEGs (3264x2448, made once from those frames,
upscaled, at quality 95). Medians over `--images` files, each coded `--repeat` times.

- decode: `blurring.image_io.decode_image` (simplejpeg pixels, Pillow's header for size, EXIF and
  ICC, the orientation applied), Pillow alone (`Image.open` + `load` + RGB->BGR, what decode_image
  did before), simplejpeg alone (`decode_jpeg`, BGR out) and OpenCV (`cv2.imdecode`);
- encode at quality 95 from BGR pixels: `blurring.image_io.encode_image` (Pillow), simplejpeg
  (`encode_jpeg`) and OpenCV (`cv2.imencode`).

Pillow's wheels already bundle libjpeg-turbo, so this measures the bindings' overheads (copies and
colour conversions), not two JPEG libraries. PyTurboJPEG needs the system's libturbojpeg, which this
machine lacks; it is not measured. Not a test: numbers depend on the machine. Usage:

    python bench/jpeg_codec.py [--data DIR] [--images 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from blurring.image_io import decode_image, encode_image

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"  # beside the repository
DATASETS = Path(os.environ.get("STREETBLUR_DATASETS") or SHARED_DATASETS)
MAX_PIXELS = 250_000_000


def pillow_decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def median_ms(run: Callable[[bytes | np.ndarray], object], inputs: list, repeat: int) -> float:
    run(inputs[0])  # warm-up
    times = []
    for item in inputs:
        for _ in range(repeat):
            start = time.perf_counter()
            run(item)
            times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATASETS, help="folder of the labelled sets")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (args.data / "plates-dashcam").is_dir():
        parser.error(f"--data {args.data}: no plates-dashcam/ there")

    frames = sorted((args.data / "plates-dashcam" / "images").glob("*.jpg"))
    frames = frames[:: max(1, len(frames) // args.images)][: args.images]
    small = [path.read_bytes() for path in frames]
    large = [
        cv2.imencode(".jpg", cv2.resize(cv2.imread(str(p)), (3264, 2448)), [cv2.IMWRITE_JPEG_QUALITY, 95])[
            1
        ].tobytes()
        for p in frames
    ]
    results = {}
    for size, files in (("1280x720", small), ("3264x2448", large)):
        decoded = [decode_image(data, MAX_PIXELS) for data in files]
        pixels = [d.pixels for d in decoded]
        assert np.array_equal(pillow_decode(files[0]), simplejpeg.decode_jpeg(files[0], colorspace="BGR"))
        results[size] = {
            "decode_ms": {
                "streetblur": median_ms(lambda d: decode_image(d, MAX_PIXELS), files, args.repeat),
                "Pillow": median_ms(pillow_decode, files, args.repeat),
                "simplejpeg": median_ms(
                    lambda d: simplejpeg.decode_jpeg(d, colorspace="BGR"), files, args.repeat
                ),
                "OpenCV": median_ms(
                    lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR), files, args.repeat
                ),
            },
            "encode_ms": {
                "streetblur": median_ms(
                    lambda d: encode_image(d, d.pixels, "JPEG"),
                    decoded,
                    args.repeat,
                ),
                "simplejpeg": median_ms(
                    lambda p: simplejpeg.encode_jpeg(p, quality=95, colorspace="BGR"), pixels, args.repeat
                ),
                "OpenCV": median_ms(
                    lambda p: cv2.imencode(".jpg", p, [cv2.IMWRITE_JPEG_QUALITY, 95]), pixels, args.repeat
                ),
            },
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
