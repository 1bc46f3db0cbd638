"""Image operations with Pillow: probe, convert/resize/crop, metadata strip, all on pixels only.

Every output is encoded from a fresh image holding nothing but the pixels (EXIF orientation
applied first, so nothing depends on the EXIF that is dropped): no EXIF (GPS included), XMP,
IPTC/Photoshop blocks, comments or PNG text chunks survive, whatever the input format carried.
The ICC colour profile is kept unless asked otherwise (it says how to show the colours, not who
or where). These functions are blocking: jobs run them through `tools.run_blocking`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from geniehelper.media import fingerprint
from geniehelper.media.watermark import WatermarkStyle, apply_to_image

ImageFormat = Literal["jpeg", "png", "webp"]
MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
EXTENSION = {"jpeg": "jpg", "png": "png", "webp": "webp"}
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_FROM_PIL = {v: k for k, v in _PIL_FORMAT.items()}


class ImageRejected(ValueError):
    """Not an image we can read, or one over the pixel limit: permanent."""


class CropBox(BaseModel):
    """A crop in a payload: left, top, width, height in pixels."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    left: int = Field(ge=0)
    top: int = Field(ge=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)


@dataclass(frozen=True)
class Crop:
    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class ImageOutput:
    path: Path
    format: ImageFormat
    width: int
    height: int

    @property
    def mime_type(self) -> str:
        return MIME[self.format]


@dataclass(frozen=True)
class ImageProbe:
    format: str  # Pillow's name (JPEG, PNG, WEBP, GIF, ...)
    width: int  # as shown: after EXIF orientation
    height: int
    mode: str
    orientation: int | None
    frames: int
    # What the file carries beyond pixels: exif, gps, xmp, iptc, comment, text:<key>, icc_profile.
    metadata: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "width": self.width, "height": self.height, "mode": self.mode,
            "orientation": self.orientation, "frames": self.frames, "metadata": self.metadata,
        }  # fmt: skip

    @property
    def our_format(self) -> ImageFormat | None:
        return _FROM_PIL.get(self.format)  # type: ignore[return-value]


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageRejected(f"not a readable image: {exc}") from None
    if im.width * im.height > max_pixels:
        im.close()
        raise ImageRejected(f"{im.width}x{im.height} is over the {max_pixels}-pixel limit (MEDIA_MAX_IMAGE_PIXELS)")
    return im


def load_shown(path: Path, max_pixels: int) -> Image.Image:
    """The first frame's pixels as shown (EXIF orientation applied), loaded."""
    with _open(path, max_pixels) as im:
        im.seek(0)
        return ImageOps.exif_transpose(im)


def metadata_found(im: Image.Image) -> list[str]:
    """What an opened image carries besides its pixels (names only, never the values)."""
    found: list[str] = []
    exif = im.getexif()
    if len(exif):
        found.append("exif")
    if exif.get_ifd(ExifTags.IFD.GPSInfo):
        found.append("gps")
    info = im.info
    if info.get("xmp") or info.get("XML:com.adobe.xmp"):
        found.append("xmp")
    if "photoshop" in info or any(marker == "APP13" for marker, _ in getattr(im, "applist", [])):
        found.append("iptc")
    if info.get("comment"):
        found.append("comment")
    for key in getattr(im, "text", {}) or {}:
        if key != "XML:com.adobe.xmp":
            found.append(f"text:{key}")
    if info.get("icc_profile"):
        found.append("icc_profile")
    return found


def probe(path: Path, max_pixels: int) -> ImageProbe:
    with _open(path, max_pixels) as im:
        orientation = im.getexif().get(ExifTags.Base.Orientation)
        width, height = (im.height, im.width) if orientation in (5, 6, 7, 8) else (im.width, im.height)
        return ImageProbe(
            format=im.format or "unknown", width=width, height=height, mode=im.mode,
            orientation=orientation, frames=getattr(im, "n_frames", 1), metadata=metadata_found(im),
        )  # fmt: skip


def _pixels_only(im: Image.Image, target: ImageFormat) -> Image.Image:
    """A new image with the pixels of `im` in a mode `target` can hold, and no info at all."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if target == "jpeg":
        mode = "L" if im.mode in ("L", "1") else "RGB"
    elif im.mode in ("L", "RGB", "RGBA", "LA") and not (target == "webp" and im.mode in ("L", "LA")):
        mode = im.mode
    else:
        mode = "RGBA" if has_alpha else "RGB"
    converted = im.convert(mode) if im.mode != mode else im
    return Image.frombytes(mode, converted.size, converted.tobytes())


def convert(
    path: Path,
    out_dir: Path,
    *,
    max_pixels: int,
    target: ImageFormat | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    crop: Crop | None = None,
    quality: int = 90,
    keep_icc_profile: bool = True,
    name: str = "output",
    watermark: WatermarkStyle | None = None,
    fingerprint_for: UUID | None = None,
) -> ImageOutput:
    """Orientation applied, then crop (in shown coordinates), then fit within max_width x max_height
    (never enlarged), then the watermark if any, then the invisible fingerprint of `fingerprint_for`
    if any (media.fingerprint); encoded as `target` (default: the input's format
    when it is one of ours, else PNG) with pixels only."""
    with _open(path, max_pixels) as im:
        source_format = _FROM_PIL.get(im.format or "")
        icc = im.info.get("icc_profile") if keep_icc_profile else None
        im.seek(0)
        shown = ImageOps.exif_transpose(im)  # a new image; orientation applied
    fmt: ImageFormat = target or source_format or "png"  # type: ignore[assignment]
    if crop is not None:
        if crop.left + crop.width > shown.width or crop.top + crop.height > shown.height:
            spec = f"{crop.width}x{crop.height}+{crop.left}+{crop.top}"
            raise ImageRejected(f"crop {spec} is outside the {shown.width}x{shown.height} image")
        shown = shown.crop((crop.left, crop.top, crop.left + crop.width, crop.top + crop.height))
    if max_width or max_height:
        box = (min(max_width or shown.width, shown.width), min(max_height or shown.height, shown.height))
        if box != shown.size:
            shown = ImageOps.contain(shown, box, method=Image.Resampling.LANCZOS)
    if watermark is not None:
        had_alpha = shown.mode in ("RGBA", "LA", "PA") or "transparency" in shown.info
        shown = apply_to_image(shown, watermark)
        if not had_alpha:
            shown = shown.convert("RGB")
    if fingerprint_for is not None:
        shown = fingerprint.embed(shown, fingerprint_for)
    clean = _pixels_only(shown, fmt)
    out = out_dir / f"{name}.{EXTENSION[fmt]}"
    params: dict[str, Any] = {}
    if icc:
        params["icc_profile"] = icc
    if fmt == "jpeg":
        params.update(quality=quality, optimize=True)
    elif fmt == "webp":
        params.update(quality=quality, method=4)
    else:
        params.update(optimize=True)
    clean.save(out, _PIL_FORMAT[fmt], **params)
    return ImageOutput(out, fmt, clean.width, clean.height)
