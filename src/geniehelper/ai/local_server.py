"""A local Ollama-compatible vision server and speech-to-text endpoint, over real HTTP, for tests and `./dev up`.

It is not a model: its answers are computed from the input, deterministically, so a test can check
that what was stored came from what was sent. Images arrive base64-encoded as Ollama takes them and
are really decoded (base64, then Pillow); audio arrives as an OpenAI-style multipart upload and is
really decoded as WAV (PCM).

Ollama API (the subset media jobs use; https://github.com/ollama/ollama/blob/main/docs/api.md):
    POST /api/chat       {model, messages: [{role, content, images?: [base64]}], stream?: true}
    POST /api/generate   {model, prompt, images?: [base64], stream?: true}
    GET  /api/tags       the models it serves
    GET  /api/version
  `stream` defaults to true, as in Ollama: NDJSON lines `{"message": {"content": ...}, "done": false}`
  (`"response"` for /api/generate), then one with `"done": true`. An error is `{"error": "..."}`, with
  a status before the answer starts, or as a line in the stream after it has. An unknown model is
  404, bad base64 or an undecodable image 400.
Speech to text (OpenAI's shape):
    POST /v1/audio/transcriptions  multipart: file (WAV), model, response_format (json|text|verbose_json)
Admin (no auth; the server binds loopback only and answers loopback clients only):
    POST   /admin/faults     {kind, count, path_prefix, status, delay_s, after_chunks} -> {fault_id}
    DELETE /admin/faults
    GET    /admin/requests   {"counts": {"POST /api/chat": n, ...}, "last": [summaries of recent requests]}

Fault kinds, each applied to the next `count` matching requests:
    server_error   `status` (5xx) with an Ollama error body, before any answer
    rate_limit     429 with `Retry-After: delay_s` (whole seconds, rounded up), before any answer
    slow           wait `delay_s` before answering
    stream_error   streaming requests: `after_chunks` chunks, then an `{"error": ...}` line, then the end
    stream_cut     streaming requests: `after_chunks` chunks, then the connection is dropped mid-response
    stall          streaming requests: `after_chunks` chunks, then `delay_s` of silence, then the rest
"""

from __future__ import annotations

import array
import asyncio
import base64
import binascii
import contextlib
import io
import itertools
import json
import logging
import math
import signal
import sys
import time
import wave
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal

import structlog
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from geniehelper.web.serve import is_loopback, serve_app

DEFAULT_MODELS = ("llava",)
MAX_IMAGES = 16
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
SILENCE_RMS = 0.001  # of full scale
# Named colours an answer may use: the nearest (RGB distance) names each pixel.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "red": (220, 20, 20),
    "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (235, 220, 20), "orange": (245, 140, 20),
    "purple": (140, 30, 170), "pink": (245, 150, 190), "brown": (130, 80, 30), "cyan": (20, 220, 230),
    "magenta": (220, 20, 220),
}  # fmt: skip

FaultKind = Literal["server_error", "rate_limit", "slow", "stream_error", "stream_cut", "stall"]
_STREAM_ONLY = {"stream_error", "stream_cut", "stall"}


class FaultSpec(BaseModel):
    """Body of POST /admin/faults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    count: int = Field(default=1, ge=1, le=1_000_000)
    path_prefix: str = Field(default="/api/", pattern=r"^/")
    status: int = Field(default=500, ge=500, le=599)
    delay_s: float = Field(default=3.0, ge=0, le=600)
    after_chunks: int = Field(default=2, ge=0, le=10_000)


@dataclass
class _PendingFault:
    fault_id: str
    spec: FaultSpec
    remaining: int


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class _StreamCut(Exception):
    """Raised inside a streaming body: the server drops the connection without ending the response."""


class _QuietStreamCuts(logging.Filter):
    """uvicorn logs an app's exception with its traceback; an injected cut is not one worth logging."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, _StreamCut):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


_QUIET = _QuietStreamCuts()


# --- what the answers say ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    colours: list[tuple[str, float]]  # named colour, share of the pixels; largest first
    brightness: float  # 0..1

    def sentence(self) -> str:
        main, share = self.colours[0]
        others = [name for name, part in self.colours[1:4] if part >= 0.05]
        also = f", with {_join(others)}" if others else ""
        light = "bright" if self.brightness >= 0.6 else "dark" if self.brightness < 0.3 else "medium-bright"
        shape = "landscape" if self.width > self.height else "portrait" if self.height > self.width else "square"
        return f"{self.width}x{self.height} pixels, {shape}, mostly {main} ({round(share * 100)}%){also}; {light}"


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def image_facts(data: bytes) -> ImageFacts:
    """Decode an image and measure it: size, named colours by share, mean brightness."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise _BadRequest(400, f"image: {im.width}x{im.height} is too large")
            im.load()
            width, height = im.size
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise _BadRequest(400, "image: unknown format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _BadRequest(400, f"image: cannot decode: {exc}") from None
    rgb.thumbnail((64, 64))
    counts: Counter[str] = Counter()
    total_light = 0
    raw = rgb.tobytes()
    for i in range(0, len(raw), 3):
        r, g, b = raw[i], raw[i + 1], raw[i + 2]
        counts[min(PALETTE, key=lambda n: _distance(PALETTE[n], (r, g, b)))] += 1
        total_light += r * 299 + g * 587 + b * 114
    n = len(raw) // 3
    colours = sorted(((name, count / n) for name, count in counts.items()), key=lambda c: (-c[1], c[0]))
    return ImageFacts(width, height, colours, total_light / (n * 255_000))


def _received(data: bytes) -> dict[str, Any]:
    """What an image that arrived was (for tests to check what a client sends): format, size, metadata."""
    with Image.open(io.BytesIO(data)) as im:
        found = {
            "exif": len(im.getexif()) > 0,
            **{key: bool(im.info.get(key)) for key in ("xmp", "comment", "icc_profile")},
        }
        metadata = [name for name, present in found.items() if present]
        return {"format": im.format, "width": im.width, "height": im.height, "bytes": len(data), "metadata": metadata}


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2


def describe_images(images: Sequence[bytes]) -> str:
    """The answer to a request with these images: one sentence per image."""
    facts = [image_facts(data) for data in images]
    if not facts:
        return "No image was given, so there is nothing to describe."
    if len(facts) == 1:
        return f"The picture is {facts[0].sentence()}."
    parts = [f"Image {i}: {f.sentence()}." for i, f in enumerate(facts, 1)]
    return f"{len(facts)} images. " + " ".join(parts)


@dataclass(frozen=True)
class AudioFacts:
    duration_s: float
    sample_rate: int
    channels: int
    rms: float  # 0..1 of full scale, first channel
    frequency_hz: float | None  # of a steady tone; None for silence

    def sentence(self) -> str:
        if self.rms < SILENCE_RMS:
            return f"{self.duration_s:.1f} seconds of silence."
        if self.frequency_hz is None:
            return f"{self.duration_s:.1f} seconds of sound without a steady tone."
        return f"{self.duration_s:.1f} seconds of audio: a steady tone at about {round(self.frequency_hz)} Hz."


def audio_facts(data: bytes) -> AudioFacts:
    """Decode a PCM WAV file and measure its first channel: duration, level, the frequency of its tone."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate, frames = wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()
            raw = wav.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise _BadRequest(400, f"could not decode audio as WAV: {exc or 'truncated file'}") from None
    if width != 2 or rate <= 0:
        raise _BadRequest(400, f"audio must be 16-bit PCM WAV, not {width * 8}-bit")
    samples = array.array("h")
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    first = samples[::channels]
    duration = len(first) / rate
    if not first:
        return AudioFacts(0.0, rate, channels, 0.0, None)
    rms = (sum(s * s for s in first) / len(first)) ** 0.5 / 32768
    peak = max(abs(min(first)), abs(max(first)))
    if rms < SILENCE_RMS:
        return AudioFacts(duration, rate, channels, rms, None)
    # Rising crossings with hysteresis (a tenth of the peak): noise near zero is not counted.
    # The frequency is the number of whole periods between the first and the last rise over their distance.
    threshold, low, rises, first_at, last_at = peak / 10, False, 0, 0, 0
    for i, s in enumerate(first):
        if s < -threshold:
            low = True
        elif s > threshold and low:
            low = False
            rises += 1
            first_at, last_at = (i, i) if rises == 1 else (first_at, i)
    frequency = (rises - 1) * rate / (last_at - first_at) if rises >= 2 and last_at > first_at else None
    return AudioFacts(duration, rate, channels, rms, frequency)


# --- the server ------------------------------------------------------------------------------------------


class LocalAiServer:
    """State of one local server: the models it serves, pending faults, what it was asked."""

    def __init__(self, *, models: Sequence[str] = DEFAULT_MODELS, stt_models: Sequence[str] | None = None,
                 chunk_words: int = 2) -> None:  # fmt: skip
        self.models = tuple(models)
        self.stt_models = tuple(stt_models) if stt_models is not None else None  # None: any
        self.chunk_words = max(1, chunk_words)
        self._faults: list[_PendingFault] = []
        self._ids = itertools.count(1)
        self._counts: Counter[str] = Counter()
        self.last: deque[dict[str, Any]] = deque(maxlen=50)

    def add_fault(self, spec: FaultSpec) -> str:
        fault = _PendingFault(f"fault_{next(self._ids)}", spec, spec.count)
        self._faults.append(fault)
        return fault.fault_id

    def clear_faults(self) -> int:
        cleared = len(self._faults)
        self._faults.clear()
        return cleared

    def request_counts(self) -> dict[str, int]:
        return dict(self._counts)

    def create_app(self) -> Starlette:
        if _QUIET not in logging.getLogger("uvicorn.error").filters:
            logging.getLogger("uvicorn.error").addFilter(_QUIET)
        return Starlette(routes=[
            Route("/", self._root, methods=["GET"]),
            Route("/api/version", self._version, methods=["GET"]),
            Route("/api/tags", self._tags, methods=["GET"]),
            Route("/api/chat", self._handler(self._chat), methods=["POST"]),
            Route("/api/generate", self._handler(self._generate), methods=["POST"]),
            Route("/v1/audio/transcriptions", self._handler(self._transcribe), methods=["POST"]),
            Route("/admin/faults", _admin(self._admin_add_fault), methods=["POST"]),
            Route("/admin/faults", _admin(self._admin_clear_faults), methods=["DELETE"]),
            Route("/admin/requests", _admin(self._admin_requests), methods=["GET"]),
        ])  # fmt: skip

    def _take_fault(self, path: str, streaming: bool) -> FaultSpec | None:
        for fault in self._faults:
            if (
                fault.remaining > 0
                and path.startswith(fault.spec.path_prefix)
                and (streaming or fault.spec.kind not in _STREAM_ONLY)
            ):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault.spec
        return None

    def _handler(
        self, handle: Callable[[Request, dict[str, Any] | None], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self._counts[f"{request.method} {request.url.path}"] += 1
            try:
                body = await request.body()
                if len(body) > MAX_BODY_BYTES:
                    raise _BadRequest(413, "request body too large")
                parsed: dict[str, Any] | None = None
                if request.url.path.startswith("/api/"):
                    try:
                        loaded = json.loads(body or b"{}")
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise _BadRequest(400, "invalid JSON body") from None
                    if not isinstance(loaded, dict):
                        raise _BadRequest(400, "the body must be a JSON object")
                    parsed = loaded
                return await handle(request, parsed)
            except _BadRequest as exc:
                response = _ollama_error(exc.status, exc.message, openai=request.url.path.startswith("/v1/"))
                response.headers.update(exc.headers or {})
                return response

        return endpoint

    async def _before_answer(self, request: Request, streaming: bool) -> FaultSpec | None:
        """Applies a fault that acts before the answer; returns one that acts within a stream."""
        fault = self._take_fault(request.url.path, streaming)
        if fault is None:
            return None
        if fault.kind == "server_error":
            raise _BadRequest(fault.status, f"injected server error ({fault.status})")
        if fault.kind == "rate_limit":
            wait = str(math.ceil(fault.delay_s))
            raise _BadRequest(429, "injected: too many requests, retry later", {"Retry-After": wait})
        if fault.kind == "slow":
            await _hold_unless_disconnected(request, fault.delay_s)
            return None
        return fault

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(400, "model is required")
        if _tagged(model) not in {_tagged(m) for m in self.models}:
            raise _BadRequest(404, f'model "{model}" not found, try pulling it first')
        return model

    async def _chat(self, request: Request, body: dict[str, Any] | None) -> Response:
        assert body is not None
        model = self._check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "messages is required")
        images: list[bytes] = []
        prompt = ""
        for message in messages:
            if not isinstance(message, dict):
                raise _BadRequest(400, "each message must be an object")
            if message.get("role") == "user":
                prompt = str(message.get("content") or "")
            images += _decode_images(message.get("images"))
        return await self._answer(request, body, model, images, prompt, "chat")

    async def _generate(self, request: Request, body: dict[str, Any] | None) -> Response:
        assert body is not None
        model = self._check_model(body)
        images = _decode_images(body.get("images"))
        return await self._answer(request, body, model, images, str(body.get("prompt") or ""), "generate")

    async def _answer(self, request: Request, body: dict[str, Any], model: str, images: list[bytes], prompt: str,
                      api: Literal["chat", "generate"]) -> Response:  # fmt: skip
        streaming = body.get("stream", True) is not False
        started = time.monotonic_ns()
        # Decoding happens off the event loop; an undecodable image is a 400, before any fault.
        text, received = await asyncio.to_thread(lambda: (describe_images(images), [_received(d) for d in images]))
        self.last.append({"path": request.url.path, "model": model, "images": len(images), "stream": streaming,
                          "prompt": prompt[:200], "received": received})  # fmt: skip
        fault = await self._before_answer(request, streaming)

        def piece(content: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": datetime.now(UTC).isoformat()}
            if api == "chat":
                out["message"] = {"role": "assistant", "content": content}
            else:
                out["response"] = content
            out["done"] = done
            if done:
                out.update(done_reason="stop", total_duration=time.monotonic_ns() - started, load_duration=0,
                           prompt_eval_count=len(prompt.split()) + 1, eval_count=len(text.split()))  # fmt: skip
            return out

        if not streaming:
            return JSONResponse(piece(text, True))
        words = text.split(" ")
        chunks = [" ".join(words[i : i + self.chunk_words]) + " " for i in range(0, len(words), self.chunk_words)]
        chunks[-1] = chunks[-1].rstrip(" ")

        async def lines() -> AsyncIterator[bytes]:
            for i, chunk in enumerate(chunks):
                if fault is not None and i == fault.after_chunks:
                    if fault.kind == "stream_error":
                        yield _line({"error": "injected error mid-stream: the model runner stopped"})
                        return
                    if fault.kind == "stream_cut":
                        raise _StreamCut("injected: connection dropped mid-stream")
                    if fault.kind == "stall":
                        await asyncio.sleep(fault.delay_s)
                yield _line(piece(chunk, False))
                await asyncio.sleep(0)
            yield _line(piece("", True))

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def _transcribe(self, request: Request, _body: dict[str, Any] | None) -> Response:
        form = _multipart(request.headers.get("content-type", ""), await request.body())
        upload = form.get("file")
        if upload is None or not isinstance(upload, bytes):
            raise _BadRequest(400, "file is required (multipart/form-data)")
        model = form.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(400, "model is required")
        if self.stt_models is not None and model not in self.stt_models:
            raise _BadRequest(404, f"model {model!r} does not exist")
        response_format = form.get("response_format") or "json"
        if response_format not in ("json", "text", "verbose_json"):
            raise _BadRequest(400, f"response_format {response_format!r} is not supported")
        facts = audio_facts(upload)
        self.last.append({"path": request.url.path, "model": model, "bytes": len(upload),
                          "bearer": request.headers.get("authorization", "").startswith("Bearer ")})  # fmt: skip
        await self._before_answer(request, False)
        text = facts.sentence()
        if response_format == "text":
            return PlainTextResponse(text)
        if response_format == "verbose_json":
            return JSONResponse({"task": "transcribe", "language": str(form.get("language") or "en"),
                                 "duration": round(facts.duration_s, 3), "text": text,
                                 "segments": [{"id": 0, "start": 0.0, "end": round(facts.duration_s, 3),
                                               "text": text}]})  # fmt: skip
        return JSONResponse({"text": text})

    async def _root(self, _request: Request) -> Response:
        return PlainTextResponse("Ollama is running")  # what Ollama answers; clients probe it

    async def _version(self, _request: Request) -> Response:
        return JSONResponse({"version": "0.0.0-geniehelper-local"})

    async def _tags(self, _request: Request) -> Response:
        return JSONResponse({"models": [{"name": m, "model": m, "details": {"family": "local-vision"}}
                                        for m in self.models]})  # fmt: skip

    async def _admin_add_fault(self, request: Request) -> Response:
        try:
            spec = FaultSpec.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            return JSONResponse({"error": str(exc)[:500]}, status_code=422)
        return JSONResponse({"fault_id": self.add_fault(spec)}, status_code=201)

    async def _admin_clear_faults(self, _request: Request) -> Response:
        return JSONResponse({"cleared": self.clear_faults()})

    async def _admin_requests(self, _request: Request) -> Response:
        return JSONResponse({"counts": self.request_counts(), "last": list(self.last)})


def _tagged(model: str) -> str:
    """Ollama's full model name: `llava` is `llava:latest`."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _ollama_error(status: int, message: str, *, openai: bool) -> JSONResponse:
    if openai:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)
    return JSONResponse({"error": message}, status_code=status)


def _decode_images(value: Any) -> list[bytes]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _BadRequest(400, "images must be a list of base64 strings")
    if len(value) > MAX_IMAGES:
        raise _BadRequest(400, f"at most {MAX_IMAGES} images")
    decoded = []
    for item in value:
        try:
            decoded.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise _BadRequest(400, f"illegal base64 data in images: {exc}") from None
    return decoded


def _multipart(content_type: str, body: bytes) -> dict[str, bytes | str]:
    """The fields of a multipart/form-data body: files as bytes, other fields as text."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise _BadRequest(400, "expected multipart/form-data")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _BadRequest(400, "malformed multipart body")
    fields: dict[str, bytes | str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        fields[name] = data if part.get_filename() is not None else data.decode(errors="replace")
    return fields


async def _hold_unless_disconnected(request: Request, delay_s: float) -> None:
    deadline = time.monotonic() + delay_s
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.05, remaining))
        if await request.is_disconnected():
            return


def _admin(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if request.client is None or not is_loopback(request.client.host):
            return JSONResponse({"error": "admin endpoints answer loopback clients only"}, status_code=403)
        return await handler(request)

    return endpoint


# --- serving -----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def run_local_ai(
    host: str = "127.0.0.1", port: int = 0, *, server: LocalAiServer | None = None
) -> AsyncIterator[str]:
    """Serve a local AI server in the current event loop; yields its base URL (OLLAMA_URL; STT_URL is
    that plus /v1/audio/transcriptions)."""
    async with serve_app((server or LocalAiServer()).create_app(), host, port) as base_url:
        yield base_url


def serve_local_ai(host: str = "127.0.0.1", port: int = 11434, *, models: Sequence[str] = DEFAULT_MODELS) -> None:
    """Serve until SIGINT or SIGTERM (the `geniehelper local-ai` command). Blocking."""
    asyncio.run(_serve_until_signalled(host, port, LocalAiServer(models=models)))


async def _serve_until_signalled(host: str, port: int, server: LocalAiServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    log = structlog.get_logger("geniehelper.ai")
    try:
        async with run_local_ai(host, port, server=server) as base_url:
            log.info("local_ai.listening", base_url=base_url, models=list(server.models),
                     stt_url=f"{base_url}/v1/audio/transcriptions")  # fmt: skip
            await stop.wait()
            log.info("local_ai.stopping", base_url=base_url)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
