from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from faceledger.vision.decode import DecodeError, decode_image

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb() -> Image.Image:
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_formats_decode_to_rgb8(rgb: Image.Image, fmt: str) -> None:
    img = decode_image(_encode(rgb, fmt))
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (40, 60, 3)
    assert img.format == fmt


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_modes_become_rgb(rgb: Image.Image, mode: str) -> None:
    src = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = decode_image(_encode(src, fmt))
    assert img.pixels.shape == (40, 60, 3) and img.pixels.dtype == np.uint8


def test_sixteen_bit_keeps_contrast() -> None:
    arr = np.zeros((10, 10), np.uint16)
    arr[:, 5:] = 65535
    img = decode_image(_encode(Image.fromarray(arr), "PNG"))
    assert img.pixels[0, 0, 0] == 0 and img.pixels[0, 9, 0] == 255


def test_exif_orientation_applied(rgb: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img = decode_image(_encode(rgb, "JPEG", exif=exif))
    assert img.pixels.shape == (60, 40, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty-file"),
        (b"hello, I am text pretending to be a jpeg", "not-an-image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "not-an-image"),
    ],
)
def test_bad_bytes_have_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_image(data)
    assert exc.value.reason == reason


def test_truncated_jpeg(rgb: Image.Image) -> None:
    data = _encode(rgb.resize((600, 400)), "JPEG")
    with pytest.raises(DecodeError) as exc:
        decode_image(data[: len(data) // 3])
    assert exc.value.reason == "corrupt-image"


def test_pixel_bomb_refused_before_decoding() -> None:
    # A tiny PNG header claiming 30000 x 30000 pixels.
    data = _encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(data) < 200_000
    with pytest.raises(DecodeError) as exc:
        decode_image(data)
    assert exc.value.reason == "too-many-pixels"
    assert "limit" in str(exc.value)
