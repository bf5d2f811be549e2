"""The file client and ``spiritlm-agent send``, against a scripted server (the real one is tested elsewhere).

The fake server runs on its own thread and event loop, so the client under test can be driven
either with ``asyncio.run(send_file(...))`` or through the blocking CLI ``main``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import threading
import time
from http import HTTPStatus

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.server import serve

from agent.cli import main
from agent.protocol import parse_client_event
from agent.spiritlm.audio import resample, write_wav
from clients.file_client import ClientError, ServerError, send_file
from streaming.audio import float_to_pcm16

REPLY = (np.sin(np.arange(2400) / 5) * 9000).astype("<i2").tobytes()  # what the fake assistant says, as PCM16
LATENCY = {"commit_s": 0.05, "decode_s": 1.7, "tokens": 250.0, "first_token_s": 0.01, "first_audio_s": 0.3}
TOKEN = "s3cret"


def tone(seconds: float = 1.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)


@contextlib.contextmanager
def fake_server(script: str = "speech"):
    """Yield ``(url, received)``: a server that records client events and answers one turn.

    ``script``: "speech" (audio + transcript), "text" (text only), "error" (an error event on
    commit), "close" (closes on response.create), "hang" (never answers), "full" (HTTP 503).
    Connections without ``Bearer TOKEN`` get HTTP 401.
    """
    received: list[dict] = []

    def check(connection, request):
        if script == "full":
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "full\n")
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad token\n")
        return None

    async def handler(ws):
        async def send(kind, **fields):
            await ws.send(json.dumps({"type": kind, "event_id": f"event_{len(received)}", **fields}))

        await send("session.created", session={"type": "realtime"})
        async for message in ws:
            event = json.loads(message)
            received.append(event)
            if event["type"] == "session.update":
                await send("session.updated", session=event["session"])
            elif event["type"] == "input_audio_buffer.commit" and script == "error":
                await send("error", error={"type": "invalid_request_error", "code": "invalid_audio",
                                           "message": "bad audio", "param": None, "event_id": None})
            elif event["type"] == "response.create" and script == "close":
                await ws.close(1011, "engine crashed")
            elif event["type"] == "response.create" and script != "hang":
                await send("response.created", response={"id": "resp_1", "status": "in_progress"})
                if script == "text":
                    await send("response.output_text.delta", delta="Hi ")
                    await send("response.output_text.delta", delta="there.")
                else:
                    for i, word in enumerate(["Hello", " you."]):
                        await send("response.output_audio_transcript.delta", delta=word)
                        half = REPLY[i * len(REPLY) // 2:(i + 1) * len(REPLY) // 2]
                        await send("response.output_audio.delta", delta=base64.b64encode(half).decode())
                await send("response.done", response={"id": "resp_1", "status": "completed",
                                                      "spiritlm": {"latency": LATENCY}})

    async def start():
        return await serve(handler, "127.0.0.1", 0, process_request=check)

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime", received
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def turn_audio(received: list[dict]) -> bytes:
    """The PCM16 the client appended, after checking the turn's event order (and that each event is valid)."""
    for event in received:
        parse_client_event(json.dumps(event))
    kinds = [e["type"] for e in received]
    appends = kinds.count("input_audio_buffer.append")
    assert kinds == ["session.update"] + ["input_audio_buffer.append"] * appends + ["input_audio_buffer.commit", "response.create"]
    return b"".join(base64.b64decode(e["audio"]) for e in received[1:-2])


@pytest.mark.parametrize("rate", [24_000, 16_000])
def test_send_file_streams_one_turn_and_collects_the_reply(rate):
    audio = tone(0.55)
    with fake_server() as (url, received):
        reply = asyncio.run(send_file(url, audio, token=TOKEN, pace="fast", rate=rate,
                                      session={"spiritlm": {"greedy": True}}))
    update = received[0]["session"]
    assert update == {"type": "realtime", "spiritlm": {"greedy": True},
                      "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}, "turn_detection": None},
                                "output": {"format": {"type": "audio/pcm", "rate": rate}}}}
    assert turn_audio(received) == float_to_pcm16(resample(audio, 16_000, rate))
    assert len(base64.b64decode(received[1]["audio"])) == 2 * rate // 10  # 100 ms chunks
    assert reply.rate == rate and reply.audio.dtype == np.float32
    assert np.array_equal(reply.audio, np.frombuffer(REPLY, "<i2") / np.float32(32768))
    assert reply.transcript == "Hello you." and reply.text == ""
    assert reply.server_latency == LATENCY and reply.response["status"] == "completed"
    assert 0 <= reply.first_audio_s <= reply.total_s
    assert reply.events[:2] == ["session.created", "session.updated"] and reply.events[-1] == "response.done"


def test_realtime_pace_takes_the_file_duration_and_fast_does_not():
    elapsed = {}
    for pace in ("realtime", "fast"):
        with fake_server() as (url, _):
            started = time.monotonic()
            asyncio.run(send_file(url, tone(1.0), token=TOKEN, pace=pace))
            elapsed[pace] = time.monotonic() - started
    assert elapsed["realtime"] >= 0.95 and elapsed["fast"] < 0.5, elapsed


def test_cli_send_writes_the_reply_wav(tmp_path, capsys):
    source, out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(source, tone(0.3, 22_050), 22_050)
    with fake_server() as (url, received):
        code = main(["send", str(source), "-o", str(out), "--url", url, "--token", TOKEN, "--fast", "--rate", "16000",
                     "--voice", "ash", "--temperature", "0.7", "--seed", "3", "--output-modality", "speech", "-q"])
    stdout = capsys.readouterr().out.splitlines()
    assert code == 0
    assert received[0]["session"]["audio"]["output"]["voice"] == "ash"
    assert received[0]["session"]["spiritlm"] == {"output_modality": "speech", "seed": 3, "greedy": False, "temperature": 0.7}
    assert turn_audio(received) == float_to_pcm16(resample(tone(0.3, 22_050), 22_050, 16_000))
    data, rate = sf.read(out, dtype="int16")
    assert rate == 16_000 and sf.info(out).subtype == "PCM_16" and data.tobytes() == REPLY
    assert stdout[0] == "Hello you."
    assert stdout[1].startswith("first audio ") and stdout[1].endswith(
        "; server: commit 0.050 s, decode 1.700 s, 250 tokens, first token 0.010 s, first audio 0.300 s")


def test_cli_text_reply_writes_no_wav(tmp_path, capsys, caplog, monkeypatch):
    source, out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(source, tone(0.2))
    monkeypatch.setenv("SPIRITLM_AGENT_TOKEN", TOKEN)
    with fake_server("text") as (url, received):
        code = main(["send", str(source), "-o", str(out), "--url", url, "--fast", "--output-modality", "text"])
    assert code == 0 and not out.exists() and "no audio came back" in caplog.text
    assert capsys.readouterr().out.splitlines()[0] == "Hi there." and received[0]["session"]["spiritlm"] == {"output_modality": "text"}


def test_error_event_raises_server_error():
    with fake_server("error") as (url, _), pytest.raises(ServerError) as caught:
        asyncio.run(send_file(url, tone(0.2), token=TOKEN, pace="fast"))
    assert caught.value.code == "invalid_audio" and "bad audio" in str(caught.value)


@pytest.mark.parametrize("script,token,message", [
    ("speech", "wrong", "rejected the connection (HTTP 401): the server refused the token"),
    ("full", TOKEN, "rejected the connection (HTTP 503): the server is full"),
    ("close", TOKEN, "closed the connection while we waited for response.done (code 1011: engine crashed)"),
    ("hang", TOKEN, "timed out after 0.5 s waiting for response.done"),
])
def test_failures_are_client_errors(script, token, message):
    with fake_server(script) as (url, _), pytest.raises(ClientError, match=re.escape(message)):
        asyncio.run(send_file(url, tone(0.2), token=token, pace="fast", timeout_s=0.5))


def test_cli_connection_refused_is_one_line(tmp_path, capsys):
    source = tmp_path / "in.wav"
    write_wav(source, tone(0.2))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["send", str(source), "-o", str(tmp_path / "out.wav"), "--url", f"ws://127.0.0.1:{port}/v1/realtime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"spiritlm-agent: error: cannot connect to ws://127.0.0.1:{port}/v1/realtime: ")
    assert err[0].endswith("is `spiritlm-agent serve` running?")
