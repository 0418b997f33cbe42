"""Video probes, the vision side (#14 item 3): clips made from LFW photos with PyAV (one
person and two, panned and zoomed across the frame) are decoded within budgets, sampled at
the set rate, and their faces tracked across frames; bad and huge clips get stable codes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image, need_module
from faceledger.types import BBox, Detection, Face
from faceledger.vision.video import (
    TrackLines,
    VideoError,
    VideoLimits,
    analyse_video,
    frame_at,
    is_video,
    sample_frames,
    track_faces,
    video_info,
)

need_module("av", "pip install av (a faceledger dependency)")
from videoclips import clip  # noqa: E402  (needs av)

pytestmark = pytest.mark.nodb

ONE = ("Al_Gore", 3)
TWO = ("Adrien_Brody", 4)


@pytest.fixture(scope="module")
def one_person(lfw: Path) -> bytes:
    return clip([lfw_image(lfw, *ONE)], seconds=3, fps=10)


@pytest.fixture(scope="module")
def two_people(lfw: Path) -> bytes:
    return clip([lfw_image(lfw, *ONE), lfw_image(lfw, *TWO)], seconds=3, fps=10)


def test_frames_are_sampled_at_the_set_rate_within_the_frame_budget(one_person: bytes) -> None:
    """#14 item 3: a 3 s clip at 10 frames a second is sampled 2 a second by default (frames
    0, 5, ... 25), 1 a second when set so, and with a budget of 3 frames the 3 are spread over
    the whole clip; the header (size, duration) is read before any frame is decoded."""
    info = video_info(one_person)
    assert (info.width, info.height, info.duration) == (640, 360, 3.0)
    assert [f.number for f in sample_frames(one_person)] == [0, 5, 10, 15, 20, 25]
    assert [f.number for f in sample_frames(one_person, VideoLimits(fps=1))] == [0, 10, 20]
    spread = [f.number for f in sample_frames(one_person, VideoLimits(fps=10, max_frames=3))]
    assert spread == [0, 10, 20]
    frame = next(iter(sample_frames(one_person)))
    assert frame.pixels.shape == (360, 640, 3) and frame.pixels.dtype == np.uint8
    assert np.array_equal(frame_at(one_person, 10), list(sample_frames(one_person))[2].pixels)


def test_one_person_is_one_track_two_people_are_two(
    one_person: bytes, two_people: bytes, analyzer: Any
) -> None:
    """#14 item 3: the face panned and zoomed across the frames of a one-person clip is one
    track through every sampled frame; in the two-person clip (one moving right, one left)
    each person is a track of their own, whose faces stay on their side of the frame and
    resemble one another more than the other person."""
    one = analyse_video(analyzer, one_person)
    assert one.frames == [0, 5, 10, 15, 20, 25]
    [track] = one.tracks
    assert [tf.frame for tf in track.faces] == one.frames
    lefts = [tf.face.detection.bbox.left for tf in track.faces]
    assert lefts == sorted(lefts) and lefts[-1] - lefts[0] > 30  # it moved

    two = analyse_video(analyzer, two_people)
    assert len(two.tracks) == 2
    first, second = two.tracks
    assert [tf.frame for tf in first.faces] == [tf.frame for tf in second.faces] == two.frames
    assert all(tf.face.detection.bbox.right <= 320 for tf in first.faces)
    assert all(tf.face.detection.bbox.left >= 320 for tf in second.faces)
    same = float(np.dot(first.faces[0].face.embedding, first.faces[-1].face.embedding))
    other = float(np.dot(first.faces[0].face.embedding, second.faces[0].face.embedding))
    assert same > other
    best = first.best(3)
    assert len(best) == 3 and [tf.frame for tf in best] == sorted(tf.frame for tf in best)
    assert min(tf.face.quality for tf in best) >= max(
        tf.face.quality for tf in first.faces if tf not in best
    )


def _face(box: list[int], vector: list[float], quality: float = 0.8) -> Face:
    v = np.asarray(vector, np.float32)
    return Face(
        detection=Detection(bbox=BBox(*box), score=1.0, detector="test"),
        embedding=v / np.linalg.norm(v),
        model_id="test",
        quality=quality,
        size=box[2] - box[0],
        sharpness=30.0,
        yaw=0.0,
    )


def test_tracking_joins_by_overlap_and_likeness_and_splits_strangers() -> None:
    """#14 item 3: a face that overlaps a track's last face and is alike joins it; a
    stranger in the same place (overlap, unlike) starts a new track; a face far away joins
    a track only when very alike (the person moved far between two sampled frames)."""
    lines = TrackLines(near=0.8, rejoin=0.95)
    a, a2 = [1.0, 0.0, 0.0], [1.0, 0.25, 0.0]  # cosine 0.97
    b = [0.0, 1.0, 0.0]
    near_a = [1.0, 0.7, 0.0]  # cosine 0.93 with a2: alike, not very
    near_near_a = [1.0, 0.7, 0.8]  # cosine 0.82 with near_a
    frames = [
        (0, [_face([10, 10, 60, 60], a), _face([200, 10, 250, 60], b)]),
        (5, [_face([14, 10, 64, 60], b), _face([204, 10, 254, 60], b)]),  # stranger at a's place
        (10, [_face([400, 300, 450, 350], a2)]),  # a, far away, very alike: joins a
        (15, [_face([404, 300, 454, 350], near_a)]),  # overlaps a, alike enough
        (20, [_face([10, 300, 60, 350], near_near_a)]),  # far, only alike: new track
    ]
    tracks = track_faces(frames, lines)
    assert [[tf.frame for tf in t.faces] for t in tracks] == [
        [0, 10, 15],
        [0, 5],
        [5],
        [20],
    ]
    assert [t.index for t in tracks] == [1, 2, 3, 4]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def test_containers_are_recognised_by_their_bytes(lfw: Path) -> None:
    """#14 item 3: MP4, Matroska and AVI clips are videos by their bytes; JPEG, PNG, an
    HEIC/AVIF still and random bytes are not (and are refused as not-a-video)."""
    photo = [lfw_image(lfw, *ONE)]
    for fmt, codec in (("mp4", "libx264"), ("matroska", "libx264"), ("avi", "mpeg4")):
        data = clip(photo, seconds=0.5, fps=4, size=(320, 240), fmt=fmt, codec=codec)
        assert is_video(data), fmt
        assert video_info(data).width == 320
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    avif = b"\x00\x00\x00\x1cftypavif" + bytes(64)
    junk = np.random.default_rng(1).bytes(4096)
    for data in (_jpeg(), png.getvalue(), avif, junk, b""):
        assert not is_video(data)
        with pytest.raises(VideoError) as err:
            video_info(data)
        assert err.value.reason == "not-a-video"


def test_long_huge_and_broken_clips_are_refused_with_stable_codes(one_person: bytes) -> None:
    """#14 item 3: a clip longer than the duration budget is video-too-long, frames above
    the pixel budget video-too-large (both from the header, before decoding), and a clip cut
    short (its index missing) or damaged inside is corrupt-video."""
    with pytest.raises(VideoError) as err:
        list(sample_frames(one_person, VideoLimits(max_seconds=2)))
    assert err.value.reason == "video-too-long" and "2 s limit" in str(err.value)
    with pytest.raises(VideoError) as err:
        list(sample_frames(one_person, VideoLimits(max_pixels=640 * 360 - 1)))
    assert err.value.reason == "video-too-large" and "640x360" in str(err.value)
    with pytest.raises(VideoError) as err:
        list(sample_frames(one_person[: len(one_person) // 2]))
    assert err.value.reason == "corrupt-video"


class _Uncopyable:
    """A detector that refuses to be copied, as dlib's CNN detector does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def detect(self, image: np.ndarray) -> list[Detection]:
        return list(self.inner.detect(image))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise TypeError("cannot pickle this detector")


def test_frames_are_detected_in_threads_with_the_same_faces(
    two_people: bytes, analyzer: Any
) -> None:
    """#14 item 3 (the 2-core target): with two threads each has its own copy of the
    detector and the tracks are the very ones one thread finds; a detector that cannot be
    copied runs alone, with the same result."""
    from faceledger.vision.analysis import FaceAnalyzer
    from faceledger.vision.video import _detector_copies

    copies = _detector_copies(analyzer.detector, 2)
    assert len(copies) == 2 and copies[0] is analyzer.detector and copies[1] is not copies[0]

    def boxes(limits: VideoLimits, a: Any = analyzer) -> list[list[tuple[int, list[int]]]]:
        found = analyse_video(a, two_people, limits).tracks
        return [[(tf.frame, tf.face.detection.bbox.as_list()) for tf in t.faces] for t in found]

    one = boxes(VideoLimits(threads=1))
    assert boxes(VideoLimits(threads=2)) == one and len(one) == 2
    alone = FaceAnalyzer(_Uncopyable(analyzer.detector), analyzer.embedder)  # type: ignore[arg-type]
    assert len(_detector_copies(alone.detector, 2)) == 1
    assert boxes(VideoLimits(threads=2), alone) == one


def test_video_settings_come_from_the_environment() -> None:
    """#14 item 3: the budgets, the frames sampled a second, the faces fused per track and
    the detection threads are settings (FACELEDGER_VIDEO_*); bad values are refused."""
    env = {
        "FACELEDGER_VIDEO_FPS": "1",
        "FACELEDGER_VIDEO_MAX_SECONDS": "10",
        "FACELEDGER_VIDEO_MAX_MEGAPIXELS": "0.5",
        "FACELEDGER_VIDEO_MAX_FRAMES": "8",
        "FACELEDGER_VIDEO_TRACK_FACES": "3",
        "FACELEDGER_VIDEO_THREADS": "1",
    }
    assert VideoLimits.from_env(env) == VideoLimits(10.0, 500_000, 8, 1.0, 3, 1)
    assert VideoLimits.from_env({}) == VideoLimits()
    assert VideoLimits().fps == 2.0 and VideoLimits().track_faces == 5
    for name, bad in (("FACELEDGER_VIDEO_FPS", "0"), ("FACELEDGER_VIDEO_MAX_FRAMES", "many")):
        with pytest.raises(ValueError, match=name if bad == "many" else "positive"):
            VideoLimits.from_env({name: bad})
