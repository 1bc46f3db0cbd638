"""The local Ollama-compatible server and the AI clients, over real HTTP on loopback: what the
server answers is computed from the image or audio really decoded; every fault it injects reaches
the client as the error a job needs (transient or permanent, with a reason)."""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import wave
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from geniehelper.ai.client import (
    AiClients,
    AiNotConfigured,
    AiPermanentError,
    AiTransientError,
    SpeechToTextClient,
    VisionClient,
    open_ai_clients,
)
from geniehelper.ai.local_server import FaultSpec, LocalAiServer, run_local_ai
from geniehelper.runtime.retry import classify
from geniehelper.settings import Settings


@pytest.fixture
async def local_ai() -> AsyncIterator[tuple[LocalAiServer, str]]:
    server = LocalAiServer(models=("llava", "moondream"))
    async with run_local_ai(server=server) as url:
        yield server, url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def png(width: int, height: int, colour: tuple[int, int, int], spot: tuple[int, int, int] | None = None) -> bytes:
    im = Image.new("RGB", (width, height), colour)
    if spot is not None:
        im.paste(spot, (0, 0, width // 4, height // 4))  # a sixteenth of the picture
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def tone_wav(frequency: float, seconds: float, rate: int = 16_000, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        frames = (int(6000 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(int(rate * seconds)))
        wav.writeframes(b"".join(struct.pack("<h", s) * channels for s in frames))
    return out.getvalue()


async def test_the_answer_is_derived_from_the_decoded_image_streamed_or_not_on_chat_and_generate(
    local_ai: tuple[LocalAiServer, str], http: httpx.AsyncClient
) -> None:
    server, url = local_ai
    vision = VisionClient(http, url, "llava", 5.0)
    blue = png(120, 80, (20, 40, 210), spot=(250, 230, 10))
    answers = [await vision.describe([blue], "what is it?", stream=stream, api=api)
               for stream in (True, False) for api in ("chat", "generate")]  # fmt: skip
    assert {a.text for a in answers} == {
        "The picture is 120x80 pixels, landscape, mostly blue (94%), with yellow; dark."
    }
    assert [a.streamed for a in answers] == [True, True, False, False]
    assert answers[0].chunks > 3 and answers[2].chunks == 1 and all(a.done_reason == "stop" for a in answers)
    other = await vision.describe([png(30, 50, (250, 250, 250))], "what is it?")
    assert other.text == "The picture is 30x50 pixels, portrait, mostly white (100%); bright."
    two = await vision.describe([blue, png(10, 10, (200, 10, 10))], "frames", stream=False)
    assert two.text.startswith("2 images. Image 1: 120x80 pixels") and "Image 2: 10x10 pixels, square, mostly red" in (
        two.text
    )
    assert server.request_counts() == {"POST /api/chat": 4, "POST /api/generate": 2}
    assert [r["images"] for r in server.last] == [1, 1, 1, 1, 1, 2] and server.last[0]["prompt"] == "what is it?"


async def test_the_wire_format_is_ollamas_ndjson_and_bad_input_is_refused_with_ollamas_errors(
    local_ai: tuple[LocalAiServer, str], http: httpx.AsyncClient
) -> None:
    _, url = local_ai
    image = base64.b64encode(png(16, 16, (0, 200, 0))).decode()
    body = {"model": "llava", "messages": [{"role": "user", "content": "hi", "images": [image]}]}  # stream: default
    async with http.stream("POST", f"{url}/api/chat", json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert all(line["done"] is False and line["message"]["role"] == "assistant" for line in lines[:-1])
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] > 0
    assert "".join(line["message"]["content"] for line in lines).endswith("mostly green (100%); medium-bright.")
    tags = (await http.get(f"{url}/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["llava", "moondream"]
    assert (await http.get(url)).text == "Ollama is running"

    refused = {
        "not base64 at all!": (400, "illegal base64"),
        base64.b64encode(b"these bytes are no image").decode(): (400, "image: unknown format"),
    }
    for images, (status, reason) in refused.items():
        response = await http.post(f"{url}/api/generate", json={"model": "llava", "prompt": "x", "images": [images]})
        assert response.status_code == status and reason in response.json()["error"]
    response = await http.post(f"{url}/api/chat", json={"model": "llava:13b-nope", "messages": [{"role": "user"}]})
    assert response.status_code == 404 and response.json() == {
        "error": 'model "llava:13b-nope" not found, try pulling it first'
    }
    vision = VisionClient(http, url, "gpt-vision", 5.0)
    with pytest.raises(AiPermanentError, match='404: model "gpt-vision" not found') as refused_model:
        await vision.describe([png(8, 8, (0, 0, 0))], "x")
    assert classify(refused_model.value) == ("permanent", None)
    with pytest.raises(AiPermanentError, match="400: image: unknown format"):
        await VisionClient(http, url, "moondream", 5.0).describe([b"GIF89a broken"], "x")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (FaultSpec(kind="stream_error", after_chunks=3), "error mid-stream after 3 chunks: injected error"),
        (FaultSpec(kind="stream_cut", after_chunks=2), "RemoteProtocolError"),
        (FaultSpec(kind="stall", after_chunks=1, delay_s=3), r"sent nothing for 0\.5s \(AI_TIMEOUT_S\): ReadTimeout"),
        (FaultSpec(kind="slow", delay_s=3), "sent nothing for 0.5s"),
        (FaultSpec(kind="server_error", status=503), "answered 503: injected server error"),
        (FaultSpec(kind="rate_limit", delay_s=1.5), "answered 429: injected: too many requests"),
    ],
)
async def test_each_fault_is_a_transient_error_with_its_reason_and_the_next_call_succeeds(
    local_ai: tuple[LocalAiServer, str], http: httpx.AsyncClient, fault: FaultSpec, reason: str
) -> None:
    server, url = local_ai
    vision = VisionClient(http, url, "llava", 0.5)
    image = png(40, 40, (128, 128, 128))
    fault_id = (await http.post(f"{url}/admin/faults", json=fault.model_dump())).json()["fault_id"]
    assert fault_id.startswith("fault_")
    with pytest.raises(AiTransientError, match=reason) as caught:
        await vision.describe([image], "x", stream=True)
    retry_after = 2.0 if fault.kind == "rate_limit" else None  # the server's Retry-After, for the backoff
    assert caught.value.retryable and classify(caught.value) == ("transient", retry_after)
    answer = await vision.describe([image], "x", stream=True)  # the fault was used up
    assert answer.text == "The picture is 40x40 pixels, square, mostly gray (100%); medium-bright."
    assert server.request_counts()["POST /api/chat"] == 2


async def test_stream_faults_leave_non_streaming_requests_alone_and_faults_can_be_cleared(
    local_ai: tuple[LocalAiServer, str], http: httpx.AsyncClient
) -> None:
    server, url = local_ai
    vision = VisionClient(http, url, "llava", 5.0)
    server.add_fault(FaultSpec(kind="stream_error", count=5))
    whole = await vision.describe([png(20, 20, (0, 0, 0))], "x", stream=False)
    assert whole.text.endswith("mostly black (100%); dark.")
    with pytest.raises(AiTransientError, match="mid-stream"):
        await vision.describe([png(20, 20, (0, 0, 0))], "x", stream=True)
    assert (await http.delete(f"{url}/admin/faults")).json() == {"cleared": 1}
    assert (await vision.describe([png(20, 20, (0, 0, 0))], "x", stream=True)).chunks > 1
    counts = (await http.get(f"{url}/admin/requests")).json()["counts"]
    assert counts == {"POST /api/chat": 3}


async def test_transcription_decodes_the_wav_and_describes_its_tone(
    local_ai: tuple[LocalAiServer, str], http: httpx.AsyncClient
) -> None:
    server, url = local_ai
    speech = SpeechToTextClient(http, f"{url}/v1/audio/transcriptions", "whisper-1", 5.0)
    assert (await speech.transcribe(tone_wav(440, 2.0))).text == "2.0 seconds of audio: a steady tone at about 440 Hz."
    keyed = SpeechToTextClient(http, f"{url}/v1/audio/transcriptions", "whisper-1", 5.0, api_key="sk-test")
    assert (await keyed.transcribe(tone_wav(300, 0.3))).text.endswith("about 300 Hz.")
    assert [r["bearer"] for r in server.last] == [False, True]
    stereo = await speech.transcribe(tone_wav(1000, 0.5, rate=44_100, channels=2), language="en")
    assert stereo.text == "0.5 seconds of audio: a steady tone at about 1000 Hz." and stereo.model == "whisper-1"
    silence = await speech.transcribe(tone_wav(440, 1.0)[:44] + b"\x00" * 32_000)
    assert silence.text == "1.0 seconds of silence."
    with pytest.raises(AiPermanentError, match="400: could not decode audio as WAV"):
        await speech.transcribe(b"RIFF....not a wave file")
    server.add_fault(FaultSpec(kind="server_error", path_prefix="/v1/", status=502))
    with pytest.raises(AiTransientError, match="answered 502"):
        await speech.transcribe(tone_wav(440, 0.2))
    form = await http.post(f"{url}/v1/audio/transcriptions", data={"model": "m", "response_format": "verbose_json"},
                           files={"file": ("a.wav", tone_wav(220, 1.0), "audio/wav")})  # fmt: skip
    assert form.json()["duration"] == 1.0 and form.json()["text"].endswith("about 220 Hz.")
    missing = await http.post(f"{url}/v1/audio/transcriptions", data={"model": "m"}, files={"x": ("a", b"1")})
    assert missing.status_code == 400 and "file is required" in missing.json()["error"]["message"]


async def test_a_server_that_is_down_or_unset_gives_the_error_a_job_can_report() -> None:
    from geniehelper.embedded import free_port

    settings = Settings(ollama_url=f"http://127.0.0.1:{free_port()}", ai_timeout_s=2.0)
    clients: AiClients = await open_ai_clients(settings)
    try:
        with pytest.raises(AiTransientError, match="ConnectError"):
            await clients.vision().describe([png(8, 8, (0, 0, 0))], "x")
        with pytest.raises(AiNotConfigured, match="STT_URL is not set"):
            clients.speech()
    finally:
        await clients.http.aclose()
    unset = await open_ai_clients(Settings())
    with pytest.raises(AiNotConfigured, match="OLLAMA_URL is not set") as caught:
        unset.vision()
    assert classify(caught.value) == ("permanent", None)
    await unset.http.aclose()
