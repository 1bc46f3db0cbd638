"""Real media made at test time, full of metadata, and readers that look for it in the bytes.

Images are made with Pillow (EXIF with GPS, XMP, an IPTC block, a comment; PNG text chunks); the
video with ffmpeg's lavfi test sources (tags, chapters, a creation date, a GPS location, a stream
tag). The readers parse JPEG segments, PNG chunks and MP4 boxes themselves, so a test does not
take our own probe's word that metadata is gone.
"""

from __future__ import annotations

import random
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageDraw, ImageFilter, PngImagePlugin

from geniehelper.media.tools import find_ffmpeg

# Values planted in the samples: none may appear in a cleaned output's bytes.
SECRETS = [
    b"GH-SECRET-ARTIST", b"GH-CAMERA-MAKE", b"GH-SECRET-COMMENT", b"GH-SECRET-XMP", b"GH-SECRET-CAPTION",
    b"GH-SECRET-PNGTEXT", b"GH-SECRET-ITXT", b"GH-SECRET-TITLE", b"GH-CHAPTER-ONE", b"GH-STREAM-TAG",
    b"+48.8582+002.2945", b"2024:05:01 12:00:00", b"2024-05-01",
]  # fmt: skip


def secrets_in(data: bytes) -> list[bytes]:
    return [s for s in SECRETS if s in data]


def _gps_exif(orientation: int | None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "GH-CAMERA-MAKE"
    exif[ExifTags.Base.Artist] = "GH-SECRET-ARTIST"
    exif[ExifTags.Base.DateTime] = "2024:05:01 12:00:00"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (48.0, 51.0, 29.52),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (2.0, 17.0, 40.2),
    }  # fmt: skip
    return exif


def quadrant_image(width: int, height: int) -> Image.Image:
    """Four flat quadrants (red, green / blue, white): orientation and crops can be read back."""
    im = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    im.paste((255, 0, 0), (0, 0, half_w, half_h))
    im.paste((0, 255, 0), (half_w, 0, width, half_h))
    im.paste((0, 0, 255), (0, half_h, half_w, height))
    im.paste((255, 255, 255), (half_w, half_h, width, height))
    return im


def _iptc_app13(caption: bytes) -> bytes:
    """An APP13 segment: Photoshop 3.0 resource 0x0404 holding one IPTC dataset (2:120 caption)."""
    iptc = b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption
    if len(iptc) % 2:
        iptc += b"\x00"
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    body = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


def jpeg_with_metadata(path: Path, *, width: int = 80, height: int = 60, orientation: int | None = 6) -> Path:
    """A JPEG with EXIF (orientation, camera, artist, date, GPS), XMP, an IPTC caption and a comment."""
    quadrant_image(width, height).save(
        path, "JPEG", quality=95, exif=_gps_exif(orientation).tobytes(), comment=b"GH-SECRET-COMMENT",
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">GH-SECRET-XMP</x:xmpmeta>',
    )  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(data[:2] + _iptc_app13(b"GH-SECRET-CAPTION") + data[2:])  # right after SOI
    return path


def png_with_metadata(path: Path, *, width: int = 64, height: int = 48) -> Path:
    """A PNG with tEXt, zTXt and iTXt chunks, XMP in iTXt, and EXIF (eXIf) with GPS."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "GH-SECRET-PNGTEXT")
    info.add_text("Author", "GH-SECRET-ARTIST", zip=True)
    info.add_itxt("Description", "GH-SECRET-ITXT", lang="en")
    info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/">GH-SECRET-XMP</x:xmpmeta>')
    quadrant_image(width, height).save(path, "PNG", pnginfo=info, exif=_gps_exif(None).tobytes())
    return path


def jpeg_segments(data: bytes) -> list[str]:
    """The marker names of a JPEG's segments up to the image data (APP0, APP1, COM, DQT, ...)."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    names, pos = [], 2
    while pos < len(data):
        assert data[pos] == 0xFF, f"bad marker at {pos}"
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is image data
            names.append("SOS")
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        names.append(
            f"APP{marker - 0xE0}" if 0xE0 <= marker <= 0xEF else {0xFE: "COM", 0xDB: "DQT", 0xC4: "DHT"}.get(
                marker, f"{marker:02X}"
            )
        )
        pos += 2 + length
    return names


def png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    names, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        names.append(kind.decode("latin-1"))
        pos += 12 + length
    return names


@dataclass
class Box:
    path: str  # e.g. moov/trak/mdia/mdhd
    payload: bytes


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf", b"ilst"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None, prefix: str = "") -> list[Box]:
    """Every box of an MP4 file, depth first, with its path and payload."""
    end = len(data) if end is None else end
    boxes, pos = [], start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        name = kind.decode("latin-1")
        path = f"{prefix}{name}"
        boxes.append(Box(path, data[pos + header : pos + size]))
        if kind in _CONTAINERS:
            boxes += mp4_boxes(data, pos + header, pos + size, f"{path}/")
        elif kind == b"meta":  # a full box: version and flags before its children
            boxes += mp4_boxes(data, pos + header + 4, pos + size, f"{path}/")
        pos += size
    return boxes


def mp4_header_times(data: bytes) -> dict[str, tuple[int, int]]:
    """(creation, modification) time of each mvhd, tkhd and mdhd, by box path (and index)."""
    times: dict[str, tuple[int, int]] = {}
    for i, box in enumerate(mp4_boxes(data)):
        if box.path.rsplit("/", 1)[-1] in ("mvhd", "tkhd", "mdhd"):
            version = box.payload[0]
            fmt = ">II" if version == 0 else ">QQ"
            times[f"{box.path}#{i}"] = struct.unpack(fmt, box.payload[4 : 4 + struct.calcsize(fmt)])
    return times


def mp4_handler_types(data: bytes) -> list[str]:
    """The handler type of each track (vide, soun, text, meta, ...)."""
    return [b.payload[8:12].decode("latin-1") for b in mp4_boxes(data) if b.path.endswith("mdia/hdlr")]


FFMETADATA = """;FFMETADATA1
title=GH-SECRET-TITLE
comment=GH-SECRET-COMMENT
[CHAPTER]
TIMEBASE=1/1000
START=0
END=1000
title=GH-CHAPTER-ONE
[CHAPTER]
TIMEBASE=1/1000
START=1000
END=2000
title=GH-CHAPTER-TWO
"""


def video_with_metadata(
    path: Path, *, seconds: float = 2.0, width: int = 320, height: int = 240, fps: int = 25, pattern: str = "testsrc"
) -> Path:
    """An H.264/AAC MP4 from lavfi test sources (`pattern`: testsrc, testsrc2, or a flat colour such as
    "color=c=gray"), with global tags (title, comment, GPS location, creation time), two chapters
    and a stream tag."""
    # "testsrc" -> testsrc=size=...; "color=c=gray" -> color=c=gray:size=...
    source = f"{pattern}{':' if '=' in pattern else '='}size={width}x{height}:rate={fps}:duration={seconds}"
    meta = path.with_suffix(".ffmeta")
    meta.write_text(FFMETADATA)
    subprocess.run(
        [find_ffmpeg(None), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", source,
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-i", str(meta),
         "-map", "0:v", "-map", "1:a", "-map_metadata", "2", "-map_chapters", "2",
         "-metadata", "location=+48.8582+002.2945/", "-metadata", "creation_time=2024-05-01T12:00:00Z",
         "-metadata:s:v:0", "title=GH-STREAM-TAG", "-c:v", "libx264", "-preset", "ultrafast", "-g", "50",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )  # fmt: skip
    meta.unlink()
    return path


def photo_like(path: Path, width: int = 640, height: int = 480, seed: int = 1) -> Path:
    """A JPEG with a gradient, overlapping coloured discs and grain: content at every scale."""
    rng = random.Random(seed)
    im = Image.radial_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(5, 80)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    grain = Image.effect_noise((width, height), 20).convert("RGB")
    Image.blend(im, grain, 0.15).filter(ImageFilter.GaussianBlur(1)).save(path, "JPEG", quality=95)
    return path
