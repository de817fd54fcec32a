"""Local files written whole or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: a temporary file beside it, flushed to disk, then
    renamed over `path`. On any failure the temporary file is removed and `path` is left as it was."""
    _replace_atomically(path, lambda handle: handle.write(data))


def copy_file_atomically(source: Path, path: Path) -> None:
    """`write_file_atomically` with the bytes of the file `source`, streamed."""
    with open(source, "rb") as original:
        _replace_atomically(path, lambda handle: shutil.copyfileobj(original, handle, 1 << 20))


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
