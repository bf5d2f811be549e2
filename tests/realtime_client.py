"""A minimal asyncio Realtime client for the server tests (raw events, nothing hidden)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
from websockets.asyncio.client import connect


class Client:
    def __init__(self, ws):
        self.ws = ws
        self.events: list[dict] = []

    @classmethod
    async def open(cls, url: str, **kwargs) -> "Client":
        client = cls(await connect(url, max_size=None, **kwargs))
        created = await client.recv()
        assert created["type"] == "session.created", created
        return client

    async def send(self, kind: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def recv(self, timeout: float = 60) -> dict:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        event = {"type": "binary", "data": message} if isinstance(message, bytes) else json.loads(message)
        self.events.append(event)
        return event

    async def until(self, kind: str, timeout: float = 120) -> list[dict]:
        """Events up to and including the next one of type ``kind``."""
        got = []
        while True:
            event = await self.recv(timeout)
            got.append(event)
            if event["type"] == kind:
                return got

    async def update(self, **session) -> dict:
        await self.send("session.update", session={"type": "realtime", **session})
        events = await self.until("session.updated")
        errors = [e for e in events if e["type"] == "error"]
        assert not errors, errors
        return events[-1]["session"]

    async def append(self, pcm: bytes, chunk_bytes: int = 9600) -> None:
        for i in range(0, len(pcm), chunk_bytes):
            await self.send("input_audio_buffer.append", audio=base64.b64encode(pcm[i:i + chunk_bytes]).decode())

    async def close(self) -> None:
        await self.ws.close()


def reply_audio(events: list[dict]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) if e["type"] == "response.output_audio.delta" else e["data"]
                    for e in events if e["type"] in ("response.output_audio.delta", "binary"))


def pcm16(samples: np.ndarray) -> bytes:
    from streaming.audio import float_to_pcm16

    return float_to_pcm16(np.asarray(samples, dtype=np.float32))


def pcm_diff(a: bytes, b: bytes) -> int:
    x, y = np.frombuffer(a, "<i2").astype(int), np.frombuffer(b, "<i2").astype(int)
    assert len(x) == len(y), (len(x), len(y))
    return int(np.abs(x - y).max()) if len(x) else 0
