"""Make ultralytics safe to import offline and in many processes at once, and pick its runtime.

Call `prepare_ultralytics()` before the first `import ultralytics`. It
- sets `YOLO_OFFLINE=1` so no weight, font or version check reaches the network;
- gives each process its own `YOLO_CONFIG_DIR` (ultralytics rewrites its settings file on import,
  and concurrent Ray actors sharing one file corrupt it), removed again at exit;
- places matplotlib's DejaVu Sans there as `Arial.ttf`, the font ultralytics would otherwise
  download for its plots and dataset checks;
- sets `NO_ALBUMENTATIONS_UPDATE=1` so albumentations does not look for updates on import;
- sets `OMP_NUM_THREADS`, if unset, to the cores this process may use: ultralytics would otherwise set
  it to 1 on import, and PyTorch (and `inference_threads`) would then compute on one core.
A `YOLO_CONFIG_DIR` set by the user is respected.

`.pt` weights run in PyTorch, or in a faster CPU runtime (OpenVINO, ONNX Runtime) from an export that
ultralytics builds locally on first use (`exported_weights`): no download. Exports are cached under
`STREETBLUR_CACHE` (default `~/.cache/streetblur`), keyed by the weights' hash, the input size and the
ultralytics version, and published atomically, so concurrent actors never load a half-written one.

On OpenVINO, a `.pt` runs in INT8 when an INT8 model quantised from exactly these weights lies beside
it (`int8_weights`): quantisation needs calibration images, so `streetblur quantize` builds it
offline (`jobs/training/quantize.py`), and the shipped weights come with theirs.

Every runtime computes on `inference_threads()` CPU threads: `OMP_NUM_THREADS` (Ray sets it for each
actor from its CPUs), so that several actors on one machine do not oversubscribe its cores.

OpenVINO models are compiled for the CPU on load; the compiled model is kept in OpenVINO's own cache
under `STREETBLUR_CACHE` (`openvino_cache`), so that later processes load it instead of compiling.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

RUNTIMES = ("auto", "torch", "onnx", "openvino")
EXPORT_SUFFIX = {"onnx": ".onnx", "openvino": "_openvino_model"}  # ultralytics tells formats by these
PRECISIONS = ("auto", "fp32", "fp16", "int8")
INT8_SOURCE_FILE = "quantized-from.json"  # in an INT8 model folder: the digest of the weights it came from


def prepare_ultralytics() -> None:
    """Set the environment ultralytics reads on import (idempotent)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install a missing package (e.g. lap)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # Linux
    os.environ.setdefault("OMP_NUM_THREADS", str(usable or 1))
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


def on_gpu(device: str | None) -> bool:
    """True if `device` is a GPU, or is None (ultralytics chooses) on a machine with CUDA."""
    if device is not None:
        return device != "cpu"
    import torch

    return torch.cuda.is_available()


def choose_runtime(requested: str, device: str | None) -> str:
    """The runtime for `.pt` weights: `requested`, or for `auto` OpenVINO when running on the CPU and
    installed, else PyTorch (GPUs run PyTorch). `DetectorConfig` checks that `requested` is one of
    `RUNTIMES`."""
    if requested != "auto":
        return requested
    import importlib.util

    return "openvino" if not on_gpu(device) and importlib.util.find_spec("openvino") else "torch"


def int8_weights(weights: Path) -> Path:
    """Where the INT8 OpenVINO model of `weights` (a `.pt`) lies: beside it, `<stem>_int8_openvino_model`."""
    return weights.with_name(f"{weights.stem}_int8_openvino_model")


def has_int8(weights: Path) -> bool:
    """True if the INT8 model beside `weights` exists and was quantised from these very weights."""
    record = int8_weights(weights) / INT8_SOURCE_FILE
    if not record.exists():
        return False
    if json.loads(record.read_text()).get("source_sha256_12") == weights_digest(weights):
        return True
    logging.getLogger(__name__).warning(
        "%s was quantised from other weights than %s: not used", int8_weights(weights), weights
    )
    return False


def choose_precision(requested: str, runtime: str, device: str | None, weights: list[Path]) -> str:
    """`fp32`, `fp16` or `int8` for `.pt` `weights` on `runtime` and `device`. `fp16` runs on PyTorch on
    a GPU, `int8` on OpenVINO. `auto`: INT8 where the runtime is OpenVINO and every one of `weights` has
    its INT8 model (`has_int8`), else FP32. `DetectorConfig` checks `requested` is in `PRECISIONS`."""
    if requested == "fp16" and not (runtime == "torch" and on_gpu(device)):
        raise ValueError(f"FP16 runs on the torch runtime on a GPU only, not {runtime} on {device or 'cpu'}")
    if requested == "int8" and runtime != "openvino":
        raise ValueError(f"INT8 runs on the openvino runtime only, not {runtime}")
    if requested in ("fp32", "fp16") or not weights or runtime != "openvino":
        return "fp32" if requested == "auto" else requested
    missing = [w for w in weights if not has_int8(w)]
    if requested == "int8" and missing:
        raise FileNotFoundError(
            f"no INT8 model of {', '.join(map(str, missing))}: build one with `streetblur quantize`"
        )
    return "fp32" if missing else "int8"


def cache_dir() -> Path:
    """Where exported models are kept: `STREETBLUR_CACHE`, else `~/.cache/streetblur`."""
    return Path(os.environ.get("STREETBLUR_CACHE") or Path.home() / ".cache" / "streetblur")


def openvino_cache() -> dict[str, str]:
    """OpenVINO's compiled-model cache, as compile options: a folder under `cache_dir()` where OpenVINO
    keeps each model it compiles, keyed by the model, the device, the options and its own version, and
    loads it from on the next compile instead (0.1 s instead of 0.5 s or more); it compiles again over
    a cached file it cannot read. No options where the folder cannot be made."""
    folder = cache_dir() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return {}
    return {"CACHE_DIR": str(folder)}


@contextlib.contextmanager
def _cache_lock(config: dict) -> Iterator[None]:
    """Held while OpenVINO compiles with its cache folder (`config["CACHE_DIR"]`, if any): it writes
    the folder's files with no regard for other processes, and two Ray actors compiling at once made
    one fail ("cannot set permissions: No such file or directory"). The next one in loads the cached
    model. The kernel lets go of the lock if its holder dies."""
    folder = config.get("CACHE_DIR")
    if not folder:
        yield
        return
    with open(Path(folder) / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def inference_threads(requested: int = 0) -> int:
    """CPU threads for inference in this process: `requested`, else `OMP_NUM_THREADS` (set by Ray, the
    user or `prepare_ultralytics`), else 0 (the runtime's own default)."""
    if requested:
        return requested
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


def limit_threads(model, weights: Path, threads: int) -> None:
    """Have `model`, an ultralytics YOLO loaded from `weights` (an export must have run once), compute
    on `threads` CPU threads; 0 leaves the runtime's default. ultralytics has no option for this, so an
    OpenVINO model is compiled again, and an ONNX Runtime session opened again, with the setting."""
    if threads <= 0:
        return
    if weights.suffix == ".pt":
        import torch

        torch.set_num_threads(threads)  # for the whole process
        return
    auto_backend = model.predictor.model  # ultralytics' AutoBackend; .backend is the runtime's wrapper
    if auto_backend.format == "openvino":
        import openvino as ov

        xml = next(weights.glob("*.xml")) if weights.is_dir() else weights
        config = {
            "PERFORMANCE_HINT": "LATENCY",  # as ultralytics compiles it
            "INFERENCE_NUM_THREADS": threads,
            # Pinned, every process's threads go to the first cores: two one-thread actors shared one
            # core and ran at half speed.
            "ENABLE_CPU_PINNING": False,
            **openvino_cache(),
        }
        core = ov.Core()

        def compile_model(model) -> object:
            with _cache_lock(config):
                return core.compile_model(model, device_name="CPU", config=config)

        backend = auto_backend.backend
        # Also for the models ultralytics compiles again per input shape (INT8 on CPUs with AMX).
        backend.compile_model = compile_model
        backend.ov_compiled_model = compile_model(str(xml))
    elif auto_backend.format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = auto_backend.backend.session
        auto_backend.backend.session = onnxruntime.InferenceSession(
            str(weights), options, providers=session.get_providers()
        )


def weights_digest(path: Path) -> str:
    """First 12 hex digits of the sha256 of a weights file, or of a folder's files (an export) in order."""
    digest = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def exported_weights(weights: Path, runtime: str, imgsz: int) -> Path:
    """`weights` (a `.pt` file) as ultralytics exports them for `runtime` (`onnx`, `openvino`) with
    dynamic input shapes, from the cache, exported on first use; `weights` itself for `torch`."""
    if runtime == "torch":
        return weights
    prepare_ultralytics()
    import ultralytics
    from ultralytics import YOLO

    # Copies of one file share an export.
    name = f"{weights_digest(weights)}-{imgsz}-ultralytics{ultralytics.__version__}"
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
