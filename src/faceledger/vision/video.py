"""Video probes: decode a clip within budgets, find the faces in sampled frames, follow each
person across frames, and fuse each person's best faces into one probe vector (issue #14).

Decoding is PyAV's (FFmpeg). Before any frame is decoded the container's header is checked
against :class:`VideoLimits`: its duration (``video-too-long``) and the pixels of a frame
(``video-too-large``); a clip whose header gives no duration is cut off, refused, the moment
a decoded frame passes the limit. Frames are sampled at most ``fps`` a second, and at most
``max_frames`` in all (for a long clip the sampling is spread evenly over it); a sampled frame
is known by its number in decode order (0 = the first frame), which the ledger records.

Tracking (:func:`track_faces`) is greedy, frame by frame: a face joins the track whose last
face it overlaps (box intersection over union) and resembles (embedding cosine) best, or a
track it resembles strongly even without overlap (the person left and came back, or moved
far between two sampled frames); a face that fits no track starts a new one. Each track keeps
its best faces by quality (:mod:`faceledger.vision.quality`: size, sharpness, yaw); the core
fuses them into one probe vector with the ``template`` rule of :mod:`faceledger.search.fusion`
(the mean of the L2-normalised vectors, normalised again).

Errors are :class:`VideoError`, a :class:`~faceledger.vision.decode.DecodeError` with a stable
``reason``: ``not-a-video``, ``video-too-long``, ``video-too-large``, ``corrupt-video``.
"""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import queue
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from faceledger.types import Detection, Face
from faceledger.vision import probes
from faceledger.vision.analysis import FaceAnalyzer
from faceledger.vision.decode import DecodeError, probe_limits

DEFAULT_VIDEO_FPS = 2.0  # frames sampled a second
# Every frame of a clip is decoded (the sampled ones are analysed): a minute of 1440p H.264
# is about 1500 frames to decode. Longer or larger clips: cut or scale them first.
DEFAULT_MAX_VIDEO_SECONDS = 60.0
DEFAULT_MAX_VIDEO_PIXELS = 2560 * 1440  # 3.7 MP: a 4 MP CCTV camera's frame
DEFAULT_MAX_VIDEO_FRAMES = 60  # frames sampled at most, whatever the clip's length
DEFAULT_TRACK_FACES = 5  # best faces fused per track
# Frames whose faces are detected at once (threads; dlib's HOG releases the GIL). Each thread
# has its own copy of the detector (dlib's detectors are not safe to share between threads);
# a detector that cannot be copied (dlib's CNN) runs in one.
DEFAULT_VIDEO_THREADS = max(1, min(2, os.cpu_count() or 1))

# Tracking. Boxes overlapping at least TRACK_MIN_IOU, of faces alike enough (cosine at least
# the "near" line), are the same track; faces very alike (the "rejoin" line) are, whatever
# the overlap. The lines are scores of the model's calibration (the core passes them): near
# where half of all impostor pairs score lower, rejoin at an impostor rate of 1 in 10,000.
# Without a calibration, the lines of dlib_resnet_v1's (0.836 and 0.942, measured on LFW).
TRACK_MIN_IOU = 0.2
TRACK_NEAR_FMR = 0.5
TRACK_REJOIN_FMR = 1e-4
TRACK_NEAR_COSINE = 0.836
TRACK_REJOIN_COSINE = 0.942

# Container formats PyAV may open for a probe; the names FFmpeg gives them.
VIDEO_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts")
# The leading bytes of those containers (content sniffing; never the file's name).
_IMAGE_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis")


class VideoError(DecodeError):
    """A clip that cannot be used as a probe; ``reason`` is one of the stable codes."""


@dataclass(frozen=True)
class VideoLimits:
    """How a clip is read as a probe: its budgets (duration, pixels a frame, frames sampled),
    the frames sampled a second and the best faces fused per track. :meth:`from_env` reads
    them from ``FACELEDGER_VIDEO_MAX_SECONDS``, ``FACELEDGER_VIDEO_MAX_MEGAPIXELS``,
    ``FACELEDGER_VIDEO_MAX_FRAMES``, ``FACELEDGER_VIDEO_FPS``,
    ``FACELEDGER_VIDEO_TRACK_FACES`` and ``FACELEDGER_VIDEO_THREADS``."""

    max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
    max_pixels: int = DEFAULT_MAX_VIDEO_PIXELS
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    fps: float = DEFAULT_VIDEO_FPS
    track_faces: int = DEFAULT_TRACK_FACES
    threads: int = DEFAULT_VIDEO_THREADS

    def __post_init__(self) -> None:
        values = (
            self.max_seconds,
            self.max_pixels,
            self.max_frames,
            self.fps,
            self.track_faces,
            self.threads,
        )
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"video settings must be positive numbers: {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VideoLimits:
        env = os.environ if environ is None else environ

        def number(name: str, default: float) -> float:
            text = env.get(name, "").strip()
            try:
                return float(text) if text else default
            except ValueError as exc:
                raise ValueError(f"${name} must be a number, not {text!r}") from exc

        d = cls()
        return cls(
            max_seconds=number("FACELEDGER_VIDEO_MAX_SECONDS", d.max_seconds),
            max_pixels=round(number("FACELEDGER_VIDEO_MAX_MEGAPIXELS", d.max_pixels / 1e6) * 1e6),
            max_frames=int(number("FACELEDGER_VIDEO_MAX_FRAMES", d.max_frames)),
            fps=number("FACELEDGER_VIDEO_FPS", d.fps),
            track_faces=int(number("FACELEDGER_VIDEO_TRACK_FACES", d.track_faces)),
            threads=int(number("FACELEDGER_VIDEO_THREADS", d.threads)),
        )


def is_video(data: bytes) -> bool:
    """Whether ``data`` starts like a video container (MP4/MOV/3GP, Matroska/WebM, AVI or
    MPEG-TS), by its bytes alone. Photos (JPEG, PNG, HEIC/AVIF stills ...) are not."""
    head = data[:16]
    if head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):  # QuickTime without ftyp
        return True
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska, WebM
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return True
    return len(data) > 376 and data[0] == data[188] == data[376] == 0x47  # MPEG-TS sync bytes


@dataclass
class VideoInfo:
    """What the header says, checked against the limits before decoding."""

    format: str
    codec: str
    width: int
    height: int
    duration: float | None  # seconds; None where the header does not say
    average_fps: float | None


@dataclass
class SampledFrame:
    number: int  # in decode order, 0 = the first frame
    time: float  # seconds from the start
    pixels: np.ndarray  # (H, W, 3) uint8 RGB


def _av() -> Any:
    import av

    return av


def _open(data: bytes) -> Any:
    """The container, or ``not-a-video``."""
    av = _av()
    if not data:
        raise VideoError("not-a-video", "the file is empty (0 bytes)")
    if not is_video(data):
        raise VideoError("not-a-video", "not a recognised video file (MP4, MOV, MKV, WebM, AVI)")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.InvalidDataError as exc:
        raise VideoError("corrupt-video", f"video data is corrupt: {exc}") from exc
    except (av.error.FFmpegError, ValueError) as exc:
        raise VideoError("not-a-video", f"not a readable video file: {exc}") from exc
    names = set(container.format.name.split(","))
    if not names & set(VIDEO_FORMATS) or not container.streams.video:
        container.close()
        raise VideoError("not-a-video", "the file holds no video stream")
    return container


def _info(container: Any) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    duration: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    rate = stream.average_rate
    return VideoInfo(
        format=container.format.name,
        codec=ctx.name,
        width=int(ctx.width or 0),
        height=int(ctx.height or 0),
        duration=duration,
        average_fps=None if not rate else float(rate),
    )


def _check(info: VideoInfo, limits: VideoLimits) -> None:
    if info.width < 1 or info.height < 1:
        raise VideoError("corrupt-video", "the video stream has no frame size")
    if info.width * info.height > limits.max_pixels:
        raise VideoError(
            "video-too-large",
            f"frames are {info.width}x{info.height} = {info.width * info.height / 1e6:.1f} MP, "
            f"above the {limits.max_pixels / 1e6:.1f} MP limit for video probes",
        )
    if info.duration is not None and info.duration > limits.max_seconds:
        raise VideoError(
            "video-too-long",
            f"the clip is {info.duration:.1f} s long, above the {limits.max_seconds:g} s limit "
            "for video probes: cut the part that shows the person",
        )


def video_info(data: bytes, limits: VideoLimits | None = None) -> VideoInfo:
    """The clip's header, checked against ``limits`` (no frame is decoded)."""
    container = _open(data)
    try:
        info = _info(container)
    finally:
        container.close()
    _check(info, limits or VideoLimits())
    return info


def sample_frames(data: bytes, limits: VideoLimits | None = None) -> Iterator[SampledFrame]:
    """Decode the clip and yield its sampled frames as RGB, within ``limits``.

    The header is checked before the first frame is decoded. A frame is sampled when its
    time reaches the next sampling time: one every ``1/fps`` seconds, spread wider where the
    clip is longer than ``max_frames / fps``, so at most ``max_frames`` frames are sampled.
    Frames decode one at a time, each inside the process-wide pool of probe decoders that
    photo probes share."""
    av = _av()
    limits = limits or VideoLimits()
    container = _open(data)
    try:
        info = _info(container)
        _check(info, limits)
        step = 1.0 / limits.fps
        if info.duration is not None:
            step = max(step, info.duration / limits.max_frames)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        sampled = 0
        next_t = 0.0
        decoded = container.decode(stream)
        number = -1
        while True:
            # the pool of probe decoders is held while a frame decodes, not while the caller
            # works on the frames yielded
            with probe_limits().pool:
                try:
                    frame = next(decoded, None)
                except av.error.FFmpegError as exc:
                    raise VideoError("corrupt-video", f"video data is corrupt: {exc}") from exc
                if frame is None:
                    break
                number += 1
                t = _frame_time(frame, number, info)
                if t > limits.max_seconds:
                    raise VideoError(
                        "video-too-long",
                        f"the clip runs past the {limits.max_seconds:g} s limit for video "
                        "probes: cut the part that shows the person",
                    )
                if frame.width * frame.height > limits.max_pixels:
                    raise VideoError(
                        "video-too-large",
                        f"a frame is {frame.width}x{frame.height}, above the "
                        f"{limits.max_pixels / 1e6:.1f} MP limit for video probes",
                    )
                if t + 1e-6 < next_t or sampled >= limits.max_frames:
                    continue
                sampled += 1
                next_t = max(next_t + step, t + step / 2)
                pixels = frame.to_ndarray(format="rgb24")
            yield SampledFrame(number, t, pixels)
        if sampled == 0:
            raise VideoError("corrupt-video", "no frame of the video could be decoded")
    finally:
        container.close()


def frame_at(data: bytes, number: int, limits: VideoLimits | None = None) -> np.ndarray:
    """Frame ``number`` (decode order) of the clip as RGB, within ``limits``."""
    av = _av()
    limits = limits or VideoLimits()
    container = _open(data)
    try:
        _check(_info(container), limits)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        with probe_limits().pool:
            try:
                for n, frame in enumerate(container.decode(stream)):
                    if n == number:
                        return np.asarray(frame.to_ndarray(format="rgb24"))
            except av.error.FFmpegError as exc:
                raise VideoError("corrupt-video", f"video data is corrupt: {exc}") from exc
    finally:
        container.close()
    raise VideoError("corrupt-video", f"the clip has no frame {number}")


def _frame_time(frame: Any, number: int, info: VideoInfo) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(Fraction(frame.pts) * frame.time_base)
    return number / (info.average_fps or 25.0)


# -- tracks -----------------------------------------------------------------------------------


@dataclass
class TrackFace:
    frame: int  # the frame's number
    face: Face


@dataclass
class Track:
    """One person followed across the sampled frames."""

    faces: list[TrackFace] = field(default_factory=list)
    index: int = 0  # 1-based, in order of first appearance (then frame position)

    @property
    def last(self) -> TrackFace:
        return self.faces[-1]

    @property
    def frames(self) -> tuple[int, int]:
        return self.faces[0].frame, self.faces[-1].frame

    def best(self, k: int = DEFAULT_TRACK_FACES) -> list[TrackFace]:
        """The ``k`` best faces by quality (the larger face first among equals), in frame
        order."""
        ranked = sorted(self.faces, key=lambda tf: (-tf.face.quality, -tf.face.size, tf.frame))
        return sorted(ranked[:k], key=lambda tf: tf.frame)

    def best_face(self) -> TrackFace:
        return max(self.faces, key=lambda tf: (tf.face.quality, tf.face.size, -tf.frame))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return 0.0 if na == 0 or nb == 0 else float(np.dot(a, b) / (na * nb))


@dataclass(frozen=True)
class TrackLines:
    """The cosine lines of :func:`track_faces`, in the embedding model's scores."""

    near: float = TRACK_NEAR_COSINE
    rejoin: float = TRACK_REJOIN_COSINE

    @classmethod
    def from_calibration(cls, calibration: Any) -> TrackLines:
        """The lines at :data:`TRACK_NEAR_FMR` and :data:`TRACK_REJOIN_FMR` of a
        :class:`~faceledger.search.calibration.Calibration` (the defaults without one)."""
        if calibration is None:
            return cls()
        near = float(calibration.threshold_for(TRACK_NEAR_FMR))
        return cls(near, max(near, float(calibration.threshold_for(TRACK_REJOIN_FMR))))


def track_faces(
    frames: list[tuple[int, list[Face]]], lines: TrackLines | None = None
) -> list[Track]:
    """Follow faces across frames (each ``(frame number, faces found in it)``, in order).

    For each frame every (track, face) pair is scored by box overlap plus embedding cosine
    against the track's last face; a pair may join when the boxes overlap at least
    :data:`TRACK_MIN_IOU` and the faces are alike (cosine at least ``lines.near``), or,
    whatever the overlap, when they are very alike (``lines.rejoin``). Pairs are taken
    greedily, best first, each track and face once; other faces start new tracks."""
    lines = lines or TrackLines()
    tracks: list[Track] = []
    for number, faces in frames:
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(tracks):
            if track.last.frame == number:
                continue
            last = track.last.face
            for fi, face in enumerate(faces):
                overlap = probes.iou(last.detection.bbox.as_list(), face.detection.bbox.as_list())
                alike = _cosine(last.embedding, face.embedding)
                near = overlap >= TRACK_MIN_IOU and alike >= lines.near
                if near or alike >= lines.rejoin:
                    pairs.append((overlap + alike, ti, fi))
        taken_tracks: set[int] = set()
        taken_faces: set[int] = set()
        for _score, ti, fi in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
            if ti in taken_tracks or fi in taken_faces:
                continue
            taken_tracks.add(ti)
            taken_faces.add(fi)
            tracks[ti].faces.append(TrackFace(number, faces[fi]))
        new = [fi for fi in range(len(faces)) if fi not in taken_faces]
        for fi in sorted(new, key=lambda i: faces[i].detection.bbox.left):
            tracks.append(Track([TrackFace(number, faces[fi])]))
    for i, track in enumerate(tracks, 1):
        track.index = i
    return tracks


@dataclass
class VideoAnalysis:
    info: VideoInfo
    frames: list[int]  # the numbers of the frames sampled
    tracks: list[Track]


def analyse_video(
    analyzer: FaceAnalyzer,
    data: bytes,
    limits: VideoLimits | None = None,
    lines: TrackLines | None = None,
) -> VideoAnalysis:
    """Decode the clip within ``limits``, find the faces in each sampled frame and track
    them (:func:`track_faces` with ``lines``). Raises :class:`VideoError`.

    Faces are detected in up to ``limits.threads`` frames at once, each thread with its own
    copy of the analyzer's detector, while the next frames decode; landmarks, alignment and
    embedding follow in frame order. At most twice as many sampled frames as threads are
    held at a time."""
    limits = limits or VideoLimits()
    info = video_info(data, limits)
    detectors: queue.SimpleQueue[Any] = queue.SimpleQueue()
    copies = _detector_copies(analyzer.detector, limits.threads)
    for d in copies:
        detectors.put(d)

    def detect(pixels: np.ndarray) -> list[Detection]:
        detector = detectors.get()
        try:
            return list(detector.detect(pixels))
        finally:
            detectors.put(detector)

    found: list[tuple[int, list[Face]]] = []
    pending: deque[tuple[SampledFrame, Future[list[Detection]]]] = deque()

    def finish() -> None:
        frame, job = pending.popleft()
        faces = analyzer.faces_from_detections(frame.pixels, job.result())
        found.append((frame.number, faces))

    with ThreadPoolExecutor(len(copies), thread_name_prefix="video-detect") as pool:
        try:
            for frame in sample_frames(data, limits):
                pending.append((frame, pool.submit(detect, frame.pixels)))
                while len(pending) > 2 * len(copies):
                    finish()
            while pending:
                finish()
        finally:
            for _, job in pending:
                job.cancel()
    return VideoAnalysis(info, [n for n, _ in found], track_faces(found, lines))


def _detector_copies(detector: Any, n: int) -> list[Any]:
    """``detector`` and up to ``n - 1`` copies of it, one for each thread; fewer where it
    cannot be copied."""
    copies = [detector]
    for _ in range(n - 1):
        try:
            copies.append(copy.deepcopy(detector))
        except (TypeError, copy.Error, pickle.PicklingError):
            break  # dlib's CNN detector cannot be copied: it runs alone
    return copies
