"""Make ultralytics safe to import offline and in many processes at once.

Call `prepare_ultralytics()` before the first `import ultralytics`. It
- sets `YOLO_OFFLINE=1` so no weight, font or version check reaches the network;
- gives each process its own `YOLO_CONFIG_DIR` (ultralytics rewrites its settings file on import,
  and concurrent Ray actors sharing one file corrupt it), removed again at exit;
- places matplotlib's DejaVu Sans there as `Arial.ttf`, the font ultralytics would otherwise
  download for its plots and dataset checks;
- sets `NO_ALBUMENTATIONS_UPDATE=1` so albumentations does not look for updates on import.
A `YOLO_CONFIG_DIR` set by the user is respected.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


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
