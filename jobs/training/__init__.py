"""Training the face+plate model (`streetblur train`, `streetblur quantize`): `dataset` (the YOLO
dataset, tiles), `labels` (pseudo-labels, self-labels), `train`, `quantize` (INT8)."""
