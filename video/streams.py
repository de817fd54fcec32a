"""What a video holds, and which of its streams the blurred copy carries.

The first video stream is decoded, blurred and encoded again. Audio, subtitle and data streams
(GoPro `gpmd` GPS, CAMM, dashcam NMEA subtitles) are copied packet by packet. Dropped, and named in
the result: cover art and thumbnails (attached pictures: unblurred frames), any further video stream
(previews, other angles: they would need blurring of their own), and streams with no codec the
output can carry. A QuickTime timecode track is carried as the video stream's `timecode` tag, from
which the muxer writes it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
from av.stream import Disposition

from video.config import METADATA_KEYS


@dataclass
class StreamPlan:
    """`video`: the stream to blur; `copied`: streams remuxed as they are; `dropped`: one line each,
    `#index type codec: reason`; `timecode`: the timecode tag the output's video stream gets."""

    video: av.VideoStream
    copied: list[av.stream.Stream] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    timecode: str | None = None


def plan_streams(container: av.container.InputContainer) -> StreamPlan:
    """Which streams of `container` are blurred, copied and dropped. `ValueError` without a video."""
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        raise ValueError("no video stream (only cover art or none at all)")
    plan = StreamPlan(video=videos[0])
    for stream in container.streams:
        if stream is plan.video:
            continue
        name = describe(stream)
        if stream.type == "video":
            attached = stream.disposition & Disposition.attached_pic
            reason = "cover art or thumbnail (an unblurred picture)" if attached else "a second video stream"
            plan.dropped.append(f"{name}: {reason}")
        elif stream.type == "data" and stream.metadata.get("handler_name") == "TimeCodeHandler":
            plan.timecode = stream.metadata.get("timecode")
            if plan.timecode is None:
                plan.dropped.append(f"{name}: a timecode track without a timecode tag")
        elif stream.type in ("audio", "subtitle", "data") and (
            stream.codec_context or getattr(stream, "name", None)
        ):
            plan.copied.append(stream)
        else:
            plan.dropped.append(f"{name}: no codec the output container can carry")
    plan.timecode = plan.timecode or plan.video.metadata.get("timecode")
    return plan


def describe(stream: av.stream.Stream) -> str:
    """`#2 data bin_data (GoPro MET)`: a stream as the result names it."""
    handler = stream.metadata.get("handler_name")
    return f"#{stream.index} {stream.type} {getattr(stream, 'name', None) or 'unknown'}" + (
        f" ({handler})" if handler else ""
    )


def allowed_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The entries of `metadata` whose keys are in `video.config.METADATA_KEYS`."""
    return {key: value for key, value in metadata.items() if key in METADATA_KEYS}
