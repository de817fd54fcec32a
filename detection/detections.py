"""The one detection type that flows from detector to blur to manifest to evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("face", "plate")
"""Canonical classes. `Detections.class_id` indexes this tuple."""

DEFAULT_ALIASES: dict[str, str] = {
    "face": "face",
    "faces": "face",
    "human_face": "face",
    "with_mask": "face",
    "without_mask": "face",
    "mask_weared_incorrect": "face",
    "plate": "plate",
    "license_plate": "plate",
    "licence_plate": "plate",
    "number_plate": "plate",
    "numberplate": "plate",
    "licenseplate": "plate",
}
"""Dataset and model class names that mean `face` or `plate`, after `normalise_class_name`."""


def normalise_class_name(name: str) -> str:
    """`License-Plate`, `license plate` and `license_plate` all become `license_plate`."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def canonical_class(name: str, aliases: dict[str, str] | None = None) -> str | None:
    """`face`, `plate`, or None for a class name that is neither (e.g. COCO's `person`)."""
    table = {normalise_class_name(k): v for k, v in (aliases or DEFAULT_ALIASES).items()}
    target = table.get(normalise_class_name(name))
    if target is not None and target not in CLASS_NAMES:
        raise ValueError(f"class alias {name!r} maps to {target!r}, not one of {CLASS_NAMES}")
    return target


def box_areas(xyxy: np.ndarray) -> np.ndarray:
    """Areas of (N, 4) corner boxes in square pixels (0 for a box without width or height)."""
    wh = np.clip(xyxy[..., 2:] - xyxy[..., :2], 0, None)
    return wh[..., 0] * wh[..., 1]


def intersection_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) areas where each of the (A, 4) corner boxes `a` overlaps each of the (B, 4) boxes `b`."""
    a, b = a[:, None, :], b[None, :, :]
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) intersection over union of each of the corner boxes `a` with each of `b`."""
    inter = intersection_areas(a, b)
    return inter / np.maximum(box_areas(a)[:, None] + box_areas(b)[None, :] - inter, 1e-9)


@dataclass(frozen=True)
class Detections:
    """Boxes found in one image.

    `xyxy` is an (N, 4) float32 array of corners in full-image pixels, `scores` an (N,) float32
    array in [0, 1], `class_id` an (N,) int64 array indexing `CLASS_NAMES`.
    """

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        object.__setattr__(self, "xyxy", np.asarray(self.xyxy, np.float32).reshape(-1, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, np.float32).reshape(-1))
        object.__setattr__(self, "class_id", np.asarray(self.class_id, np.int64).reshape(-1))
        n = len(self.xyxy)
        if len(self.scores) != n or len(self.class_id) != n:
            raise ValueError(
                f"Detections arrays disagree in length: {n} boxes, {len(self.scores)} scores, "
                f"{len(self.class_id)} class ids"
            )
        if n and (self.class_id.min() < 0 or self.class_id.max() >= len(CLASS_NAMES)):
            raise ValueError(f"class_id out of range for {CLASS_NAMES}: {self.class_id}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: np.ndarray | slice | Sequence[int]) -> Detections:
        """Select boxes by boolean mask, index array or slice."""
        return Detections(self.xyxy[index], self.scores[index], self.class_id[index])

    @property
    def class_names(self) -> list[str]:
        """Class name of every box."""
        return [CLASS_NAMES[i] for i in self.class_id]

    @property
    def area(self) -> np.ndarray:
        """Box areas in square pixels."""
        return box_areas(self.xyxy)

    def of_class(self, name: str) -> Detections:
        """Only the boxes of class `name`."""
        return self[self.class_id == CLASS_NAMES.index(name)]

    def counts(self) -> dict[str, int]:
        """Number of boxes per class, every class present (zero where none)."""
        return {name: int((self.class_id == i).sum()) for i, name in enumerate(CLASS_NAMES)}

    def scaled(
        self, factor: float | tuple[float, float], offset: tuple[float, float] = (0.0, 0.0)
    ) -> Detections:
        """Boxes multiplied by `factor` (one, or x and y), then shifted by `offset` (x, y)."""
        fx, fy = factor if isinstance(factor, tuple) else (factor, factor)
        dx, dy = offset
        xyxy = self.xyxy * np.array([fx, fy, fx, fy], np.float32) + np.array([dx, dy, dx, dy], np.float32)
        return Detections(xyxy, self.scores, self.class_id)

    def mirrored(self, width: float) -> Detections:
        """The boxes as they lie in the left-right mirror image of an image `width` pixels wide."""
        xyxy = self.xyxy.copy()
        xyxy[:, [0, 2]] = width - self.xyxy[:, [2, 0]]
        return Detections(xyxy, self.scores, self.class_id)

    def clipped(self, width: int, height: int) -> Detections:
        """Boxes clipped to the image; boxes left without area are dropped."""
        xyxy = self.xyxy.copy()
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return Detections(xyxy[keep], self.scores[keep], self.class_id[keep])

    @staticmethod
    def concat(parts: Iterable[Detections]) -> Detections:
        """All boxes of `parts` in one `Detections`."""
        parts = list(parts)
        if not parts:
            return Detections()
        return Detections(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.class_id for p in parts]),
        )

    @staticmethod
    def from_ultralytics(boxes, to_class_id: dict[int, int]) -> Detections:
        """The boxes of an ultralytics result (`result.boxes`) whose model class is a key of
        `to_class_id`, their class ids mapped by it (model class id -> index of `CLASS_NAMES`)."""
        model_class = boxes.cls.cpu().numpy().astype(int)
        known = np.array([c in to_class_id for c in model_class], bool)
        return Detections(
            boxes.xyxy.cpu().numpy()[known],
            boxes.conf.cpu().numpy()[known],
            [to_class_id[c] for c in model_class[known]],
        )

    def to_records(self) -> list[dict]:
        """JSON-ready list of `{"class", "score", "box": [x1, y1, x2, y2]}`."""
        return [
            {"class": CLASS_NAMES[c], "score": round(float(s), 4), "box": [round(float(v), 2) for v in b]}
            for b, s, c in zip(self.xyxy, self.scores, self.class_id, strict=True)
        ]

    @staticmethod
    def from_records(records: Iterable[dict]) -> Detections:
        """Inverse of `to_records`."""
        records = list(records)
        return Detections(
            [r["box"] for r in records],
            [r.get("score", 1.0) for r in records],
            [CLASS_NAMES.index(r["class"]) for r in records],
        )
