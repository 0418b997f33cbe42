"""Face quality: size, sharpness and a pose estimate from the five landmarks.

The score is a product of three factors in [0, 1]; it ranks faces for review and gates
probes (a policy may refuse probes below a minimum). It is a heuristic, not a model, and the
factors are stored so that a reviewer can see why a face scored low.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceledger.types import Detection

# Faces at or above these values score 1.0 on that factor.
GOOD_SIZE = 100  # px, box side
MIN_SIZE = 20
# Variance of the Laplacian on the 150 px grey chip. On 208 LFW faces (every third of the
# first 600 people, first photo) its 5/25/50/75/95th percentiles were 15/23/40/58/121, so
# 25 scores three quarters of LFW's press photos as fully sharp.
GOOD_SHARPNESS = 25.0
MAX_YAW = 0.6  # |yaw| proxy at which the pose factor reaches 0


@dataclass
class Quality:
    score: float
    size: int
    sharpness: float
    yaw: float


def laplacian_variance(chip: np.ndarray) -> float:
    grey = chip.astype(np.float32).mean(axis=2) if chip.ndim == 3 else chip.astype(np.float32)
    lap = (
        -4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
    )
    return float(lap.var())


def yaw_proxy(landmarks: np.ndarray) -> float:
    """Signed horizontal offset of the nose from the eye midpoint, in inter-eye distances.

    dlib's 5 points: 0-1 one eye's corners, 2-3 the other's, 4 the nose base. About 0 for a
    frontal face, growing towards +-0.5 as the head turns to profile.
    """
    eye_a = landmarks[0:2].mean(axis=0)
    eye_b = landmarks[2:4].mean(axis=0)
    mid = (eye_a + eye_b) / 2
    inter = float(np.linalg.norm(eye_a - eye_b))
    if inter < 1e-6:
        return 1.0
    axis = (eye_a - eye_b) / inter
    return float(np.dot(landmarks[4] - mid, axis) / inter)


def assess(detection: Detection, chip: np.ndarray) -> Quality:
    size = int(min(detection.bbox.width, detection.bbox.height))
    sharp = laplacian_variance(chip)
    yaw = yaw_proxy(detection.landmarks) if detection.landmarks is not None else 0.0
    f_size = float(np.clip((size - MIN_SIZE) / (GOOD_SIZE - MIN_SIZE), 0.0, 1.0))
    f_sharp = float(np.clip(sharp / GOOD_SHARPNESS, 0.0, 1.0))
    f_pose = float(np.clip(1.0 - abs(yaw) / MAX_YAW, 0.0, 1.0))
    return Quality(score=round(f_size * f_sharp * f_pose, 4), size=size, sharpness=sharp, yaw=yaw)
