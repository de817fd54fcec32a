"""Make ultralytics safe to import offline and in many processes at once, and pick its runtime.

Call `prepare_ultralytics()` before the first `import ultralytics`. It
- sets `YOLO_OFFLINE=1` so no weight, font or version check reaches the network;
- gives each process its own `YOLO_CONFIG_DIR` (ultralytics rewrites its settings file on import,
  and concurrent Ray actors sharing one file corrupt it), removed again at exit;
- places matplotlib's DejaVu Sans there as `Arial.ttf`, the font ultralytics would otherwise
  download for its plots and dataset checks;
- sets `NO_ALBUMENTATIONS_UPDATE=1` so albumentations does not look for updates on import.
A `YOLO_CONFIG_DIR` set by the user is respected.

`.pt` weights run in PyTorch, or in a faster CPU runtime (OpenVINO, ONNX Runtime) from an export that
ultralytics builds locally on first use (`exported_weights`): no download. Exports are cached under
`STREETBLUR_CACHE` (default `~/.cache/streetblur`), keyed by the weights' hash, the input size and the
ultralytics version, and published atomically, so concurrent actors never load a half-written one.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

RUNTIMES = ("auto", "torch", "onnx", "openvino")
EXPORT_SUFFIX = {"onnx": ".onnx", "openvino": "_openvino_model"}  # ultralytics tells formats by these


def prepare_ultralytics() -> None:
    """Set the environment ultralytics reads on import (idempotent)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if "YOLO_CONFIG_DIR" not in os.environ:
        config_dir = tempfile.mkdtemp(prefix="streetblur-ultralytics-")
        atexit.register(shutil.rmtree, config_dir, ignore_errors=True)
        os.environ["YOLO_CONFIG_DIR"] = config_dir
    _install_font(Path(os.environ["YOLO_CONFIG_DIR"]))


def _install_font(config_dir: Path) -> None:
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    folder = config_dir / "Ultralytics"  # ultralytics keeps its files in this sub-folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (folder / name).exists():
            shutil.copyfile(source, folder / name)


@contextlib.contextmanager
def quiet_ultralytics() -> Iterator[None]:
    """Within: ultralytics logs warnings and errors only (not which backend it loaded)."""
    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def choose_runtime(requested: str, device: str | None) -> str:
    """The runtime for `.pt` weights: `requested`, or for `auto` OpenVINO when running on the CPU and
    installed, else PyTorch (GPUs run PyTorch). `DetectorConfig` checks that `requested` is one of
    `RUNTIMES`."""
    if requested != "auto":
        return requested
    if device not in (None, "cpu"):
        return "torch"
    import importlib.util

    import torch

    on_cpu = device == "cpu" or not torch.cuda.is_available()
    return "openvino" if on_cpu and importlib.util.find_spec("openvino") else "torch"


def cache_dir() -> Path:
    """Where exported models are kept: `STREETBLUR_CACHE`, else `~/.cache/streetblur`."""
    return Path(os.environ.get("STREETBLUR_CACHE") or Path.home() / ".cache" / "streetblur")


def exported_weights(weights: Path, runtime: str, imgsz: int) -> Path:
    """`weights` (a `.pt` file) as ultralytics exports them for `runtime` (`onnx`, `openvino`) with
    dynamic input shapes, from the cache, exported on first use; `weights` itself for `torch`."""
    if runtime == "torch":
        return weights
    prepare_ultralytics()
    import ultralytics
    from ultralytics import YOLO

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    name = f"{digest}-{imgsz}-ultralytics{ultralytics.__version__}"  # copies of one file share it
    final = cache_dir() / "models" / f"{name}{EXPORT_SUFFIX[runtime]}"
    if final.exists():
        return final

    work = final.parent / f".export-{uuid.uuid4().hex[:12]}"
    work.mkdir(parents=True)
    try:
        source = work / "model.pt"  # ultralytics writes the export beside its source
        shutil.copyfile(weights, source)
        options = {"simplify": False} if runtime == "onnx" else {}  # onnxslim is not a dependency
        with quiet_ultralytics():
            built = YOLO(str(source), task="detect").export(
                format=runtime, imgsz=imgsz, dynamic=True, device="cpu", **options
            )
        try:
            os.rename(built, final)  # atomic; fails if another process published it first
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
