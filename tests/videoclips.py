"""Video clips made from LFW photos with PyAV, for the video probe tests and the benchmark
(#14 item 3): each person is an LFW photo moving across a grey frame (panned, and zoomed),
encoded as H.264 in MP4 (or another container)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(path: Path, scale: float) -> Image.Image:
    img = Image.open(path).convert("RGB")
    side = round(img.width * scale)
    return img.resize((side, side), Image.Resampling.BICUBIC)


def clip(
    people: Sequence[Path],
    seconds: float = 3.0,
    fps: int = 10,
    size: tuple[int, int] = (640, 360),
    scale: float = 1.0,
    zoom: float = 0.15,
    fmt: str = "mp4",
    codec: str = "libx264",
) -> bytes:
    """A clip of ``seconds`` at ``fps`` and ``size``: each photo in ``people`` pans across
    the frame (the first left to right, the second right to left, a little lower) while it
    grows by ``zoom`` of its size; photos are ``scale`` times LFW's 250 px."""
    import av

    width, height = size
    n = max(1, round(seconds * fps))
    photos = [_photo(p, scale) for p in people]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(n):
            t = i / max(1, n - 1)
            canvas = Image.new("RGB", (width, height), (120, 120, 120))
            lane = width / max(1, len(photos))
            for k, photo in enumerate(photos):
                side = round(photo.width * (1 + zoom * t))
                face = photo.resize((side, side), Image.Resampling.BILINEAR)
                travel = max(0.0, lane - side)
                x = k * lane + (travel * t if k % 2 == 0 else travel * (1 - t))
                y = (height - side) / 2 + (k % 2) * min(20, (height - side) / 2)
                canvas.paste(face, (round(x), max(0, round(y))))
            frame = av.VideoFrame.from_ndarray(np.asarray(canvas), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
