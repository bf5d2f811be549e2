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
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from agent.spiritlm.errors import InvalidArgumentError, SpiritLMError
from agent.spiritlm.lm import SamplingConfig
from agent.spiritlm.model import SpiritLM
from agent.spiritlm.tokens import SPEECH_MARKER, TEXT_MARKER
from streaming.lm import ContextFullError, LMSession
from streaming.speech_tokens import UnitTokenParser
from streaming.vad import SpeechStarted, SpeechStopped, TurnDetector  # VAD events are engine events as they are

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


# ---------------------------------------------------------------------------- events out
@dataclass
class TurnCommitted:
    """A user turn entered the context (``kind`` audio or text)."""

    kind: str
    content: str  # the user block as a token string
    rolled_back: int = 0  # provisional tokens replaced by the exact re-encode


@dataclass
class ResponseStarted:
    response_id: int


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

    def user_speech(self, units: str) -> str:
        return f"{TEXT_MARKER}{self.user_cue}{SPEECH_MARKER}{units}"

    def user_text(self, text: str) -> str:
        return f"{TEXT_MARKER}{self.user_cue} {text}"

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
    def __init__(self, response_id: int, config: EngineConfig, parser: UnitTokenParser, vocoder, started: float):
        self.id = response_id
        self.config = config
        self.parser = parser
        self.vocoder = vocoder
        self.token_ids: list[int] = []
        self.generator = config.sampling.generator()
        self.started = started
        self.first_audio: float | None = None
        self.first_token: float | None = None
        self.samples_out = 0
        self.text_ids: list[int] = []
        self.transcript = ""  # text tokens decoded so far (transcript deltas are its increments)
        self.in_speech = config.output_modality != "text"


class ConversationEngine:
    """One conversation over a shared ``SpiritLM`` (the model is only read)."""

    def __init__(self, model: SpiritLM, config: EngineConfig | None = None, vocoder_factory=None, clock=time.perf_counter):
        self.model = model
        self.config = config or EngineConfig()
        self.tokenizer = model.tokenizer
        self.session = LMSession(model.model)
        self.clock = clock
        self._vocoder_factory = vocoder_factory or self._default_vocoder
        self._response: _Response | None = None
        self._next_response_id = 1
        prefix = self.config.template.prefix()
        self.session.start_block(droppable=False)
        self._append_text(self.tokenizer.encode(prefix) if prefix else [self.tokenizer.bos_id], prefix)
        self._vad = self._make_vad()
        self._units = None  # IncrementalUnitEncoder of the turn being spoken
        self._heard = 0  # 16 kHz samples received so far (stream offset)
        self._recent = np.zeros(0, np.float32)  # the last samples, for the VAD's prefix padding
        self._commit_s = 0.0
        self.speech_ids = set(self.tokenizer.unit_ids("Hu") + self.tokenizer.unit_ids("Pi") + self.tokenizer.unit_ids("St"))
        self.marker_ids = {self.tokenizer.token_id(TEXT_MARKER): "t", self.tokenizer.token_id(SPEECH_MARKER): "s"}

    def _make_vad(self):
        td = self.config.turn_detection
        if td is None:
            return None
        return TurnDetector(aggressiveness=td.aggressiveness, threshold=td.threshold,
                            silence_duration_ms=td.silence_duration_ms, prefix_padding_ms=td.prefix_padding_ms)

    def _default_vocoder(self):
        from streaming.vocoder import StreamingVocoder

        return StreamingVocoder(self.model.speech.vocoder, speaker=self.config.speaker)

    # ------------------------------------------------------------------ context
    @property
    def context_text(self) -> str:
        """The context as a token string: what an offline prompt for the same state would be."""
        return "".join(block.text for block in self.session.blocks)

    def _append_text(self, ids: list[int], text: str) -> None:
        self.session.append(ids)
        self.session.blocks[-1].text += text

    def _start_block(self) -> None:
        self.session.start_block()

    def set_block(self, text: str, reserve: int = 0) -> int:
        """Make the current block read ``text``: roll back to the first differing token, prefill the rest.

        Returns how many tokens were rolled back.
        """
        new = self.tokenizer.encode_block(text)
        old = self.session.blocks[-1].ids
        common = 0
        while common < min(len(old), len(new)) and old[common] == new[common]:
            common += 1
        rolled = len(old) - common
        self.session.rollback(rolled)
        self.session.append(new[common:], reserve=reserve)
        self.session.blocks[-1].text = text
        return rolled

    # ------------------------------------------------------------------ user input
    def begin_user_turn(self) -> None:
        """Open the block that provisional units of the coming turn will fill."""
        self._start_block()

    def update_user_speech(self, units_string: str) -> int:
        """Provisional (or final) units of the current user turn; returns tokens rolled back."""
        return self.set_block(self.config.template.user_speech(units_string))

    def commit_user_speech(self, units_string: str) -> TurnCommitted:
        rolled = self.update_user_speech(units_string)
        return TurnCommitted("audio", self.session.blocks[-1].text, rolled)

    def add_user_text(self, text: str) -> TurnCommitted:
        self._start_block()
        self.set_block(self.config.template.user_text(text))
        return TurnCommitted("text", self.session.blocks[-1].text)

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
                begin = max(vad_event.sample, recent_start)  # the turn starts prefix_padding before the speech
                if begin < cursor:
                    events += self._feed_turn(self._recent[begin - recent_start:cursor - recent_start])
                else:
                    cursor = begin
                if self._units is None:  # a start on silence (nothing routed yet) still opens the turn
                    self._open_turn()
            else:
                if self._units is not None:
                    events += self._feed_turn(samples[cursor - start:vad_event.sample - start])
                cursor = max(cursor, vad_event.sample)
                events.append(vad_event)
                events += self.commit_audio()
                if td.create_response and not any(isinstance(e, ErrorEvent) for e in events):
                    events += self.create_response()
        if self._units is not None:
            events += self._feed_turn(samples[cursor - start:])
        return events

    def _open_turn(self) -> None:
        from streaming.units import IncrementalUnitEncoder

        u = self.config.units
        self._units = IncrementalUnitEncoder(self.model.speech, u.left_context_s, u.lookahead_s, u.step_s, u.max_turn_s)
        self.begin_user_turn()

    def _feed_turn(self, samples: np.ndarray) -> list[Event]:
        if not len(samples):
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
        """End the user's turn: exact re-encode, roll back the differing tail, prefill the rest."""
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

    def create_response(self) -> list[Event]:
        if self._response is not None:
            return [ErrorEvent("conversation_already_has_active_response", "a response is already in progress")]
        cfg = self.config
        try:
            self._start_block()
            self.set_block(cfg.template.assistant_start(cfg.output_modality), reserve=cfg.max_reply_tokens)
        except ContextFullError as exc:
            return [ErrorEvent("context_full", str(exc))]
        parser = UnitTokenParser(self.model.speech.expressive, *self._last_pitch_style())
        vocoder = self._vocoder_factory() if cfg.output_modality != "text" else None
        self._response = _Response(self._next_response_id, cfg, parser, vocoder, self.clock())
        self._next_response_id += 1
        return [ResponseStarted(self._response.id)]

    def _reply_text(self, ids: list[int]) -> str:
        """Text of reply tokens as it reads after the cue (an anchor keeps a leading space)."""
        anchor = self.tokenizer.token_id(TEXT_MARKER)
        return self.tokenizer.decode([anchor] + ids)[len(TEXT_MARKER):]

    def _set_reply_text(self, r: "_Response", ids: list[int]) -> None:
        # The reply may have outgrown the window and pushed turns out; its block is always the last.
        self.session.blocks[-1].text = self.config.template.assistant_start(r.config.output_modality) + self._reply_text(ids)

    def _last_pitch_style(self) -> tuple[int | None, int | None]:
        import re

        values = []
        for kind in ("Pi", "St"):
            found = re.findall(rf"\[{kind}(\d+)\]", self.context_text)
            values.append(int(found[-1]) if found else None)
        return values[0], values[1]

    def step(self) -> list[Event]:
        """Decode one token of the active response; returns the events it produced."""
        r = self._response
        if r is None:
            return []
        banned = self.model.banned_ids(r.config.output_modality, force=True)
        try:
            token = self.session.step(banned, r.config.sampling, r.generator)
        except ContextFullError as exc:
            return self._finish("incomplete", "context_full", [ErrorEvent("context_full", str(exc))])
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
            events += self._vocode(r.parser.feed(self.tokenizer.sp.IdToPiece(token)))
        else:
            r.text_ids.append(token)
            text = self._reply_text(r.text_ids)
            if text.startswith(r.transcript) and not text.endswith("\ufffd") and len(text) > len(r.transcript):
                events.append(TranscriptDelta(r.id, text[len(r.transcript):]))  # whole characters only
                r.transcript = text
        if r.config.stop_strings and self.session.blocks[-1].text.endswith(r.config.stop_strings):
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
        events.append(ResponseDone(r.id, status, reason, r.token_ids, latency))
        return events

    def cancel(self, keep_tokens: int | None = None) -> list[Event]:
        """Stop the active response (barge-in). ``keep_tokens`` (default: all decoded) keeps only
        that many reply tokens in the context, e.g. those whose audio reached the user."""
        r = self._response
        if r is None:
            return []
        keep = len(r.token_ids) if keep_tokens is None else max(0, min(keep_tokens, len(r.token_ids)))
        if keep < len(r.token_ids):
            self.session.rollback(len(r.token_ids) - keep)
            self._set_reply_text(r, r.token_ids[:keep])
        r.vocoder = None  # nothing more is played
        r.token_ids = r.token_ids[:keep]
        return self._finish("cancelled", "cancelled", [])
