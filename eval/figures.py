"""The report's pictures, as PNG bytes: precision-recall curves and example images with boxes and masks."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from blurring import blur_mask
from detection.detections import CLASS_NAMES
from eval.evaluate import Evaluation, read_pixels
from eval.metrics import MASK_LEVEL, blur_outcome


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def pr_curves_png(evaluation: Evaluation) -> bytes | None:
    """One plot per class with ground truth, one curve per model; None when no class has any."""
    classes = [name for name in CLASS_NAMES if evaluation.models[0].curves[name] is not None]
    if not classes:
        return None
    figure = Figure(figsize=(5 * len(classes), 4), dpi=90)
    for ax, name in zip(figure.subplots(1, len(classes), squeeze=False)[0], classes, strict=True):
        for model in evaluation.models:
            curve = model.curves[name]
            (line,) = ax.plot(curve.recall, curve.precision, ".-", markersize=3, label=model.label)
            for point in ("deployed", "target"):
                threshold = model.thresholds[point][name]
                if threshold is not None:
                    i = int(np.searchsorted(curve.threshold, threshold))
                    xy = (curve.recall[i], curve.precision[i])
                    ax.plot(*xy, "o" if point == "deployed" else "s", color=line.get_color())
                    ax.annotate(f"{threshold:.2f}", xy, textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=name)
        ax.legend(loc="lower left", fontsize=8)
    return _png(figure)


def pick_examples(evaluation: Evaluation, count: int) -> list[int]:
    """Images with the most ground-truth boxes left unblurred (all models), then most false blurs."""
    missed, false = np.zeros(len(evaluation.images)), np.zeros(len(evaluation.images))
    for model in evaluation.models:
        for i, (image, dets) in enumerate(zip(evaluation.images, model.detections["deployed"], strict=True)):
            blurred, false_blur = blur_outcome(image, dets, model.config.blur)
            missed[i] += (~blurred).sum()
            false[i] += false_blur.sum()
    order = sorted(range(len(evaluation.images)), key=lambda i: (-missed[i], -false[i], i))
    return order[:count]


def example_png(evaluation: Evaluation, index: int) -> bytes:
    """The image once per model, with its ground truth, deployed detections and blur mask drawn."""
    image = evaluation.images[index]
    rgb = read_pixels(image, evaluation.models[0].config.max_pixels)[..., ::-1]
    panels = len(evaluation.models)
    figure = Figure(figsize=(5 * panels, 5 * image.height / image.width + 0.4), dpi=90)
    for ax, model in zip(figure.subplots(1, panels, squeeze=False)[0], evaluation.models, strict=True):
        dets = model.detections["deployed"][index]
        blurred, false_blur = blur_outcome(image, dets, model.config.blur)
        mask = blur_mask(image.height, image.width, dets, model.config.blur)
        ax.imshow(rgb)
        if mask.max() >= MASK_LEVEL:
            ax.contour(mask, levels=[MASK_LEVEL], colors="cyan", linewidths=1)
        for (x1, y1, x2, y2), hidden in zip(image.boxes.xyxy, blurred, strict=True):
            colour = "lime" if hidden else "red"
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        for (x1, y1, x2, y2), score, cls in zip(dets.xyxy, dets.scores, dets.class_id, strict=True):
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="yellow", linestyle="--")
            )
            ax.text(x1, y1, f"{CLASS_NAMES[cls]} {score:.2f}", color="yellow", fontsize=7, va="bottom")
        ax.set_title(
            f"{model.label}: {(~blurred).sum()} not blurred, {false_blur.sum()} false blurs", fontsize=9
        )
        ax.axis("off")
    return _png(figure)
