"""ArcFace alignment: a 5-point similarity transform onto the 112x112 template, and the warp.

InsightFace recognisers are trained on chips cut by a similarity transform (rotation, uniform
scale, translation) that maps five facial points onto ``ARCFACE_TEMPLATE``. The points come
in *ArcFace order*: image-left eye centre, image-right eye centre, nose tip, image-left mouth
corner, image-right mouth corner (the subject's right eye is the image-left one). SCRFD
detectors return exactly these points.

Faces found by a detector without keypoints only have dlib's five points (two corners of
each eye and the base of the nose, no mouth). For those, :data:`DLIB5_TARGETS` holds where
dlib's five points sit on the ArcFace chip: dlib's own 5-point template expressed in
dlib's 68-point mean-face frame, carried onto the ArcFace template by the similarity that
best maps the mean face's ArcFace-analogue points (eye centres, nose tip, mouth corners).
Aligning those five points with the same least-squares similarity puts a dlib-landmarked
face on the same chip geometry as an SCRFD one, within a few pixels: checked once on 297
LFW faces against the ArcFace-analogue points of dlib's 68-point model, eye centres landed
1.6 px and nose and mouth 4.7 px (mean) from the template on the 112 px chip, about what a
direct 5-point fit of those same points leaves (2.1 and 3.0-4.8 px).

All coordinates use the pixel-centre convention (pixel ``(i, j)`` has its centre at
``x=j, y=i``), as dlib, OpenCV and InsightFace do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from faceledger.types import Detection

ARCFACE_SIZE = 112

#: InsightFace's ``arcface_dst``: the five ArcFace-order points on a 112x112 chip.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# dlib's 5-point template (dlib/image_transforms/interpolation.h, get_face_chip_details), in
# the unit-square mean-face frame, in the 5-point predictor's order: image-right eye outer
# and inner corner, image-left eye outer and inner corner, base of the nose.
_DLIB5_MEAN = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

# The same frame's 68-point mean face (dlib's mean_face_shape_x/y, points 36-41, 42-47, 30,
# 48 and 54), reduced to the ArcFace-order analogues: eye centres (mean of the six eye
# points), nose tip, mouth corners.
_LEFT_EYE_68 = np.array(
    [
        [0.121737, 0.216423],
        [0.187122, 0.178758],
        [0.265825, 0.179852],
        [0.334606, 0.231733],
        [0.260918, 0.245099],
        [0.182743, 0.244077],
    ]
)
_RIGHT_EYE_68 = np.array(
    [
        [0.645647, 0.231733],
        [0.714428, 0.179852],
        [0.793132, 0.178758],
        [0.858516, 0.216423],
        [0.79751, 0.244077],
        [0.719335, 0.245099],
    ]
)
_ARCFACE5_MEAN = np.array(
    [
        _LEFT_EYE_68.mean(axis=0),
        _RIGHT_EYE_68.mean(axis=0),
        [0.490127, 0.515625],  # 30: nose tip
        [0.254149, 0.780233],  # 48: image-left mouth corner
        [0.726104, 0.780233],  # 54: image-right mouth corner
    ]
)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping ``src`` points onto ``dst``.

    Returns the 2x3 matrix ``M`` with ``dst ≈ M @ [x, y, 1]``. Reflections are excluded, so a
    mirrored point set gets the best proper rotation, never a flip.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (n>=2, 2) point sets, got {src.shape}, {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = float((xs**2).sum()) / len(src)
    if var_s < 1e-12:
        raise ValueError("source points coincide; no similarity transform is defined")
    cov = xd.T @ xs / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sing * d).sum()) / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (n, 2) points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ m[:, :2].T + m[:, 2]


def invert_transform(m: np.ndarray) -> np.ndarray:
    inv = np.empty((2, 3))
    inv[:, :2] = np.linalg.inv(m[:, :2])
    inv[:, 2] = -inv[:, :2] @ m[:, 2]
    return inv


def warp_affine(image: np.ndarray, m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Warp an HxWx3 uint8 image by ``m`` (image -> output coordinates), bilinear, black border.

    Equivalent to OpenCV's ``warpAffine(image, m, (w, h))``: Pillow samples at pixel centres
    offset by half a pixel, which the translation terms below compensate for.
    """
    w, h = (size, size) if isinstance(size, int) else size
    inv = invert_transform(m)
    a = inv[:, :2]
    # Pillow maps output (x'+0.5) to input (x+0.5); convert from the pixel-centre convention.
    c = inv[:, 2] + 0.5 - a @ np.array([0.5, 0.5])
    data = (a[0, 0], a[0, 1], c[0], a[1, 0], a[1, 1], c[1])
    src = Image.fromarray(np.ascontiguousarray(image))
    out = src.transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def _scale_to_chip(points: np.ndarray, size: int) -> np.ndarray:
    """Points on the 112 chip -> a ``size`` chip (InsightFace's rule for 112k and 128k)."""
    if size % 112 == 0:
        return points * (size / 112.0)
    if size % 128 == 0:
        ratio = size / 128.0
        out = points * ratio
        out[:, 0] += 8.0 * ratio
        return out
    raise ValueError(f"no ArcFace template for a {size}px chip (needs a multiple of 112 or 128)")


def arcface_template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ArcFace template for a ``size``-pixel chip."""
    return _scale_to_chip(ARCFACE_TEMPLATE, size)


def _dlib5_targets() -> np.ndarray:
    m = estimate_similarity(_ARCFACE5_MEAN, ARCFACE_TEMPLATE)
    return apply_transform(m, _DLIB5_MEAN)


#: Where dlib's five landmarks (dlib's order) land on the 112x112 ArcFace chip.
DLIB5_TARGETS = _dlib5_targets()


def alignment_points(
    detection: Detection, size: int = ARCFACE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """(source points in the image, their targets on a ``size`` chip) for a detection.

    ArcFace-order keypoints (``detection.kps``, as SCRFD gives them) are preferred; otherwise
    dlib's five landmarks are used with :data:`DLIB5_TARGETS`.
    """
    kps = getattr(detection, "kps", None)
    if kps is not None:
        return np.asarray(kps, dtype=np.float64).reshape(5, 2), arcface_template(size)
    if detection.landmarks is not None:
        targets = _scale_to_chip(DLIB5_TARGETS, size)
        return np.asarray(detection.landmarks, dtype=np.float64).reshape(5, 2), targets
    raise ValueError("detection has neither keypoints nor landmarks; run the landmarker first")


def align_arcface(image: np.ndarray, detection: Detection, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ``size``x``size`` uint8 RGB chip an ArcFace-family recogniser expects."""
    src, dst = alignment_points(detection, size)
    return warp_affine(image, estimate_similarity(src, dst), size)
