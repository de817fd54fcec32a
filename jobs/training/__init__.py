"""Training the face+plate model (`streetblur train`, `streetblur quantize`)."""
