"""Invisible per-recipient watermark (a fingerprint) in an image's luminance, and reading it back.

Each recipient (a fan_profiles id) has a pseudo-random +-1 pattern over a GRID x GRID grid of
blocks, derived from the id alone. Embedding adds STRENGTH luma levels times the pattern, smoothly
upscaled to the image, to the Y channel: low-frequency and small (about 38 dB PSNR), so it does not
show, and block means survive JPEG re-encoding and resizing, as the grid is relative to the image
size, not to pixels. Detection takes the block means of a suspect image, removes the image's own
content with a 3x3 high-pass on the grid, clips the residue at CLIP_MEDIANS times its median
magnitude (what is left of sharp edges would otherwise outweigh the mark), and correlates it with
each candidate's (equally high-passed) pattern; the best candidate is named only when its correlation reaches
THRESHOLD, far above what unrelated patterns reach (about 1/GRID). It does not survive cropping
or heavy edits. These functions are blocking: jobs run them through `tools.run_blocking`.

Videos (media.video_fingerprint) carry the same pattern, at VIDEO_STRENGTH, in every frame's luma;
detection averages the frames' block means before the same high-pass and correlation.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

from PIL import Image, ImageChops, ImageOps

GRID = 64
STRENGTH = 3  # luma levels added or removed per block
# H.264 quantises small, fine luma changes away (at CRF 23, about half of a 3-level mark is gone
# before any leak re-encode): videos get a stronger mark, still low-frequency and static.
VIDEO_STRENGTH = 6
THRESHOLD = 0.08  # about 5 standard deviations of an unrelated pattern's correlation (1/GRID)
# Residue beyond this many median magnitudes is content (edges, text), not the mark. Clipping it
# leaves unrelated patterns' correlation (about 1/GRID, whatever the residue's scale) where it was
# and lifts the mark's: tests/test_media_fingerprint.py, a small sharp-edged clip.
CLIP_MEDIANS = 3.0
MIN_SIDE = 128  # smaller images have too few pixels per block to carry the mark


class FingerprintRejected(ValueError):
    """The image is too small to carry (or to read) a fingerprint: permanent."""


def pattern(recipient: UUID) -> list[int]:
    """The recipient's +-1 pattern, row by row over the grid (the same for every image)."""
    seed = hashlib.sha256(b"geniehelper-fingerprint:" + recipient.bytes).digest()
    rng = random.Random(seed)
    return [1 if rng.getrandbits(1) else -1 for _ in range(GRID * GRID)]


def _check_size(im: Image.Image) -> None:
    check_frame_size(im.width, im.height)


def layer(size: tuple[int, int], recipient: UUID, strength: int = STRENGTH) -> Image.Image:
    """The mark as an L image of `size`: 128 + strength x the pattern, smoothly upscaled."""
    grid = Image.new("L", (GRID, GRID))
    grid.putdata([128 + strength * s for s in pattern(recipient)])
    return grid.resize(size, Image.Resampling.BILINEAR)


def embed(im: Image.Image, recipient: UUID) -> Image.Image:
    """A copy of `im` (orientation already applied) carrying the recipient's fingerprint, in RGB
    (RGBA when it had alpha, the alpha unchanged)."""
    _check_size(im)
    alpha = im.getchannel("A") if im.mode in ("RGBA", "LA") else None
    y, cb, cr = im.convert("RGB").convert("YCbCr").split()
    # y + (layer - 128), clipped to 0..255
    marked_y = ImageChops.add(y, layer(im.size, recipient), scale=1.0, offset=-128)
    out = Image.merge("YCbCr", (marked_y, cb, cr)).convert("RGB")
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _high_pass(values: Sequence[float]) -> list[float]:
    """Each grid cell minus the mean of its (up to 8) neighbours: removes the image's smooth content."""
    out: list[float] = []
    for row in range(GRID):
        for col in range(GRID):
            total, count = 0.0, 0
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    r, c = row + dr, col + dc
                    if (dr or dc) and 0 <= r < GRID and 0 <= c < GRID:
                        total += values[r * GRID + c]
                        count += 1
            out.append(values[row * GRID + col] - total / count)
    return out


def _correlation(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return dot / norm if norm else 0.0


@dataclass(frozen=True)
class Detection:
    recipient: UUID | None  # the candidate whose fingerprint the image carries, if any
    score: float  # the best candidate's correlation
    scores: dict[UUID, float]


def check_frame_size(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise FingerprintRejected(f"{width}x{height} is too small for a fingerprint (each side >= {MIN_SIDE})")


def detect(im: Image.Image, candidates: Iterable[UUID]) -> Detection:
    """Which of `candidates` (if any) the image's fingerprint names."""
    _check_size(im)
    luma = ImageOps.exif_transpose(im).convert("L").resize((GRID, GRID), Image.Resampling.BOX)
    return detect_in_grid([float(v) for v in luma.tobytes()], candidates)  # mode L: one byte per cell


def detect_in_grid(block_means: Sequence[float], candidates: Iterable[UUID]) -> Detection:
    """Which of `candidates` the GRID x GRID luma block means (row by row) carry the mark of."""
    residue = _high_pass(block_means)
    limit = CLIP_MEDIANS * statistics.median(abs(r) for r in residue)
    residue = [max(-limit, min(limit, r)) for r in residue]
    scores = {c: _correlation(residue, _high_pass([float(s) for s in pattern(c)])) for c in candidates}
    if not scores:
        return Detection(None, 0.0, {})
    best = max(scores, key=lambda c: scores[c])
    return Detection(best if scores[best] >= THRESHOLD else None, scores[best], scores)
