"""The review page's web app (Starlette) and its runner (uvicorn).

Routes: `/` the page (`static/`), `/api/queue`, `/api/image?key=K` (boxes, proposals, verdicts),
`/api/output?key=K` (the published output), `/api/original?key=K&box=ID` (the original inside one box
the job found, each look logged), `POST /api/verdict` (`{key, kind, class, box}`; a box verdict
re-renders the image at once, `review.reblur`).

Security: a key from the browser names an image only if the manifest has a blurred row for it
(`ReviewedOutput.row`), and a box only if it is one of that image's; originals are served only inside
one box of at most `MAX_LOOK_FRACTION` of the image. With a token every request needs it (`?token=`,
which sets a cookie, or `Authorization: token T`); the runner binds 127.0.0.1 unless told otherwise,
and anywhere else only with a token. Bound to loopback, only loopback host names are served (no DNS
rebinding), and a verdict must be a JSON request from the page's own origin (another site's page
cannot post one: a cross-site JSON post needs a CORS preflight, which is never granted).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import cv2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from blurring.image_io import output_format
from detection.detections import CLASS_NAMES
from jobs.batch.lease import LeaseHeld, LeaseLost
from jobs.batch.verdicts import BOX_KINDS, ImageState, append_verdicts, box_id, fold, now_iso, read_verdicts
from review.output import ImageChanged, ReviewedOutput, UnknownImage
from review.queue import RANDOM_SLICE, build_queue, image_reasons
from review.reblur import reblur
from video.config import is_video_key

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "streetblur_review_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]  # Host header names of loopback (IPv6 in brackets)
# The HTTP status of each refusal; a subclass of one (ReviewError is a ValueError) gets a 400 (Starlette
# finds a handler by the exception's class hierarchy).
REFUSED_STATUS = {UnknownImage: 404, LeaseHeld: 409, LeaseLost: 409, ImageChanged: 409, ValueError: 400}
MAX_LOOK_FRACTION = 0.25  # the original is shown inside a box of at most this share of the image
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class ReviewError(ValueError):
    """A request the review refuses (HTTP 400), with the reason."""


class TokenGate:
    """ASGI middleware: every HTTP request needs `token`, as `?token=` (answered by a redirect that
    sets it as a cookie), the cookie, or an `Authorization: token T` header."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        in_query = request.query_params.get("token", "")
        given = in_query or request.cookies.get(TOKEN_COOKIE, "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("token "):
            given = header[6:].strip()
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            response: Response = PlainTextResponse("a token is needed: open the URL that was printed", 403)
        elif in_query:
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), 303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


class ReviewSession:
    """The review of one output by one reviewer: reads its state and writes verdicts and re-renders, one
    verdict at a time."""

    def __init__(self, output: ReviewedOutput, reviewer: str, seed: str) -> None:
        self.output, self.reviewer, self.seed = output, reviewer, seed
        self._writing = threading.Lock()

    def states(self) -> dict[str, ImageState]:
        return fold(read_verdicts(self.output.target), self.output.rows())

    def queue(self) -> dict:
        """The queue, the failed inputs with their reasons, and counts."""
        rows, unreadable = [], []
        for row in self.output.rows().values():
            if row["status"] == "blurred" and not is_video_key(row["key"]):
                try:
                    self.output.settings(row)
                except ValueError as error:  # e.g. a run killed before it wrote a summary: the rest goes on
                    unreadable.append({"key": row["key"], "error": f"cannot be reviewed: {error}"})
                    continue
            rows.append(row)
        items = build_queue(rows, self.output.thresholds, self.states(), self.seed)
        failed = [{"key": r["key"], "error": r["error"]} for r in rows if r["status"] == "failed"]
        failed += unreadable
        return {
            "output": self.output.target.uri,
            "reviewer": self.reviewer,
            "items": items,
            "failed": failed,
            "images": sum(r["status"] == "blurred" and not is_video_key(r["key"]) for r in rows),
        }

    def image(self, key: str) -> dict:
        """What the page shows of one image: its boxes (`source` "review" for those a verdict put there),
        proposals, the boxes marked false, its reasons and whether it is fully reviewed."""
        row = self.output.row(key)
        state = self.states().get(key, ImageState())
        by_review = {box_id(v) for v in state.box_verdicts if v["kind"] != "false"}
        boxes = [
            {**_record(b), "id": box_id(b), "source": "review" if box_id(b) in by_review else "detector"}
            for b in row["boxes"] or []
        ]
        marked_false = [v for v in state.box_verdicts if box_id(v) in state.marked_false()]
        return {
            "key": key,
            "width": row["width"],
            "height": row["height"],
            "model_id": row["model_id"],
            "boxes": boxes,
            "proposals": [
                {**_record(p), "id": box_id(p), "stage": p["stage"]} for p in row.get("proposals") or []
            ],
            "false": list({box_id(v): {**_record(v), "id": box_id(v)} for v in marked_false}.values()),
            "reasons": self._reasons(row),
            "reviewed": state.reviewed,
            "looks": state.looks,
        }

    def output_bytes(self, key: str) -> tuple[bytes, str]:
        """The published output of `key` and its media type."""
        row = self.output.row(key)
        return self.output.target.read(row["output_key"]), MEDIA_TYPES[output_format(row["output_key"])]

    def look(self, key: str, wanted: str) -> bytes:
        """The original inside one box the job found in `key` (blurred, proposed, or blurred before a
        re-render; never a box a reviewer drew), as PNG; logs the look."""
        row = self.output.row(key)
        state = self.states().get(key, ImageState())
        accepted = [v for v in state.box_verdicts if v["kind"] == "accept"]  # proposals the job found
        known = state.job_boxes(row), row.get("proposals") or [], accepted
        box = next((b for boxes in known for b in boxes if box_id(b) == wanted), None)
        if box is None:
            raise ReviewError(f"{key}: no box {wanted!r} found by the job in this image")
        x1, y1, x2, y2 = (float(v) for v in box["box"])
        if (x2 - x1) * (y2 - y1) > MAX_LOOK_FRACTION * row["width"] * row["height"]:
            raise ReviewError(f"box {wanted} covers over {MAX_LOOK_FRACTION:.0%} of the image: not shown")
        pixels = self.output.original(row).pixels
        crop = pixels[max(math.floor(y1), 0) : math.ceil(y2), max(math.floor(x1), 0) : math.ceil(x2)]
        ok, png = cv2.imencode(".png", crop)
        if not ok or not crop.size:
            raise ReviewError(f"box {wanted} is empty")
        with self._writing:
            append_verdicts(self.output.target, [self._entry(row, "look", box)])
        return png.tobytes()

    def verdict(self, body: dict) -> dict:
        """Record one verdict of the browser (`add`, `accept`, `false`, `reviewed`); a box verdict
        re-renders the image. Returns the image as `image` shows it, and the entries written."""
        key, kind = body.get("key"), body.get("kind")
        row = self.output.row(key)
        if kind == "reviewed":
            entry = self._entry(row, kind, None)
        elif kind == "add":
            entry = self._entry(row, kind, _drawn_box(body, row["width"], row["height"]))
        elif kind in ("accept", "false"):
            candidates = (row.get("proposals") or []) if kind == "accept" else (row["boxes"] or [])
            wanted = box_id(body) if {"class", "box"} <= body.keys() else body.get("id")
            box = next((b for b in candidates if box_id(b) == wanted), None)
            if box is None:
                what = "proposal" if kind == "accept" else "blurred box"
                raise ReviewError(f"{key}: no {what} {wanted!r} in this image")
            entry = self._entry(row, kind, box)
        else:
            raise ReviewError(f"unknown verdict kind {kind!r}; expected one of {(*BOX_KINDS, 'reviewed')}")
        with self._writing:
            if kind in BOX_KINDS:
                written = reblur(self.output, key, entry, self.reviewer)
            else:  # the job run whose detections were reviewed: that of the row the page showed
                current, state = self.output.current(key, row)
                written = [entry | {"job_run": state.job_run(current)}]
                append_verdicts(self.output.target, written)
        return {"image": self.image(key), "written": written}

    def _reasons(self, row: dict) -> list[str]:
        return image_reasons(row, self.output.thresholds(row), self.seed)

    def _entry(self, row: dict, kind: str, box: dict | None) -> dict:
        """A log entry for `row`'s image (`jobs.batch.verdicts`)."""
        reasons = self._reasons(row)
        entry = {
            "at": now_iso(),
            "who": self.reviewer,
            "key": row["key"],
            "etag": row["etag"],
            "output_key": row["output_key"],
            "image_sha256": hashlib.sha256(self.output.target.read(row["output_key"])).hexdigest(),
            "model_id": row["model_id"],
            "kind": kind,
            "reason": "; ".join(reasons),
            "random_slice": RANDOM_SLICE in reasons,
        }
        if box is not None:
            entry |= _record(box)
        return entry


def _record(box: dict) -> dict:
    """`class`, `score`, `box` of a box, JSON-ready."""
    score = box.get("score")
    return {
        "class": box["class"],
        "score": None if score is None else round(float(score), 4),
        "box": [round(float(v), 2) for v in box["box"]],
    }


def _drawn_box(body: dict, width: int, height: int) -> dict:
    """The face or plate box a reviewer drew, clipped to the image; `ReviewError` if it is not one."""
    if body.get("class") not in CLASS_NAMES:
        raise ReviewError(f"class must be one of {CLASS_NAMES}, got {body.get('class')!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in body["box"])
    except (KeyError, TypeError, ValueError):
        raise ReviewError("box must be [x1, y1, x2, y2] in image pixels") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ReviewError("box must be finite")
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ReviewError("box must be at least 2 pixels wide and high inside the image")
    return {"class": body["class"], "score": None, "box": [x1, y1, x2, y2]}


def create_app(
    session: ReviewSession, token: str | None = None, allowed_hosts: list[str] | None = None
) -> Starlette:
    """The review app over `session`: every request needs `token` when one is given; only `allowed_hosts`
    (Host header names; None: any) are served."""

    def query_key(request: Request) -> str:
        return request.query_params.get("key", "")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def queue(request: Request) -> Response:
        return JSONResponse(session.queue())

    def image(request: Request) -> Response:
        return JSONResponse(session.image(query_key(request)))

    def output(request: Request) -> Response:
        data, media_type = session.output_bytes(query_key(request))
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-store"})

    def original(request: Request) -> Response:
        png = session.look(query_key(request), request.query_params.get("box", ""))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def verdict(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ReviewError("a verdict is a JSON body (Content-Type: application/json)")
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise ReviewError(f"a verdict from another site ({origin}) is refused")
        try:
            body = await request.json()
        except ValueError:
            raise ReviewError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise ReviewError("the body must be a JSON object")
        return JSONResponse(await run_in_threadpool(session.verdict, body))

    async def refused(request: Request, error: Exception) -> Response:
        return JSONResponse({"error": str(error)}, status_code=REFUSED_STATUS.get(type(error), 400))

    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])]
    if token:
        middleware.append(Middleware(TokenGate, token=token))
    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/queue", queue),
            Route("/api/image", image),
            Route("/api/output", output),
            Route("/api/original", original),
            Route("/api/verdict", verdict, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=middleware,
        exception_handlers=dict.fromkeys(REFUSED_STATUS, refused),
    )


def serve(
    session: ReviewSession, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> None:
    """Serve the review of `session` with uvicorn until interrupted. Bound to loopback, only loopback
    host names are served; anywhere else, a token is required (`ValueError` without one)."""
    import uvicorn

    loopback = host in LOOPBACK_HOSTS
    if not loopback and not token:
        raise ValueError(f"--host {host}: serving beyond this machine needs --token")
    allowed = LOOPBACK_NAMES if loopback else None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"streetblur review of {session.output.target.uri}: {url}")
    uvicorn.run(create_app(session, token, allowed), host=host, port=port, log_level="warning")
