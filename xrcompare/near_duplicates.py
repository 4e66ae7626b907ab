"""Near-duplicate images: the same radiograph published twice, re-cropped or re-contrasted.

Two images of one radiograph under two patient ids would cross a patient-wise split (one in
training, one in test), leaking the answer. :func:`find_near_duplicates` finds such pairs from
small thumbnails, tolerant to a few percent of cropping and to brightness/contrast changes:

* each image is shrunk to a 96 px square, and a high-pass 24 × 24 descriptor (the thumbnail
  minus its Gaussian blur, zero mean, unit norm) is taken of its central 80 %;
* the same descriptor is also taken of 125 windows of the other image (5 scales × 5 × 5 shifts
  of up to 4 % of the side), and a pair's score is the best normalised correlation over those
  windows, in either direction;
* pairs scoring at least :data:`THRESHOLD` are near-duplicates.

The high-pass step removes what every chest X-ray shares (the shape of a child's thorax makes
plain thumbnails of different children correlate above 0.96). Measured on cxr3 (1,280 images):
three cross-patient pairs score 0.96–0.98 and are the same radiograph (for example
``cohen_A7E260CE…`` and ``cohen_case_76_1-3``); the next cross-patient pair scores 0.91; copies
of cxr3 images cropped by 0–4 % per side with contrast and brightness changed score at least
0.90, 0.97 in the median.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Pairs scoring at least this are treated as one radiograph (see the module's measurements).
THRESHOLD = 0.94
DESCRIPTOR_SIZE = 24
THUMBNAIL_SIZE = 96
HIGH_PASS_SIGMA = 2.25
CENTRE = 0.80
SCALES = (0.72, 0.76, 0.80, 0.84, 0.88)
SHIFTS = (-0.04, -0.02, 0.0, 0.02, 0.04)
WINDOWS = tuple((scale, dx, dy) for scale in SCALES for dx in SHIFTS for dy in SHIFTS)


def _window(image: np.ndarray, scale: float, dx: float, dy: float) -> np.ndarray:
    height, width = image.shape
    crop_h, crop_w = height * scale, width * scale
    top = max(0, int(round(height / 2 + dy * height - crop_h / 2)))
    left = max(0, int(round(width / 2 + dx * width - crop_w / 2)))
    return image[top:top + int(round(crop_h)), left:left + int(round(crop_w))]


def _descriptor(window: np.ndarray) -> np.ndarray:
    small = cv2.resize(window, (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE), interpolation=cv2.INTER_AREA)
    small = small - cv2.GaussianBlur(small, (0, 0), HIGH_PASS_SIGMA)
    vector = small.ravel() - small.mean()
    return (vector / (np.linalg.norm(vector) + 1e-6)).astype(np.float32)


def fingerprint(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre descriptor (d,), window descriptors (len(WINDOWS), d)) of an 8-bit gray image."""
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    thumbnail = cv2.resize(gray, (THUMBNAIL_SIZE, THUMBNAIL_SIZE),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
    centre = _descriptor(_window(thumbnail, CENTRE, 0.0, 0.0))
    windows = np.stack([_descriptor(_window(thumbnail, *window)) for window in WINDOWS])
    return centre, windows


def similarity(first: tuple[np.ndarray, np.ndarray],
               second: tuple[np.ndarray, np.ndarray]) -> float:
    """The pair score of two fingerprints (best window correlation, either direction)."""
    return float(max((first[0] @ second[1].T).max(), (second[0] @ first[1].T).max()))


def pair_scores(fingerprints: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The (n, n) symmetric matrix of pair scores (the diagonal is -1)."""
    n = len(fingerprints)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    centres = np.stack([item[0] for item in fingerprints])
    windows = np.stack([item[1] for item in fingerprints])  # (n, K, d)
    best = np.full((n, n), -1.0, dtype=np.float32)
    for k in range(windows.shape[1]):
        np.maximum(best, centres @ windows[:, k, :].T, out=best)
    best = np.maximum(best, best.T)
    np.fill_diagonal(best, -1.0)
    return best


def find_near_duplicates(grays: Sequence[np.ndarray | None], threshold: float = THRESHOLD
                         ) -> list[tuple[int, int, float]]:
    """Index pairs (i < j, score) of near-duplicate images; ``None`` entries are skipped."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    usable = [index for index, gray in enumerate(grays) if gray is not None]
    scores = pair_scores([fingerprint(grays[index]) for index in usable])
    rows, columns = np.nonzero(np.triu(scores >= threshold, 1))
    return [(usable[i], usable[j], round(float(scores[i, j]), 4))
            for i, j in zip(rows.tolist(), columns.tolist(), strict=True)]

