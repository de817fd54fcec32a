"""The review page over a finished job's output (`streetblur review`): a queue of images to check, verdicts
on their boxes in an append-only log, each image re-blurred from its original at once, and the reviewed
images exported as a training set. Needs the `[review]` extra (Starlette, uvicorn) to serve the page.
The verdict log and the state folded from it are in `jobs/batch/verdicts.py`, beside the manifest: the
job reads it too.

  output.py    the job's output, manifest and originals as the review reads them
  queue.py     which images to check, and why
  reblur.py    re-rendering an image from its original
  app.py       the web app and its runner; static/ the page
  export.py    the YOLO dataset of reviewed images, and the miss and false-blur rates
"""
