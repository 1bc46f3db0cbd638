"""Reading ffmpeg's description of an input (`ffmpeg -i`): container, duration, streams, tags, chapters.

ffmpeg prints the same description ffprobe would compute (av_dump_format); the wheel we ship has
no ffprobe, so this parses that text: the `Input #0` header, `Duration:`, each `Stream #0:n`, each
`Chapter #0:n`, and the `Metadata:` blocks under each of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_INPUT = re.compile(r"^Input #0, (?P<format>[^,]+(?:,[^ ,]+)*), from ")
_DURATION = re.compile(
    r"^\s+Duration: (?P<duration>N/A|\d+:\d\d:\d\d(?:\.\d+)?)(?:, start: [-\d.]+)?(?:, bitrate: (?P<kbps>\d+) kb/s)?"
)
_STREAM = re.compile(
    r"^\s+Stream #0:(?P<index>\d+)(?:\[0x[0-9a-f]+\])?(?:\((?P<lang>[^)]*)\))?: "
    r"(?P<kind>Video|Audio|Data|Subtitle|Attachment): (?P<codec>[^\s,]+)(?P<rest>.*)$"
)
_CHAPTER = re.compile(r"^\s+Chapter #0:(?P<index>\d+): start (?P<start>[-\d.]+), end (?P<end>[-\d.]+)")
_METADATA = re.compile(r"^\s+Metadata:\s*$")
_TAG = re.compile(r"^(?P<indent>\s+)(?P<key>\S.*?)?\s*: (?P<value>.*)$")
_SIZE = re.compile(r", (?P<w>\d+)x(?P<h>\d+)(?=[ ,\]]|$)")
_FPS = re.compile(r", (?P<fps>[\d.]+(?:k)?) fps")
_HZ = re.compile(r", (?P<hz>\d+) Hz, (?P<layout>[^,]+)")


# Tags the muxer writes for the container's own structure (what brand, which handler): not about
# the content, its author or where it was made.
STRUCTURAL_TAGS = frozenset({"major_brand", "minor_version", "compatible_brands", "handler_name", "vendor_id"})


class NotMedia(ValueError):
    """ffmpeg could not read the input as media: permanent."""


@dataclass
class StreamInfo:
    index: int
    kind: str  # video, audio, data, subtitle, attachment
    codec: str
    language: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    channel_layout: str | None = None
    attached_picture: bool = False
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ChapterInfo:
    index: int
    start_s: float
    end_s: float
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class MediaProbe:
    container: str
    duration_s: float | None
    bitrate_kbps: int | None
    tags: dict[str, str] = field(default_factory=dict)
    streams: list[StreamInfo] = field(default_factory=list)
    chapters: list[ChapterInfo] = field(default_factory=list)

    @property
    def video(self) -> StreamInfo | None:
        return next((s for s in self.streams if s.kind == "video" and not s.attached_picture), None)

    @property
    def audio(self) -> StreamInfo | None:
        return next((s for s in self.streams if s.kind == "audio"), None)

    def descriptive_tags(self) -> dict[str, dict[str, str]]:
        """Every tag beyond the structural ones, by where it sits ("format", "stream:N", "chapter:N")."""
        found: dict[str, dict[str, str]] = {}
        for where, tags in [("format", self.tags), *((f"stream:{s.index}", s.tags) for s in self.streams),
                            *((f"chapter:{c.index}", c.tags) for c in self.chapters)]:  # fmt: skip
            kept = {k: v for k, v in tags.items() if k not in STRUCTURAL_TAGS}
            if kept:
                found[where] = kept
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "container": self.container, "duration_s": self.duration_s, "bitrate_kbps": self.bitrate_kbps,
            "tags": self.tags,
            "streams": [
                {k: v for k, v in vars(s).items() if v is not None and v is not False and v != {}}
                for s in self.streams
            ],
            "chapters": [vars(c) for c in self.chapters],
        }  # fmt: skip


def _seconds(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def parse_description(text: str) -> MediaProbe:
    """The MediaProbe of `ffmpeg -hide_banner -i FILE`'s output; NotMedia if it describes no input."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _INPUT.match(line)), None)
    if start is None:
        last = next((line for line in reversed(lines) if line.strip()), "no output")
        raise NotMedia(f"ffmpeg cannot read it as media: {last.strip()[:300]}")
    header = _INPUT.match(lines[start])
    assert header is not None
    probe = MediaProbe(container=header["format"], duration_s=None, bitrate_kbps=None)
    owner: dict[str, str] = probe.tags  # whose Metadata block the next tags belong to
    in_tags = False
    tag_indent = 0
    last_key: str | None = None
    for line in lines[start + 1 :]:
        if line and not line[0].isspace():
            break  # "At least one output file must be specified", "Output #0", ...
        if in_tags:
            tag = _TAG.match(line)
            if tag and len(tag["indent"]) >= tag_indent and not _STREAM.match(line) and not _CHAPTER.match(line):
                if tag["key"] is None and last_key is not None:  # a value continued on the next line
                    owner[last_key] += "\n" + tag["value"]
                else:
                    last_key = (tag["key"] or "").strip()
                    owner[last_key] = tag["value"]
                tag_indent = len(tag["indent"])
                continue
            in_tags = False
        if _METADATA.match(line):
            in_tags, tag_indent, last_key = True, len(line) - len(line.lstrip()) + 1, None
            continue
        if duration := _DURATION.match(line):
            if duration["duration"] != "N/A":
                probe.duration_s = _seconds(duration["duration"])
            probe.bitrate_kbps = int(duration["kbps"]) if duration["kbps"] else None
            continue
        if chapter := _CHAPTER.match(line):
            info = ChapterInfo(int(chapter["index"]), float(chapter["start"]), float(chapter["end"]))
            probe.chapters.append(info)
            owner = info.tags
            continue
        if stream := _STREAM.match(line):
            rest = stream["rest"]
            s = StreamInfo(
                index=int(stream["index"]), kind=stream["kind"].lower(), codec=stream["codec"],
                language=stream["lang"] if stream["lang"] not in (None, "und") else None,
                attached_picture="(attached pic)" in rest,
            )  # fmt: skip
            if s.kind == "video" and (size := _SIZE.search(rest)):
                s.width, s.height = int(size["w"]), int(size["h"])
            if s.kind == "video" and (fps := _FPS.search(rest)):
                value = fps["fps"]
                s.fps = float(value[:-1]) * 1000 if value.endswith("k") else float(value)
            if s.kind == "audio" and (hz := _HZ.search(rest)):
                s.sample_rate, s.channel_layout = int(hz["hz"]), hz["layout"].strip()
            probe.streams.append(s)
            owner = s.tags
            continue
    return probe
