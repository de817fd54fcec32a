"""Blur faces and plates in videos: decode, detect, link tracks, blur, encode and remux with PyAV.

Importing this package loads nothing heavy: `video.config` (imported by `blurring.config`) needs no
PyAV; `video.pipeline` does.
"""
