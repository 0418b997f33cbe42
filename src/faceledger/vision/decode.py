"""Decode image bytes into 8-bit RGB arrays, safely.

Handles JPEG, PNG, WebP, BMP, TIFF (whatever Pillow reads), applies the EXIF orientation,
converts grayscale, palette, CMYK, alpha and 16-bit images to 8-bit RGB, and refuses
decompression bombs before they are decoded.

Memory: the pixel count is checked from the header (Pillow reads the size lazily) before
anything is decoded; then the image is decoded once in its own mode and converted to the
(H, W, 3) result a strip of rows at a time, so the peak is the decoded image plus the result
(about 5 bytes a pixel for a 16-bit grey PNG, 7 for RGB), with no full-size float or
intermediate copy.

Probes (search, 1:1 verify, detect, erasure by photo) go through :func:`decode_probe`: a
smaller pixel budget than the gallery's (:data:`DEFAULT_MAX_PROBE_PIXELS`) and a process-wide
bounded pool of decoders (:func:`configure_probes`), so that a few small uploads that decode
to huge images cannot exhaust the server's memory.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP: larger than any phone or DSLR photo
# Probes: a 124 KB 7999x7999 (64 MP) 16-bit PNG took 1.6 GB to decode. At 32 MP (more than
# a 24 MP phone photo; crop larger ones), three probes at once in the worst format measured
# (lossless WebP, 15 bytes a pixel while decoding) add 0.7 GB to the server with one decoder,
# 1 GB with two (benchmarks/probe_memory.py).
DEFAULT_MAX_PROBE_PIXELS = 32_000_000
DEFAULT_PROBE_DECODERS = 1  # probes decoded at once, process-wide
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO", "GIF"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
STRIP_PIXELS = 1 << 19  # pixels converted at a time: float64 temporaries of 4 MB
# Pillow keeps an image in blocks of 16 MB; glibc serves blocks under 32 MB from its heaps,
# where freed ones stay in the process (a 7999x7999 probe left ~1 GB behind over three
# requests). Blocks of 64 MB are mapped and unmapped: a large image's memory returns to the
# system when it is freed. Small images are unaffected (a block is only as large as needed).
PILLOW_BLOCK_BYTES = 64 * 1024 * 1024
if "PILLOW_BLOCK_SIZE" not in os.environ:  # the operator's own choice wins
    Image.core.set_block_size(PILLOW_BLOCK_BYTES)


class DecodeError(Exception):
    """An image that cannot be used; ``reason`` is a short stable key for summaries."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, orientation applied
    format: str
    width: int
    height: int


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """Pillow's and numpy's exceptions as :class:`DecodeError` with a reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError("too-many-pixels", f"decompression bomb refused: {exc}") from exc
    except Image.DecompressionBombWarning as exc:
        raise DecodeError("too-many-pixels", f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError("not-an-image", "not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError("corrupt-image", f"image data is corrupt or truncated: {exc}") from exc


def _open(data: bytes, max_pixels: int, limit_name: str) -> tuple[Image.Image, str]:
    """The image with its header read and checked; no pixel is decoded yet."""
    if not data:
        raise DecodeError("empty-file", "file is empty (0 bytes)")
    # A truncated file is corrupt, never padded out with grey: Pillow's process-wide switch
    # for that is off (a library that turns it on at import, as WeasyPrint does, would
    # otherwise let half-written photos into the gallery and probes).
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypavif"):
        raise DecodeError(
            "unsupported-format", "HEIC/HEIF/AVIF photos are not supported: convert to JPEG"
        )
    img: Image.Image = Image.open(io.BytesIO(data))
    fmt = img.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        raise DecodeError("unsupported-format", f"unsupported image format {fmt}")
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError(
            "too-many-pixels",
            f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP"
            f" {limit_name}",
        )
    if w < 1 or h < 1:
        raise DecodeError("empty-image", f"image has no pixels ({w}x{h})")
    return img, fmt


def _strips(img: Image.Image) -> Iterator[tuple[int, int, Image.Image]]:
    """(first row, end row, those rows as an image), a few hundred thousand pixels each."""
    w, h = img.size
    rows = max(1, STRIP_PIXELS // w)
    for y in range(0, h, rows):
        end = min(h, y + rows)
        yield y, end, img.crop((0, y, w, end))


def _extrema(img: Image.Image) -> tuple[float, float]:
    """The lowest and highest value of a one-band image (NaN if any pixel is NaN)."""
    lows, highs = [], []
    for _, _, strip in _strips(img):
        arr = np.asarray(strip)
        lows.append(arr.min())
        highs.append(arr.max())
    return float(np.min(lows)), float(np.max(highs))


def _rgb8(img: Image.Image) -> np.ndarray:
    """The decoded image as (H, W, 3) uint8 RGB, converted strip by strip.

    16-bit and 32-bit integer grey are scaled to 0..255 (by 65535 when any value exceeds
    255, else by the highest value), float grey is stretched from its lowest to its highest
    value, and transparency is composed over white.
    """
    w, h = img.size
    mode = img.mode
    out = np.empty((h, w, 3), np.uint8)
    if mode in SIXTEEN_BIT_MODES:
        _, hi = _extrema(img)
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        for y, end, strip in _strips(img):
            arr = np.asarray(strip, dtype=np.float64) * scale
            out[y:end] = np.clip(arr, 0, 255).astype(np.uint8)[..., None]
    elif mode == "F":
        lo, hi = _extrema(img)
        span = hi - lo if hi > lo else 1.0
        for y, end, strip in _strips(img):
            arr = (np.asarray(strip, dtype=np.float64) - lo) / span * 255.0
            out[y:end] = arr.astype(np.uint8)[..., None]
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        for y, end, strip in _strips(img):
            rgba = strip.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            out[y:end] = np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    else:
        for y, end, strip in _strips(img):
            out[y:end] = np.asarray(strip if strip.mode == "RGB" else strip.convert("RGB"))
    return out


def _decode(img: Image.Image, fmt: str) -> DecodedImage:
    """Decode an opened image, orient it and convert it; the decoded image is then freed."""
    try:
        img.load()
        with contextlib.suppress(Exception):  # corrupt EXIF: keep pixels, skip orientation
            ImageOps.exif_transpose(img, in_place=True)
        pixels = _rgb8(img)
    finally:
        img.close()
    return DecodedImage(pixels=pixels, format=fmt, width=pixels.shape[1], height=pixels.shape[0])


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` or raise :class:`DecodeError` with a specific reason."""
    with _decode_errors():
        img, fmt = _open(data, max_pixels, "limit (decompression-bomb guard)")
        return _decode(img, fmt)


# -- probes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeLimits:
    """The process-wide probe budget and the pool that bounds concurrent probe decodes."""

    max_pixels: int
    decoders: int
    pool: threading.BoundedSemaphore


_probe_limits = ProbeLimits(
    DEFAULT_MAX_PROBE_PIXELS,
    DEFAULT_PROBE_DECODERS,
    threading.BoundedSemaphore(DEFAULT_PROBE_DECODERS),
)
_configure_lock = threading.Lock()


def configure_probes(
    max_pixels: int = DEFAULT_MAX_PROBE_PIXELS, decoders: int = DEFAULT_PROBE_DECODERS
) -> ProbeLimits:
    """Set the probe pixel budget and the number of probes decoded at once (the server does
    this from ``FACELEDGER_MAX_PROBE_MEGAPIXELS`` and ``FACELEDGER_PROBE_DECODERS``).

    Decodes already in the pool finish under the old limits."""
    global _probe_limits
    if max_pixels < 1:
        raise ValueError(f"the probe pixel budget must be positive, not {max_pixels}")
    if decoders < 1:
        raise ValueError(f"at least one probe decoder is needed, not {decoders}")
    with _configure_lock:
        old = _probe_limits
        pool = old.pool if decoders == old.decoders else threading.BoundedSemaphore(decoders)
        _probe_limits = ProbeLimits(max_pixels, decoders, pool)
        return _probe_limits


def probe_limits() -> ProbeLimits:
    return _probe_limits


def decode_probe(data: bytes, max_pixels: int | None = None) -> DecodedImage:
    """Decode a probe photo (search, 1:1 verify, detect, erasure by photo).

    Like :func:`decode_image`, but under the probe pixel budget (``max_pixels``, else the
    configured one), checked from the header before anything is decoded and before waiting
    for the pool, so an oversized probe is refused at once with ``too-many-pixels``; the
    decode itself waits for a place in the process-wide pool of probe decoders.
    """
    limits = _probe_limits
    budget = limits.max_pixels if max_pixels is None else max_pixels
    with _decode_errors():
        img, fmt = _open(data, budget, "limit for probe photos: crop or downscale the photo")
        with limits.pool:
            return _decode(img, fmt)
