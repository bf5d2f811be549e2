"""Bad input, limits and security of the Realtime server, over real sockets.

The rule every test checks from its own side: bad input gets a clear ``error`` event and loses
nothing (the session goes on as if the bad event had not been sent), no traceback reaches the
user, the server never crashes, other sessions are unaffected and memory stays bounded.

Decisions checked here: ``/healthz`` and ``/metrics`` never need the token (load balancers and
Prometheus probe them; they carry no conversation data), only the Realtime endpoint does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent import protocol as p
from agent.spiritlm.audio import resample
from realtime_client import Client, pcm16, pcm_diff, reply_audio

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MANUAL = {"input": {"turn_detection": None}}  # session.update audio: manual commit
SERVER_EVENTS = {
    "session.created", "session.updated", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed", "input_audio_buffer.cleared", "conversation.item.added", "conversation.item.done",
    "conversation.item.truncated", "conversation.item.deleted", "response.created", "response.output_item.added",
    "response.output_item.done", "response.content_part.added", "response.content_part.done",
    "response.output_audio.delta", "response.output_audio.done", "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done", "response.output_text.delta", "response.output_text.done",
    "response.done", "error"}
CLIENT_ERRORS = {  # every code a client mistake may get (agent/protocol.py, agent/conversation.py)
    "invalid_json", "invalid_event", "unknown_event", "missing_required_parameter", "unknown_parameter", "invalid_type",
    "invalid_value", "invalid_audio", "unsupported_audio_format", "unsupported", "cannot_update_voice",
    "binary_audio_disabled", "item_not_found", "response_cancel_not_active", "input_audio_buffer_commit_empty",
    "input_audio_buffer_not_committed", "input_audio_buffer_overflow", "input_audio_error",
    "conversation_already_has_active_response", "conversation_busy", "context_full"}
LONG_PROMPT = "hi"  # greedy tiny checkpoints answer it with ~640 tokens (~14 s here) before they stop


# ---------------------------------------------------------------------------- helpers
def wire_pcm(wav16) -> bytes:
    """16 kHz float speech as PCM16 at the default wire rate (24 kHz)."""
    return pcm16(resample(np.asarray(wav16, np.float32)[None], 16000, 24000)[0])


def user_text(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def open_manual(url: str, **kwargs) -> Client:
    client = await Client.open(url, **kwargs)
    await client.update(audio=MANUAL, spiritlm={"greedy": True})
    return client


async def expect_error(client: Client, code: str, param: str | None = None, event_id: str | None = None) -> dict:
    """The very next event is the error for the event just sent."""
    event = await client.recv(30)
    assert event["type"] == "error", event
    error = event["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    assert error["param"] == param and error["event_id"] == event_id, error
    assert error["message"] and "Traceback" not in error["message"], error
    return error


def check_reply(events: list[dict], tokens: int) -> None:
    """A whole, error-free spoken reply cut at ``tokens`` tokens."""
    assert not [e for e in events if e["type"] == "error"], events
    kinds = [e["type"] for e in events]
    for kind in ("response.created", "response.content_part.added", "response.output_audio.done",
                 "response.output_audio_transcript.done", "response.output_item.done", "response.done"):
        assert kind in kinds, kinds
    done = events[-1]["response"]
    assert done["status"] == "incomplete" and done["status_details"]["reason"] == "max_output_tokens", done
    assert done["usage"]["output_tokens"] == tokens
    assert len(reply_audio(events)) > 0


async def spoken_turn(client: Client, pcm: bytes, tokens: int = 20, chunk_bytes: int = 9600) -> list[dict]:
    """One manual turn: append, commit, response.create; checked complete."""
    await client.append(pcm, chunk_bytes)
    await client.send("input_audio_buffer.commit")
    await client.send("response.create", response={"max_output_tokens": tokens})
    events = await client.until("response.done")
    check_reply(events, tokens)
    return events


async def text_turn(client: Client, text: str = "Hello there.", tokens: int = 10) -> list[dict]:
    """One turn from a text item, where the content does not matter; checked complete."""
    await client.send("conversation.item.create", item=user_text(text))
    await client.send("response.create", response={"max_output_tokens": tokens})
    events = await client.until("response.done")
    assert not [e for e in events if e["type"] == "error"], events
    response = events[-1]["response"]
    assert response["status"] in ("completed", "incomplete") and 0 < response["usage"]["output_tokens"] <= tokens
    return events


async def start_long_reply(client: Client, tokens: int = 600) -> list[dict]:
    """Start a long spoken reply; returns once its first audio arrived."""
    await client.send("conversation.item.create", item=user_text(LONG_PROMPT))
    await client.send("response.create", response={"max_output_tokens": tokens})
    return await client.until("response.output_audio.delta")


def http_get(port: int, path: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def healthz(port: int) -> dict:
    status, body = http_get(port, "/healthz")
    assert status == 200, (status, body)
    return json.loads(body)


def metric(port: int, name: str, **labels) -> float:
    """One sample of /metrics (0 when the series does not exist yet)."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    want = "spiritlm_agent_" + name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in body.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (result := await asyncio.to_thread(predicate)):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(interval)
    return result


async def closed_with(client: Client, timeout: float = 30) -> tuple[int, str]:
    """Read until the server closes the connection; returns (code, reason) of its close frame."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.recv(timeout)
    rcvd = info.value.rcvd
    assert rcvd is not None, f"no close frame: {info.value!r}"
    return rcvd.code, rcvd.reason


@pytest.fixture(scope="module")
def hello_pcm(speech) -> bytes:
    return wire_pcm(speech["hello"][0].numpy())


class ServeProcess:
    """``spiritlm-agent serve`` as a child process on a free port; its log lines are collected."""

    def __init__(self, checkpoints: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--checkpoints", str(checkpoints), "--port", "0", *args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.port = 0
        threading.Thread(target=self._read_log, daemon=True).start()  # also keeps the pipe from filling up
        if not self._listening.wait(90):
            self.stop()
            raise AssertionError("server did not start:\n" + self.log)
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime"

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if not self._listening.is_set() and (m := re.search(r"listening on ws://[\d.]+:(\d+)/", line)):
                self.port = int(m.group(1))
                self._listening.set()
        self._listening.set()  # exited before listening

    @property
    def log(self) -> str:
        return "\n".join(line for line in self.lines if "leaked" not in line)  # nanobind's exit notices

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def serve_process(ckpt_dir):
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        started.append(ServeProcess(ckpt_dir, *args))
        return started[-1]

    yield start
    for server in started:
        server.stop()


# ---------------------------------------------------------------------------- 1. bad input
def test_bad_input_gets_an_error_and_loses_nothing(start_server, hello_pcm):
    """Each bad event gets its own error; the session (and its half-appended audio) goes on untouched,
    while a canary session in the same server holds a normal spoken conversation throughout."""
    server = start_server()
    half = len(hello_pcm) // 4 * 2

    async def canary(started: asyncio.Event, stop: asyncio.Event, replies: list) -> None:
        client = await open_manual(server.url)
        while not stop.is_set() or len(replies) < 2:
            await client.append(hello_pcm)
            await client.send("input_audio_buffer.commit")
            await client.send("response.create", response={"max_output_tokens": 20})
            started.set()
            events = await client.until("response.done")
            check_reply(events, 20)
            replies.append(events)
        await client.close()

    async def bad(started: asyncio.Event) -> tuple[list[dict], list[dict]]:
        client = await open_manual(server.url)
        session = await client.update()  # a no-op update: what the session is, to compare after each error
        await started.wait()
        await client.send("input_audio_buffer.commit")  # nothing appended yet
        await expect_error(client, "input_audio_buffer_commit_empty")
        await client.append(hello_pcm[:half])  # half of the turn now, the rest after the bad events

        def event(kind: str, **fields) -> str:
            return json.dumps({"type": kind, **fields})

        cases = [
            ("{not json", "invalid_json", None, None),
            ('{"type": "input_audio_buffer.append", "audio": "AAAA"', "invalid_json", None, None),
            (event("response.explode", event_id="evt_1"), "unknown_event", "type", "evt_1"),
            (event("input_audio_buffer.append", audio="not base64!", event_id="evt_2"), "invalid_audio", "audio",
             "evt_2"),
            (event("input_audio_buffer.append", audio=base64.b64encode(b"\x01\x02\x03").decode()), "invalid_audio",
             "audio", None),
            (event("session.update", session={"type": "realtime", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 44100}}}}), "unsupported_audio_format",
             "session.audio.input.format.rate", None),
            (event("session.update", session={"type": "realtime", "audio": {"output": {
                "format": {"type": "audio/pcmu"}}}}), "unsupported_audio_format", "session.audio.output.format.type",
             None),
            (b"\x00\x01" * 480, "binary_audio_disabled", None, None),
            (event("response.cancel", event_id="evt_3"), "response_cancel_not_active", None, "evt_3"),
            (event("conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=0),
             "item_not_found", "item_id", None),
            (event("conversation.item.delete", item_id="item_nope"), "item_not_found", "item_id", None),
        ]
        errors = []
        for frame, code, param, event_id in cases:
            await client.ws.send(frame)
            errors.append(await expect_error(client, code, param, event_id))
            assert await client.update() == session  # still answers, and nothing changed
        # Answers come in the order of the events: a valid event sent just before a bad one is answered first.
        await client.send("session.update", session={"type": "realtime"})
        await client.ws.send("[1, 2")
        assert (await client.recv())["type"] == "session.updated"
        await expect_error(client, "invalid_json")

        await client.append(hello_pcm[half:])
        await client.send("input_audio_buffer.commit")
        await client.send("response.create", response={"max_output_tokens": 20})
        events = await client.until("response.done")
        check_reply(events, 20)
        await client.close()
        return errors, events

    async def main():
        started, stop, replies = asyncio.Event(), asyncio.Event(), []
        canary_task = asyncio.create_task(canary(started, stop, replies))
        try:
            errors, events = await bad(started)
        finally:
            stop.set()
        await canary_task
        return errors, events, replies

    errors, events, replies = asyncio.run(main())
    assert errors[2]["message"].startswith('Invalid value: "response.explode". Supported client events are: ')
    assert "44100" in errors[5]["message"] and "pcmu" in errors[6]["message"]
    assert "binary_audio" in errors[7]["message"]
    # The bad session's turn is exactly the canary's first one: the same audio, nothing lost, nothing added.
    assert pcm_diff(reply_audio(events), reply_audio(replies[0])) <= 1
    registry = server.server.metrics.registry
    assert registry.get_sample_value("spiritlm_agent_errors_total", {"code": "invalid_json"}) == 3
    assert registry.get_sample_value("spiritlm_agent_errors_total", {"code": "server_error"}) is None


# ---------------------------------------------------------------------------- 2. oversized frames
def test_oversized_message_closes_only_that_connection(start_server):
    limit = 64 << 10
    server = start_server(max_message_bytes=limit)

    async def main():
        other = await open_manual(server.url)
        big = await open_manual(server.url)
        # A message of exactly the limit is read (and answered: it is not JSON)...
        await big.ws.send("x" * limit)
        await expect_error(big, "invalid_json")
        await big.ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(bytes(48000)).decode()}))  # and so is a big append
        await big.send("input_audio_buffer.clear")
        assert (await big.recv())["type"] == "input_audio_buffer.cleared"
        # ...one byte more closes that connection with 1009 (message too big).
        await big.ws.send("x" * (limit + 1))
        code, reason = await closed_with(big)
        assert code == 1009 and str(limit) in reason, (code, reason)
        binary = await open_manual(server.url)
        await binary.ws.send(bytes(limit + 2))  # binary frames have the same limit
        code, _ = await closed_with(binary)
        assert code == 1009
        await text_turn(other)  # the other session never noticed
        assert healthz(server.port)["sessions"] == 1
        fresh = await open_manual(server.url)
        await text_turn(fresh)
        await other.close()
        await fresh.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------- 3. event floods
def test_event_flood_is_throttled_and_loses_nothing(start_server, hello_pcm):
    """5000 tiny appends (the whole turn, a few samples each) mixed with 2000 bad events, sent as fast as
    TCP takes them: the queue for the inference thread stays within its budget, /healthz and another
    session keep answering, the flooder gets all 2000 errors and then the same reply as a quiet session."""
    inbox = 32 << 10
    server = start_server(inbox_bytes=inbox)
    appends, bad = 5000, 2000
    step = len(hello_pcm) // appends // 2 * 2
    chunks = [hello_pcm[i * step:(i + 1) * step] for i in range(appends - 1)] + [hello_pcm[(appends - 1) * step:]]
    frames = []
    for i, chunk in enumerate(chunks):
        frames.append(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}))
        if i % 5 in (1, 3):
            frames.append("{oops" if i % 5 == 1 else json.dumps({"type": "flood.event", "event_id": f"e{i}"}))
    assert sum(f.startswith("{oops") or "flood" in f for f in frames) == bad

    def queued():
        (conn,) = [c for c in server.server.connections if c.id == flooder_id]
        return conn.budget.used, len(conn.slot.inbox)

    async def main():
        nonlocal flooder_id
        quiet = await open_manual(server.url)
        reference = await spoken_turn(quiet, hello_pcm)  # the same turn from a quiet session
        flooder = await open_manual(server.url)
        flooder_id = next(e for e in flooder.events if e["type"] == "session.created")["session"]["id"]
        other = await open_manual(server.url)

        peaks, latencies = [0, 0], {}

        async def watch(done: asyncio.Event):
            while not done.is_set():
                used, depth = await asyncio.to_thread(server.call, queued)
                peaks[0], peaks[1] = max(peaks[0], used), max(peaks[1], depth)
                await asyncio.sleep(0.005)

        async def flood():
            started = time.perf_counter()
            for frame in frames:
                await flooder.ws.send(frame)
            latencies["flood_send_s"] = time.perf_counter() - started

        async def probe():
            for _ in range(500):  # start once the flood is queued for the inference thread
                latencies["flood_queued_at_probe"] = (await asyncio.to_thread(server.call, queued))[0]
                if latencies["flood_queued_at_probe"]:
                    break
                await asyncio.sleep(0.002)
            started = time.perf_counter()
            assert (await asyncio.to_thread(healthz, server.port))["status"] == "ok"
            latencies["healthz_s"] = time.perf_counter() - started
            started = time.perf_counter()
            await text_turn(other, tokens=10)
            latencies["other_turn_s"] = time.perf_counter() - started

        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        flood_task = asyncio.create_task(flood())
        await probe()
        await flood_task
        started = time.perf_counter()
        errors = [await flooder.recv() for _ in range(bad)]  # the flooder's answers: exactly its errors
        latencies["errors_drained_s"] = time.perf_counter() - started
        done.set()
        await watcher
        await flooder.send("input_audio_buffer.commit")
        await flooder.send("response.create", response={"max_output_tokens": 20})
        events = await flooder.until("response.done")
        check_reply(events, 20)
        for client in (quiet, flooder, other):
            await client.close()
        return reference, errors, events, peaks, latencies

    flooder_id = None
    reference, errors, events, (peak_bytes, peak_depth), latencies = asyncio.run(main())
    assert latencies["flood_queued_at_probe"] > 0, latencies  # the probes started during the flood
    assert latencies["healthz_s"] < 2 and latencies["other_turn_s"] < 10, latencies
    assert [e["type"] for e in errors] == ["error"] * bad
    codes = [e["error"]["code"] for e in errors]
    assert codes.count("invalid_json") == codes.count("unknown_event") == bad // 2
    assert [e["error"]["event_id"] for e in errors if e["error"]["code"] == "unknown_event"] == \
        [f"e{i}" for i in range(appends) if i % 5 == 3]  # in the order sent
    assert 0 < peak_bytes <= inbox and peak_depth <= inbox // 256, (peak_bytes, peak_depth)  # bounded by the budget
    assert pcm_diff(reply_audio(events), reply_audio(reference)) <= 1  # not one sample lost
    reference_appends = len(range(0, len(hello_pcm), 9600))
    assert metric(server.port, "client_events_total", type="input_audio_buffer.append") == appends + reference_appends


# ---------------------------------------------------------------------------- 4. a client that stops reading
def small_receive_buffer_socket(port: int) -> socket.socket:
    """A connected socket whose kernel receive buffer is small, so that not reading is felt at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def test_client_that_stops_reading_is_closed(start_server, caplog):
    """Two clients stop reading during a long reply: both are closed with 1008 and a logged reason (the
    one that reads again gets the close frame; the one that never does is dropped all the same), while
    a third gets whole replies, each ending with an event bigger than the outbox limit itself."""
    limit = 64 << 10
    server = start_server(outbox_bytes=limit)

    def connection(session_id: str):
        return next((c for c in server.server.connections if c.id == session_id), None)

    def tighten(session_id: str, close_timeout: float | None) -> None:
        """Small kernel buffers on the server side too (as on a slow link), so the outbox fills at once."""
        conn = connection(session_id)
        conn.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        if close_timeout:  # websockets waits 10 s for a close handshake before it drops the TCP connection
            conn.ws.close_timeout = close_timeout

    async def open_stalling(close_timeout: float | None = None) -> tuple[Client, str]:
        client = Client(await connect(server.url, sock=small_receive_buffer_socket(server.port), max_size=None,
                                      max_queue=4))
        session_id = (await client.recv())["session"]["id"]
        await asyncio.to_thread(server.call, lambda: tighten(session_id, close_timeout))
        await client.update(audio=MANUAL)
        await start_long_reply(client)
        return client, session_id  # and now it reads nothing

    async def main():
        reader = await open_manual(server.url)
        (resumes, resumes_id), (never, never_id) = await open_stalling(), await open_stalling(close_timeout=2)
        events = await start_long_reply(reader, tokens=60)
        events += await reader.until("response.done")
        check_reply(events, 60)
        assert max(len(e.get("delta", "")) for e in events) > limit  # the last audio comes in one burst
        await wait_for(lambda: server.call(lambda: connection(resumes_id).closing) is not None, 30,
                       "the server to give up on the stalled client")
        # The one that reads again gets what was already on the wire, then the 1008 close frame.
        assert await closed_with(resumes) == (1008, "client is not reading its events")
        # The one that never reads again does not keep its session: the server drops it on its own.
        await wait_for(lambda: server.call(lambda: connection(never_id)) is None, 30,
                       "the server to drop the client that never reads")
        assert healthz(server.port)["sessions"] == 1
        await text_turn(reader)
        never.ws.transport.abort()
        await reader.close()
        return resumes_id, never_id

    ids = asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all(any(f"[{i}] closing: " in w and w.endswith("the client is not reading them")
                                          for w in warnings) for i in ids), warnings


# ---------------------------------------------------------------------------- 5. abrupt disconnects, RSS
def test_abrupt_disconnects_keep_memory_bounded(serve_process):
    server = serve_process()

    async def cycle(i: int) -> None:
        client = await Client.open(server.url)
        if i % 4 == 0:  # start a reply, then vanish without a close frame
            await client.send("conversation.item.create", item=user_text(LONG_PROMPT))
            await client.send("response.create", response={"max_output_tokens": 300})
            await client.until("response.output_audio.delta")
            client.ws.transport.abort()
        elif i % 4 == 1:  # vanish right after connecting
            client.ws.transport.abort()
        else:
            await client.close()

    async def cycles(start: int, n: int) -> None:
        for i in range(start, start + n):
            await cycle(i)
        await wait_for(lambda: healthz(server.port)["sessions"] == 0, 30, "every session to be dropped")

    async def main():
        await cycles(0, 20)  # warm-up
        before = server.rss_mib()
        started = time.perf_counter()
        await cycles(20, 120)
        elapsed = time.perf_counter() - started
        after = server.rss_mib()
        client = await open_manual(server.url)
        await text_turn(client)
        await client.close()
        return before, after, elapsed

    before, after, elapsed = asyncio.run(main())
    assert after - before < 50, f"RSS {before:.1f} MiB after warm-up, {after:.1f} MiB after 120 more cycles " \
                                f"({elapsed:.1f} s)"
    assert metric(server.port, "sessions_total") == 141 and metric(server.port, "sessions_active") == 0
    assert server.proc.poll() is None
    assert "Traceback" not in server.log and " ERROR " not in server.log, server.log[-3000:]


# ---------------------------------------------------------------------------- 6. auth
def test_bearer_token_is_required_at_the_handshake(start_server):
    server = start_server(token="s3cret")

    async def main():
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer s3cret2"}):
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url, additional_headers=headers)
            assert info.value.response.status_code == 401
            assert b"Bearer" in info.value.response.body and b"s3cret" not in info.value.response.body
        client = await Client.open(server.url + "?model=spirit-lm",
                                   additional_headers={"Authorization": "Bearer s3cret"})
        await text_turn(client)
        await client.close()
        client = await Client.open(server.url, additional_headers={"Authorization": "bearer s3cret"})  # scheme: any case
        await client.close()
        # browsers cannot set headers: OpenAI's browser clients pass the key as a subprotocol
        client = await Client.open(server.url, subprotocols=["realtime", "openai-insecure-api-key.s3cret"])
        assert client.ws.subprotocol == "realtime"
        await client.close()
        with pytest.raises(InvalidStatus):
            await connect(server.url, subprotocols=["realtime", "openai-insecure-api-key.nope"])

    asyncio.run(main())
    assert http_get(server.port, "/healthz")[0] == http_get(server.port, "/metrics")[0] == 200  # no token needed
    assert metric(server.port, "handshakes_rejected_total", reason="auth") == 6
    assert http_get(server.port, "/nowhere", {"Authorization": "Bearer s3cret"})[0] == 404


# ---------------------------------------------------------------------------- 7. max sessions
def test_max_sessions_refuses_with_503_until_one_leaves(start_server):
    server = start_server(max_sessions=2)

    async def main():
        first, second = await Client.open(server.url), await Client.open(server.url)
        with pytest.raises(InvalidStatus) as info:
            await connect(server.url)
        assert info.value.response.status_code == 503 and b"full" in info.value.response.body
        await first.close()
        await wait_for(lambda: healthz(server.port)["sessions"] == 1, 5, "the closed session to be dropped")
        third = await open_manual(server.url)
        await text_turn(third)
        await text_turn(second)
        for client in (second, third):
            await client.close()

    asyncio.run(main())
    assert metric(server.port, "handshakes_rejected_total", reason="full") == 1


# ---------------------------------------------------------------------------- 8. idle timeout
def test_idle_timeout_spares_sessions_with_a_reply_streaming(start_server):
    timeout = 0.5
    server = start_server(idle_timeout_s=timeout)

    async def main():
        silent = await Client.open(server.url)
        started = time.monotonic()
        code, reason = await closed_with(silent, 10)
        silent_after = time.monotonic() - started

        busy = await open_manual(server.url)
        events = await start_long_reply(busy, tokens=150)
        started = time.monotonic()
        events += await busy.until("response.done")  # not a single client event meanwhile
        streamed = time.monotonic() - started
        ended = time.monotonic()
        busy_code, busy_reason = await closed_with(busy, 10)
        return (code, reason, silent_after), (events[-1]["response"], streamed, busy_code, busy_reason,
                                              time.monotonic() - ended)

    (code, reason, silent_after), (response, streamed, busy_code, busy_reason, busy_after) = asyncio.run(main())
    # (the server's clock starts just before the client has its session.created)
    assert code == 1000 and "idle" in reason, (code, reason)
    assert timeout - 0.2 <= silent_after < timeout + 1.5, silent_after
    assert response["status"] == "incomplete" and streamed > 4 * timeout, (response["status"], streamed)
    assert busy_code == 1000 and "idle" in busy_reason and busy_after < 2 * timeout + 1.5


# ---------------------------------------------------------------------------- 9. graceful shutdown
def test_sigterm_fails_the_reply_and_closes_with_1001(serve_process):
    server = serve_process()

    async def main():
        client = await open_manual(server.url)
        await start_long_reply(client)
        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        events = await client.until("response.done", timeout=10)
        with pytest.raises((OSError, InvalidStatus)) as refused:  # new connections are refused meanwhile...
            await connect(server.url, open_timeout=5)
        assert server.proc.poll() is None  # ...by a server still shutting down (its exit takes over a second)
        code, reason = await closed_with(client, 10)
        return events[-1]["response"], code, reason, refused.value, sent

    response, code, reason, refused, sent = asyncio.run(main())
    assert response["status"] == "failed", response
    assert response["status_details"]["error"]["code"] == "server_shutting_down"
    assert response["output"][0]["status"] == "incomplete"
    assert (code, reason) == (1001, "server shutting down")
    assert isinstance(refused, ConnectionRefusedError) or refused.response.status_code == 503, refused
    assert server.proc.wait(10) == 0
    assert time.monotonic() - sent < 8
    assert "shutting down: 1 open sessions" in server.log and "Traceback" not in server.log, server.log[-3000:]


# ---------------------------------------------------------------------------- 9b. a session the server cannot recover
def test_session_the_server_cannot_recover_is_closed_with_1011(start_server, caplog):
    """A decode step fails and so does ending the reply: the session says so and is closed (1011), rather
    than left open with nobody answering it; the traceback stays in the server's log; others go on."""
    server = start_server()

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    def break_session(session_id: str) -> None:
        (conn,) = [c for c in server.server.connections if c.id == session_id]
        conn.session.begin_step = conn.session.fail_response = boom

    async def main():
        other = await open_manual(server.url)
        broken = await open_manual(server.url)
        session_id = broken.events[0]["session"]["id"]
        await asyncio.to_thread(server.call, lambda: break_session(session_id))
        await broken.send("conversation.item.create", item=user_text("Hello."))
        await broken.send("response.create")
        events = await broken.until("error")
        code, reason = await closed_with(broken, 10)
        await text_turn(other)
        await other.close()
        return events[-1]["error"], code, reason

    error, code, reason = asyncio.run(main())
    assert error["type"] == error["code"] == "server_error" and "Traceback" not in error["message"], error
    assert code == 1011 and reason == "internal error: the session is closed"
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)  # the traceback is in the log


# ---------------------------------------------------------------------------- 10. fuzz
def test_fuzzed_frames_never_close_the_session(start_server, hello_pcm):
    """Random text, bytes, JSON and client events (plausible ones with random values, and any type with random
    fields) on one live connection: every answer is an error for a client mistake or a normal event, never
    a close; afterwards the session still has a normal turn."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from websockets.sync.client import connect as sync_connect

    server = start_server()
    ws = sync_connect(server.url, max_size=None)
    seen: dict[str, int] = {}

    def answers_until(marker: str) -> list[dict]:
        """Send a bad event with ``marker`` as its event_id; everything received up to its error."""
        ws.send(json.dumps({"type": "fuzz.sync", "event_id": marker}))
        events = []
        while True:
            message = ws.recv(30)  # raises ConnectionClosed if the server closed
            event = {"type": "binary"} if isinstance(message, bytes) else json.loads(message)
            assert event["type"] in SERVER_EVENTS | {"binary"}, event
            seen[event["type"]] = seen.get(event["type"], 0) + 1
            events.append(event)
            if event["type"] == "error":
                error = event["error"]
                assert error["code"] in CLIENT_ERRORS and error["type"] == "invalid_request_error", error
                assert "Traceback" not in error["message"], error
                if error["event_id"] == marker:
                    return events

    assert json.loads(ws.recv(10))["type"] == "session.created"
    ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 4,
                                                             "audio": MANUAL}}))
    assert answers_until("setup")[0]["type"] == "session.updated"

    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
    json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                               | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=12)
    field_names = st.sampled_from(["audio", "item", "session", "response", "item_id", "event_id", "content_index",
                                   "audio_end_ms", "previous_item_id", "response_id"]) | st.text(max_size=12)
    any_event = st.builds(lambda kind, fields: {"type": kind, **fields},
                          st.sampled_from(p.CLIENT_EVENT_TYPES) | st.text(max_size=20) | json_values,
                          st.dictionaries(field_names, json_values, max_size=3))

    def event(kind: str, **fields):
        return st.fixed_dictionaries({"type": st.just(kind), **fields})

    def some(**fields):
        return st.fixed_dictionaries({}, optional=fields)

    audio = st.binary(max_size=4800).map(lambda b: base64.b64encode(b).decode())  # odd sizes too
    item_ids = st.sampled_from(["item_nope", ""]) | st.text(max_size=70)
    tokens = st.integers(-1, 4) | st.sampled_from([0, 5000, "4", None])
    modalities = st.sampled_from([["audio"], ["text"], ["audio", "text"], []])
    content = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["input_text", "input_audio", "text"])},
                                             optional={"text": st.text(max_size=30), "audio": audio}), max_size=2)
    plausible = st.one_of(
        event("input_audio_buffer.append", audio=audio),
        st.sampled_from([{"type": "input_audio_buffer.commit"}, {"type": "input_audio_buffer.clear"},
                         {"type": "response.cancel"}]),
        event("response.create", response=some(max_output_tokens=tokens, output_modalities=modalities,
                                               instructions=st.text(max_size=30), metadata=json_values)),
        event("conversation.item.create", item=st.fixed_dictionaries({
            "type": st.just("message"), "role": st.sampled_from(["user", "assistant", "system"]),
            "content": content})),
        event("conversation.item.delete", item_id=item_ids),
        event("conversation.item.truncate", item_id=item_ids, content_index=st.integers(-1, 2),
              audio_end_ms=st.integers(-1, 10**6)),
        event("session.update", session=st.fixed_dictionaries({"type": st.sampled_from(["realtime", "x"])}, optional={
            "instructions": st.text(max_size=30), "max_output_tokens": tokens, "output_modalities": modalities,
            "audio": some(input=some(format=some(type=st.sampled_from(["audio/pcm", "audio/pcmu"]),
                                                 rate=st.sampled_from([16000, 24000, 44100])),
                                     turn_detection=st.none() | some(type=st.sampled_from(["server_vad", "x"]))),
                          output=some(voice=st.sampled_from(["alloy", "0", "3", "7", "nope"]))),
            "spiritlm": some(binary_audio=st.booleans(), greedy=st.booleans(), speaker=st.integers(-1, 5))})),
    )
    frames = st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps),
                       any_event.map(json.dumps), plausible.map(json.dumps))

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(frames, min_size=1, max_size=6))
    def fuzz(batch):
        for frame in batch:
            ws.send(frame)
        answers_until(f"sync-{time.monotonic_ns()}")

    try:
        fuzz()
        # Whatever the fuzz left behind, the session still has a normal turn.
        for kind in ("response.cancel", "input_audio_buffer.clear"):
            ws.send(json.dumps({"type": kind}))
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": MANUAL, "max_output_tokens": 20, "output_modalities": ["audio"],
            "spiritlm": {"binary_audio": False}}}))
        answers_until("before-the-turn")
        for i in range(0, len(hello_pcm), 9600):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(hello_pcm[i:i + 9600]).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "response.create"}))
        events = []
        while not events or events[-1]["type"] != "response.done":
            events.append(json.loads(ws.recv(60)))
        check_reply(events, 20)
        assert events[0]["type"] == "input_audio_buffer.committed"
    finally:
        ws.close()
    assert seen["error"] >= 200 and len(seen) >= 8, seen  # the fuzz reached more than the parser
