"""One Realtime session: protocol events in, protocol events out, over a ``ConversationEngine``.

Sans-I/O, like ``agent/protocol.py`` and ``agent/conversation.py``: no sockets, no threads.
The server calls it from its inference thread only (it runs model code) and sends what it
returns: JSON-ready dicts, or ``bytes`` for binary audio frames when the client asked for them.

It keeps what the engine does not know about: item and response ids, the order of items,
which context block holds which item, the client's audio rates (resampled to and from the
engine's 16 kHz) and the GA event sequence of a response::

    response.created, response.output_item.added, conversation.item.added,
    response.content_part.added, (output_audio.delta | output_audio_transcript.delta |
    output_text.delta)..., output_audio.done, output_audio_transcript.done (or output_text.done),
    content_part.done, output_item.done, conversation.item.done, response.done
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from agent import protocol as p
from agent.conversation import (AudioDelta, ConversationEngine, EngineConfig, ErrorEvent, Event, PromptTemplate,
                                ResponseDone, ResponseStarted, TranscriptDelta, TurnCommitted, TurnDetection)
from agent.spiritlm.errors import SpiritLMError
from agent.spiritlm.lm import SamplingConfig
from agent.spiritlm.model import SpiritLM
from streaming.audio import InputConverter, OutputConverter
from streaming.lm import Block
from streaming.vad import SpeechStarted, SpeechStopped

log = logging.getLogger(__name__)

Outgoing = dict | bytes
DEFAULT_MAX_REPLY_TOKENS = 250  # for max_output_tokens "inf"
SERVER_ERRORS = ("vocoder_error", "server_error")


@dataclass(eq=False)
class _Item:
    id: str
    role: str  # user | assistant
    block: Block | None
    response: "_Response | None" = None


@dataclass(eq=False)
class _Response:
    id: str
    engine_id: int
    config: p.SessionConfig
    item: _Item
    metadata: dict | None
    output: OutputConverter | None
    context_tokens: int
    transcript: str = ""
    audio_bytes: int = 0  # PCM16 bytes sent at the output rate
    cancelled_by: str = "turn_detected"  # or client_cancelled
    failed: str | None = None  # error code when the server ended the reply

    @property
    def ref(self) -> p.PartRef:
        return p.PartRef(self.id, self.item.id)

    @property
    def audio(self) -> bool:
        return self.config.output_modality != "text"


def engine_config(config: p.SessionConfig) -> EngineConfig:
    """The engine settings a protocol session (or one response's overrides) stands for."""
    tpl, td = config.prompt_template, config.turn_detection
    return EngineConfig(
        template=PromptTemplate(tpl.instruction, tpl.user_cue, tpl.assistant_cue),
        turn_detection=None if td is None else TurnDetection(
            threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms, silence_duration_ms=td.silence_duration_ms,
            create_response=td.create_response, interrupt_response=td.interrupt_response),
        output_modality=config.output_modality,
        max_reply_tokens=DEFAULT_MAX_REPLY_TOKENS if config.max_output_tokens == "inf" else int(config.max_output_tokens),
        sampling=SamplingConfig(do_sample=not config.greedy, temperature=config.temperature, top_k=config.top_k,
                                top_p=config.top_p, seed=config.seed),
        speaker=config.speaker,
    )


class RealtimeSession:
    """Protocol state of one client connection, driving one ``ConversationEngine``."""

    def __init__(self, model: SpiritLM, config: p.SessionConfig, *, session_id: str | None = None,
                 ids: p.IdGenerator = p.new_id, clock=time.perf_counter):
        self.model = model
        self.config = config
        self.ids = ids
        self.id = session_id or ids("sess")
        self.engine = ConversationEngine(model, engine_config(config), clock=clock)
        self._input = InputConverter(config.input_rate)
        self.items: list[_Item] = []
        self._speech_items: deque[str] = deque()  # ids given at speech_started, used at commit
        self._responses: dict[int, _Response] = {}  # engine response id -> protocol response
        self._next_response: tuple[p.SessionConfig, dict | None] | None = None
        self._voice_locked = False
        self._event_id: str | None = None  # the client event being handled (echoed in errors)
        self._shutting_down = False

    # ------------------------------------------------------------------ entry points
    def start(self) -> list[Outgoing]:
        return [p.session_created(self.config, session_id=self.id, ids=self.ids)]

    @property
    def responding(self) -> bool:
        return self.engine.responding

    def handle(self, event: p.ClientEvent) -> list[Outgoing]:
        """Apply one client event; returns what to send back."""
        self._event_id = event.event_id
        try:
            return getattr(self, "_on_" + type(event).__name__)(event)
        except p.ProtocolError as err:
            if err.event_id is None:
                err.event_id = event.event_id
            return [p.error_event(err, ids=self.ids)]
        except SpiritLMError as exc:  # e.g. bad audio for the resampler
            return [self._error("invalid_value", str(exc))]
        finally:
            self._event_id = None

    def begin_step(self) -> tuple[int | None, list[Outgoing]]:
        """First half of a decode step (see ``ConversationEngine.begin_step``)."""
        token, events = self.engine.begin_step()
        return token, self._translate(events)

    def end_step(self, token: int) -> list[Outgoing]:
        return self._translate(self.engine.end_step(token))

    def step(self) -> list[Outgoing]:
        """One whole decode step on its own (no batching)."""
        return self._translate(self.engine.step())

    def fail_response(self, message: str) -> list[Outgoing]:
        """The server could not run a step for this session: say why, end the reply (failed)."""
        return [self._error("server_error", message, type="server_error")] + self._end_response("server_error")

    def shutdown(self) -> list[Outgoing]:
        """The server is stopping: end the reply in progress (failed, ``server_shutting_down``), start no other."""
        self._shutting_down = True
        self.engine.configure(replace(self.engine.config, turn_detection=None))  # no VAD-started replies either
        return self._end_response("server_shutting_down")

    def _end_response(self, code: str) -> list[Outgoing]:
        if not self.engine.responding:
            return []
        self._responses[self.engine.response_id].failed = code
        return self._translate(self.engine.cancel())

    # ------------------------------------------------------------------ client events
    def _on_SessionUpdate(self, event: p.SessionUpdate) -> list[Outgoing]:
        config = p.apply_session_update(self.config, event, voice_locked=self._voice_locked)
        if config.input_rate != self.config.input_rate:
            out = self._translate(self.engine.feed_audio(self._input.flush()))
            self._input = InputConverter(config.input_rate)
        else:
            out = []
        self.config = config
        self.engine.configure(engine_config(config))
        return out + [p.session_updated(config, session_id=self.id, ids=self.ids)]

    def _on_InputAudioBufferAppend(self, event: p.InputAudioBufferAppend) -> list[Outgoing]:
        return self._translate(self.engine.feed_audio(self._input.feed(event.audio)))

    def _on_InputAudioBufferCommit(self, event: p.InputAudioBufferCommit) -> list[Outgoing]:
        out = self._translate(self.engine.feed_audio(self._input.flush()))
        return out + self._translate(self.engine.commit_audio())

    def _on_InputAudioBufferClear(self, event: p.InputAudioBufferClear) -> list[Outgoing]:
        self._input.reset()
        self.engine.clear_audio()
        self._speech_items.clear()
        return [p.input_audio_buffer_cleared(ids=self.ids)]

    def _on_ConversationItemCreate(self, event: p.ConversationItemCreate) -> list[Outgoing]:
        last = self._last_item_id
        if event.previous_item_id is not None and event.previous_item_id != last:
            raise p.ProtocolError("unsupported", "Items can only be added at the end of the conversation: "
                                  "previous_item_id must be the last item's id or null.", param="previous_item_id")
        item_id = event.item.id or self.ids("item")
        if self._find(item_id) is not None:
            raise p.ProtocolError("invalid_value", f"An item with id '{item_id}' already exists.", param="item.id")
        parts = []
        for part in event.item.content:
            if isinstance(part, p.InputText):
                parts.append(("text", part.text))
            else:
                converter = InputConverter(self.config.input_rate)
                parts.append(("audio", np.concatenate([converter.feed(part.audio), converter.flush()])))
        events = self.engine.add_user_message(parts)
        if isinstance(events[0], ErrorEvent):
            return self._translate(events)
        self.items.append(_Item(item_id, "user", events[0].block))
        item = p.user_item_to_dict(event.item, item_id)
        return [p.conversation_item_added(item, previous_item_id=last, ids=self.ids),
                p.conversation_item_done(item, previous_item_id=last, ids=self.ids)]

    def _on_ConversationItemTruncate(self, event: p.ConversationItemTruncate) -> list[Outgoing]:
        item = self._item(event.item_id, "item_id")
        r = item.response
        if r is None or not r.audio:
            raise p.ProtocolError("invalid_value", "Only assistant items with audio can be truncated.", param="item_id")
        if event.content_index != 0:
            raise p.ProtocolError("invalid_value", "content_index must be 0 (the item's audio part).",
                                  param="content_index")
        played = p.pcm16_duration_ms(r.audio_bytes, r.config.output_rate)
        if event.audio_end_ms > played:
            raise p.ProtocolError("invalid_value", f"audio_end_ms {event.audio_end_ms} is past the end of the item's "
                                  f"audio ({played} ms).", param="audio_end_ms")
        r.cancelled_by = "client_cancelled"
        out = self._translate(self.engine.truncate(r.engine_id, event.audio_end_ms * 16))
        return out + [p.conversation_item_truncated(item_id=item.id, content_index=0, audio_end_ms=event.audio_end_ms,
                                                    ids=self.ids)]

    def _on_ConversationItemDelete(self, event: p.ConversationItemDelete) -> list[Outgoing]:
        item = self._item(event.item_id, "item_id")
        if item.block is not None:
            self.engine.delete_block(item.block)  # raises (an error event) for the reply being generated
        self.items.remove(item)
        return [p.conversation_item_deleted(item_id=item.id, ids=self.ids)]

    def _on_ResponseCreate(self, event: p.ResponseCreate) -> list[Outgoing]:
        if self._shutting_down:
            raise p.ProtocolError("server_shutting_down", "The server is shutting down: no new responses.",
                                  type="server_error")
        config = p.response_config(self.config, event, voice_locked=self._voice_locked)
        metadata = event.response.metadata if event.response is not None else None
        self._next_response = (config, metadata)
        try:
            return self._translate(self.engine.create_response(engine_config(config)))
        finally:
            self._next_response = None

    def _on_ResponseCancel(self, event: p.ResponseCancel) -> list[Outgoing]:
        active = self._responses.get(self.engine.response_id) if self.engine.responding else None
        if active is None:
            raise p.ProtocolError("response_cancel_not_active", "There is no active response to cancel.")
        if event.response_id is not None and event.response_id != active.id:
            raise p.ProtocolError("invalid_value", f"Response '{event.response_id}' is not the active response "
                                  f"('{active.id}').", param="response_id")
        active.cancelled_by = "client_cancelled"
        return self._translate(self.engine.cancel())

    # ------------------------------------------------------------------ engine events -> protocol events
    def _translate(self, events: list[Event]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for e in events:
            if isinstance(e, SpeechStarted):
                self._speech_items.append(self.ids("item"))
                out.append(p.input_audio_buffer_speech_started(audio_start_ms=e.sample // 16,
                                                               item_id=self._speech_items[-1], ids=self.ids))
            elif isinstance(e, SpeechStopped):
                item_id = self._speech_items[-1] if self._speech_items else self.ids("item")
                out.append(p.input_audio_buffer_speech_stopped(audio_end_ms=e.sample // 16, item_id=item_id,
                                                               ids=self.ids))
            elif isinstance(e, TurnCommitted):
                out += self._committed(e)
            elif isinstance(e, ResponseStarted):
                out += self._response_started(e)
            elif isinstance(e, TranscriptDelta):
                r = self._responses[e.response_id]
                r.transcript += e.text
                build = p.response_output_audio_transcript_delta if r.audio else p.response_output_text_delta
                out.append(build(r.ref, e.text, ids=self.ids))
            elif isinstance(e, AudioDelta):
                out += self._audio(self._responses[e.response_id], e.samples)
            elif isinstance(e, ResponseDone):
                out += self._response_done(e)
            elif isinstance(e, ErrorEvent):
                if e.code == "input_audio_error" and self._speech_items:
                    self._speech_items.popleft()
                kind = "server_error" if e.code in SERVER_ERRORS else "invalid_request_error"
                out.append(self._error(e.code, e.message, type=kind))
        return out

    def _committed(self, e: TurnCommitted) -> list[Outgoing]:
        previous = self._last_item_id
        item_id = self._speech_items.popleft() if self._speech_items else self.ids("item")
        self.items.append(_Item(item_id, "user", e.block))
        item = p.user_message_item(item_id, [p.input_audio_content()])
        return [p.input_audio_buffer_committed(item_id=item_id, previous_item_id=previous, ids=self.ids),
                p.conversation_item_added(item, previous_item_id=previous, ids=self.ids),
                p.conversation_item_done(item, previous_item_id=previous, ids=self.ids)]

    def _response_started(self, e: ResponseStarted) -> list[Outgoing]:
        config, metadata = self._next_response or (self.config, None)
        previous = self._last_item_id
        item = _Item(self.ids("item"), "assistant", e.block)
        audio = config.output_modality != "text"
        r = _Response(self.ids("resp"), e.response_id, config, item, metadata,
                      OutputConverter(config.output_rate) if audio else None, len(self.engine.session))
        item.response = r
        self.items.append(item)
        # Forget items whose turns left the model's window (or were deleted): memory follows the context.
        blocks = {id(b) for b in self.engine.session.blocks}
        self.items = [i for i in self.items if i.block is None or id(i.block) in blocks]
        self._responses = {k: v for k, v in self._responses.items() if v.item in self.items}
        self._responses[e.response_id] = r
        assistant = p.assistant_message_item(item.id)
        return [p.response_created(p.response_object(r.id, config, metadata=metadata), ids=self.ids),
                p.response_output_item_added(response_id=r.id, output_index=0, item=assistant, ids=self.ids),
                p.conversation_item_added(assistant, previous_item_id=previous, ids=self.ids),
                p.response_content_part_added(r.ref, p.audio_part() if audio else p.text_part(), ids=self.ids)]

    def _audio(self, r: _Response, samples: np.ndarray, final: bool = False) -> list[Outgoing]:
        pcm = b"" if samples is None else r.output.feed_pcm16(samples)
        if final:
            pcm += r.output.flush_pcm16()
        if not pcm:
            return []
        self._voice_locked = True
        r.audio_bytes += len(pcm)
        return [p.output_audio_message(r.config, r.ref, pcm, ids=self.ids)]

    def _response_done(self, e: ResponseDone) -> list[Outgoing]:
        r = self._responses[e.response_id]
        out: list[Outgoing] = []
        if r.audio and e.status != "cancelled":
            out += self._audio(r, None, final=True)
        r.output = None  # (its resampler state is not needed any more)
        if e.status == "completed":
            status, details, item_status = "completed", None, "completed"
        elif e.status == "cancelled" and r.failed:
            status, item_status = "failed", "incomplete"
            details = p.status_details("failed", error_type="server_error", error_code=r.failed)
        elif e.status == "cancelled":
            status, details, item_status = "cancelled", p.status_details("cancelled", r.cancelled_by), "incomplete"
        elif e.reason == "max_tokens":
            status, details, item_status = "incomplete", p.status_details("incomplete", "max_output_tokens"), "incomplete"
        else:  # context_full: the conversation no longer fits the model's window
            status, item_status = "failed", "incomplete"
            details = p.status_details("failed", error_type="invalid_request_error", error_code=e.reason)
        speech = sum(1 for t in e.token_ids if t in self.engine.speech_ids)
        content = p.output_audio_content(r.transcript) if r.audio else p.output_text_content(r.transcript)
        item = p.assistant_message_item(r.item.id, [content], status=item_status)
        part = p.audio_part(r.transcript) if r.audio else p.text_part(r.transcript)
        if r.audio:
            out += [p.response_output_audio_done(r.ref, ids=self.ids),
                    p.response_output_audio_transcript_done(r.ref, r.transcript, ids=self.ids)]
        else:
            out.append(p.response_output_text_done(r.ref, r.transcript, ids=self.ids))
        usage = p.usage(input_text_tokens=r.context_tokens, output_text_tokens=len(e.token_ids) - speech,
                        output_audio_tokens=speech)
        response = p.response_object(r.id, r.config, status=status, status_details=details, output=[item],
                                     usage=usage, metadata=r.metadata)
        previous = self._previous(r.item)
        return out + [p.response_content_part_done(r.ref, part, ids=self.ids),
                      p.response_output_item_done(response_id=r.id, output_index=0, item=item, ids=self.ids),
                      p.conversation_item_done(item, previous_item_id=previous, ids=self.ids),
                      p.response_done(response, latency=e.latency, ids=self.ids)]

    # ------------------------------------------------------------------ helpers
    def _error(self, code: str, message: str, type: str = "invalid_request_error") -> dict:
        return p.error_event(p.ProtocolError(code, message, event_id=self._event_id, type=type), ids=self.ids)

    @property
    def _last_item_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def _find(self, item_id: str) -> _Item | None:
        return next((item for item in self.items if item.id == item_id), None)

    def _item(self, item_id: str, param: str) -> _Item:
        item = self._find(item_id)
        if item is None:
            raise p.ProtocolError("item_not_found", f"No item with id '{item_id}' in the conversation.", param=param)
        return item

    def _previous(self, item: _Item) -> str | None:
        index = next((i for i, it in enumerate(self.items) if it is item), 0)
        return self.items[index - 1].id if index > 0 else None
