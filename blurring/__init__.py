"""Obscure detected faces and licence plates."""

from blurring.blur import BlurConfig, anonymize, blur_mask

__all__ = ["BlurConfig", "anonymize", "blur_mask"]
