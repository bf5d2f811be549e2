"""The conversation engine: a sans-I/O object for one live conversation.

Input events (16 kHz float audio, text items, commit/clear, create/cancel response) go in;
output events (speech started/stopped, committed turns, transcript deltas, audio chunks,
response done, errors) come out. No sockets, no threads, no clocks it does not read itself:
the server feeds it from its inference worker and sends what it returns.

Per turn: while the user speaks, provisional units are prefilled into the LM's KV cache;
when the turn ends the whole turn is re-encoded exactly as the offline stack would and only
the differing tail is rolled back and prefilled; then the reply is decoded token by token,
text tokens become transcript deltas and unit tokens are vocoded as they become final.

Default prompt template (``PromptTemplate``)::

    [Text]<instruction>[Text]\\nUser:[Speech]<user units>[Text]\\nAssistant:[Speech]<reply units>...

SpiRit-LM is a pretrained (not instruction-tuned) model of interleaved text and speech, so
the most dependable way to ask it for a spoken reply is a transcript-like layout: a short
text line that says what follows, then turns introduced by text speaker cues, each turn's
speech as pure units, and the prompt ending on the assistant's cue followed by ``[Speech]``.
Cues are text so that speech runs stay pure units (what the model saw in training), and each
block starts with a modality marker so the context can be tokenized block by block.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from agent.spiritlm.errors import InvalidArgumentError, SpiritLMError
from agent.spiritlm.lm import SamplingConfig, next_token
from agent.spiritlm.model import SpiritLM
from agent.spiritlm.tokens import SPEECH_MARKER, TEXT_MARKER
from streaming.lm import Block, ContextFullError, LMSession
from streaming.speech_tokens import UnitTokenParser
from streaming.vad import SpeechStarted, SpeechStopped, TurnDetector  # VAD events are engine events as they are

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


# ---------------------------------------------------------------------------- events out
@dataclass
class TurnCommitted:
    """A user turn entered the context (``kind`` audio or text)."""

    kind: str  # audio | text | message
    content: str  # the user block as a token string
    rolled_back: int = 0  # provisional tokens replaced by the exact re-encode
    block: Block | None = None  # the turn's block in the context (for deleting it later)


@dataclass
class ResponseStarted:
    response_id: int
    block: Block | None = None  # the reply's block in the context


@dataclass
class TranscriptDelta:
    response_id: int
    text: str


@dataclass
class AudioDelta:
    response_id: int
    samples: np.ndarray  # 16 kHz float32


@dataclass
class ResponseDone:
    response_id: int
    status: str  # completed | cancelled | incomplete
    reason: str  # eos | max_tokens | modality_switch | stop_string | cancelled | context_full
    token_ids: list[int] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)


@dataclass
class ErrorEvent:
    code: str
    message: str


Event = SpeechStarted | SpeechStopped | TurnCommitted | ResponseStarted | TranscriptDelta | AudioDelta | ResponseDone | ErrorEvent


# ---------------------------------------------------------------------------- configuration
@dataclass
class PromptTemplate:
    instruction: str = "A spoken conversation between a user and a friendly assistant."
    user_cue: str = "\nUser:"
    assistant_cue: str = "\nAssistant:"

    def prefix(self) -> str:
        return f"{TEXT_MARKER}{self.instruction}" if self.instruction else ""

    def user_message(self, parts: list[tuple[str, str]]) -> str:
        """A user turn from ``("text", words)`` and ``("speech", unit string)`` parts, in order."""
        out, in_speech = f"{TEXT_MARKER}{self.user_cue}", False
        for kind, value in parts:
            if kind == "text":
                out += (TEXT_MARKER if in_speech else "") + " " + value
            else:
                out += ("" if in_speech else SPEECH_MARKER) + value
            in_speech = kind != "text"
        return out

    def user_speech(self, units: str) -> str:
        return self.user_message([("speech", units)])

    def user_text(self, text: str) -> str:
        return self.user_message([("text", text)])

    def assistant_start(self, modality: str) -> str:
        return f"{TEXT_MARKER}{self.assistant_cue}" + ("" if modality == "text" else SPEECH_MARKER)


@dataclass
class TurnDetection:
    """Server VAD settings (OpenAI Realtime ``server_vad`` names); ``None`` in the config = manual commit."""

    threshold: float = 0.5
    prefix_padding_ms: float = 300
    silence_duration_ms: float = 500
    aggressiveness: int = 2
    create_response: bool = True  # reply as soon as the turn ends
    interrupt_response: bool = True  # user speech cancels a reply in progress (barge-in)


@dataclass
class UnitStreaming:
    """Windowed unit encoding while the user speaks (see streaming/units.py)."""

    left_context_s: float = 2.0
    lookahead_s: float = 0.5
    step_s: float = 0.2
    max_turn_s: float = 120.0


@dataclass
class EngineConfig:
    template: PromptTemplate = field(default_factory=PromptTemplate)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    units: UnitStreaming = field(default_factory=UnitStreaming)
    output_modality: str = "speech"  # speech | text | arbitrary
    max_reply_tokens: int = 250
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    speaker: int = 2
    stop_on_modality_switch: bool = True  # arbitrary output: stop when the model starts another turn in text
    stop_strings: tuple[str, ...] = ()  # stop when the reply's text ends with one of these (e.g. "\nUser:")

    def __post_init__(self):
        if self.output_modality not in ("speech", "text", "arbitrary"):
            raise InvalidArgumentError(f"unknown output modality {self.output_modality!r}")
        if self.max_reply_tokens < 1:
            raise InvalidArgumentError("max_reply_tokens must be at least 1")


# ---------------------------------------------------------------------------- the engine
class _Response:
    def __init__(self, response_id: int, config: EngineConfig, parser: UnitTokenParser, vocoder, block: Block,
                 banned: torch.Tensor, started: float):
        self.id = response_id
        self.config = config
        self.parser = parser
        self.vocoder = vocoder
        self.block = block
        self.banned = banned  # ids the reply may not use (modality forcing), built once per reply
        self.start_len = len(block.ids)  # the assistant cue's tokens; reply tokens follow
        self.token_ids: list[int] = []
        self.generator = config.sampling.generator()
        self.started = started
        self.first_audio: float | None = None
        self.first_token: float | None = None
        self.samples_out = 0
        self.text_ids: list[int] = []
        self.transcript = ""  # text tokens decoded so far (transcript deltas are its increments)
        self.in_speech = config.output_modality != "text"
        self.unit_tokens: list[int] = []  # index in token_ids of each HuBERT unit token
        # Frames of each unit (the vocoder's live list: it also gets the units that flush() frames).
        self.unit_frames: list[int] = vocoder.unit_frames if vocoder is not None else []
        self.samples_per_frame = vocoder.samples_per_frame if vocoder is not None else 0

    def tokens_within(self, samples: int) -> int:
        """Reply tokens before the first unit whose audio does not end within ``samples`` (16 kHz)."""
        end = 0
        for j, frames in enumerate(self.unit_frames):
            end += frames * self.samples_per_frame
            if end > samples:
                return self.unit_tokens[j]
        framed = len(self.unit_frames)  # later units have no audio yet
        return self.unit_tokens[framed] if framed < len(self.unit_tokens) else len(self.token_ids)


class ConversationEngine:
    """One conversation over a shared ``SpiritLM`` (the model is only read)."""

    KEPT_REPLIES = 32  # finished replies that can still be truncated (barge-in arrives after the reply ended)

    def __init__(self, model: SpiritLM, config: EngineConfig | None = None, vocoder_factory=None, clock=time.perf_counter):
        self.model = model
        self.config = config or EngineConfig()
        self.tokenizer = model.tokenizer
        self.session = LMSession(model.model)
        self.clock = clock
        self._vocoder_factory = vocoder_factory or self._default_vocoder
        self._response: _Response | None = None
        self._replies: OrderedDict[int, _Response] = OrderedDict()
        self._next_response_id = 1
        self.session.start_block(droppable=False)
        self._set_prefix()
        self._vad = self._make_vad()
        self._speaking = False  # the VAD is inside a user turn
        self._units = None  # IncrementalUnitEncoder of the turn being spoken
        self._held: list[np.ndarray] = []  # turn audio that arrived while a reply was being decoded
        self._held_samples = 0
        self._held_commit = False  # the held turn was committed (and should get a reply)
        self._held_response = False
        self._heard = 0  # 16 kHz samples received so far (stream offset)
        self._recent = np.zeros(0, np.float32)  # the last samples, for the VAD's prefix padding
        self._commit_s = 0.0
        self.speech_ids = set(self.tokenizer.unit_ids("Hu") + self.tokenizer.unit_ids("Pi") + self.tokenizer.unit_ids("St"))
        self.hubert_ids = set(self.tokenizer.unit_ids("Hu"))
        self.marker_ids = {self.tokenizer.token_id(TEXT_MARKER): "t", self.tokenizer.token_id(SPEECH_MARKER): "s"}

    def _make_vad(self):
        td = self.config.turn_detection
        if td is None:
            return None
        return TurnDetector(aggressiveness=td.aggressiveness, threshold=td.threshold,
                            silence_duration_ms=td.silence_duration_ms, prefix_padding_ms=td.prefix_padding_ms)

    def _default_vocoder(self, speaker: int):
        from streaming.vocoder import StreamingVocoder

        return StreamingVocoder(self.model.speech.vocoder, speaker=speaker)

    def _set_prefix(self) -> None:
        prefix = self.config.template.prefix()
        self.session.replace_block(0, self.tokenizer.encode(prefix) if prefix else [self.tokenizer.bos_id])
        self.session.blocks[0].text = prefix

    def configure(self, config: EngineConfig) -> None:
        """New settings: they apply from the next turn and response; a new instruction replaces the
        prefix at once (the conversation after it is prefilled again)."""
        old, self.config = self.config, config
        if config.template.prefix() != old.template.prefix():
            self._set_prefix()
        if config.turn_detection != old.turn_detection:
            self._vad, self._speaking = self._make_vad(), False

    # ------------------------------------------------------------------ context
    @property
    def context_text(self) -> str:
        """The context as a token string: what an offline prompt for the same state would be."""
        return "".join(block.text for block in self.session.blocks)

    def set_block(self, text: str, reserve: int = 0) -> int:
        """Make the current block read ``text``: roll back to the first differing token, prefill the rest.

        Returns how many tokens were rolled back.
        """
        rolled = self.session.replace_block(-1, self.tokenizer.encode_block(text), reserve=reserve)
        self.session.blocks[-1].text = text
        return rolled

    def _block_index(self, block: Block) -> int | None:
        return next((i for i, b in enumerate(self.session.blocks) if b is block), None)

    def delete_block(self, block: Block) -> bool:
        """Remove a turn (user or finished reply) from the context; False if it was no longer there."""
        if self._response is not None and block is self._response.block:
            raise InvalidArgumentError("the reply being generated cannot be deleted: cancel it first")
        index = self._block_index(block)
        if not index:  # None, or the prefix (never a turn)
            return False
        self.session.delete_block(index)
        return True

    # ------------------------------------------------------------------ user input
    def begin_user_turn(self) -> None:
        """Open the block that provisional units of the coming turn will fill."""
        self.session.start_block()

    def update_user_speech(self, units_string: str) -> int:
        """Provisional (or final) units of the current user turn; returns tokens rolled back."""
        return self.set_block(self.config.template.user_speech(units_string))

    def commit_user_speech(self, units_string: str) -> TurnCommitted:
        rolled = self.update_user_speech(units_string)
        return TurnCommitted("audio", self.session.blocks[-1].text, rolled, self.session.blocks[-1])

    def add_user_message(self, parts: list[tuple[str, str | np.ndarray]]) -> list[Event]:
        """A whole user turn from ``("text", str)`` and ``("audio", 16 kHz float samples)`` parts."""
        if self._response is not None or self._units is not None or self._held:
            return [ErrorEvent("conversation_busy", "a message can be added only between turns: wait for the "
                               "response to finish, or commit or clear the input audio first")]
        try:
            resolved = [(kind, value if kind == "text" else self.model.speech.encode_string(torch.from_numpy(
                np.asarray(value, dtype=np.float32)))) for kind, value in parts]
        except SpiritLMError as exc:
            return [ErrorEvent("input_audio_error", str(exc))]
        self.session.start_block()
        self.set_block(self.config.template.user_message(resolved))
        kind = resolved[0][0] if len(resolved) == 1 else "message"
        return [TurnCommitted(kind, self.session.blocks[-1].text, 0, self.session.blocks[-1])]

    def add_user_text(self, text: str) -> list[Event]:
        return self.add_user_message([("text", text)])

    # ------------------------------------------------------------------ user audio
    def feed_audio(self, samples: np.ndarray) -> list[Event]:
        """16 kHz float32 microphone audio, any chunk size."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        start = self._heard
        self._heard += len(samples)
        if self._vad is None:  # manual commit: all audio belongs to the pending turn
            return self._feed_turn(samples)
        td = self.config.turn_detection
        keep = int((td.prefix_padding_ms / 1000 + 1.0) * SAMPLE_RATE)
        self._recent = np.concatenate([self._recent, samples])[-keep - len(samples):]
        recent_start = self._heard - len(self._recent)
        events: list[Event] = []
        cursor = start  # stream offset up to which this chunk has been routed
        for vad_event in self._vad.feed(samples):
            if isinstance(vad_event, SpeechStarted):
                events.append(vad_event)
                if self._response is not None and td.interrupt_response:
                    events += self.cancel()
                self._speaking = True
                begin = max(vad_event.sample, recent_start)  # the turn starts prefix_padding before the speech
                if begin < cursor:
                    events += self._feed_turn(self._recent[begin - recent_start:cursor - recent_start])
                else:
                    cursor = begin
            else:
                if self._speaking:
                    events += self._feed_turn(samples[cursor - start:vad_event.sample - start])
                cursor = max(cursor, vad_event.sample)
                self._speaking = False
                events.append(vad_event)
                events += self._end_turn(td.create_response)
        if self._speaking:
            events += self._feed_turn(samples[cursor - start:])
        return events

    def _end_turn(self, create_response: bool) -> list[Event]:
        events = self.commit_audio()
        if self._held_commit:  # waits for the reply in progress
            self._held_response = self._held_response or create_response
        elif create_response and not any(isinstance(e, ErrorEvent) for e in events):
            events += self.create_response()
        return events

    def _open_turn(self) -> None:
        from streaming.units import IncrementalUnitEncoder

        u = self.config.units
        self._units = IncrementalUnitEncoder(self.model.speech, u.left_context_s, u.lookahead_s, u.step_s, u.max_turn_s)
        self.begin_user_turn()

    def _feed_turn(self, samples: np.ndarray) -> list[Event]:
        if not len(samples):
            return []
        if self._response is not None:  # the reply's block is last: the turn's audio waits for its end
            limit = int(self.config.units.max_turn_s * SAMPLE_RATE)
            if self._held_samples + len(samples) > limit:
                self._held, self._held_samples, self._held_commit, self._held_response = [], 0, False, False
                return [ErrorEvent("input_audio_buffer_overflow", f"more than {self.config.units.max_turn_s:g} s of user "
                                   "audio arrived during one reply; that audio was dropped")]
            self._held.append(np.array(samples, dtype=np.float32))
            self._held_samples += len(samples)
            return []
        if self._units is None:
            self._open_turn()
        try:
            update = self._units.feed(samples)
            if update.text:
                self.update_user_speech(self._units.emitted_string)
        except SpiritLMError as exc:
            self._drop_turn()
            return [ErrorEvent("input_audio_error", str(exc))]
        return []

    def commit_audio(self) -> list[Event]:
        """End the user's turn: exact re-encode, roll back the differing tail, prefill the rest.

        During a reply the turn's audio is held; its commit then happens when the reply ends."""
        if self._held:
            self._held_commit = True
            return []
        if self._units is None:
            return [ErrorEvent("input_audio_buffer_commit_empty", "no audio to commit")]
        started = self.clock()
        try:
            final = self._units.finish()
            committed = self.commit_user_speech(final.string)
        except SpiritLMError as exc:
            self._drop_turn()
            return [ErrorEvent("input_audio_error", str(exc))]
        finally:
            self._units = None
        self._commit_s = self.clock() - started
        return [committed]

    def clear_audio(self) -> None:
        """Discard the pending turn's audio (and what it prefilled)."""
        self._held, self._held_samples, self._held_commit, self._held_response = [], 0, False, False
        if self._units is not None:
            self._drop_turn()

    def _drop_turn(self) -> None:
        self._units = None
        block = self.session.blocks[-1]
        self.session.rollback(len(block.ids))
        self.session.blocks.pop()

    # ------------------------------------------------------------------ responses
    @property
    def responding(self) -> bool:
        return self._response is not None

    @property
    def response_id(self) -> int | None:
        return None if self._response is None else self._response.id

    def create_response(self, config: EngineConfig | None = None) -> list[Event]:
        """Start a reply (``config`` overrides the engine's settings for this reply only)."""
        if self._response is not None:
            return [ErrorEvent("conversation_already_has_active_response", "a response is already in progress")]
        if self._units is not None or self._held:
            return [ErrorEvent("input_audio_buffer_not_committed", "user audio is pending: commit or clear the "
                               "input audio buffer before asking for a response")]
        cfg = config or self.config
        try:
            self.session.start_block()
            self.set_block(cfg.template.assistant_start(cfg.output_modality), reserve=cfg.max_reply_tokens)
        except ContextFullError as exc:
            self.session.rollback(len(self.session.blocks[-1].ids))
            self.session.blocks.pop()
            return [ErrorEvent("context_full", str(exc))]
        parser = UnitTokenParser(self.model.speech.expressive, *self._last_pitch_style())
        vocoder = self._vocoder_factory(cfg.speaker) if cfg.output_modality != "text" else None
        block = self.session.blocks[-1]
        banned = self.model.banned_ids(cfg.output_modality, force=True)
        self._response = _Response(self._next_response_id, cfg, parser, vocoder, block, banned, self.clock())
        self._next_response_id += 1
        return [ResponseStarted(self._response.id, block)]

    def _reply_text(self, ids: list[int]) -> str:
        """Text of reply tokens as it reads after the cue (an anchor keeps a leading space)."""
        anchor = self.tokenizer.token_id(TEXT_MARKER)
        return self.tokenizer.decode([anchor] + ids)[len(TEXT_MARKER):]

    def _set_reply_text(self, r: "_Response", ids: list[int]) -> None:
        r.block.text = r.config.template.assistant_start(r.config.output_modality) + self._reply_text(ids)

    def _last_pitch_style(self) -> tuple[int | None, int | None]:
        values = []
        for kind in ("Pi", "St"):
            found = re.findall(rf"\[{kind}(\d+)\]", self.context_text)
            values.append(int(found[-1]) if found else None)
        return values[0], values[1]

    def step(self) -> list[Event]:
        """Decode one token of the active response; returns the events it produced."""
        token, events = self.begin_step()
        if token is None:
            return events
        self.session.append([token])
        return self.end_step(token)

    def begin_step(self) -> tuple[int | None, list[Event]]:
        """Choose the next token and make room for it. The forward pass comes next (``session.append``,
        or one batched forward for many conversations), then :meth:`end_step`."""
        r = self._response
        if r is None:
            return None, []
        try:
            token = next_token(self.session.logits, r.banned, r.config.sampling, r.generator)
            self.session.make_room(1)
        except ContextFullError as exc:
            return None, self._finish("incomplete", "context_full", [ErrorEvent("context_full", str(exc))])
        return token, []

    def end_step(self, token: int) -> list[Event]:
        """Account for ``token`` once it is in the cache: stop rules, transcript, audio."""
        r = self._response
        now = self.clock()
        if r.first_token is None:
            r.first_token = now
        r.token_ids.append(token)
        self._set_reply_text(r, r.token_ids)
        events: list[Event] = []
        if token in self.model.eos_ids:
            self.session.rollback(1)  # EOS ends the reply; the conversation text goes on without it
            return self._finish("completed", "eos", events)
        if token in self.marker_ids:
            entering_speech = self.marker_ids[token] == "s"
            if r.in_speech and not entering_speech and r.config.stop_on_modality_switch and r.token_ids[:-1]:
                return self._finish("completed", "modality_switch", events)
            r.in_speech = entering_speech
        elif token in self.speech_ids:
            if token in self.hubert_ids:
                r.unit_tokens.append(len(r.token_ids) - 1)
            events += self._vocode(r.parser.feed(self.tokenizer.sp.IdToPiece(token)))
        else:
            r.text_ids.append(token)
            text = self._reply_text(r.text_ids)
            if text.startswith(r.transcript) and not text.endswith("\ufffd") and len(text) > len(r.transcript):
                events.append(TranscriptDelta(r.id, text[len(r.transcript):]))  # whole characters only
                r.transcript = text
        if r.config.stop_strings and r.block.text.endswith(r.config.stop_strings):
            return self._finish("completed", "stop_string", events)
        if len(r.token_ids) >= r.config.max_reply_tokens:
            return self._finish("incomplete", "max_tokens", events)
        return events

    def _vocode(self, units, flush: bool = False) -> list[Event]:
        r = self._response
        if r.vocoder is None:
            return []
        out = []
        if units:
            out.append(r.vocoder.feed([u.hubert for u in units], *self._streams(units)))
        if flush:
            out.append(r.vocoder.flush())
        samples = np.concatenate(out) if out else np.zeros(0, np.float32)
        if not len(samples):
            return []
        if r.first_audio is None:
            r.first_audio = self.clock()
        r.samples_out += len(samples)
        return [AudioDelta(r.id, samples.astype(np.float32))]

    def _streams(self, units):
        if not self.model.speech.expressive:
            return None, None
        return [u.pitch for u in units], [u.style for u in units]

    def _finish(self, status: str, reason: str, events: list[Event]) -> list[Event]:
        r = self._response
        text = self._reply_text(r.text_ids) if r.text_ids else ""
        if text != r.transcript and text.startswith(r.transcript):  # e.g. a cut-off multi-byte character
            events.append(TranscriptDelta(r.id, text[len(r.transcript):]))
        if status != "cancelled" and r.unit_tokens:
            try:
                events += self._vocode(r.parser.flush(), flush=True)
            except SpiritLMError as exc:
                events.append(ErrorEvent("vocoder_error", str(exc)))
        now = self.clock()
        latency = {"commit_s": self._commit_s, "decode_s": now - r.started, "tokens": float(len(r.token_ids))}
        if r.first_token is not None:
            latency["first_token_s"] = r.first_token - r.started
        if r.first_audio is not None:
            latency["first_audio_s"] = r.first_audio - r.started
        self._response = None
        r.vocoder = r.parser = None
        self._replies[r.id] = r
        while len(self._replies) > self.KEPT_REPLIES:
            self._replies.popitem(last=False)
        events.append(ResponseDone(r.id, status, reason, r.token_ids, latency))
        if self._held:  # the user spoke during the reply: that turn goes on now
            held, self._held, self._held_samples = np.concatenate(self._held), [], 0
            commit, create = self._held_commit, self._held_response
            self._held_commit = self._held_response = False
            events += self._feed_turn(held)
            if commit:
                events += self._end_turn(create)
        return events

    def cancel(self, keep_tokens: int | None = None) -> list[Event]:
        """Stop the active response (barge-in). The context keeps ``keep_tokens`` reply tokens; by
        default those whose audio was produced (all decoded tokens of a text reply)."""
        r = self._response
        if r is None:
            return []
        if keep_tokens is None:
            keep_tokens = r.tokens_within(r.samples_out) if r.vocoder is not None else len(r.token_ids)
        self._keep(r, keep_tokens)
        return self._finish("cancelled", "cancelled", [])

    def truncate(self, response_id: int, samples: int) -> list[Event]:
        """The user heard only the first ``samples`` (16 kHz) of a reply's audio: keep in the context
        only the reply tokens whose audio lies within them (cancelling the reply if it is running)."""
        r = self._response if self._response is not None and self._response.id == response_id else None
        r = r or self._replies.get(response_id)
        if r is None:
            raise InvalidArgumentError(f"response {response_id} is too old to truncate")
        keep = r.tokens_within(samples)
        if r is self._response:
            return self.cancel(keep)
        self._keep(r, keep)
        return []

    def _keep(self, r: _Response, keep: int) -> None:
        keep = max(0, min(keep, len(r.token_ids)))
        if keep == len(r.token_ids):
            return
        index = self._block_index(r.block)
        if index is not None:  # (an old reply may have left the window already)
            self.session.replace_block(index, r.block.ids[:r.start_len + keep])
        r.token_ids = r.token_ids[:keep]
        r.unit_tokens = [t for t in r.unit_tokens if t < keep]
        r.unit_frames = r.unit_frames[:len(r.unit_tokens)]
        r.text_ids = [t for t in r.token_ids if t not in self.speech_ids and t not in self.marker_ids]
        self._set_reply_text(r, r.token_ids)
