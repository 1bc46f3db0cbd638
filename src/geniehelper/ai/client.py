"""Clients for the AI servers media jobs use, over httpx, offered to jobs as the AI resource.

`VisionClient` asks an Ollama-compatible server (OLLAMA_URL, OLLAMA_MODEL) about images, sent
base64-encoded in `/api/chat` or `/api/generate`, streaming (NDJSON) or not. `SpeechToTextClient`
posts a WAV file to an OpenAI-style transcription endpoint (STT_URL, STT_MODEL).

Every failure is an `AiError` that says whether retrying can help (`retryable`, which the runtime's
classifier reads): a connection refused or dropped mid-answer, a timeout (AI_TIMEOUT_S without a
byte), a 5xx or 429, an `{"error": ...}` line in the middle of a stream, a stream that ends before
`"done": true` are transient (`AiTransientError`); an unknown model (404), a request the server
refuses (other 4xx) and a server that is not configured are permanent (`AiPermanentError`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import structlog

from geniehelper.runtime.resources import ResourceKey
from geniehelper.settings import Settings, mask_url

log = structlog.get_logger("geniehelper.ai")

VisionApi = Literal["chat", "generate"]


class AiError(RuntimeError):
    retryable: bool = False
    retry_after_s: float | None = None


class AiTransientError(AiError):
    """Worth retrying: the server was down, slow, overloaded or broke off its answer."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AiPermanentError(AiError):
    """Retrying will not help: unknown model, refused request, nothing configured."""


class AiNotConfigured(AiPermanentError):
    pass


@dataclass(frozen=True)
class VisionAnswer:
    text: str
    model: str
    streamed: bool
    chunks: int
    done_reason: str | None
    seconds: float


@dataclass(frozen=True)
class Transcript:
    text: str
    model: str
    seconds: float


def _error_text(response: httpx.Response) -> str:
    """The server's own error message (Ollama: {"error": "..."}; OpenAI: {"error": {"message": ...}})."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:300] if error else response.text[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def status_error(service: str, url: str, response: httpx.Response) -> AiError:
    status = response.status_code
    message = f"{service} at {url} answered {status}: {_error_text(response)}"
    if status == 429 or status >= 500 or status == 408:
        return AiTransientError(message, retry_after_s=_retry_after(response))
    return AiPermanentError(message)


def transport_error(service: str, url: str, exc: httpx.RequestError, timeout_s: float) -> AiTransientError:
    if isinstance(exc, httpx.TimeoutException):
        kind = {httpx.ConnectTimeout: "could not connect", httpx.PoolTimeout: "no free connection"}.get(
            type(exc), f"sent nothing for {timeout_s:g}s (AI_TIMEOUT_S)"
        )
        return AiTransientError(f"{service} at {url} {kind}: {type(exc).__name__}")
    return AiTransientError(f"{service} at {url}: {type(exc).__name__}: {exc or 'connection failed'}"[:500])


class VisionClient:
    """An Ollama-compatible vision model: images in, text out."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, model: str, timeout_s: float) -> None:
        self.http, self.base_url, self.model, self.timeout_s = http, base_url.rstrip("/"), model, timeout_s

    async def describe(
        self, images: Sequence[bytes], prompt: str, *, stream: bool = True, api: VisionApi = "chat",
        options: dict[str, Any] | None = None,
    ) -> VisionAnswer:  # fmt: skip
        encoded = [base64.b64encode(image).decode() for image in images]
        body: dict[str, Any] = {"model": self.model, "stream": stream, "options": {"temperature": 0, **(options or {})}}
        if api == "chat":
            body["messages"] = [{"role": "user", "content": prompt, "images": encoded}]
        else:
            body.update(prompt=prompt, images=encoded)
        url = f"{self.base_url}/api/{api}"
        started = time.monotonic()
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        try:
            if stream:
                text, chunks, reason = await self._streamed(url, body, api, timeout)
            else:
                response = await self.http.post(url, json=body, timeout=timeout)
                if response.status_code != 200:
                    raise status_error("the vision server", url, response)
                text, reason = self._whole(url, response, api)
                chunks = 1
        except httpx.RequestError as exc:
            raise transport_error("the vision server", url, exc, self.timeout_s) from None
        text = text.strip()
        if not text:
            raise AiTransientError(f"the vision server at {url} gave an empty answer")
        answer = VisionAnswer(text, self.model, stream, chunks, reason, time.monotonic() - started)
        log.info("ai.described", model=self.model, api=api, stream=stream, images=len(images), chunks=chunks,
                 seconds=round(answer.seconds, 3), chars=len(text))  # fmt: skip
        return answer

    def _whole(self, url: str, response: httpx.Response, api: VisionApi) -> tuple[str, str | None]:
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AiTransientError(f"the vision server at {url} answered 200 with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise AiTransientError(f"the vision server at {url} answered 200 with {type(body).__name__}, not an object")
        if "error" in body:
            raise AiTransientError(f"the vision server at {url} reported an error: {str(body['error'])[:300]}")
        return _content(url, body, api), body.get("done_reason")

    async def _streamed(
        self, url: str, body: dict[str, Any], api: VisionApi, limits: httpx.Timeout
    ) -> tuple[str, int, str | None]:
        parts: list[str] = []
        async with self.http.stream("POST", url, json=body, timeout=limits) as response:
            if response.status_code != 200:
                await response.aread()
                raise status_error("the vision server", url, response)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    piece = json.loads(line)
                except json.JSONDecodeError:
                    raise AiTransientError(
                        f"the vision server at {url} sent a line that is not JSON after {len(parts)} chunks"
                    ) from None
                if not isinstance(piece, dict):
                    raise AiTransientError(f"the vision server at {url} sent a non-object line")
                if "error" in piece:
                    raise AiTransientError(
                        f"the vision server at {url} reported an error mid-stream after {len(parts)} chunks: "
                        f"{str(piece['error'])[:300]}"
                    )
                parts.append(_content(url, piece, api))
                if piece.get("done") is True:
                    return "".join(parts), len(parts), piece.get("done_reason")
        raise AiTransientError(f"the vision server at {url} ended its stream after {len(parts)} chunks without done")


def _content(url: str, piece: dict[str, Any], api: VisionApi) -> str:
    if api == "chat":
        message = piece.get("message")
        content = message.get("content", "") if isinstance(message, dict) else None
    else:
        content = piece.get("response")
    if not isinstance(content, str):
        if piece.get("done") is True and content is None:
            return ""
        raise AiTransientError(f"the vision server at {url} sent a chunk without text")
    return content


class SpeechToTextClient:
    """An OpenAI-style transcription endpoint: a WAV file in, text out."""

    def __init__(
        self, http: httpx.AsyncClient, url: str, model: str, timeout_s: float, api_key: str | None = None
    ) -> None:
        self.http, self.url, self.model, self.timeout_s = http, url, model, timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def transcribe(self, wav: bytes, *, filename: str = "audio.wav", language: str | None = None) -> Transcript:
        data = {"model": self.model, "response_format": "json"}
        if language:
            data["language"] = language
        started = time.monotonic()
        try:
            response = await self.http.post(
                self.url, data=data, files={"file": (filename, wav, "audio/wav")}, headers=self._headers,
                timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
            )  # fmt: skip
        except httpx.RequestError as exc:
            raise transport_error("the speech-to-text server", self.url, exc, self.timeout_s) from None
        if response.status_code != 200:
            raise status_error("the speech-to-text server", self.url, response)
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AiTransientError(
                f"the speech-to-text server at {self.url} answered with a body that is not JSON"
            ) from None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise AiTransientError(f"the speech-to-text server at {self.url} answered without a text")
        transcript = Transcript(text.strip(), self.model, time.monotonic() - started)
        log.info("ai.transcribed", model=self.model, bytes=len(wav), seconds=round(transcript.seconds, 3),
                 chars=len(transcript.text))  # fmt: skip
        return transcript


@dataclass
class AiClients:
    """What the AI resource offers a job: the clients of the servers that are configured."""

    http: httpx.AsyncClient
    vision_client: VisionClient | None
    speech_client: SpeechToTextClient | None

    def vision(self) -> VisionClient:
        if self.vision_client is None:
            raise AiNotConfigured("OLLAMA_URL is not set: no vision server to describe media with")
        return self.vision_client

    def speech(self) -> SpeechToTextClient:
        if self.speech_client is None:
            raise AiNotConfigured("STT_URL is not set: no speech-to-text server to transcribe with")
        return self.speech_client


async def open_ai_clients(settings: Settings) -> AiClients:
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.ai_timeout_s, connect=10.0), follow_redirects=False)
    vision = (VisionClient(http, settings.ollama_url, settings.ollama_model, settings.ai_timeout_s)
              if settings.ollama_url else None)  # fmt: skip
    key = settings.stt_api_key.get_secret_value() if settings.stt_api_key else None
    speech = (SpeechToTextClient(http, settings.stt_url, settings.stt_model, settings.ai_timeout_s, key)
              if settings.stt_url else None)  # fmt: skip
    log.info("ai.clients_ready", ollama_url=settings.ollama_url and mask_url(settings.ollama_url),
             ollama_model=settings.ollama_model, stt_url=settings.stt_url and mask_url(settings.stt_url),
             stt_model=settings.stt_model)  # fmt: skip
    return AiClients(http, vision, speech)


async def close_ai_clients(clients: AiClients) -> None:
    await clients.http.aclose()


# The AI clients, opened once per worker for the jobs that declare them.
AI: ResourceKey[AiClients] = ResourceKey("ai", open_ai_clients, close_ai_clients)
