"""Visible watermarks: a text layer drawn with Pillow from a preset's style, composited onto an
image, or overlaid on every frame of a video by ffmpeg (the same layer, so both look alike)."""

from __future__ import annotations

from typing import Literal

from PIL import Image, ImageColor, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, field_validator

Position = Literal["top-left", "top-right", "bottom-left", "bottom-right", "center"]


class WatermarkStyle(BaseModel):
    """`media_presets.watermark`: what the text says and how it sits on the picture."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    text: str = Field(min_length=1, max_length=200)
    position: Position = "bottom-right"
    opacity: float = Field(default=0.6, gt=0, le=1)
    size_pct: float = Field(default=6.0, ge=1, le=50, description="Text height, % of the picture's height.")
    margin_pct: float = Field(default=3.0, ge=0, le=25, description="Distance from the edges, % of the height.")
    color: str = "#FFFFFF"
    shadow: bool = True

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: str) -> str:
        try:
            ImageColor.getrgb(value)
        except ValueError:
            raise ValueError(f"not a colour: {value!r}") from None
        return value


def render_layer(width: int, height: int, style: WatermarkStyle) -> Image.Image:
    """A transparent RGBA layer of `width` x `height` with the watermark drawn where the style says."""
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font_px = max(8, round(height * style.size_pct / 100))
    font = ImageFont.load_default(size=font_px)
    left, top, right, bottom = draw.textbbox((0, 0), style.text, font=font)
    text_w, text_h = right - left, bottom - top
    margin = round(height * style.margin_pct / 100)
    horizontal = "center" if style.position == "center" else style.position.split("-")[1]
    vertical = "center" if style.position == "center" else style.position.split("-")[0]
    x = {"left": margin, "right": width - margin - text_w, "center": (width - text_w) // 2}[horizontal]
    y = {"top": margin, "bottom": height - margin - text_h, "center": (height - text_h) // 2}[vertical]
    x, y = max(0, x) - left, max(0, y) - top
    alpha = round(255 * style.opacity)
    red, green, blue = ImageColor.getrgb(style.color)[:3]
    if style.shadow:
        offset = max(1, font_px // 20)
        draw.text((x + offset, y + offset), style.text, font=font, fill=(0, 0, 0, alpha // 2))
    draw.text((x, y), style.text, font=font, fill=(red, green, blue, alpha))
    return layer


def apply_to_image(image: Image.Image, style: WatermarkStyle) -> Image.Image:
    base = image.convert("RGBA")
    return Image.alpha_composite(base, render_layer(base.width, base.height, style))
