"""The Realtime websocket server: ``spiritlm-agent serve``.

Three layers, each knowing as little of the others as it can:

- the **event loop** (websockets' asyncio server) accepts connections, checks the bearer token
  and the session limit at the handshake, parses client events (``agent.protocol``), queues
  them for the inference thread and sends what comes back. It never runs model code.
- the **inference thread** (:class:`InferenceWorker`) owns every ``RealtimeSession``
  (``agent.realtime``) and so the one shared model. Each round it runs at most one queued
  client event per session (round-robin, so no session can starve the others), then one
  decode step for every session that is answering, as **one batched forward**
  (``streaming.lm.append_token_batch``), rotating sessions through ``max_batch`` slots.
- per-connection **flow control**: client events wait in a bounded queue (a client that sends
  faster than the model can take stops being read: TCP pushes back, memory stays bounded);
  server events wait in a bounded outbox (a client that stops reading is closed with a logged
  reason once the outbox is full).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from agent import protocol as p
from agent.realtime import Outgoing, RealtimeSession
from agent.spiritlm.model import SpiritLM
from streaming.lm import append_token_batch

log = logging.getLogger("spiritlm_agent.server")
_ws_log = logging.getLogger("spiritlm_agent.websockets")
_ws_log.setLevel(logging.WARNING)  # its INFO lines repeat ours ("connection rejected (200 OK)" for /healthz)
# websockets 13-14 also log our own HTTP answers (/healthz, 401, 503) as a failed handshake, with a traceback.
_ws_log.addFilter(lambda record: not (record.exc_info and isinstance(record.exc_info[1], InvalidStatus)))

ENDPOINT = "/v1/realtime"
TOKEN_SUBPROTOCOL = "openai-insecure-api-key."
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_POLICY = 1008  # client broke a rule (stopped reading)
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # required bearer token, if set
    max_sessions: int = 8
    max_message_bytes: int = 8 << 20  # largest websocket message (JSON or binary)
    idle_timeout_s: float = 600.0  # close a session with no client event and nothing in progress for this long
    max_batch: int = 16  # sessions decoded in one forward
    inbox_bytes: int = 4 << 20  # client data queued for the inference thread, per session
    outbox_bytes: int = 32 << 20  # server events waiting to be sent, per session
    shutdown_grace_s: float = 5.0  # SIGTERM: time for replies to end and events to be sent


class Metrics:
    """Prometheus metrics of one server (its own registry, so several servers can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, ns = self.registry, "spiritlm_agent"
        self.sessions_active = Gauge("sessions_active", "Open Realtime sessions", namespace=ns, registry=r)
        self.sessions = Counter("sessions", "Sessions accepted", namespace=ns, registry=r)
        self.rejected = Counter("handshakes_rejected", "Handshakes refused", ["reason"], namespace=ns, registry=r)
        self.client_events = Counter("client_events", "Client events received", ["type"], namespace=ns, registry=r)
        self.errors = Counter("errors", "Error events sent", ["code"], namespace=ns, registry=r)
        self.responses = Counter("responses", "Responses finished", ["status"], namespace=ns, registry=r)
        self.tokens = Counter("tokens_generated", "Tokens decoded", namespace=ns, registry=r)
        self.batch = Histogram("decode_batch_size", "Sessions per decode forward", namespace=ns, registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        self.step = Histogram("decode_step_seconds", "Time of one (batched) decode forward", namespace=ns, registry=r,
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.first_audio = Histogram("response_first_audio_seconds", "Response start to first audio (engine clock)",
                                     namespace=ns, registry=r, buckets=(.05, .1, .2, .3, .5, .75, 1, 2, 5))

    def observe_outgoing(self, msg: Outgoing) -> None:
        if isinstance(msg, bytes):
            return
        kind = msg["type"]
        if kind == "error":
            self.errors.labels(msg["error"]["code"] or "").inc()
        elif kind == "response.done":
            response = msg["response"]
            self.responses.labels(response["status"]).inc()
            latency = response.get("spiritlm", {}).get("latency", {})
            self.tokens.inc(latency.get("tokens", 0))
            if "first_audio_s" in latency:
                self.first_audio.observe(latency["first_audio_s"])


class SessionLog(logging.LoggerAdapter):
    """Log lines of one session: ``[sess_...]`` in the text, ``session`` as a field (``--log-json``)."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**kwargs.get("extra", {}), "session": self.extra["session"]}
        return f"[{self.extra['session']}] {msg}", kwargs


# ---------------------------------------------------------------------------- the inference thread
Job = Callable[[], list[Outgoing]]


class Slot:
    """A session as the inference thread sees it: its queued jobs and where its output goes."""

    def __init__(self, session: RealtimeSession, deliver: Callable[[list[Outgoing], int], None]):
        self.session = session
        self.deliver = deliver  # thread-safe: (messages, inbox bytes released)
        self.inbox: deque[tuple[Job, int]] = deque()
        self.closed = False
        self.log = SessionLog(log, {"session": session.id})


class InferenceWorker:
    """The one thread that runs model code: client events and batched decode steps, fairly."""

    def __init__(self, metrics: Metrics, max_batch: int = 16):
        self.metrics = metrics
        self.max_batch = max_batch
        self._slots: list[Slot] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._rotation = 0
        self._thread = threading.Thread(target=self._run, name="spiritlm-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def add(self, slot: Slot) -> None:
        with self._lock:
            self._slots.append(slot)

    def remove(self, slot: Slot) -> None:
        slot.closed = True  # dropped (with its KV cache) by the thread at its next round
        self._wake.set()

    def submit(self, slot: Slot, job: Job, cost: int = 0) -> None:
        slot.inbox.append((job, cost))
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before looking for work: a submit after this wakes the wait below
            with self._lock:
                self._slots = slots = [s for s in self._slots if not s.closed]
            busy = False
            for slot in slots:
                if slot.inbox and not slot.closed:
                    job, cost = slot.inbox.popleft()
                    slot.deliver(self._guard(slot, job), cost)
                    busy = True
            responders = [s for s in slots if not s.closed and s.session.responding]
            if responders:
                self._decode(responders)
                busy = True
            if not busy:
                self._wake.wait(1.0)

    def _guard(self, slot: Slot, job: Job) -> list[Outgoing]:
        try:
            return job()
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this session
            return self._fail(slot, exc)

    def _fail(self, slot: Slot, exc: Exception) -> list[Outgoing]:
        """An exception in one session ends that session's reply, never the thread or other sessions."""
        slot.log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        try:
            return slot.session.fail_response(f"internal error ({type(exc).__name__}); the reply was stopped")
        except Exception:  # noqa: BLE001
            slot.log.exception("could not recover; closing the session")
            slot.closed = True
            return [p.error_event(p.ProtocolError("server_error", "internal error: the session is closed",
                                                  type="server_error"))]

    def _decode(self, slots: list[Slot]) -> None:
        if len(slots) > self.max_batch:  # fairness: rotate who gets the batch slots
            start = self._rotation % len(slots)
            slots = (slots[start:] + slots[:start])[:self.max_batch]
            self._rotation += self.max_batch
        chosen: list[tuple[Slot, int]] = []
        for slot in slots:
            try:
                token, out = slot.session.begin_step()
            except Exception as exc:  # noqa: BLE001
                token, out = None, self._fail(slot, exc)
            if out:
                slot.deliver(out, 0)
            if token is not None:
                chosen.append((slot, token))
        if not chosen:
            return
        started = time.perf_counter()
        try:
            append_token_batch([s.session.engine.session for s, _ in chosen], [t for _, t in chosen])
        except Exception:  # noqa: BLE001 - find the session at fault by stepping them one by one
            log.exception("batched decode of %d sessions failed; retrying one by one", len(chosen))
            survivors = []
            for slot, token in chosen:
                try:
                    slot.session.engine.session.append([token])
                    survivors.append((slot, token))
                except Exception as exc:  # noqa: BLE001
                    slot.deliver(self._fail(slot, exc), 0)
            chosen = survivors
        self.metrics.step.observe(time.perf_counter() - started)
        self.metrics.batch.observe(len(chosen))
        for slot, token in chosen:
            slot.deliver(self._guard(slot, lambda slot=slot, token=token: slot.session.end_step(token)), 0)


# ---------------------------------------------------------------------------- connections
class _Budget:
    """Bytes of client data queued for the inference thread; ``take`` waits while it is spent."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._freed = asyncio.Event()

    async def take(self, n: int) -> None:
        while self.used and self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def give(self, n: int) -> None:
        if n:
            self.used -= n
            self._freed.set()


class _Connection:
    def __init__(self, server: "RealtimeServer", ws: ServerConnection, session: RealtimeSession):
        self.server, self.ws, self.session = server, ws, session
        self.id = session.id
        self.loop = asyncio.get_running_loop()
        self.slot = Slot(session, self._deliver_threadsafe)
        self.budget = _Budget(server.config.inbox_bytes)
        self.outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.outbox_bytes = 0
        self.closing: tuple[int, str] | None = None
        self._closer: asyncio.Future | None = None
        self.events_in = 0

    # -- inference thread -> loop
    def _deliver_threadsafe(self, messages: list[Outgoing], released: int) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, messages, released)
        except RuntimeError:  # the loop is gone (server stopped)
            pass

    def _deliver(self, messages: list[Outgoing], released: int) -> None:
        self.budget.give(released)
        for msg in messages:
            self.send(msg)
        if self.slot.closed:  # the inference thread gave up on the session (InferenceWorker._fail): end the connection
            self.close(CLOSE_INTERNAL, "internal error: the session is closed")

    def send(self, msg: Outgoing) -> None:
        if self.closing is not None:
            return
        self.server.metrics.observe_outgoing(msg)
        if isinstance(msg, dict):
            if msg["type"] == "response.done":
                self._log_response(msg["response"])
            msg = json.dumps(msg, separators=(",", ":"))
        self.outbox_bytes += len(msg)
        # Over the limit *while the socket takes no more* is a client that is not reading. A burst the
        # socket is still taking (a reply's last audio comes with its closing events in one delivery) is not.
        if self.outbox_bytes > self.server.config.outbox_bytes and self.ws.transport.get_write_buffer_size():
            self.slot.log.warning("closing: %.1f MiB of events queued, the client is not reading them",
                                  self.outbox_bytes / 2**20)
            self.close(CLOSE_POLICY, "client is not reading its events", now=True)
            return
        self.outbox.put_nowait(msg)

    def close(self, code: int, reason: str, now: bool = False) -> None:
        """Close after the events queued, or ``now``: drop them (the client is not reading them) and close at
        once (the sender may be stuck on a socket that takes nothing)."""
        if self.closing is None:
            self.closing = (code, reason)
            self.outbox.put_nowait(None)
        if now and self._closer is None:
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.outbox_bytes = 0
            self.outbox.put_nowait(None)
            self._closer = asyncio.ensure_future(self._close_now())

    async def _close_now(self) -> None:
        """Write the close frame behind what the socket holds; drop the TCP connection if the client does not
        answer within websockets' close timeout (its ``close`` waits without limit for a socket to drain)."""
        try:
            await asyncio.wait_for(self.ws.close(*self.closing), self.ws.close_timeout)
        except asyncio.TimeoutError:
            self.ws.transport.abort()

    def _log_response(self, response: dict) -> None:
        latency = response.get("spiritlm", {}).get("latency", {})
        self.slot.log.info("%s %s: %d tokens, first audio %s, %.2f s", response["id"], response["status"],
                 int(latency.get("tokens", 0)),
                 f"{latency['first_audio_s']:.3f} s" if "first_audio_s" in latency else "-",
                 latency.get("decode_s", 0.0))

    # -- loop
    async def run(self) -> None:
        self.server.worker.add(self.slot)
        sender = asyncio.create_task(self._send_loop())
        self.server.worker.submit(self.slot, self.session.start)
        try:
            await self._receive_loop()
        except ConnectionClosed:
            pass
        finally:
            self.server.worker.remove(self.slot)
            self.close(*(self.closing or (1000, "")))
            await sender
            if self._closer is not None:
                await self._closer

    async def _send_loop(self) -> None:
        try:
            while (msg := await self.outbox.get()) is not None:
                self.outbox_bytes -= len(msg)
                await self.ws.send(msg)
        except ConnectionClosed:
            return
        code, reason = self.closing or (1000, "")
        await self.ws.close(code, reason)

    async def _receive_loop(self) -> None:
        timeout = self.server.config.idle_timeout_s
        while self.closing is None:
            try:
                message = await asyncio.wait_for(self.ws.recv(), timeout)
            except asyncio.TimeoutError:
                if self.session.responding or self.budget.used or self.outbox_bytes:  # not idle: work in progress
                    continue
                self.slot.log.info("closing: idle for %g s", timeout)
                self.close(1000, f"idle timeout: no client event for {timeout:g} s")
                return
            self.events_in += 1
            try:
                event = (p.unpack_audio_frame(message, self.session.config) if isinstance(message, bytes)
                         else p.parse_client_event(message))
            except p.ProtocolError as err:
                self.server.metrics.client_events.labels("invalid").inc()
                self.slot.log.debug("rejected a client event: %s: %s", err.code, err.message)  # counted in /metrics
                job, cost = (lambda err=err: [p.error_event(err)]), 256
            else:
                self.server.metrics.client_events.labels(event.TYPE).inc()
                job, cost = (lambda event=event: self.session.handle(event)), len(getattr(event, "audio", b"")) + 256
            # An error takes the queue like any event: answers keep the order of the client's events, and a
            # flood of bad events is throttled by the inbox budget like a flood of good ones.
            await self.budget.take(cost)
            self.server.worker.submit(self.slot, job, cost)


# ---------------------------------------------------------------------------- the server
class RealtimeServer:
    """OpenAI Realtime-compatible server over one shared ``SpiritLM``."""

    def __init__(self, model: SpiritLM, config: ServerConfig = ServerConfig(), model_name: str | None = None):
        self.model = model
        self.config = config
        self.metrics = Metrics()
        self.worker = InferenceWorker(self.metrics, config.max_batch)
        vocoder = model.speech.vocoder
        speakers = vocoder.spkr.num_embeddings if vocoder.spkr is not None else 1
        self.session_defaults = replace(p.SessionConfig(), model=model_name or f"spirit-lm-{model.variant}",
                                        num_speakers=speakers)
        self.connections: set[_Connection] = set()
        self.accepting = True
        self._server: Server | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self.worker.start()
        self._stopped = asyncio.Event()
        self._server = await serve(self._handle, self.config.host, self.config.port, process_request=self._http,
                                   select_subprotocol=_select_subprotocol,
                                   max_size=self.config.max_message_bytes, max_queue=4, compression=None,
                                   logger=_ws_log)
        log.info("listening on ws://%s:%d%s (model %s, max %d sessions%s)", self.config.host, self.port, ENDPOINT,
                 self.session_defaults.model, self.config.max_sessions, ", token required" if self.config.token else "")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Stop accepting, end the replies in progress, close every session with 1001."""
        if not self.accepting:
            return await self.wait_stopped()
        self.accepting = False
        log.info("shutting down: %d open sessions", len(self.connections))
        self._server.close(close_connections=False)
        for conn in list(self.connections):
            conn.budget.used += 1  # given back once its events are in the outbox (see below)
            self.worker.submit(conn.slot, conn.session.shutdown, 1)
        deadline = time.monotonic() + self.config.shutdown_grace_s
        # budget.used counts the jobs whose events have not reached the outbox yet: a job the inference thread
        # has taken but not delivered is no longer in slot.inbox, and its reply is no longer "responding".
        while any(c.budget.used or c.session.responding or c.outbox_bytes for c in self.connections) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):  # now: a backlog left after the grace period is not being read
            conn.close(CLOSE_GOING_AWAY, "server shutting down", now=True)
        await self._server.wait_closed()
        self.worker.stop()
        self._stopped.set()
        log.info("stopped")

    # -- handshake
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path.rstrip("/") or "/"
        if path == "/healthz":
            body = {"status": "ok" if self.accepting else "shutting_down", "model": self.session_defaults.model,
                    "sessions": len(self.connections), "max_sessions": self.config.max_sessions}
            return _response(connection, 200 if self.accepting else 503, json.dumps(body), "application/json")
        if path == "/metrics":
            return _response(connection, 200, generate_latest(self.metrics.registry).decode(),
                             "text/plain; version=0.0.4; charset=utf-8")
        if path != ENDPOINT:
            return _response(connection, 404, f"Not found: the Realtime endpoint is {ENDPOINT}\n")
        if self.config.token is not None:
            if not hmac.compare_digest(_given_token(request).encode(), self.config.token.encode()):
                self.metrics.rejected.labels("auth").inc()
                log.info("refused a connection from %s: missing or wrong bearer token", _peer(connection))
                return _response(connection, 401, "Unauthorized: send 'Authorization: Bearer <token>' (browsers: "
                                                  f"the subprotocol '{TOKEN_SUBPROTOCOL}<token>')\n")
        if not self.accepting:
            self.metrics.rejected.labels("shutting_down").inc()
            return _response(connection, 503, "Service unavailable: the server is shutting down\n")
        if len(self.connections) >= self.config.max_sessions:
            self.metrics.rejected.labels("full").inc()
            log.info("refused a connection from %s: %d sessions open (--max-sessions)", _peer(connection),
                     len(self.connections))
            return _response(connection, 503, f"Service unavailable: the server is full "
                                              f"({self.config.max_sessions} sessions); try again later\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        if len(self.connections) >= self.config.max_sessions or not self.accepting:  # raced past the handshake check
            await ws.close(CLOSE_TRY_AGAIN, "server is full")
            return
        session = RealtimeSession(self.model, self.session_defaults)
        conn = _Connection(self, ws, session)
        self.connections.add(conn)
        self.metrics.sessions.inc()
        self.metrics.sessions_active.inc()
        started = time.monotonic()
        query = urlsplit(ws.request.path).query
        conn.slot.log.info("connected from %s%s", _peer(ws), f" ({query})" if query else "")
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.metrics.sessions_active.dec()
            code, reason = ws.protocol.close_code, ws.protocol.close_reason  # (ws.close_code: websockets 15+ only)
            conn.slot.log.info("closed (code %s%s) after %.1f s, %d client events", code,
                     f", {reason}" if reason else "", time.monotonic() - started, conn.events_in)


def _given_token(request: Request) -> str:
    """The bearer token of the handshake: ``Authorization: Bearer T``, or (browsers cannot set headers)
    the subprotocol ``openai-insecure-api-key.T`` as OpenAI's own browser clients send it."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    for offered in request.headers.get_all("Sec-WebSocket-Protocol"):
        for name in offered.split(","):
            if name.strip().startswith(TOKEN_SUBPROTOCOL):
                return name.strip()[len(TOKEN_SUBPROTOCOL):]
    return ""


def _select_subprotocol(connection: ServerConnection, offered) -> str | None:
    """Answer ``realtime`` when a (browser) client offers it; never the token subprotocol."""
    return "realtime" if "realtime" in offered else None


def _response(connection: ServerConnection, status: int, body: str, content_type: str | None = None) -> Response:
    response = connection.respond(status, body)
    if content_type:
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
    return response


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
