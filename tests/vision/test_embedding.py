from __future__ import annotations

import numpy as np
import pytest

from faceledger.vision.embedding import DEFAULT_EMBEDDER, FlipAveraged
from faceledger.vision.routing import create_embedder, create_embedder_for_model

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    return base


def test_flip_averaged_is_mirror_invariant(chips: np.ndarray) -> None:
    emb = create_embedder("onnx", threads=1)
    assert isinstance(emb, FlipAveraged) and emb.model_id == "dlib_resnet_v1+flip"
    a = emb.embed_chips(chips)
    b = emb.embed_chips(chips[:, :, ::-1])
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    plain = create_embedder("onnx", threads=1, flip=False)
    assert plain.model_id == "dlib_resnet_v1"
    assert not np.allclose(plain.embed_chips(chips), a, atol=1e-3)


def test_embedder_for_a_gallery_model() -> None:
    assert create_embedder_for_model("dlib_resnet_v1+flip").model_id == "dlib_resnet_v1+flip"
    assert create_embedder_for_model("dlib_resnet_v1").model_id == "dlib_resnet_v1"
    with pytest.raises(ValueError, match="model-dir"):
        create_embedder_for_model("onnx:w600k_r50:12345678")
    with pytest.raises(ValueError, match="unknown embedder"):
        create_embedder("tensorflow")
    assert DEFAULT_EMBEDDER == "onnx"
