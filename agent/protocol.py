"""Sans-I/O layer of our OpenAI Realtime-compatible websocket protocol (GA event names).

No sockets, no asyncio, no model code: text/bytes in, typed events or ``ProtocolError`` out;
``SessionConfig`` + events in, JSON-ready dicts (or binary frames) out. This docstring is the
protocol reference for the README.

Sources followed
================
Field names and nesting are those of the OpenAI Realtime API **GA** reference
(platform.openai.com/docs/api-reference/realtime-client-events and ...-server-events) as
generated into the official Python SDK, github.com/openai/openai-python at commit
e43b422412a9e96c9cc5192c61fffbe2d7e04836, ``src/openai/types/realtime/``:

- client: ``session_update_event.py``, ``realtime_session_create_request.py``,
  ``realtime_audio_config.py``, ``realtime_audio_config_input.py``,
  ``realtime_audio_config_output.py``, ``realtime_audio_formats.py``,
  ``realtime_audio_input_turn_detection.py``, ``input_audio_buffer_append_event.py``,
  ``input_audio_buffer_commit_event.py``, ``input_audio_buffer_clear_event.py``,
  ``conversation_item_create_event.py``, ``realtime_conversation_item_user_message.py``,
  ``conversation_item_truncate_event.py``, ``conversation_item_delete_event.py``,
  ``response_create_event.py``, ``realtime_response_create_params.py``,
  ``realtime_response_create_audio_output.py``, ``response_cancel_event.py``,
  ``realtime_client_event.py``;
- server: ``session_created_event.py``, ``session_updated_event.py``,
  ``realtime_session_create_response.py``, ``input_audio_buffer_speech_started_event.py``,
  ``input_audio_buffer_speech_stopped_event.py``, ``input_audio_buffer_committed_event.py``,
  ``input_audio_buffer_cleared_event.py``, ``conversation_item_added.py``,
  ``conversation_item_done.py``, ``conversation_item_truncated_event.py``,
  ``conversation_item_deleted_event.py``, ``realtime_conversation_item_assistant_message.py``,
  ``response_created_event.py``, ``response_done_event.py``, ``realtime_response.py``,
  ``realtime_response_status.py``, ``realtime_response_usage*.py``,
  ``response_output_item_added_event.py``, ``response_output_item_done_event.py``,
  ``response_content_part_added_event.py``, ``response_content_part_done_event.py``,
  ``response_audio_delta_event.py`` (``response.output_audio.delta``),
  ``response_audio_done_event.py``, ``response_audio_transcript_delta_event.py``,
  ``response_audio_transcript_done_event.py``, ``response_text_delta_event.py``
  (``response.output_text.delta``), ``response_text_done_event.py``,
  ``realtime_error_event.py``, ``realtime_error.py``, ``realtime_server_event.py``.

Error codes the GA server really uses (``missing_required_parameter``, ``unknown_parameter``,
``cannot_update_voice``, with ``param`` as a dotted path such as ``session.type``) are taken
from error payloads quoted in openai/openai-python#2607, livekit/agents#3210 and
TanStack/ai#586.

Client events we accept (``parse_client_event``)
================================================
Every client event may carry ``event_id`` (string, optional); errors echo it back. Unknown
keys are rejected everywhere with ``unknown_parameter`` (as the GA server does, e.g.
``Unknown parameter: 'session.temperature'.``). ``null`` for an optional field means "not
given", except ``session.audio.input.turn_detection`` (``null`` = manual commit) and
``session.spiritlm.seed`` (``null`` = random seed).

``session.update`` ``{session: {...}}`` -- ``session.type`` is required and must be
``"realtime"`` (GA rule). Only the fields present are changed (``apply_session_update``);
nested objects merge field by field (``turn_detection`` merges into the current server VAD
settings, or the defaults if it was off). Fields:

- ``instructions`` (string; ``""`` clears it): the text line that opens our prompt template
  (the same value as ``spiritlm.prompt_template.instruction``; giving both with different
  values is an error).
- ``output_modalities``: ``["audio"]`` (speech + transcript) or ``["text"]``; both at once is
  rejected, as in GA.
- ``max_output_tokens``: integer 1..4096 or ``"inf"`` (the engine's own cap then applies).
- ``audio.input.format`` / ``audio.output.format``: ``{type: "audio/pcm", rate: 24000|16000}``
  (``rate`` defaults to 24000; 16000 is our extension, GA only knows 24000). ``audio/pcmu``,
  ``audio/pcma`` and other rates -> ``unsupported_audio_format``. PCM is 16-bit little-endian
  mono in both directions.
- ``audio.input.turn_detection``: ``null`` or ``{type: "server_vad", threshold (0..1),
  prefix_padding_ms (0..10000), silence_duration_ms (1..10000), create_response,
  interrupt_response, idle_timeout_ms: null}``; ``semantic_vad`` and a non-null
  ``idle_timeout_ms`` -> ``unsupported``.
- ``audio.output.voice``: see *Voices* below. ``audio.output.speed`` is validated (0.25..1.5)
  and ignored (effective speed is reported as 1.0).
- Accepted and ignored (reported as their effective value): ``model`` (the server reports the
  model it runs), ``tool_choice``, ``include``, ``tracing``, ``truncation``, ``reasoning``,
  ``parallel_tool_calls``, ``audio.input.transcription`` and ``audio.input.noise_reduction``
  (we never transcribe or denoise input: reported as ``null``). ``tools`` must be empty or
  ``null``; ``prompt`` must be ``null`` (else ``unsupported``).
- ``spiritlm`` (our namespace): ``speaker`` (int >= 0, < the vocoder's speaker count),
  ``output_modality`` (``"speech"|"text"|"arbitrary"``; ``"text"`` <-> ``output_modalities
  ["text"]``, the other two <-> ``["audio"]``), ``prompt_template`` ``{instruction, user_cue,
  assistant_cue}`` (strings), ``seed`` (int 0..2**63-1 or ``null``), ``greedy`` (bool),
  ``temperature`` (0 < t <= 100; GA has no session temperature, so it lives here), ``top_p``
  (0 < p <= 1), ``top_k`` (int 0..10**6) and ``binary_audio`` (bool, see *Binary frames*).
  These mirror the engine's ``EngineConfig``/``SamplingConfig`` (``greedy`` = not
  ``do_sample``); defaults: speaker 2, ``"speech"``, the engine's template, seed ``null``,
  greedy, temperature 1.0, top_p 1.0, top_k 50, binary audio off.

``input_audio_buffer.append`` ``{audio}`` -- base64 (strict alphabet and padding) of PCM16 at
the session's input rate; the decoded size must be even and at most 15 MiB.
``input_audio_buffer.commit``, ``input_audio_buffer.clear`` -- no fields.

``conversation.item.create`` ``{item, previous_item_id?}`` -- only user messages:
``item = {type: "message", role: "user", content: [...], id?, object?: "realtime.item",
status?}`` with content parts ``{type: "input_text", text}`` and ``{type: "input_audio",
audio (base64 PCM16, non-empty), transcript?}``. ``input_image``, system/assistant messages
and function/MCP items are GA items we do not support (``unsupported``).

``conversation.item.truncate`` ``{item_id, content_index, audio_end_ms}`` (all required,
integers >= 0); ``conversation.item.delete`` ``{item_id}``. Ids sent by clients (``item_id``,
``item.id``, ``previous_item_id``, ``response_id``) are non-empty strings of at most 64
characters; ``event_id`` is any string.

``response.create`` ``{response?}`` -- per-response overrides, not persisted
(``response_config``): ``instructions``, ``output_modalities``, ``max_output_tokens``,
``audio.output.{format, voice}``, ``metadata`` (<= 16 string pairs, echoed in the response
object), ``conversation: "auto"`` and ``spiritlm`` (as in the session, minus
``binary_audio``). ``conversation: "none"``/ids, a non-empty ``input``, ``tools`` or
``prompt`` -> ``unsupported``; ``tool_choice``, ``reasoning``, ``parallel_tool_calls`` are
ignored. ``response.cancel`` ``{response_id?}``.

GA client events we do not implement (``conversation.item.retrieve``,
``output_audio_buffer.clear``, which GA limits to WebRTC/SIP) -> ``unsupported``; any other
``type`` -> ``unknown_event``.

Voices
------
``voice`` is a speaker index as a decimal string (``"0"``, ``"2"``...) or one of the GA
built-in names, which map deterministically to ``index % num_speakers`` in GA's order
(``alloy ash ballad coral echo sage shimmer verse marin cedar``: with the 4 Expresso speakers
of the SpiRit-LM vocoders alloy/echo/marin -> 0, ash/sage/cedar -> 1, ballad/shimmer -> 2,
coral/verse -> 3). ``session.updated`` reports the voice string the client chose and
``spiritlm.speaker`` the index. Setting ``spiritlm.speaker`` alone sets ``voice`` to its
decimal string; giving both with different speakers is an error. Custom voice objects
``{id}`` -> ``unsupported``. Default: speaker 2 (voice ``"2"``), the release's default.
``apply_session_update(..., voice_locked=True)`` (the server passes it once assistant audio
exists) rejects a speaker change with GA's ``cannot_update_voice``.

Errors
------
``ProtocolError(code, message, event_id=, param=, type="invalid_request_error")``;
``error_event(err)`` gives GA's ``{"type": "error", "event_id", "error": {type, code, message,
param, event_id}}``. Codes:

- ``invalid_json``: not UTF-8, not JSON, NaN/Infinity, nesting too deep;
- ``invalid_event``: the JSON value is not an object;
- ``unknown_event``: ``type`` is not a GA client event;
- ``missing_required_parameter``, ``unknown_parameter`` (GA's own codes);
- ``invalid_type``: wrong JSON type (``Invalid type for 'x': expected ..., but got ...``);
- ``invalid_value``: right type, bad value (enum, range, conflict);
- ``invalid_audio``: bad base64, odd number of PCM16 bytes, empty item audio, > 15 MiB;
- ``unsupported_audio_format``: a format/rate other than ``audio/pcm`` at 24000 or 16000;
- ``unsupported``: a valid GA feature this server does not implement;
- ``cannot_update_voice`` (GA's code), ``binary_audio_disabled`` (binary frame without
  ``spiritlm.binary_audio``).

Server events we send (builders below; each gets a fresh ``event_id`` from an injectable id
generator, ``ids=``): ``session.created``, ``session.updated`` (session object: ``type``,
``object: "realtime.session"``, ``id``, ``model``, ``output_modalities``, ``instructions``,
``audio``, ``tools``, ``tool_choice``, ``max_output_tokens``, ``tracing``, ``truncation``,
``prompt``, ``include`` + ``spiritlm``), ``input_audio_buffer.speech_started|speech_stopped|
committed|cleared``, ``conversation.item.added|done|truncated|deleted``, ``response.created``,
``response.output_item.added|done``, ``response.content_part.added|done``,
``response.output_audio.delta|done``, ``response.output_audio_transcript.delta|done``,
``response.output_text.delta|done``, ``response.done`` and ``error``. Items follow GA's
``realtime.item`` shape (user content ``input_text``/``input_audio``, assistant content
``output_audio``/``output_text``; audio bytes are never repeated in item events), content
parts in ``response.content_part.*`` are ``{type: "audio", transcript}`` or ``{type: "text",
text}`` (GA's ``Part``). Extension: ``response.done``'s ``response`` object carries
``spiritlm: {latency: {...}}`` (seconds, from the engine).

Binary frames (extension)
=========================
After a ``session.update`` with ``spiritlm.binary_audio: true`` has been acknowledged by
``session.updated``, audio may travel as binary websocket frames whose payload is *only* raw
PCM16 little-endian mono samples -- no header, so browsers can wrap it in an ``Int16Array``
without copying. The direction says what a frame is:

- client -> server: same as ``input_audio_buffer.append`` at the session's input rate (JSON
  appends stay valid); must be an even number of bytes, at most 15 MiB.
- server -> client: the next samples of the assistant audio part that is open, at the
  session's output rate, *instead of* ``response.output_audio.delta`` events. A part is
  opened by ``response.content_part.added`` (``part.type == "audio"``) and closed by
  ``response.output_audio.done``; websocket ordering ties frames to it. Transcript deltas and
  all other events stay JSON.

A binary frame while ``binary_audio`` is off -> ``binary_audio_disabled``. See
``pack_audio_frame``, ``unpack_audio_frame`` and ``output_audio_message``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Union

__all__ = [
    "ProtocolError", "UNSET", "ClientEvent", "CLIENT_EVENT_TYPES", "SUPPORTED_RATES", "DEFAULT_RATE",
    "MAX_AUDIO_BYTES", "OPENAI_VOICES", "DEFAULT_INSTRUCTION",
    # client events
    "SessionUpdate", "InputAudioBufferAppend", "InputAudioBufferCommit", "InputAudioBufferClear",
    "ConversationItemCreate", "ConversationItemTruncate", "ConversationItemDelete", "ResponseCreate",
    "ResponseCancel", "InputText", "InputAudio", "UserMessage", "SessionPatch", "ResponseParams",
    "parse_client_event", "validate_client_event",
    # session
    "ServerVad", "PromptTemplateConfig", "SessionConfig", "apply_session_update", "response_config",
    "session_to_dict", "voice_to_speaker",
    # ids and builders
    "IdGenerator", "new_id", "SequentialIds", "PartRef", "encode_audio", "pcm16_duration_ms",
    "input_text_content", "input_audio_content", "output_audio_content", "output_text_content",
    "audio_part", "text_part", "user_message_item", "assistant_message_item", "user_item_to_dict",
    "status_details", "usage", "response_object",
    "session_created", "session_updated", "input_audio_buffer_speech_started",
    "input_audio_buffer_speech_stopped", "input_audio_buffer_committed", "input_audio_buffer_cleared",
    "conversation_item_added", "conversation_item_done", "conversation_item_truncated",
    "conversation_item_deleted", "response_created", "response_output_item_added",
    "response_output_item_done", "response_content_part_added", "response_content_part_done",
    "response_output_audio_delta", "response_output_audio_done", "response_output_audio_transcript_delta",
    "response_output_audio_transcript_done", "response_output_text_delta", "response_output_text_done",
    "response_done", "error_event",
    # binary frames
    "pack_audio_frame", "unpack_audio_frame", "output_audio_message",
]

SUPPORTED_RATES = (24_000, 16_000)
DEFAULT_RATE = 24_000
MAX_AUDIO_BYTES = 15 * 1024 * 1024  # GA: "up to a maximum of 15 MiB" per append
MAX_OUTPUT_TOKENS = 4096  # GA: "an integer between 1 and 4096" or "inf"
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
DEFAULT_INSTRUCTION = "A spoken conversation between a user and a friendly assistant."  # = agent.conversation.PromptTemplate
DEFAULT_SPEAKER = 2  # = agent.spiritlm.vocoder.DEFAULT_SPEAKER
MAX_ID_LEN = 64
MAX_SEED = 2**63 - 1


# ---------------------------------------------------------------------------- errors
class ProtocolError(Exception):
    """A client error, shaped like GA's ``error`` event payload (``RealtimeError``)."""

    def __init__(self, code: str, message: str, *, event_id: str | None = None, param: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id
        self.param = param
        self.type = type

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param,
                "event_id": self.event_id}

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r}, param={self.param!r}, event_id={self.event_id!r})"


class _Unset:
    """Marks a field a partial update does not touch."""

    _instance: _Unset | None = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()
_ABSENT = object()

_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"))


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    for cls, name in _JSON_TYPES:
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _short(value: Any) -> str:
    """A short, safe rendering of a client value for messages."""
    try:
        if isinstance(value, str):
            text = value if len(value) <= 40 else value[:40] + "..."
            return json.dumps(text)
        if isinstance(value, (list, dict)):
            return f"<{_jtype(value)}>"
        text = json.dumps(value)
    except Exception:  # noqa: BLE001 -- huge ints, odd objects: fall back to the type name
        return f"<{_jtype(value)}>"
    return text if len(text) <= 40 else text[:40] + "..."


def _join(path: str, key: Any) -> str:
    key = key if isinstance(key, str) else f"<{_jtype(key)} key>"
    return f"{path}.{key}" if path else key


def _missing(path: str) -> ProtocolError:
    return ProtocolError("missing_required_parameter", f"Missing required parameter: '{path}'.", param=path)


def _unknown(path: str, hint: str | None = None) -> ProtocolError:
    extra = f" ({hint})" if hint else ""
    return ProtocolError("unknown_parameter", f"Unknown parameter: '{path}'.{extra}", param=path)


def _bad_type(path: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError("invalid_type", f"Invalid type for '{path}': expected {expected}, but got "
                         f"{_article(_jtype(value))} instead.", param=path)


def _bad_value(path: str, value: Any, expected: str) -> ProtocolError:
    return ProtocolError("invalid_value", f"Invalid value for '{path}': {_short(value)}. {expected}", param=path)


def _unsupported(path: str | None, message: str) -> ProtocolError:
    return ProtocolError("unsupported", message, param=path)


def _choices(values: Sequence[Any]) -> str:
    return "Supported values are: " + ", ".join(json.dumps(v) for v in values) + "."


# ---------------------------------------------------------------------------- typed readers
def _obj(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _bad_type(path, "an object", value)
    return value


def _check_keys(obj: dict, allowed: Sequence[str], path: str, hints: Mapping[str, str] | None = None) -> None:
    for key in obj:
        if key not in allowed:
            raise _unknown(_join(path, key), (hints or {}).get(key) if isinstance(key, str) else None)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad_type(path, "a string", value)
    return value


def _id(value: Any, path: str) -> str:
    value = _str(value, path)
    if not 0 < len(value) <= MAX_ID_LEN:
        raise _bad_value(path, value, f"Expected a non-empty string of at most {MAX_ID_LEN} characters.")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad_type(path, "a boolean", value)
    return value


def _int(value: Any, path: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_type(path, "an integer", value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _bad_value(path, value, f"Expected an integer {bound}.")
    return value


def _num(value: Any, path: str, low: float, high: float | None = None, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad_type(path, "a number", value)
    try:
        value = float(value)
    except OverflowError:  # a huge int
        value = math.inf
    if not math.isfinite(value) or value < low or (low_open and value == low) or (high is not None and value > high):
        lo = f"> {low}" if low_open else f">= {low}"
        bound = f"{lo} and <= {high}" if high is not None else lo
        raise _bad_value(path, value, f"Expected a number {bound}.")
    return value


def _list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise _bad_type(path, "an array", value)
    return value


def _opt(obj: dict, key: str) -> Any:
    """Optional field: absent and ``null`` are both 'not given'."""
    value = obj.get(key)
    return _ABSENT if value is None else value


def _req(obj: dict, key: str, path: str) -> Any:
    if key not in obj:
        raise _missing(path)
    return obj[key]


def _decode_audio(value: Any, path: str, *, allow_empty: bool = True) -> bytes:
    text = _str(value, path)
    if len(text) > 4 * ((MAX_AUDIO_BYTES + 2) // 3):
        raise ProtocolError("invalid_audio", f"'{path}' is larger than {MAX_AUDIO_BYTES} bytes of audio.", param=path)
    try:
        pcm = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_audio", f"'{path}' is not valid base64.", param=path) from None
    return _check_pcm(pcm, path, allow_empty=allow_empty)


def _check_pcm(pcm: bytes, path: str | None, *, allow_empty: bool = True) -> bytes:
    where = f"'{path}'" if path else "Binary audio frame"
    if len(pcm) % 2:
        raise ProtocolError("invalid_audio", f"{where} has {len(pcm)} bytes: PCM16 audio needs an even number of "
                            "bytes (2 per sample).", param=path)
    if len(pcm) > MAX_AUDIO_BYTES:
        raise ProtocolError("invalid_audio", f"{where} is larger than {MAX_AUDIO_BYTES} bytes of audio.", param=path)
    if not pcm and not allow_empty:
        raise ProtocolError("invalid_audio", f"{where} is empty.", param=path)
    return pcm


def encode_audio(pcm: bytes | bytearray | memoryview) -> str:
    """Base64 of PCM16 bytes, as in ``audio``/``delta`` fields."""
    return base64.b64encode(bytes(pcm)).decode("ascii")


def pcm16_duration_ms(nbytes: int, rate: int) -> int:
    """Milliseconds of ``nbytes`` of PCM16 mono at ``rate`` (floor), for ``audio_*_ms`` fields."""
    return (nbytes // 2) * 1000 // rate


# ---------------------------------------------------------------------------- session state
@dataclass(frozen=True)
class ServerVad:
    """GA ``server_vad`` turn detection (names as in ``realtime_audio_input_turn_detection.py``)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True)
class PromptTemplateConfig:
    """Our prompt template (see ``agent.conversation.PromptTemplate``)."""

    instruction: str = DEFAULT_INSTRUCTION
    user_cue: str = "\nUser:"
    assistant_cue: str = "\nAssistant:"


@dataclass(frozen=True)
class SessionConfig:
    """Protocol-level session state. ``instructions`` is ``prompt_template.instruction``.

    ``model`` and ``num_speakers`` are set by the server (from what it loaded), never by clients.
    """

    output_modalities: tuple[str, ...] = ("audio",)
    prompt_template: PromptTemplateConfig = field(default_factory=PromptTemplateConfig)
    input_rate: int = DEFAULT_RATE
    output_rate: int = DEFAULT_RATE
    voice: str = str(DEFAULT_SPEAKER)
    speaker: int = DEFAULT_SPEAKER
    turn_detection: ServerVad | None = field(default_factory=ServerVad)
    max_output_tokens: int | str = "inf"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    greedy: bool = True
    output_modality: str = "speech"  # speech | text | arbitrary
    binary_audio: bool = False
    model: str = "spirit-lm"
    num_speakers: int = 4

    @property
    def instructions(self) -> str:
        return self.prompt_template.instruction


@dataclass(frozen=True)
class SessionPatch:
    """A validated partial ``session`` (or ``response``) object; ``UNSET`` = not given.

    ``turn_detection`` is ``None`` (off), or a dict of the given ``ServerVad`` fields;
    ``prompt_template`` a dict of the given cue fields (the instruction is folded into
    ``instructions``).
    """

    instructions: Any = UNSET
    output_modalities: Any = UNSET
    input_rate: Any = UNSET
    output_rate: Any = UNSET
    voice: Any = UNSET
    turn_detection: Any = UNSET
    max_output_tokens: Any = UNSET
    speaker: Any = UNSET
    output_modality: Any = UNSET
    prompt_template: Any = UNSET
    seed: Any = UNSET
    greedy: Any = UNSET
    temperature: Any = UNSET
    top_p: Any = UNSET
    top_k: Any = UNSET
    binary_audio: Any = UNSET


# ---------------------------------------------------------------------------- client events
@dataclass(frozen=True, kw_only=True)
class SessionUpdate:
    TYPE: ClassVar[str] = "session.update"
    session: SessionPatch
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class InputAudioBufferAppend:
    TYPE: ClassVar[str] = "input_audio_buffer.append"
    audio: bytes  # decoded PCM16 LE mono at the session's input rate
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class InputAudioBufferCommit:
    TYPE: ClassVar[str] = "input_audio_buffer.commit"
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class InputAudioBufferClear:
    TYPE: ClassVar[str] = "input_audio_buffer.clear"
    event_id: str | None = None


@dataclass(frozen=True)
class InputText:
    text: str


@dataclass(frozen=True)
class InputAudio:
    audio: bytes  # decoded PCM16 at the session's input rate
    transcript: str | None = None


@dataclass(frozen=True, kw_only=True)
class UserMessage:
    content: tuple[InputText | InputAudio, ...]
    id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ConversationItemCreate:
    TYPE: ClassVar[str] = "conversation.item.create"
    item: UserMessage
    previous_item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ConversationItemTruncate:
    TYPE: ClassVar[str] = "conversation.item.truncate"
    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ConversationItemDelete:
    TYPE: ClassVar[str] = "conversation.item.delete"
    item_id: str
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResponseParams:
    """``response.create``'s ``response``: overrides (a ``SessionPatch``) and metadata."""

    overrides: SessionPatch = field(default_factory=SessionPatch)
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class ResponseCreate:
    TYPE: ClassVar[str] = "response.create"
    response: ResponseParams | None = None
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResponseCancel:
    TYPE: ClassVar[str] = "response.cancel"
    response_id: str | None = None
    event_id: str | None = None


ClientEvent = Union[SessionUpdate, InputAudioBufferAppend, InputAudioBufferCommit, InputAudioBufferClear,
                    ConversationItemCreate, ConversationItemTruncate, ConversationItemDelete, ResponseCreate,
                    ResponseCancel]

# ---------------------------------------------------------------------------- session / response parsing
_SESSION_KEYS = ("type", "audio", "include", "instructions", "max_output_tokens", "model", "output_modalities",
                 "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools", "tracing", "truncation",
                 "spiritlm")
_RESPONSE_KEYS = ("audio", "conversation", "input", "instructions", "max_output_tokens", "metadata",
                  "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools",
                  "spiritlm")
_BETA_HINTS = {
    "modalities": "GA name: 'output_modalities'",
    "voice": "GA name: 'audio.output.voice'",
    "input_audio_format": "GA name: 'audio.input.format'",
    "output_audio_format": "GA name: 'audio.output.format'",
    "turn_detection": "GA name: 'audio.input.turn_detection'",
    "input_audio_transcription": "GA name: 'audio.input.transcription'",
    "input_audio_noise_reduction": "GA name: 'audio.input.noise_reduction'",
    "speed": "GA name: 'audio.output.speed'",
    "max_response_output_tokens": "GA name: 'max_output_tokens'",
    "temperature": "GA has no session temperature; ours is 'spiritlm.temperature'",
}
_SPIRITLM_KEYS = ("speaker", "output_modality", "prompt_template", "seed", "greedy", "temperature", "top_p", "top_k",
                  "binary_audio")
_VAD_KEYS = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response",
             "idle_timeout_ms")
_OUTPUT_MODALITIES = ("audio", "text")
_SPIRITLM_MODALITIES = ("speech", "text", "arbitrary")
_DIGITS = re.compile(r"[0-9]{1,4}")


def _parse_format(value: Any, path: str) -> int:
    fmt = _obj(value, path)
    kind = _str(_req(fmt, "type", path + ".type"), path + ".type")
    if kind in ("audio/pcmu", "audio/pcma"):
        raise ProtocolError("unsupported_audio_format", f"'{path}.type' {kind!r} is not supported: this server "
                            "speaks 'audio/pcm' (PCM16 LE mono) at 24000 Hz (default) or 16000 Hz.",
                            param=path + ".type")
    if kind != "audio/pcm":
        raise _bad_value(path + ".type", kind, _choices(("audio/pcm", "audio/pcmu", "audio/pcma")))
    _check_keys(fmt, ("type", "rate"), path)
    rate = _opt(fmt, "rate")
    if rate is _ABSENT:
        return DEFAULT_RATE
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise _bad_type(path + ".rate", "an integer", rate)
    if rate not in SUPPORTED_RATES:
        raise ProtocolError("unsupported_audio_format", f"'{path}.rate' {_short(rate)} is not supported: "
                            "'audio/pcm' rates are 24000 (default) and 16000.", param=path + ".rate")
    return rate


def _parse_turn_detection(value: Any, path: str) -> dict[str, Any]:
    td = _obj(value, path)
    kind = _str(_req(td, "type", path + ".type"), path + ".type")
    if kind == "semantic_vad":
        raise _unsupported(path + ".type", "'semantic_vad' turn detection is not supported; use 'server_vad' or null.")
    if kind != "server_vad":
        raise _bad_value(path + ".type", kind, _choices(("server_vad", "semantic_vad")))
    _check_keys(td, _VAD_KEYS, path)
    out: dict[str, Any] = {}
    if (v := _opt(td, "threshold")) is not _ABSENT:
        out["threshold"] = _num(v, path + ".threshold", 0.0, 1.0)
    if (v := _opt(td, "prefix_padding_ms")) is not _ABSENT:
        out["prefix_padding_ms"] = _int(v, path + ".prefix_padding_ms", 0, 10_000)
    if (v := _opt(td, "silence_duration_ms")) is not _ABSENT:
        out["silence_duration_ms"] = _int(v, path + ".silence_duration_ms", 1, 10_000)
    for key in ("create_response", "interrupt_response"):
        if (v := _opt(td, key)) is not _ABSENT:
            out[key] = _bool(v, f"{path}.{key}")
    if (v := _opt(td, "idle_timeout_ms")) is not _ABSENT:
        _int(v, path + ".idle_timeout_ms", 0)
        raise _unsupported(path + ".idle_timeout_ms", "'idle_timeout_ms' is not supported; send null or omit it.")
    return out


def _parse_voice(value: Any, path: str) -> str:
    if isinstance(value, dict):
        raise _unsupported(path, "Custom voice objects are not supported; use a speaker index such as \"2\" or a "
                           "built-in voice name.")
    voice = _str(value, path)
    if not (_DIGITS.fullmatch(voice) or voice in OPENAI_VOICES):
        raise _bad_value(path, voice, "Expected a speaker index as a decimal string (e.g. \"0\") or one of: "
                         + ", ".join(OPENAI_VOICES) + ".")
    return voice


def voice_to_speaker(voice: str, num_speakers: int) -> int:
    """Speaker index of a voice string (see module doc). Raises ``ValueError`` if out of range."""
    if voice in OPENAI_VOICES:
        return OPENAI_VOICES.index(voice) % num_speakers
    speaker = int(voice)
    if not 0 <= speaker < num_speakers:
        raise ValueError(f"speaker {speaker} is out of range: this vocoder has speakers 0..{num_speakers - 1}")
    return speaker


def _parse_audio(value: Any, path: str, out: dict[str, Any], *, response: bool) -> None:
    audio = _obj(value, path)
    _check_keys(audio, ("output",) if response else ("input", "output"), path)
    if not response and (inp := _opt(audio, "input")) is not _ABSENT:
        ipath = path + ".input"
        inp = _obj(inp, ipath)
        _check_keys(inp, ("format", "noise_reduction", "transcription", "turn_detection"), ipath)
        if (v := _opt(inp, "format")) is not _ABSENT:
            out["input_rate"] = _parse_format(v, ipath + ".format")
        for key in ("noise_reduction", "transcription"):  # accepted, ignored (reported as null)
            if (v := _opt(inp, key)) is not _ABSENT:
                _obj(v, f"{ipath}.{key}")
        if "turn_detection" in inp:
            v = inp["turn_detection"]
            out["turn_detection"] = None if v is None else _parse_turn_detection(v, ipath + ".turn_detection")
    if (outp := _opt(audio, "output")) is not _ABSENT:
        opath = path + ".output"
        outp = _obj(outp, opath)
        _check_keys(outp, ("format", "voice") if response else ("format", "voice", "speed"), opath)
        if (v := _opt(outp, "format")) is not _ABSENT:
            out["output_rate"] = _parse_format(v, opath + ".format")
        if (v := _opt(outp, "voice")) is not _ABSENT:
            out["voice"] = _parse_voice(v, opath + ".voice")
        if (v := _opt(outp, "speed")) is not _ABSENT:
            _num(v, opath + ".speed", 0.25, 1.5)  # validated, ignored


def _parse_spiritlm(value: Any, path: str, out: dict[str, Any], *, response: bool) -> None:
    ext = _obj(value, path)
    _check_keys(ext, tuple(k for k in _SPIRITLM_KEYS if not (response and k == "binary_audio")), path)
    if (v := _opt(ext, "speaker")) is not _ABSENT:
        out["speaker"] = _int(v, path + ".speaker", 0, 9999)
    if (v := _opt(ext, "output_modality")) is not _ABSENT:
        if _str(v, path + ".output_modality") not in _SPIRITLM_MODALITIES:
            raise _bad_value(path + ".output_modality", v, _choices(_SPIRITLM_MODALITIES))
        out["output_modality"] = v
    if (v := _opt(ext, "prompt_template")) is not _ABSENT:
        tpath = path + ".prompt_template"
        tpl = _obj(v, tpath)
        _check_keys(tpl, ("instruction", "user_cue", "assistant_cue"), tpath)
        cues = {}
        for key in ("instruction", "user_cue", "assistant_cue"):
            if (s := _opt(tpl, key)) is not _ABSENT:
                cues[key] = _str(s, f"{tpath}.{key}")
        if "instruction" in cues:
            instruction = cues.pop("instruction")
            if "instructions" in out and out["instructions"] != instruction:
                raise _bad_value(tpath + ".instruction", instruction, "It is the same setting as 'instructions', "
                                 "which this event sets to a different value.")
            out["instructions"] = instruction
        if cues:
            out["prompt_template"] = cues
    if "seed" in ext:
        v = ext["seed"]
        out["seed"] = None if v is None else _int(v, path + ".seed", 0, MAX_SEED)
    if (v := _opt(ext, "greedy")) is not _ABSENT:
        out["greedy"] = _bool(v, path + ".greedy")
    if (v := _opt(ext, "temperature")) is not _ABSENT:
        out["temperature"] = _num(v, path + ".temperature", 0.0, 100.0, low_open=True)
    if (v := _opt(ext, "top_p")) is not _ABSENT:
        out["top_p"] = _num(v, path + ".top_p", 0.0, 1.0, low_open=True)
    if (v := _opt(ext, "top_k")) is not _ABSENT:
        out["top_k"] = _int(v, path + ".top_k", 0, 1_000_000)
    if (v := _opt(ext, "binary_audio")) is not _ABSENT:
        out["binary_audio"] = _bool(v, path + ".binary_audio")


def _parse_common(obj: dict, path: str, out: dict[str, Any], *, response: bool) -> None:
    """Fields shared by ``session`` and ``response``, plus the accepted-and-ignored ones."""
    if (v := _opt(obj, "instructions")) is not _ABSENT:
        out["instructions"] = _str(v, path + ".instructions")
    if (v := _opt(obj, "output_modalities")) is not _ABSENT:
        mpath = path + ".output_modalities"
        mods = _list(v, mpath)
        for i, m in enumerate(mods):
            if _str(m, f"{mpath}[{i}]") not in _OUTPUT_MODALITIES:
                raise _bad_value(f"{mpath}[{i}]", m, _choices(_OUTPUT_MODALITIES))
        if len(set(mods)) != 1:
            raise _bad_value(mpath, mods, "Expected [\"audio\"] or [\"text\"]: it is not possible to request both "
                             "text and audio at the same time.")
        out["output_modalities"] = (mods[0],)
    if (v := _opt(obj, "max_output_tokens")) is not _ABSENT:
        tpath = path + ".max_output_tokens"
        if isinstance(v, str):
            if v != "inf":
                raise _bad_value(tpath, v, "Expected an integer between 1 and 4096, or \"inf\".")
            out["max_output_tokens"] = "inf"
        elif isinstance(v, bool) or not isinstance(v, int):
            raise _bad_type(tpath, "an integer or \"inf\"", v)
        else:
            out["max_output_tokens"] = _int(v, tpath, 1, MAX_OUTPUT_TOKENS)
    if (v := _opt(obj, "tools")) is not _ABSENT:
        if _list(v, path + ".tools"):
            raise _unsupported(path + ".tools", "Tools are not supported by this server; send [] or omit 'tools'.")
    if (v := _opt(obj, "tool_choice")) is not _ABSENT and not isinstance(v, (str, dict)):
        raise _bad_type(path + ".tool_choice", "a string or an object", v)
    if (v := _opt(obj, "parallel_tool_calls")) is not _ABSENT:
        _bool(v, path + ".parallel_tool_calls")
    if (v := _opt(obj, "reasoning")) is not _ABSENT:
        _obj(v, path + ".reasoning")
    if _opt(obj, "prompt") is not _ABSENT:
        raise _unsupported(path + ".prompt", "Stored prompts are not supported; use 'instructions'.")
    if (v := _opt(obj, "audio")) is not _ABSENT:
        _parse_audio(v, path + ".audio", out, response=response)
    if (v := _opt(obj, "spiritlm")) is not _ABSENT:
        _parse_spiritlm(v, path + ".spiritlm", out, response=response)
    # GA's output_modalities and our output_modality describe the same choice.
    if "output_modalities" in out and "output_modality" in out:
        if (out["output_modalities"] == ("text",)) != (out["output_modality"] == "text"):
            raise _bad_value(path + ".spiritlm.output_modality", out["output_modality"],
                             f"It contradicts '{path}.output_modalities' {list(out['output_modalities'])}.")


def _parse_session(value: Any, path: str = "session") -> SessionPatch:
    session = _obj(value, path)
    _check_keys(session, _SESSION_KEYS, path, _BETA_HINTS)
    kind = _str(_req(session, "type", path + ".type"), path + ".type")
    if kind == "transcription":
        raise _unsupported(path + ".type", "Transcription sessions are not supported; use \"realtime\".")
    if kind != "realtime":
        raise _bad_value(path + ".type", kind, _choices(("realtime", "transcription")))
    out: dict[str, Any] = {}
    _parse_common(session, path, out, response=False)
    if (v := _opt(session, "model")) is not _ABSENT:
        _str(v, path + ".model")  # accepted, ignored: the server reports the model it runs
    if (v := _opt(session, "include")) is not _ABSENT:
        for i, item in enumerate(_list(v, path + ".include")):
            _str(item, f"{path}.include[{i}]")
    if (v := _opt(session, "tracing")) is not _ABSENT and not (v == "auto" or isinstance(v, dict)):
        raise _bad_value(path + ".tracing", v, "Expected \"auto\", an object or null.")
    if (v := _opt(session, "truncation")) is not _ABSENT and not isinstance(v, (str, dict)):
        raise _bad_type(path + ".truncation", "a string or an object", v)
    return SessionPatch(**out)


def _parse_response_params(value: Any, path: str = "response") -> ResponseParams:
    params = _obj(value, path)
    _check_keys(params, _RESPONSE_KEYS, path)
    out: dict[str, Any] = {}
    _parse_common(params, path, out, response=True)
    if (v := _opt(params, "conversation")) is not _ABSENT and _str(v, path + ".conversation") != "auto":
        raise _unsupported(path + ".conversation", "Only conversation \"auto\" (the default conversation) is "
                           "supported.")
    if (v := _opt(params, "input")) is not _ABSENT and _list(v, path + ".input"):
        raise _unsupported(path + ".input", "Out-of-band response input is not supported; omit 'input'.")
    metadata = None
    if (v := _opt(params, "metadata")) is not _ABSENT:
        mpath = path + ".metadata"
        v = _obj(v, mpath)
        if len(v) > 16:
            raise _bad_value(mpath, v, "Expected at most 16 key-value pairs.")
        for key, val in v.items():
            if not isinstance(key, str) or len(key) > 64:
                raise _bad_value(mpath, key, "Keys are strings of at most 64 characters.")
            if len(_str(val, _join(mpath, key))) > 512:
                raise _bad_value(_join(mpath, key), val, "Values are strings of at most 512 characters.")
        metadata = dict(v)
    return ResponseParams(overrides=SessionPatch(**out), metadata=metadata)


# ---------------------------------------------------------------------------- item parsing
_ITEM_TYPES = ("message", "function_call", "function_call_output", "mcp_approval_response", "mcp_list_tools",
               "mcp_call", "mcp_approval_request")


def _parse_item(value: Any, path: str = "item") -> UserMessage:
    item = _obj(value, path)
    kind = _str(_req(item, "type", path + ".type"), path + ".type")
    if kind in _ITEM_TYPES[1:]:
        raise _unsupported(path + ".type", f"'{kind}' items are not supported; only user messages are.")
    if kind != "message":
        raise _bad_value(path + ".type", kind, _choices(_ITEM_TYPES))
    role = _str(_req(item, "role", path + ".role"), path + ".role")
    if role in ("system", "assistant"):
        hint = " (use session 'instructions' for the system prompt)" if role == "system" else ""
        raise _unsupported(path + ".role", f"'{role}' messages are not supported; only user messages are{hint}.")
    if role != "user":
        raise _bad_value(path + ".role", role, _choices(("user", "assistant", "system")))
    _check_keys(item, ("type", "role", "content", "id", "object", "status"), path)
    item_id = None
    if (v := _opt(item, "id")) is not _ABSENT:
        item_id = _id(v, path + ".id")
    if (v := _opt(item, "object")) is not _ABSENT and _str(v, path + ".object") != "realtime.item":
        raise _bad_value(path + ".object", v, _choices(("realtime.item",)))
    if (v := _opt(item, "status")) is not _ABSENT and _str(v, path + ".status") not in (
            "completed", "incomplete", "in_progress"):
        raise _bad_value(path + ".status", v, _choices(("completed", "incomplete", "in_progress")))
    cpath = path + ".content"
    content = _list(_req(item, "content", cpath), cpath)
    if not content:
        raise _bad_value(cpath, content, "Expected at least one content part.")
    parts: list[InputText | InputAudio] = []
    for i, part in enumerate(content):
        ppath = f"{cpath}[{i}]"
        part = _obj(part, ppath)
        ptype = _str(_req(part, "type", ppath + ".type"), ppath + ".type")
        if ptype == "input_text":
            _check_keys(part, ("type", "text"), ppath)
            parts.append(InputText(_str(_req(part, "text", ppath + ".text"), ppath + ".text")))
        elif ptype == "input_audio":
            _check_keys(part, ("type", "audio", "transcript"), ppath)
            audio = _decode_audio(_req(part, "audio", ppath + ".audio"), ppath + ".audio", allow_empty=False)
            transcript = _opt(part, "transcript")
            transcript = None if transcript is _ABSENT else _str(transcript, ppath + ".transcript")
            parts.append(InputAudio(audio, transcript))
        elif ptype == "input_image":
            raise _unsupported(ppath + ".type", "'input_image' content is not supported.")
        else:
            raise _bad_value(ppath + ".type", ptype, _choices(("input_text", "input_audio", "input_image")))
    return UserMessage(content=tuple(parts), id=item_id)


# ---------------------------------------------------------------------------- event dispatch
def _event_keys(obj: dict, *keys: str) -> None:
    _check_keys(obj, ("type", "event_id") + keys, "")


def _ev_session_update(obj: dict, eid: str | None) -> SessionUpdate:
    _event_keys(obj, "session")
    return SessionUpdate(session=_parse_session(_req(obj, "session", "session")), event_id=eid)


def _ev_append(obj: dict, eid: str | None) -> InputAudioBufferAppend:
    _event_keys(obj, "audio")
    return InputAudioBufferAppend(audio=_decode_audio(_req(obj, "audio", "audio"), "audio"), event_id=eid)


def _ev_commit(obj: dict, eid: str | None) -> InputAudioBufferCommit:
    _event_keys(obj)
    return InputAudioBufferCommit(event_id=eid)


def _ev_clear(obj: dict, eid: str | None) -> InputAudioBufferClear:
    _event_keys(obj)
    return InputAudioBufferClear(event_id=eid)


def _ev_item_create(obj: dict, eid: str | None) -> ConversationItemCreate:
    _event_keys(obj, "item", "previous_item_id")
    item = _parse_item(_req(obj, "item", "item"))
    prev = _opt(obj, "previous_item_id")
    return ConversationItemCreate(item=item, previous_item_id=None if prev is _ABSENT else _id(prev, "previous_item_id"),
                                  event_id=eid)


def _ev_truncate(obj: dict, eid: str | None) -> ConversationItemTruncate:
    _event_keys(obj, "item_id", "content_index", "audio_end_ms")
    return ConversationItemTruncate(
        item_id=_id(_req(obj, "item_id", "item_id"), "item_id"),
        content_index=_int(_req(obj, "content_index", "content_index"), "content_index", 0),
        audio_end_ms=_int(_req(obj, "audio_end_ms", "audio_end_ms"), "audio_end_ms", 0),
        event_id=eid)


def _ev_delete(obj: dict, eid: str | None) -> ConversationItemDelete:
    _event_keys(obj, "item_id")
    return ConversationItemDelete(item_id=_id(_req(obj, "item_id", "item_id"), "item_id"), event_id=eid)


def _ev_response_create(obj: dict, eid: str | None) -> ResponseCreate:
    _event_keys(obj, "response")
    params = _opt(obj, "response")
    return ResponseCreate(response=None if params is _ABSENT else _parse_response_params(params), event_id=eid)


def _ev_response_cancel(obj: dict, eid: str | None) -> ResponseCancel:
    _event_keys(obj, "response_id")
    rid = _opt(obj, "response_id")
    return ResponseCancel(response_id=None if rid is _ABSENT else _id(rid, "response_id"), event_id=eid)


_PARSERS: dict[str, Callable[[dict, str | None], Any]] = {
    "session.update": _ev_session_update,
    "input_audio_buffer.append": _ev_append,
    "input_audio_buffer.commit": _ev_commit,
    "input_audio_buffer.clear": _ev_clear,
    "conversation.item.create": _ev_item_create,
    "conversation.item.truncate": _ev_truncate,
    "conversation.item.delete": _ev_delete,
    "response.create": _ev_response_create,
    "response.cancel": _ev_response_cancel,
}
CLIENT_EVENT_TYPES = tuple(_PARSERS)
_GA_UNSUPPORTED_EVENTS = ("conversation.item.retrieve", "output_audio_buffer.clear", "transcription_session.update")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_client_event(data: str | bytes | bytearray | memoryview) -> ClientEvent:
    """Parse one text frame into a typed client event, or raise ``ProtocolError``. Nothing else escapes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid_json", "The event is not valid UTF-8 text.") from None
    if not isinstance(data, str):
        raise ProtocolError("invalid_json", f"Expected a text frame, got {type(data).__name__}.")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("invalid_json", "The event is nested too deeply.") from None
    except ValueError as exc:
        raise ProtocolError("invalid_json", f"The event is not valid JSON: {str(exc)[:120]}") from None
    return validate_client_event(obj)


def validate_client_event(obj: Any) -> ClientEvent:
    """Validate an already-decoded JSON value (dicts, lists, str, int, float, bool, None)."""
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_event", f"A client event must be a JSON object, got {_article(_jtype(obj))}.")
    eid = obj.get("event_id")
    eid = eid if isinstance(eid, str) else None
    try:
        if "event_id" in obj and obj["event_id"] is not None:
            _str(obj["event_id"], "event_id")
        kind = _str(_req(obj, "type", "type"), "type")
        parser = _PARSERS.get(kind)
        if parser is None:
            if kind in _GA_UNSUPPORTED_EVENTS:
                raise _unsupported("type", f"'{kind}' is not supported by this server.")
            raise ProtocolError("unknown_event", f"Invalid value: {_short(kind)}. Supported client events are: "
                                + ", ".join(CLIENT_EVENT_TYPES) + ".", param="type")
        return parser(obj, eid)
    except ProtocolError as err:
        if err.event_id is None:
            err.event_id = eid
        raise


# ---------------------------------------------------------------------------- applying updates
def _merge(config: SessionConfig, patch: SessionPatch, root: str, voice_locked: bool) -> SessionConfig:
    changes: dict[str, Any] = {}
    tpl = config.prompt_template
    if patch.instructions is not UNSET:
        tpl = replace(tpl, instruction=patch.instructions)
    if patch.prompt_template is not UNSET:
        tpl = replace(tpl, **patch.prompt_template)
    changes["prompt_template"] = tpl

    modality = config.output_modality
    if patch.output_modality is not UNSET:
        modality = patch.output_modality
    elif patch.output_modalities is not UNSET:
        if patch.output_modalities == ("text",):
            modality = "text"
        elif modality == "text":
            modality = "speech"
    changes["output_modality"] = modality
    changes["output_modalities"] = ("text",) if modality == "text" else ("audio",)

    if patch.turn_detection is not UNSET:
        if patch.turn_detection is None:
            changes["turn_detection"] = None
        else:
            changes["turn_detection"] = replace(config.turn_detection or ServerVad(), **patch.turn_detection)

    voice, speaker = config.voice, config.speaker
    if patch.voice is not UNSET:
        try:
            speaker = voice_to_speaker(patch.voice, config.num_speakers)
        except ValueError as exc:
            raise _bad_value(f"{root}.audio.output.voice", patch.voice, f"{str(exc).capitalize()}.") from None
        voice = patch.voice
    if patch.speaker is not UNSET:
        spath = f"{root}.spiritlm.speaker"
        if patch.voice is not UNSET and patch.speaker != speaker:
            raise _bad_value(spath, patch.speaker, f"It contradicts '{root}.audio.output.voice' "
                             f"{patch.voice!r} (speaker {speaker}).")
        if not patch.speaker < config.num_speakers:
            raise _bad_value(spath, patch.speaker, f"This vocoder has speakers 0..{config.num_speakers - 1}.")
        if patch.voice is UNSET and patch.speaker != speaker:
            voice = str(patch.speaker)
        speaker = patch.speaker
    if voice_locked and speaker != config.speaker:
        raise ProtocolError("cannot_update_voice", "Cannot update a conversation's voice if assistant audio is present.",
                            param=f"{root}.audio.output.voice")
    changes["voice"], changes["speaker"] = voice, speaker

    for name in ("input_rate", "output_rate", "max_output_tokens", "seed", "greedy", "temperature", "top_p", "top_k",
                 "binary_audio"):
        value = getattr(patch, name)
        if value is not UNSET:
            changes[name] = value
    return replace(config, **changes)


def apply_session_update(config: SessionConfig, update: SessionUpdate | SessionPatch, *,
                         voice_locked: bool = False) -> SessionConfig:
    """The session after ``update`` (only the given fields change). Raises ``ProtocolError``.

    ``voice_locked``: assistant audio already exists, so the speaker may not change (GA rule).
    """
    patch = update.session if isinstance(update, SessionUpdate) else update
    try:
        return _merge(config, patch, "session", voice_locked)
    except ProtocolError as err:
        if isinstance(update, SessionUpdate) and err.event_id is None:
            err.event_id = update.event_id
        raise


def response_config(config: SessionConfig, event: ResponseCreate, *, voice_locked: bool = False) -> SessionConfig:
    """The effective settings of one response (``response.create`` overrides; the session is unchanged)."""
    if event.response is None:
        return config
    try:
        return _merge(config, event.response.overrides, "response", voice_locked)
    except ProtocolError as err:
        if err.event_id is None:
            err.event_id = event.event_id
        raise


def _format_dict(rate: int) -> dict[str, Any]:
    return {"type": "audio/pcm", "rate": rate}


def _turn_detection_dict(td: ServerVad | None) -> dict[str, Any] | None:
    if td is None:
        return None
    return {"type": "server_vad", "threshold": td.threshold, "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms, "create_response": td.create_response,
            "interrupt_response": td.interrupt_response, "idle_timeout_ms": None}


def session_to_dict(config: SessionConfig, *, session_id: str | None = None,
                    expires_at: int | None = None) -> dict[str, Any]:
    """The ``session`` object of ``session.created``/``session.updated`` (GA shape + ``spiritlm``)."""
    session: dict[str, Any] = {"type": "realtime", "object": "realtime.session"}
    if session_id is not None:
        session["id"] = session_id
    if expires_at is not None:
        session["expires_at"] = expires_at
    tpl = config.prompt_template
    session.update({
        "model": config.model,
        "output_modalities": list(config.output_modalities),
        "instructions": config.instructions,
        "audio": {
            "input": {"format": _format_dict(config.input_rate), "transcription": None, "noise_reduction": None,
                      "turn_detection": _turn_detection_dict(config.turn_detection)},
            "output": {"format": _format_dict(config.output_rate), "voice": config.voice, "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": config.max_output_tokens,
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "spiritlm": {
            "speaker": config.speaker,
            "output_modality": config.output_modality,
            "prompt_template": {"instruction": tpl.instruction, "user_cue": tpl.user_cue,
                                "assistant_cue": tpl.assistant_cue},
            "seed": config.seed,
            "greedy": config.greedy,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
            "binary_audio": config.binary_audio,
        },
    })
    return session


# ---------------------------------------------------------------------------- ids
IdGenerator = Callable[[str], str]  # prefix ("event", "item", "resp", "sess") -> fresh id


def new_id(prefix: str) -> str:
    """A random id such as ``event_3f1c...`` (20 hex digits)."""
    return f"{prefix}_{secrets.token_hex(10)}"


class SequentialIds:
    """Deterministic ids for tests: ``event_1``, ``event_2``, ``item_1``..."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count] = {}

    def __call__(self, prefix: str) -> str:
        counter = self._counters.setdefault(prefix, itertools.count(1))
        return f"{prefix}_{next(counter)}"


def _event(kind: str, ids: IdGenerator | None, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": (ids or new_id)("event"), **fields}


# ---------------------------------------------------------------------------- items and parts
def input_text_content(text: str) -> dict[str, Any]:
    return {"type": "input_text", "text": text}


def input_audio_content(transcript: str | None = None) -> dict[str, Any]:
    """User audio content as reported in item events (GA omits the audio bytes there)."""
    return {"type": "input_audio", "transcript": transcript}


def output_audio_content(transcript: str = "") -> dict[str, Any]:
    return {"type": "output_audio", "transcript": transcript}


def output_text_content(text: str = "") -> dict[str, Any]:
    return {"type": "output_text", "text": text}


def audio_part(transcript: str = "") -> dict[str, Any]:
    """``part`` of ``response.content_part.added|done`` for audio (GA ``Part``: type "audio")."""
    return {"type": "audio", "transcript": transcript}


def text_part(text: str = "") -> dict[str, Any]:
    return {"type": "text", "text": text}


def _message(item_id: str, role: str, content: Sequence[dict], status: str) -> dict[str, Any]:
    if status not in ("completed", "incomplete", "in_progress"):
        raise ValueError(f"bad item status {status!r}")
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": role,
            "content": [dict(c) for c in content]}


def user_message_item(item_id: str, content: Sequence[dict], *, status: str = "completed") -> dict[str, Any]:
    return _message(item_id, "user", content, status)


def assistant_message_item(item_id: str, content: Sequence[dict] = (), *, status: str = "in_progress") -> dict[str, Any]:
    return _message(item_id, "assistant", content, status)


def user_item_to_dict(item: UserMessage, item_id: str | None = None, *, status: str = "completed") -> dict[str, Any]:
    """GA item for a client-created user message (``item.id`` wins over ``item_id``)."""
    item_id = item.id or item_id
    if item_id is None:
        raise ValueError("the item has no id: pass item_id")
    content = [input_text_content(p.text) if isinstance(p, InputText) else input_audio_content(p.transcript)
               for p in item.content]
    return user_message_item(item_id, content, status=status)


# ---------------------------------------------------------------------------- responses
_STATUS_REASONS = {"cancelled": ("turn_detected", "client_cancelled"),
                   "incomplete": ("max_output_tokens", "content_filter")}


def status_details(status: str, reason: str | None = None, *, error_type: str | None = None,
                   error_code: str | None = None) -> dict[str, Any] | None:
    """GA ``status_details``: null while in progress or completed, ``{type, reason}`` for cancelled/incomplete,
    ``{type: "failed", error: {type, code}}`` for failed."""
    if status in ("in_progress", "completed"):
        return None
    if status in _STATUS_REASONS:
        if reason not in _STATUS_REASONS[status]:
            raise ValueError(f"reason for {status} must be one of {_STATUS_REASONS[status]}, got {reason!r}")
        return {"type": status, "reason": reason}
    if status == "failed":
        return {"type": "failed", "error": {"type": error_type or "server_error", "code": error_code}}
    raise ValueError(f"unknown response status {status!r}")


def usage(*, input_text_tokens: int = 0, input_audio_tokens: int = 0, output_text_tokens: int = 0,
          output_audio_tokens: int = 0, cached_tokens: int = 0) -> dict[str, Any]:
    """GA ``usage``. For SpiRit-LM, "audio tokens" are unit/pitch/style tokens, "text tokens" the rest."""
    inp = input_text_tokens + input_audio_tokens
    out = output_text_tokens + output_audio_tokens
    return {
        "total_tokens": inp + out,
        "input_tokens": inp,
        "output_tokens": out,
        "input_token_details": {"text_tokens": input_text_tokens, "audio_tokens": input_audio_tokens,
                                "image_tokens": 0, "cached_tokens": cached_tokens,
                                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
        "output_token_details": {"text_tokens": output_text_tokens, "audio_tokens": output_audio_tokens},
    }


def response_object(response_id: str, config: SessionConfig, *, status: str = "in_progress",
                    output: Sequence[dict] = (), status_details: dict | None = None, usage: dict | None = None,
                    conversation_id: str | None = None, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """GA ``realtime.response`` object; ``config`` is the response's effective config (``response_config``)."""
    if status not in ("in_progress", "completed", "cancelled", "failed", "incomplete"):
        raise ValueError(f"unknown response status {status!r}")
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": [dict(item) for item in output],
        "conversation_id": conversation_id,
        "output_modalities": list(config.output_modalities),
        "max_output_tokens": config.max_output_tokens,
        "audio": {"output": {"format": _format_dict(config.output_rate), "voice": config.voice}},
        "usage": usage,
        "metadata": None if metadata is None else dict(metadata),
    }


@dataclass(frozen=True)
class PartRef:
    """Where a content part lives: the four ids/indexes every part-level server event repeats."""

    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0

    def fields(self) -> dict[str, Any]:
        return {"response_id": self.response_id, "item_id": self.item_id, "output_index": self.output_index,
                "content_index": self.content_index}


# ---------------------------------------------------------------------------- server event builders
def session_created(config: SessionConfig, *, session_id: str, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("session.created", ids, session=session_to_dict(config, session_id=session_id))


def session_updated(config: SessionConfig, *, session_id: str, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("session.updated", ids, session=session_to_dict(config, session_id=session_id))


def input_audio_buffer_speech_started(*, audio_start_ms: int, item_id: str,
                                      ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("input_audio_buffer.speech_started", ids, audio_start_ms=audio_start_ms, item_id=item_id)


def input_audio_buffer_speech_stopped(*, audio_end_ms: int, item_id: str,
                                      ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("input_audio_buffer.speech_stopped", ids, audio_end_ms=audio_end_ms, item_id=item_id)


def input_audio_buffer_committed(*, item_id: str, previous_item_id: str | None = None,
                                 ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("input_audio_buffer.committed", ids, previous_item_id=previous_item_id, item_id=item_id)


def input_audio_buffer_cleared(*, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("input_audio_buffer.cleared", ids)


def conversation_item_added(item: dict, *, previous_item_id: str | None = None,
                            ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("conversation.item.added", ids, previous_item_id=previous_item_id, item=item)


def conversation_item_done(item: dict, *, previous_item_id: str | None = None,
                           ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("conversation.item.done", ids, previous_item_id=previous_item_id, item=item)


def conversation_item_truncated(*, item_id: str, content_index: int, audio_end_ms: int,
                                ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("conversation.item.truncated", ids, item_id=item_id, content_index=content_index,
                  audio_end_ms=audio_end_ms)


def conversation_item_deleted(*, item_id: str, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("conversation.item.deleted", ids, item_id=item_id)


def response_created(response: dict, *, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.created", ids, response=response)


def response_output_item_added(*, response_id: str, output_index: int, item: dict,
                               ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.output_item.added", ids, response_id=response_id, output_index=output_index, item=item)


def response_output_item_done(*, response_id: str, output_index: int, item: dict,
                              ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.output_item.done", ids, response_id=response_id, output_index=output_index, item=item)


def response_content_part_added(ref: PartRef, part: dict, *, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.content_part.added", ids, **ref.fields(), part=part)


def response_content_part_done(ref: PartRef, part: dict, *, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.content_part.done", ids, **ref.fields(), part=part)


def response_output_audio_delta(ref: PartRef, pcm: bytes | bytearray | memoryview, *,
                                 ids: IdGenerator | None = None) -> dict[str, Any]:
    """``delta`` is the base64 of ``pcm`` (PCM16 LE at the session's output rate)."""
    return _event("response.output_audio.delta", ids, **ref.fields(), delta=encode_audio(pcm))


def response_output_audio_done(ref: PartRef, *, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.output_audio.done", ids, **ref.fields())


def response_output_audio_transcript_delta(ref: PartRef, delta: str, *,
                                           ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.output_audio_transcript.delta", ids, **ref.fields(), delta=delta)


def response_output_audio_transcript_done(ref: PartRef, transcript: str, *,
                                          ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.output_audio_transcript.done", ids, **ref.fields(), transcript=transcript)


def response_output_text_delta(ref: PartRef, delta: str, *, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.output_text.delta", ids, **ref.fields(), delta=delta)


def response_output_text_done(ref: PartRef, text: str, *, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("response.output_text.done", ids, **ref.fields(), text=text)


def response_done(response: dict, *, latency: Mapping[str, float] | None = None,
                  ids: IdGenerator | None = None) -> dict[str, Any]:
    """``response.done``; ``latency`` (seconds) goes to the extension ``response.spiritlm.latency``."""
    response = dict(response)
    response["spiritlm"] = {"latency": dict(latency or {})}
    return _event("response.done", ids, response=response)


def error_event(error: ProtocolError, *, ids: IdGenerator | None = None) -> dict[str, Any]:
    return _event("error", ids, error=error.to_dict())


# ---------------------------------------------------------------------------- binary frames
def pack_audio_frame(pcm: bytes | bytearray | memoryview) -> bytes:
    """A server -> client binary frame: the raw PCM16 LE samples, nothing else."""
    data = bytes(pcm)
    if len(data) % 2:
        raise ValueError(f"PCM16 audio needs an even number of bytes, got {len(data)}")
    return data


def unpack_audio_frame(frame: bytes | bytearray | memoryview, config: SessionConfig) -> InputAudioBufferAppend:
    """A client -> server binary frame, as the ``input_audio_buffer.append`` it stands for."""
    if not config.binary_audio:
        raise ProtocolError("binary_audio_disabled", "Binary frames are off: send a session.update with "
                            "session.spiritlm.binary_audio = true first, or use input_audio_buffer.append.")
    return InputAudioBufferAppend(audio=_check_pcm(bytes(frame), None))


def output_audio_message(config: SessionConfig, ref: PartRef, pcm: bytes | bytearray | memoryview, *,
                         ids: IdGenerator | None = None) -> bytes | dict[str, Any]:
    """Output audio as the session wants it: a binary frame or a ``response.output_audio.delta`` event."""
    if config.binary_audio:
        return pack_audio_frame(pcm)
    return response_output_audio_delta(ref, pcm, ids=ids)
