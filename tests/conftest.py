from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def lfw_root() -> Path:
    env = os.environ.get("FACELEDGER_LFW")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lfw"


@pytest.fixture(scope="session")
def lfw() -> Path:
    root = lfw_root()
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"LFW not found at {root} (set FACELEDGER_LFW)")
    return root


def lfw_image(lfw: Path, name: str, n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


@pytest.fixture(scope="session")
def analyzer():
    from faceledger.ingest import PipelineSettings

    return PipelineSettings(detector="hog").analyzer()


def side_by_side(paths: list[Path]) -> bytes:
    """A JPEG with the given photos next to each other (a multi-face photo)."""
    imgs = [Image.open(p).convert("RGB") for p in paths]
    w = sum(i.width for i in imgs)
    h = max(i.height for i in imgs)
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    x = 0
    for i in imgs:
        canvas.paste(i, (x, 0))
        x += i.width
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def blank_jpeg(size: tuple[int, int] = (300, 200)) -> bytes:
    rng = np.random.default_rng(0)
    arr = (rng.random((size[1], size[0], 3)) * 40 + 100).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()
