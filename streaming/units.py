"""Speech units while the user speaks (provisional, windowed), and exact ones at end of turn.

mHuBERT, the style wav2vec2 and FCPE see their whole input (full self-attention, utterance
normalisation, the quantizer's cyclic blank rule), so no windowed pass can reproduce the
offline units. :class:`IncrementalUnitEncoder` therefore works in two passes:

* **Provisional** (:meth:`~IncrementalUnitEncoder.feed`): each stream (HuBERT 25 Hz, pitch
  12.5 Hz, style 1 Hz) re-encodes a window ``[next unit - left_context, ready end]`` of the
  turn and emits units only once at least ``lookahead`` of audio follows the end of their
  receptive field. A pass runs each time ``step`` more units are ready. Windows start on the
  stream's unit grid (640 / 1280 / 16000 samples from the start of the offline chunk) so that
  window frame ``i`` is offline frame ``start + i``; the windows follow the offline 100 s
  chunking (a window never crosses a chunk boundary; at a chunk's end its remaining units are
  emitted with the lookahead the chunk has, which is all the offline pass sees too).
  The schedule depends only on the audio, never on how it was cut into ``feed`` calls, so the
  provisional units are a deterministic function of the audio.
* **Exact** (:meth:`~IncrementalUnitEncoder.finish`): the whole turn through
  ``SpeechTokenizer.encode_units`` — the same call, on the same float32 samples, as the offline
  stack, hence identical units — plus, per stream, the first index where the final units differ
  from the emitted ones, and the same in token-string tokens, so the LM rolls back only that tail.

The LM consumes the merged, deduplicated token string, and a style token at second ``k``
sorts before every HuBERT/pitch token of that second. The encoder therefore hands out only the
*stable* string: tokens of every stream whose time (``index / rate``) lies before the common
horizon ``min(emitted / rate)`` over the streams. Later units all sort after that horizon and
deduplication looks only to the left, so the stable string only ever grows at its end; each
:class:`UnitUpdate` carries the appended piece in ``text``.

Style (1 Hz) is windowed too by default (``provisional_style=True``): unit ``k`` is emitted once
second ``k`` is complete (its 50 wav2vec2 frames) plus the lookahead, with the left context
rounded up to whole seconds. Without provisional style an expressive string cannot start (its
first token is a style token), so ``provisional_style=False`` leaves St tokens out of the
provisional string and the LM rolls back to the first token at end of turn; it only saves compute.

Memory: the provisional pass holds one window of at most ``left + step + lookahead`` plus a
unit's receptive field; the exact pass needs the whole turn, kept in one buffer that is bounded
by ``max_turn_s`` (feeding past it raises :class:`AudioError`). Counters in :attr:`stats` give
the audio seconds each stream encoded and the wall time, to compare with one offline pass.
"""

from __future__ import annotations

import math
import numbers
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agent.spiritlm import speech_tokenizer as _speech_tokenizer
from agent.spiritlm.audio import SAMPLE_RATE
from agent.spiritlm.errors import AudioError, InvalidArgumentError, SpiritLMError
from agent.spiritlm.hubert import LinearQuantizer
from agent.spiritlm.pitch import F0_HOP
from agent.spiritlm.speech_tokenizer import SpeechTokenizer
from agent.spiritlm.style import POOL_FRAMES
from agent.spiritlm.tokens import HUBERT_RATE, PITCH_RATE, STYLE_RATE, Units, units_to_string

__all__ = [
    "DEFAULT_LEFT_CONTEXT_S", "DEFAULT_LOOKAHEAD_S", "DEFAULT_STEP_S", "DEFAULT_MAX_TURN_S",
    "StreamStateError", "StreamUnits", "UnitUpdate", "StreamStats", "EncoderStats", "FinalUnits",
    "IncrementalUnitEncoder", "common_prefix_len", "split_string_tokens", "common_prefix_tokens",
]

DEFAULT_LEFT_CONTEXT_S = 2.0
DEFAULT_LOOKAHEAD_S = 0.5
DEFAULT_STEP_S = 0.2
DEFAULT_MAX_TURN_S = 120.0

TOKEN_RATES = {"hubert": HUBERT_RATE, "pitch": PITCH_RATE, "style": STYLE_RATE}

# One token of a SpiRit-LM string: a unit token, a modality marker, or any other single character.
_STRING_TOKEN = re.compile(r"\[(?:Hu|Pi|St)\d+\]|\[Text\]|\[Speech\]|.", re.S)


class StreamStateError(SpiritLMError):
    """The encoder was used out of order (e.g. fed after :meth:`IncrementalUnitEncoder.finish`)."""


# -- helpers ------------------------------------------------------------------------------------

def common_prefix_len(a: Sequence, b: Sequence) -> int:
    """Length of the common prefix of two sequences (``len(a)`` when ``a`` is a prefix of ``b``)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def split_string_tokens(text: str) -> list[str]:
    """Split a token string into tokens: ``[HuN]``/``[PiN]``/``[StN]``, ``[Text]``, ``[Speech]``
    each count as one token, any other character as one token of its own.

    Unit tokens and markers are single LM ids, so for speech this is the LM's own count.
    """
    return _STRING_TOKEN.findall(text)


def common_prefix_tokens(a: str, b: str) -> int:
    """Number of leading tokens (see :func:`split_string_tokens`) two token strings share.

    ``common_prefix_tokens("[Hu1][Hu2]", "[Hu1][Hu23]") == 1``: ``[Hu2]`` and ``[Hu23]`` differ
    although one is a character prefix of the other.
    """
    return common_prefix_len(split_string_tokens(a), split_string_tokens(b))


def _conv_frames(length: int, layers: Sequence[tuple[int, int, int, int]]) -> int:
    """Output length after 1-D convolutions given as ``(kernel, stride, padding, dilation)``."""
    for kernel, stride, padding, dilation in layers:
        span = dilation * (kernel - 1) + 1
        length = (length + 2 * padding - span) // stride + 1 if length + 2 * padding >= span else 0
    return max(length, 0)


def _receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    field_, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field_ += (kernel - 1) * jump
        jump *= stride
    return field_


def _count_before(n: int, rate: float, horizon: float) -> int:
    """How many of indices ``0..n-1`` have ``index / rate < horizon`` (the tokens module's time)."""
    k = min(n, max(0, math.ceil(horizon * rate)))
    while k > 0 and (k - 1) / rate >= horizon:
        k -= 1
    while k < n and k / rate < horizon:
        k += 1
    return k


def _fill_blanks_from(raw: list[int], blank: int, carry: int | None) -> list[int]:
    """The linear quantizer's blank rule on a window: a blank takes the nearest non-blank on its
    left; ``carry`` is the unit left of the window (None at the start of a chunk, where the offline
    rule wraps to the chunk's last non-blank, which we guess as the window's last non-blank)."""
    if carry is None or carry == blank:
        known = [v for v in raw if v != blank]
        carry = known[-1] if known else None
    out = []
    for v in raw:
        if v == blank:
            out.append(blank if carry is None else carry)
        else:
            carry = v
            out.append(v)
    return out


# -- results ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamUnits:
    """New provisional units of one stream: ``units[i]`` is unit number ``start + i`` of the turn
    (the index it has in the offline output; its time is ``index / rate`` in the token string)."""

    start: int
    units: tuple[int, ...] = ()

    @property
    def indices(self) -> range:
        return range(self.start, self.start + len(self.units))

    def __len__(self) -> int:
        return len(self.units)


@dataclass(frozen=True)
class UnitUpdate:
    """What one :meth:`IncrementalUnitEncoder.feed` (or ``flush``) produced.

    ``text`` is the piece appended to the stable token string (what the LM can prefill now);
    ``string_tokens`` the stable string's length in tokens after it.
    """

    hubert: StreamUnits
    pitch: StreamUnits | None
    style: StreamUnits | None
    text: str
    string_tokens: int
    audio_s: float

    def streams(self) -> dict[str, StreamUnits]:
        return {name: s for name, s in (("hubert", self.hubert), ("pitch", self.pitch), ("style", self.style)) if s is not None}

    def __bool__(self) -> bool:
        return bool(self.text) or any(len(s) for s in self.streams().values())


@dataclass
class StreamStats:
    passes: int = 0
    encoded_samples: int = 0
    wall_s: float = 0.0
    max_window_samples: int = 0


@dataclass
class EncoderStats:
    """Compute counters of one turn (provisional passes per stream, and the exact pass)."""

    turn_samples: int = 0
    streams: dict[str, StreamStats] = field(default_factory=dict)
    exact_samples: int = 0
    exact_wall_s: float = 0.0

    @property
    def turn_s(self) -> float:
        return self.turn_samples / SAMPLE_RATE

    def encoded_s(self, stream: str = "hubert") -> float:
        return self.streams[stream].encoded_samples / SAMPLE_RATE

    def overhead(self, stream: str = "hubert") -> float:
        """Seconds of audio the provisional passes of ``stream`` encoded per second of turn."""
        return self.streams[stream].encoded_samples / self.turn_samples if self.turn_samples else 0.0

    @property
    def provisional_wall_s(self) -> float:
        return sum(s.wall_s for s in self.streams.values())


@dataclass(frozen=True)
class FinalUnits:
    """Result of :meth:`IncrementalUnitEncoder.finish`.

    ``units`` is exactly ``tokenizer.encode_units(turn)``; ``first_divergence[stream]`` is the
    first index where the final units differ from the emitted ones (``len(emitted)`` if they
    agree); ``string_first_divergence`` is the number of leading tokens the stable string handed
    out so far shares with the final string: roll back ``rollback_tokens`` LM tokens, then
    append ``string`` from token ``string_first_divergence`` on.
    """

    units: Units
    string: str
    emitted: dict[str, list[int]]
    emitted_string: str
    first_divergence: dict[str, int]
    string_first_divergence: int
    string_tokens: int
    emitted_string_tokens: int
    audio_s: float
    stats: EncoderStats

    @property
    def final(self) -> dict[str, list[int]]:
        return {k: [int(v) for v in s.split()] for k, s in self.units.items()}

    @property
    def rollback_tokens(self) -> int:
        return self.emitted_string_tokens - self.string_first_divergence

    def tail_string(self) -> str:
        """The final string's tokens after the common prefix (what to append after rolling back)."""
        return "".join(split_string_tokens(self.string)[self.string_first_divergence:])


# -- one provisional stream ---------------------------------------------------------------------

@dataclass
class _Stream:
    name: str
    hop: int                     # samples per unit
    span: int                    # samples from a unit's start to the end of its receptive field
    step: int                    # units per provisional pass
    left: int                    # units of left context
    count: Callable[[int], int]  # units the encoder gives for a window of n samples
    encode: Callable[[torch.Tensor, "_Stream", int], list[int]]  # (window, stream, chunk unit at its start) -> units
    chunk: int = 0               # offline chunk the stream is in
    base: int = 0                # units of the previous chunks
    next: int = 0                # units emitted in this chunk
    stats: StreamStats = field(default_factory=StreamStats)

    def ready_end(self, n: int) -> int:
        """Samples (from the chunk start) after which units ``0..n-1`` are complete."""
        return (n - 1) * self.hop + self.span


# -- the encoder --------------------------------------------------------------------------------

class IncrementalUnitEncoder:
    """Provisional units while a turn is being spoken, exact units when it ends (see module doc).

    ``left_context_s``: audio before the next unit to emit that each window includes (rounded up
    to whole units of the stream). ``lookahead_s``: audio that must follow a unit's receptive
    field before it is emitted. ``step_s``: how much newly ready audio triggers a pass (rounded up
    to whole units of each stream, at least one). ``max_turn_s``: longest turn accepted. ``provisional_style``: emit
    windowed style units while speaking (expressive only).
    """

    def __init__(self, tokenizer: SpeechTokenizer, left_context_s: float = DEFAULT_LEFT_CONTEXT_S,
                 lookahead_s: float = DEFAULT_LOOKAHEAD_S, step_s: float = DEFAULT_STEP_S,
                 max_turn_s: float = DEFAULT_MAX_TURN_S, provisional_style: bool = True):
        for name, value, positive in (("left_context_s", left_context_s, False), ("lookahead_s", lookahead_s, False),
                                      ("step_s", step_s, True), ("max_turn_s", max_turn_s, True)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise InvalidArgumentError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
        self.tokenizer = tokenizer
        self.left_context_s, self.lookahead_s, self.step_s = float(left_context_s), float(lookahead_s), float(step_s)
        self.max_turn_s = float(max_turn_s)
        self.expressive = bool(tokenizer.expressive)
        self.provisional_style = bool(provisional_style) and self.expressive
        self.max_samples = int(round(self.max_turn_s * SAMPLE_RATE))
        self.lookahead = int(round(self.lookahead_s * SAMPLE_RATE))
        # The offline chunking, read when the encoder is made (tests may patch it).
        self.chunk_samples = int(_speech_tokenizer.MAX_CHUNK)
        self.min_chunk = int(_speech_tokenizer.MIN_CHUNK)
        self._streams_spec = self._make_specs()
        self.reset()

    # -- set-up --

    def _units(self, seconds: float, unit_samples: int, at_least: int) -> int:
        # round() first so that e.g. 0.2 s at 25 Hz is 5 units, not ceil(5.000000001) = 6
        return max(at_least, math.ceil(round(seconds * SAMPLE_RATE / unit_samples, 6)))

    def _make_specs(self) -> list[dict]:
        specs = []
        cfg = self.tokenizer.hubert.model.config
        kernels, strides = list(cfg.conv_kernel), list(cfg.conv_stride)
        layers = [(k, s, 0, 1) for k, s in zip(kernels, strides)]
        hop = int(np.prod(strides))
        specs.append(dict(name="hubert", hop=hop, span=_receptive_field(kernels, strides),
                          count=lambda n, layers=layers: _conv_frames(n, layers), encode=self._encode_hubert))
        if self.expressive:
            convs = [(m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0])
                     for m in self.tokenizer.pitch.quantizer.encoder.modules() if isinstance(m, nn.Conv1d)]
            f0_per_unit = int(np.prod([c[1] for c in convs]))
            specs.append(dict(name="pitch", hop=F0_HOP * f0_per_unit, span=F0_HOP * f0_per_unit,
                              count=lambda n, convs=convs: _conv_frames(n // F0_HOP + 1, convs), encode=self._encode_pitch))
            if self.provisional_style:
                scfg = self.tokenizer.style.model.config
                skernels, sstrides = list(scfg.conv_kernel), list(scfg.conv_stride)
                slayers = [(k, s, 0, 1) for k, s in zip(skernels, sstrides)]
                frame_hop = int(np.prod(sstrides))
                specs.append(dict(name="style", hop=POOL_FRAMES * frame_hop,
                                  span=(POOL_FRAMES - 1) * frame_hop + _receptive_field(skernels, sstrides),
                                  count=lambda n, slayers=slayers: -(-_conv_frames(n, slayers) // POOL_FRAMES),
                                  encode=self._encode_style))
        for spec in specs:
            spec["step"] = self._units(self.step_s, spec["hop"], 1)
            spec["left"] = self._units(self.left_context_s, spec["hop"], 0)
        return specs

    def reset(self) -> None:
        """Forget the turn: audio, emitted units, counters."""
        self._buf = np.zeros(min(self.max_samples, 10 * SAMPLE_RATE), dtype=np.float32)
        self._n = 0
        self._streams = [_Stream(**spec) for spec in self._streams_spec]
        self._emitted: dict[str, list[int]] = {s.name: [] for s in self._streams}
        if self.expressive and not self.provisional_style:
            self._emitted["style"] = []
        self._string = ""
        self._string_tokens = 0
        self._last_f0 = 0.0
        self._final: FinalUnits | None = None
        self.stats = EncoderStats(streams={s.name: s.stats for s in self._streams})

    # -- state --

    @property
    def audio_s(self) -> float:
        return self._n / SAMPLE_RATE

    @property
    def emitted(self) -> dict[str, list[int]]:
        """Provisional units emitted so far, per stream (copies)."""
        return {k: list(v) for k, v in self._emitted.items()}

    @property
    def emitted_string(self) -> str:
        """The stable token string handed out so far (concatenation of every update's ``text``)."""
        return self._string

    @property
    def geometry(self) -> dict[str, tuple[int, int]]:
        """Per provisional stream: (samples per unit, samples from a unit's start to the end of its
        receptive field); unit ``i`` of an offline chunk starts ``i * hop`` samples into it."""
        return {s.name: (s.hop, s.span) for s in self._streams}

    @property
    def finished(self) -> bool:
        return self._final is not None

    # -- feeding --

    def feed(self, samples: np.ndarray | torch.Tensor) -> UnitUpdate:
        """Append 16 kHz mono float samples to the turn; return the units that became ready."""
        self._check_open("feed")
        x = self._as_samples(samples)
        if self._n + len(x) > self.max_samples:
            raise AudioError(f"the turn would be {(self._n + len(x)) / SAMPLE_RATE:.2f} s long, more than max_turn_s="
                             f"{self.max_turn_s:g} s: call finish() (or reset()) before that, or raise max_turn_s")
        if len(self._buf) < self._n + len(x):
            grown = np.zeros(min(self.max_samples, max(2 * len(self._buf), self._n + len(x))), dtype=np.float32)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
        self._buf[self._n:self._n + len(x)] = x
        self._n += len(x)
        self.stats.turn_samples = self._n
        return self._advance_all(flush=False)

    def flush(self) -> UnitUpdate:
        """Emit every unit the audio so far covers, without waiting for lookahead (e.g. on a pause
        the agent wants to act on); later feeds continue after them. ``finish`` does not flush."""
        self._check_open("flush")
        return self._advance_all(flush=True)

    def finish(self) -> FinalUnits:
        """End the turn: encode it exactly as the offline stack does and compare with what was emitted.

        Calling it again returns the same result; :meth:`reset` starts a new turn.
        """
        if self._final is not None:
            return self._final
        if self._n < self.min_chunk:
            raise AudioError(f"the turn holds {self._n} samples ({self.audio_s * 1000:.0f} ms); at least {self.min_chunk} "
                             f"samples ({self.min_chunk / SAMPLE_RATE * 1000:.0f} ms) at {SAMPLE_RATE} Hz are needed to encode it")
        wav = torch.from_numpy(self._buf[:self._n].copy())
        started = time.perf_counter()
        units = self.tokenizer.encode_units(wav)  # AudioError for a turn with no voiced frame (expressive)
        self.stats.exact_wall_s = time.perf_counter() - started
        self.stats.exact_samples = self._n
        string = self.tokenizer.units_to_string(units)
        final = {k: [int(v) for v in s.split()] for k, s in units.items()}
        self._final = FinalUnits(
            units=units, string=string, emitted=self.emitted, emitted_string=self._string,
            first_divergence={k: common_prefix_len(self._emitted[k], final[k]) for k in final},
            string_first_divergence=common_prefix_tokens(self._string, string),
            string_tokens=len(split_string_tokens(string)), emitted_string_tokens=self._string_tokens,
            audio_s=self.audio_s, stats=self.stats)
        return self._final

    # -- internals --

    def _check_open(self, what: str) -> None:
        if self._final is not None:
            raise StreamStateError(f"cannot {what}: the turn was finished; call reset() to start a new one")

    @staticmethod
    def _as_samples(samples) -> np.ndarray:
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu().numpy()
        x = np.asarray(samples)
        if x.ndim != 1:
            raise AudioError(f"feed() takes mono samples as a 1-D array, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise AudioError(f"feed() takes float samples in [-1, 1], got dtype {x.dtype} (scale integer PCM first)")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise AudioError("audio contains NaN or infinite samples")
        return x

    def _advance_all(self, flush: bool) -> UnitUpdate:
        before = {s.name: len(self._emitted[s.name]) for s in self._streams}
        for stream in self._streams:
            self._advance(stream, flush)
        new = {s.name: StreamUnits(before[s.name], tuple(self._emitted[s.name][before[s.name]:])) for s in self._streams}
        text = ""
        if any(len(v) for v in new.values()):
            string = self._stable_string()
            assert string.startswith(self._string), "stable string must only grow at its end"
            text = string[len(self._string):]
            self._string = string
            self._string_tokens += len(split_string_tokens(text))
        return UnitUpdate(hubert=new["hubert"], pitch=new.get("pitch"),
                          style=new.get("style", StreamUnits(0) if self.expressive else None),
                          text=text, string_tokens=self._string_tokens, audio_s=self.audio_s)

    def _stable_string(self) -> str:
        names = [s.name for s in self._streams]
        horizon = min(len(self._emitted[n]) / TOKEN_RATES[n] for n in names)
        units = {}
        for n in names:
            k = _count_before(len(self._emitted[n]), TOKEN_RATES[n], horizon)
            units[n] = " ".join(str(u) for u in self._emitted[n][:k])
        return units_to_string(units, with_pitch="pitch" in units, with_style="style" in units)

    def _advance(self, s: _Stream, flush: bool) -> None:
        while True:
            c0 = s.chunk * self.chunk_samples
            avail = min(self._n, c0 + self.chunk_samples) - c0
            if avail <= 0:
                return
            complete = self._n >= c0 + self.chunk_samples
            if complete or flush:
                # End of an offline chunk (or forced): emit the rest with the lookahead there is.
                if avail >= self.min_chunk and s.count(avail) > s.next:
                    self._run(s, c0, avail, None)
                if not complete:
                    return
                s.base += s.next
                s.chunk, s.next = s.chunk + 1, 0
                continue
            target = s.next + s.step
            need = max(self.min_chunk, s.ready_end(target) + self.lookahead)
            if need > avail or not self._run(s, c0, need, target):
                return

    def _run(self, s: _Stream, c0: int, end: int, upto: int | None) -> bool:
        """Encode chunk samples ``[w0 * hop, end)`` and emit units ``s.next .. upto`` (all if None)."""
        w0 = max(0, s.next - s.left)
        while w0 > 0 and end - w0 * s.hop < self.min_chunk:
            w0 -= 1
        a, b = c0 + w0 * s.hop, c0 + end
        window = torch.from_numpy(self._buf[a:b].copy())
        started = time.perf_counter()
        units = s.encode(window, s, w0)
        s.stats.wall_s += time.perf_counter() - started
        s.stats.passes += 1
        s.stats.encoded_samples += b - a
        s.stats.max_window_samples = max(s.stats.max_window_samples, b - a)
        new = units[s.next - w0: None if upto is None else upto - w0]
        self._emitted[s.name].extend(new)
        s.next += len(new)
        return bool(new)

    # per-stream window encoders: (window, stream, index in the chunk of the window's first unit) -> units

    @torch.inference_mode()
    def _encode_hubert(self, window: torch.Tensor, s: _Stream, w0: int) -> list[int]:
        hubert = self.tokenizer.hubert
        features = hubert.features(window)
        q = hubert.quantizer
        if not isinstance(q, LinearQuantizer):
            return [int(u) for u in q(features).cpu().tolist()]
        raw = F.log_softmax(q.encoder(features), dim=-1).argmax(dim=-1).cpu().tolist()
        carry = self._emitted["hubert"][s.base + w0 - 1] if w0 > 0 else None
        return _fill_blanks_from(raw, q.vocab_size, carry)

    def _encode_pitch(self, window: torch.Tensor, s: _Stream, w0: int) -> list[int]:
        pitch = self.tokenizer.pitch
        try:
            f0, vuv = pitch.extractor(window)
        except IndexError:
            # torchfcpe cannot interpolate F0 over a window without a voiced frame (a pause):
            # hold the last voiced F0 (zero when the quantizer normalises F0), all unvoiced.
            frames = len(window) // F0_HOP + 1
            level = 0.0 if pitch.quantizer.normalize else self._last_f0
            f0, vuv = np.full(frames, level, dtype=np.float32), np.zeros(frames, dtype=np.float32)
        else:
            voiced = np.flatnonzero(np.asarray(vuv) > 0.5)
            if len(voiced):
                self._last_f0 = float(np.asarray(f0)[voiced[-1]])
        return [int(u) for u in pitch.quantizer(f0, vuv).tolist()]

    def _encode_style(self, window: torch.Tensor, s: _Stream, w0: int) -> list[int]:
        return [int(u) for u in self.tokenizer.style(window).tolist()]
