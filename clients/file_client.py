"""Send an audio file to a spiritlm-agent server as one user turn and collect the reply.

Why: the simplest end-to-end check of a running server (``spiritlm-agent send``) and a latency
probe. The file is streamed the way a microphone would deliver it (``pace="realtime"``) or as
fast as the socket takes it (``pace="fast"``), committed by hand (``turn_detection: null``, so
the server's VAD cannot cut the turn), and the reply is timed from the commit, next to the
server's own ``response.spiritlm.latency``.

The events are the GA Realtime ones documented in :mod:`agent.protocol`. Every failure
(cannot connect, rejected handshake, ``error`` event, early close, timeout) is a
:class:`ClientError` with a one-line message, never a raw websockets exception.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agent.spiritlm.audio import resample
from agent.spiritlm.errors import InvalidArgumentError, SpiritLMError
from streaming.audio import float_to_pcm16, pcm16_to_float

__all__ = ["ClientError", "ServerError", "FileReply", "send_file", "PACES"]

PACES = ("realtime", "fast")
_MAX_MESSAGE = 64 * 1024 * 1024  # a server may send a long reply in few large deltas
_HTTP_REFUSALS = {401: "the server refused the token (see --token / $SPIRITLM_AGENT_TOKEN)",
                  503: "the server is full or shutting down; try again later"}


class ClientError(SpiritLMError):
    """Talking to the server failed: cannot connect, handshake refused, early close, timeout."""


class ServerError(ClientError):
    """The server answered with an ``error`` event (``code`` is GA's error code)."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(f"the server sent an error ({code}): {message}")
        self.code, self.message, self.param = code, message, param


@dataclass
class FileReply:
    """The assistant's reply to one file. Client times run from the moment the commit was sent."""

    audio: np.ndarray  # float32 mono at ``rate``; empty if no audio came back
    rate: int
    transcript: str  # the response.output_audio_transcript.delta events, joined
    text: str  # the response.output_text.delta events, joined (text replies)
    response: dict[str, Any]  # the ``response`` object of response.done
    server_latency: dict[str, float]  # response.spiritlm.latency: seconds, except "tokens" (a count)
    first_audio_s: float | None  # commit sent -> first audio received; None if no audio came back
    total_s: float  # commit sent -> response.done received
    events: list[str]  # types of the JSON events received, in order

    def latency_summary(self) -> str:
        """One line, e.g. ``first audio 0.412 s after commit, done 1.800 s; server: commit 0.050 s, ...``."""
        first = "no audio" if self.first_audio_s is None else f"first audio {self.first_audio_s:.3f} s after commit"
        server = [f"{int(value)} tokens" if key == "tokens" else f"{key.removesuffix('_s').replace('_', ' ')} {value:.3f} s"
                  for key, value in self.server_latency.items()]
        return f"{first}, done {self.total_s:.3f} s" + (f"; server: {', '.join(server)}" if server else "")


async def send_file(url: str, audio: np.ndarray, *, audio_rate: int = 16_000, token: str | None = None,
                    pace: str = "realtime", chunk_ms: int = 100, rate: int = 24_000,
                    session: dict[str, Any] | None = None, timeout_s: float = 120) -> FileReply:
    """Stream mono float ``audio`` (sampled at ``audio_rate``) to ``url`` as one user turn; return the reply.

    The audio is resampled to ``rate`` (the session's input and output rate, 24000 or 16000) and
    sent as ``chunk_ms`` PCM16 appends; ``session`` is merged into our ``session.update`` (nested
    objects key by key), e.g. ``{"spiritlm": {"greedy": True}}``. ``timeout_s`` bounds the whole
    exchange, connection included.
    """
    if pace not in PACES:
        raise InvalidArgumentError(f"pace must be one of {PACES}, got {pace!r}")
    if chunk_ms <= 0:
        raise InvalidArgumentError(f"chunk_ms must be positive, got {chunk_ms}")
    pcm = float_to_pcm16(resample(np.asarray(audio, dtype=np.float32), audio_rate, rate))
    update = _merge({"type": "realtime",
                     "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}, "turn_detection": None},
                               "output": {"format": {"type": "audio/pcm", "rate": rate}}}}, session or {})
    turn = _Turn(url, rate)
    try:
        return await asyncio.wait_for(turn.run(token, update, pcm, pace, chunk_ms), timeout_s)
    except asyncio.TimeoutError:
        raise ClientError(f"timed out after {timeout_s:g} s waiting for {turn.waiting_for} from {url}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested objects merged key by key (as the server merges session.update)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Turn:
    """One connection: sends the turn, assembles the reply, remembers what it waits for (for messages)."""

    def __init__(self, url: str, rate: int):
        self.url, self.rate = url, rate
        self.waiting_for = "the connection"
        self.events: list[str] = []
        self.audio: list[bytes] = []
        self.transcript: list[str] = []
        self.text: list[str] = []
        self.first_audio_at: float | None = None

    async def run(self, token: str | None, update: dict[str, Any], pcm: bytes, pace: str, chunk_ms: int) -> FileReply:
        try:
            ws = await connect(self.url, additional_headers={"Authorization": f"Bearer {token}"} if token else None,
                               max_size=_MAX_MESSAGE, close_timeout=2)
        except InvalidURI:
            raise ClientError(f"{self.url} is not a websocket URL (expected ws://host:port/path)") from None
        except InvalidStatus as exc:
            status, said = exc.response.status_code, (exc.response.body or b"").decode(errors="replace").strip()
            why = _HTTP_REFUSALS.get(status) or (said.splitlines()[0][:200] if said else "no reason given")
            raise ClientError(f"{self.url} rejected the connection (HTTP {status}): {why}") from None
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
            raise ClientError(f"cannot connect to {self.url}: {_reason(exc)}; is `spiritlm-agent serve` running?") from None
        try:
            return await self._talk(ws, update, pcm, pace, chunk_ms)
        except ConnectionClosed as exc:
            why = f" (code {exc.rcvd.code}: {exc.rcvd.reason or 'no reason given'})" if exc.rcvd else ""
            raise ClientError(f"the server closed the connection while we waited for {self.waiting_for}{why}") from None
        finally:
            await ws.close()

    async def _talk(self, ws: ClientConnection, update: dict[str, Any], pcm: bytes, pace: str, chunk_ms: int) -> FileReply:
        self.waiting_for = "session.created"
        await self._expect(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        self.waiting_for = "session.updated"
        await self._expect(ws, "session.updated")
        self.waiting_for = "response.done"
        # Read while sending, so an error event stops a long real-time upload at once.
        sender = asyncio.create_task(self._send_turn(ws, pcm, pace, chunk_ms))
        reader = asyncio.create_task(self._read_reply(ws))
        try:
            committed_at, (response, done_at) = await asyncio.gather(sender, reader)
        finally:
            sender.cancel()
            reader.cancel()
        spiritlm = response.get("spiritlm") or {}
        return FileReply(
            audio=pcm16_to_float(b"".join(self.audio)), rate=self.rate, transcript="".join(self.transcript),
            text="".join(self.text), response=response, server_latency=dict(spiritlm.get("latency") or {}),
            first_audio_s=None if self.first_audio_at is None else self.first_audio_at - committed_at,
            total_s=done_at - committed_at, events=self.events)

    async def _send_turn(self, ws: ClientConnection, pcm: bytes, pace: str, chunk_ms: int) -> float:
        """Append ``pcm``, commit, ask for a response; return when the commit left (monotonic clock).

        In real time each chunk leaves when its last sample would have been spoken, on a schedule
        anchored at the first chunk, so sleep overshoots do not add up over a long file.
        """
        step = 2 * max(1, self.rate * chunk_ms // 1000)
        start = time.monotonic()
        for offset in range(0, len(pcm), step):
            chunk = pcm[offset:offset + step]
            if pace == "realtime":
                await asyncio.sleep(max(0.0, start + (offset + len(chunk)) / (2 * self.rate) - time.monotonic()))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        committed_at = time.monotonic()
        await ws.send(json.dumps({"type": "response.create"}))
        return committed_at

    async def _read_reply(self, ws: ClientConnection) -> tuple[dict[str, Any], float]:
        """Collect audio and text until response.done; return its response object and arrival time."""
        while True:
            message = await ws.recv()
            now = time.monotonic()
            if isinstance(message, bytes):  # a binary audio frame (session.spiritlm.binary_audio)
                self._add_audio(message, now)
                continue
            event = self._decode(message)
            kind = event["type"]
            if kind == "response.output_audio.delta":
                self._add_audio(base64.b64decode(event["delta"]), now)
            elif kind == "response.output_audio_transcript.delta":
                self.transcript.append(event["delta"])
            elif kind == "response.output_text.delta":
                self.text.append(event["delta"])
            elif kind == "response.done":
                return event["response"], now

    def _add_audio(self, pcm: bytes, now: float) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.audio.append(pcm)

    async def _expect(self, ws: ClientConnection, kind: str) -> None:
        """Skip events until one of type ``kind`` arrives (an ``error`` event raises)."""
        while True:
            message = await ws.recv()
            if not isinstance(message, bytes) and self._decode(message)["type"] == kind:
                return

    def _decode(self, message: str) -> dict[str, Any]:
        try:
            event = json.loads(message)
            kind = event["type"]
        except (ValueError, TypeError, KeyError):
            raise ClientError(f"the server sent something that is not a realtime event: {message[:80]!r}") from None
        self.events.append(kind)
        if kind == "error":
            error = event.get("error") or {}
            raise ServerError(error.get("code") or "unknown", error.get("message") or "(no message)", error.get("param"))
        return event
