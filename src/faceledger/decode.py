"""Decode image bytes into 8-bit RGB arrays, safely.

Handles JPEG, PNG, WebP, BMP, TIFF (whatever Pillow reads), applies the EXIF orientation,
converts grayscale, palette, CMYK, alpha and 16-bit images to 8-bit RGB, and refuses
decompression bombs before they are decoded.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP: larger than any phone or DSLR photo
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO", "GIF"}


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


def _to_rgb8(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` or raise :class:`DecodeError` with a specific reason."""
    if not data:
        raise DecodeError("empty-file", "file is empty (0 bytes)")
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypavif"):
        raise DecodeError(
            "unsupported-format", "HEIC/HEIF/AVIF photos are not supported: convert to JPEG"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise DecodeError("unsupported-format", f"unsupported image format {fmt}")
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(
                    "too-many-pixels",
                    f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP"
                    " limit (decompression-bomb guard)",
                )
            if w < 1 or h < 1:
                raise DecodeError("empty-image", f"image has no pixels ({w}x{h})")
            img.load()
            with contextlib.suppress(Exception):  # corrupt EXIF: keep pixels, skip orientation
                img = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(img)
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
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    return DecodedImage(pixels=pixels, format=fmt, width=pixels.shape[1], height=pixels.shape[0])
