"""A contact sheet: frames tiled left to right, top to bottom, each scaled to one tile size.

Blocking (Pillow): jobs run it through `tools.run_blocking`; the sheet is then made a clean image
by `images.convert`, like every image output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def tile_size(width: int, height: int, tile_width: int) -> tuple[int, int]:
    """A tile `tile_width` wide with the frame's aspect ratio."""
    return tile_width, max(1, round(tile_width * height / width))


def tile(frames: Sequence[Path], columns: int, tile: tuple[int, int], out: Path) -> Path:
    """The frames in `columns` columns (as many rows as they need), written to `out` as PNG."""
    rows = -(-len(frames) // columns)
    sheet = Image.new("RGB", (columns * tile[0], rows * tile[1]), "black")
    for index, frame in enumerate(frames):
        with Image.open(frame) as im:
            cell = im.convert("RGB").resize(tile, Image.Resampling.LANCZOS)
        sheet.paste(cell, ((index % columns) * tile[0], (index // columns) * tile[1]))
    sheet.save(out, "PNG")
    return out
