"""Face and plate detection with one or more ultralytics YOLO models, tiled for large images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from detection.baselines import baseline_id, find_at_scale, is_baseline, load_baseline
from detection.detections import CLASS_NAMES, DEFAULT_ALIASES, Detections, canonical_class
from detection.runtime import (
    PRECISIONS,
    RUNTIMES,
    choose_precision,
    choose_runtime,
    exported_weights,
    inference_threads,
    int8_weights,
    limit_threads,
    prepare_ultralytics,
    quiet_ultralytics,
    weights_digest,
)
from detection.tiling import extend_seam, is_panorama, merge_boxes, plan_views, unwrap_seam
from detection.verify import blurred_by_cascade, covered_by, needs_verifying, proposed_boxes, zoom_scores

DEFAULT_MODEL = Path(__file__).parent / "weights" / "streetblur-n.pt"
# Chosen by `streetblur calibrate` on the dev splits: the lowest thresholds within 0.5 false blurs
# per image (the privacy targets, face 0.95 / plate 0.97 blurred, cost more; see
# detection/weights/MODEL_CARD.md).
DEFAULT_THRESHOLDS = {"face": 0.35, "plate": 0.25}
# The two stages (detection.verify), chosen by `streetblur calibrate --set detect.verify=on` on the dev
# splits: proposals reach 0.97 of faces and 0.985 of plates; verified ones blur within the budgets.
DEFAULT_PROPOSAL_THRESHOLDS = {"face": 0.02, "plate": 0.01}
DEFAULT_VERIFY_THRESHOLDS = {"face": 0.3, "plate": 0.25}
ZOOM_SCAN_THRESHOLD = 0.01  # score threshold of the zoomed-in re-detection


@dataclass(frozen=True)
class DetectorConfig:
    """Every detection option, with its default. See README "How it works"."""

    # .pt/.onnx/... files ultralytics can load, or baseline face detectors by name (detection.baselines)
    models: tuple[str, ...] = (str(DEFAULT_MODEL),)
    # Per-class score thresholds at which a box blurs as it is ("sure"); classes left out keep
    # DEFAULT_THRESHOLDS.
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # Second stage (detection.verify): "on" re-detects each proposal (a box scored from its class's
    # `proposal_thresholds` up to its `thresholds`) zoomed in, and blurs it when the combined score
    # reaches `verify_thresholds`; "off" blurs sure boxes only. Unblurred proposals are reported either way.
    verify: str = "off"
    proposal_thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PROPOSAL_THRESHOLDS))
    verify_thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_VERIFY_THRESHOLDS))
    verify_object_px: int = 48  # a proposal's longer side in its zoomed-in crop
    verify_context: float = 2.0  # the crop's side, in proposal sides (context around it)
    verify_imgsz: int = 384  # side of the canvases the crops are pasted into, the re-detection's input size
    # Model class name -> face/plate, after normalise_class_name.
    aliases: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    imgsz: int = 640  # model input size (pixels, longer side)
    # Images whose longer side is below this are first upscaled to it (then tiled), so that small
    # faces in small photos reach the model at a size it can see; 0 disables upscaling.
    upscale_to: int = 960
    tile_size: int = 640  # images with a side larger than this are tiled; 0 disables tiling
    tile_overlap: float = 0.2  # overlap of neighbouring tiles, as a fraction of the tile size
    whole_image_pass: bool = True  # also run the downscaled whole image, for objects larger than a tile
    # Test-time augmentation: also run every view mirrored left-right, and merge what both find
    # (twice the model compute).
    flip: bool = False
    panorama: str = "auto"  # "auto" (2:1 images), "on" or "off": wrap the left/right seam
    # Merge boxes of a class when their intersection covers this much of the smaller one.
    merge_overlap: float = 0.6
    nms_iou: float = 0.5  # IoU of the per-view non-maximum suppression inside ultralytics
    batch_size: int = 8  # views per model call
    device: str | None = None  # "cpu", "0", "cuda:0"...; None lets ultralytics choose
    # How .pt weights run: "torch", "onnx" (ONNX Runtime) or "openvino", the last two from an export
    # built on first use and cached (detection.runtime); "auto": OpenVINO on CPU if installed, else torch.
    runtime: str = "auto"
    # "fp32"; "fp16" (PyTorch on a GPU); "int8": on OpenVINO, the INT8 model quantised from the .pt
    # that lies beside it (built by `streetblur quantize`; the shipped weights have one); "auto": INT8
    # where the runtime is OpenVINO and there is one, else FP32.
    precision: str = "auto"
    # CPU threads each model computes on; 0: OMP_NUM_THREADS if set (Ray sets it per actor from its
    # CPUs), else the runtime's default of one per core.
    threads: int = 0

    def __post_init__(self) -> None:
        for name, defaults in (
            ("thresholds", DEFAULT_THRESHOLDS),
            ("proposal_thresholds", DEFAULT_PROPOSAL_THRESHOLDS),
            ("verify_thresholds", DEFAULT_VERIFY_THRESHOLDS),
        ):
            given = getattr(self, name)
            if unknown := set(given) - set(CLASS_NAMES):
                raise ValueError(f"{name} for unknown classes {sorted(unknown)}; classes are {CLASS_NAMES}")
            filled = {**defaults, **given}
            if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in filled.values()):
                raise ValueError(f"{name} must be numbers in [0, 1], got {given}")
            object.__setattr__(self, name, {c: float(filled[c]) for c in CLASS_NAMES})
        if self.verify not in ("on", "off"):
            raise ValueError(f"verify must be on or off, got {self.verify!r}")
        if self.verify_object_px < 8 or self.verify_context < 1 or self.verify_imgsz < 32:
            raise ValueError(
                f"need verify_object_px >= 8, verify_context >= 1, verify_imgsz >= 32; got "
                f"{self.verify_object_px}, {self.verify_context}, {self.verify_imgsz}"
            )
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.panorama not in ("auto", "on", "off"):
            raise ValueError(f"panorama must be auto, on or off, got {self.panorama!r}")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        sizes = (self.tile_size, self.upscale_to, self.imgsz - 32, self.batch_size - 1, self.threads)
        if min(sizes) < 0:
            raise ValueError(
                f"need tile_size >= 0, upscale_to >= 0, imgsz >= 32, batch_size >= 1, threads >= 0; got "
                f"{self.tile_size}, {self.upscale_to}, {self.imgsz}, {self.batch_size}, {self.threads}"
            )


class Screened(NamedTuple):
    """One image's detections: what blurs, and the proposals that do not, each with the stage that left it
    unblurred: `detector` (under its class's threshold, verification off) or `verifier` (rejected)."""

    blurred: Detections
    unblurred: Detections
    stages: tuple[str, ...]


class Detector:
    """Loads its models once; `detect` finds faces and plates in BGR images of any size.

    A model set that misses a class is refused (nothing would blur it), unless `require_every_class` is
    False: evaluation scores a face-only baseline on faces alone.
    """

    def __init__(self, config: DetectorConfig = DetectorConfig(), require_every_class: bool = True) -> None:
        prepare_ultralytics()
        from ultralytics import YOLO

        self.config = config
        self.runtime, self.precision, weights_files = resolve_models(config, config.device)
        # Per model: the loaded model, and its class indices -> face/plate (CLASS_NAMES indices)
        self.loaded_models: list[tuple[object, dict[int, int]]] = []
        for path, weights_file in zip(config.models, weights_files, strict=True):
            if is_baseline(path):
                self.loaded_models.append((load_baseline(path), {0: CLASS_NAMES.index("face")}))
                continue
            if not Path(path).exists():
                raise FileNotFoundError(f"model file not found: {path}")
            weights = Path(weights_file)
            if weights.suffix == ".pt":
                weights = exported_weights(weights, self.runtime, config.imgsz)
            with quiet_ultralytics():  # it logs which runtime loads an export
                model = YOLO(str(weights), task="detect")
                if weights.suffix != ".pt":
                    # An export loads its runtime on the first predict: run one now, so that reading
                    # `names` below does not load the export a second time.
                    blank = np.zeros((64, 64, 3), np.uint8)
                    model.predict(blank, imgsz=config.imgsz, device=config.device, verbose=False)
            limit_threads(model, weights, inference_threads(config.threads))
            to_canonical = {
                i: CLASS_NAMES.index(c)
                for i, name in model.names.items()
                if (c := canonical_class(name, config.aliases)) is not None
            }
            if not to_canonical:
                raise ValueError(
                    f"{path}: none of its classes {sorted(model.names.values())} maps to face or plate; "
                    "add aliases"
                )
            self.loaded_models.append((model, to_canonical))
        covered = {CLASS_NAMES[c] for _, mapping in self.loaded_models for c in mapping.values()}
        if require_every_class and covered != set(CLASS_NAMES):
            missing = sorted(set(CLASS_NAMES) - covered)
            raise ValueError(
                f"no model detects {', '.join(missing)}: nothing would blur them. Add a model for "
                f"{', '.join(missing)} (--model), or aliases mapping one of its classes"
            )
        self.model_id = model_id(weights_files)

    def detect(self, image: np.ndarray) -> Detections:
        """Faces and plates in one BGR (H, W, 3) uint8 image, boxes in its pixels."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """`detect` for several images, their views sent to the models in shared batches."""
        return [screened.blurred for screened in self.screen_batch(images)]

    def screen_batch(self, images: list[np.ndarray]) -> list[Screened]:
        """Per image: the boxes that blur (sure, or verified with `verify` on) and the proposals that do
        not. Any failure raises: no image is screened in part."""
        config = self.config
        view_thresholds = {c: min(config.thresholds[c], config.proposal_thresholds[c]) for c in CLASS_NAMES}
        return [
            self._screen(image, found)
            for image, found in zip(images, self._find(images, view_thresholds), strict=True)
        ]

    def zoom_scores(self, image: np.ndarray, proposals: Detections) -> np.ndarray:
        """The zoom score of each of `proposals` in `image` (`detection.verify.zoom_scores`): every box
        scoring at least its class's proposal threshold, before the tile merge."""
        threshold = np.full(len(CLASS_NAMES), ZOOM_SCAN_THRESHOLD, np.float32)
        config = self.config
        return zoom_scores(
            image,
            proposals,
            lambda canvases: self._predict(canvases, threshold, config.verify_imgsz),
            config.merge_overlap,
            config.verify_object_px,
            config.verify_context,
            config.verify_imgsz,
        )

    def _screen(self, image: np.ndarray, found: Detections) -> Screened:
        """`Screened` from one image's boxes before the tile merge."""
        config = self.config
        pending = needs_verifying(found, config.thresholds, config.proposal_thresholds)
        zoom = None
        if config.verify == "on":
            proposed = proposed_boxes(found, config.proposal_thresholds)
            zoom = np.full(len(found), np.nan)
            if pending.any():
                zoom[proposed] = self.zoom_scores(image, found[proposed])
        blurs = blurred_by_cascade(
            found, zoom, config.thresholds, config.proposal_thresholds, config.verify_thresholds
        )
        blurred = merge_boxes(found[blurs], config.merge_overlap)
        unblurred = merge_boxes(found[pending & ~blurs], config.merge_overlap)
        unblurred = unblurred[~covered_by(unblurred, blurred, config.merge_overlap)]
        return Screened(blurred, unblurred, ("detector" if zoom is None else "verifier",) * len(unblurred))

    def _find(self, images: list[np.ndarray], thresholds: dict[str, float]) -> list[Detections]:
        """Per image: every view's boxes scoring at least `thresholds`, in image pixels, not merged."""
        threshold = np.array([thresholds[c] for c in CLASS_NAMES], np.float32)
        jobs = []  # (image index, view, pixels of the view, whether those are mirrored)
        wraps, sizes = [], []  # per image: seam wrapped; (width, height) the views were cut from
        for index, image in enumerate(images):
            height, width = image.shape[:2]
            wrap = self.config.panorama == "on" or (
                self.config.panorama == "auto" and is_panorama(width, height)
            )
            image = upscale_small(image, self.config.upscale_to)
            pixels = extend_seam(image, self._seam_pad(image.shape[1])) if wrap else image
            wraps.append(wrap)
            sizes.append((image.shape[1], image.shape[0]))
            views = plan_views(
                pixels.shape[1],
                pixels.shape[0],
                self.config.tile_size,
                self.config.tile_overlap,
                self.config.whole_image_pass,
            )
            jobs += [(index, view, view.crop(pixels), False) for view in views]
        if self.config.flip:
            jobs += [
                (index, view, np.ascontiguousarray(crop[:, ::-1]), True) for index, view, crop, _ in jobs
            ]
        # Only views of one shape share a model batch: ultralytics pads a batch of equal shapes
        # minimally and any other batch to a square, so mixing shapes would make a view's boxes
        # depend on which other views it was batched with.
        by_shape: dict[tuple[int, ...], list] = {}
        for job in jobs:
            by_shape.setdefault(job[2].shape, []).append(job)
        found: list[list[Detections]] = [[] for _ in images]
        for group in by_shape.values():
            for start in range(0, len(group), self.config.batch_size):
                chunk = group[start : start + self.config.batch_size]
                predicted = self._predict([crop for _, _, crop, _ in chunk], threshold, self.config.imgsz)
                for (index, view, crop, mirrored), dets in zip(chunk, predicted, strict=True):
                    if mirrored:
                        dets = dets.mirrored(crop.shape[1])
                    found[index].append(dets.scaled(1.0, (view.x, view.y)))
        results = []
        for image, wrap, (cut_width, cut_height), parts in zip(images, wraps, sizes, found, strict=True):
            height, width = image.shape[:2]
            dets = Detections.concat(parts)
            if wrap:
                dets = unwrap_seam(dets, cut_width)
            results.append(dets.scaled((width / cut_width, height / cut_height)).clipped(width, height))
        return results

    def _seam_pad(self, width: int) -> int:
        """Width of the strip copied across the seam: one tile, so seam objects up to a tile are whole."""
        return min(width, self.config.tile_size or width // 4)

    def _predict(self, crops: list[np.ndarray], threshold: np.ndarray, imgsz: int) -> list[Detections]:
        """Run every model on a batch of crops at input size `imgsz`; per-class `threshold` applied."""
        per_crop: list[list[Detections]] = [[] for _ in crops]
        for path, (model, to_canonical) in zip(self.config.models, self.loaded_models, strict=True):
            if is_baseline(path):  # a face finder: one crop at a time, shrunk to imgsz as YOLO's are
                face_threshold = float(threshold[CLASS_NAMES.index("face")])
                for i, crop in enumerate(crops):
                    shrink = min(1.0, imgsz / max(crop.shape[:2]))
                    per_crop[i].append(find_at_scale(model, crop, face_threshold, shrink))
                continue
            results = model.predict(
                crops,
                imgsz=imgsz,
                conf=float(threshold.min()),
                iou=self.config.nms_iou,
                device=self.config.device,
                batch=len(crops),
                verbose=False,
                **({"quantize": 16} if self.precision == "fp16" else {}),  # FP32 unless asked
            )
            for i, result in enumerate(results):
                dets = Detections.from_ultralytics(result.boxes, to_canonical)
                per_crop[i].append(dets[dets.scores >= threshold[dets.class_id]])
        return [Detections.concat(parts) for parts in per_crop]


def upscale_small(image: np.ndarray, upscale_to: int) -> np.ndarray:
    """`image` enlarged (bilinear) so that its longer side is `upscale_to`, if it is shorter; else
    `image` itself. The detector does this first, so that small faces and plates get more pixels."""
    height, width = image.shape[:2]
    scale = upscale_to / max(width, height)
    if scale <= 1:
        return image
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)


class ModelPlan(NamedTuple):
    """How a detector's models run: the runtime, the precision, and per model the weights that run."""

    runtime: str
    precision: str
    weights: tuple[str, ...]


def resolve_models(config: DetectorConfig, device: str | None) -> ModelPlan:
    """How `config.models` run on `device` (None: this machine's default): runtime, precision, and per
    model the weights that run (its INT8 model, for a .pt in INT8; else the model itself, whose exports
    are exact conversions). Loads nothing: the job's driver uses it to know the `model_id` its actors
    will record."""
    runtime = choose_runtime(config.runtime, device)
    pt_files = [Path(p) for p in config.models if not is_baseline(p) and Path(p).suffix == ".pt"]
    precision = choose_precision(config.precision, runtime, device, pt_files)
    weights = tuple(
        str(int8_weights(Path(p))) if precision == "int8" and Path(p) in pt_files else p
        for p in config.models
    )
    return ModelPlan(runtime, precision, weights)


def model_id(models: tuple[str, ...]) -> str:
    """`name@sha256-prefix` of each model file or export folder (`name@package-version` for a baseline),
    joined by `+`: names the exact weights used."""
    return "+".join(
        baseline_id(p) if is_baseline(p) else f"{Path(p).name}@{weights_digest(Path(p))}" for p in models
    )
