"""Turn detection on the 16 kHz input stream: webrtcvad frames -> speech started/stopped events.

Pure state object: :meth:`TurnDetector.feed` takes 16 kHz float32 chunks of any size and
returns the events they complete. Audio is cut into a fixed frame grid (10/20/30 ms)
that starts at the stream's first sample, and partial frames are buffered, so the events
are identical however the audio was chunked.

Semantics (mirroring the OpenAI Realtime ``server_vad`` events):

* **Voiced frames.** A frame is voiced when webrtcvad says so *and* its RMS is at least
  ``min_level_dbfs`` (default -50 dBFS; None disables the gate). webrtcvad normalises
  level away and, after digital silence, calls faint noise speech for seconds (measured
  with -65..-45 dBFS white noise appearing in the gaps after clean speech); the gate fixes
  that and also trims webrtcvad's near-silent hangover frames at the end of speech.
* **Start.** A turn starts at the first frame where the voiced frames among the last
  ``window_ms`` of audio reach
  ``frames_needed = max(1, ceil(threshold * W), ceil(min_speech_ms / frame_ms))``, with
  ``W = ceil(window_ms / frame_ms)`` the window length in frames. So ``threshold`` (0..1,
  like ``server_vad``'s) is the fraction of recent frames that must be speech: higher means
  more sustained speech is needed, 0 means any single voiced frame. ``min_speech_ms`` is
  the voiced duration (within the window) needed to start; it rejects short blips
  (webrtcvad's hangover, when noise is above the level gate, stretches a 100 ms blip to
  ~200 ms of voiced frames, which the default 0.5 x 300 ms accepts: measured; use >= 250 ms).
  :class:`SpeechStarted` ``.sample`` is ``audio_start``: the start of the earliest voiced
  frame in that window (``.speech_start``) minus ``prefix_padding_ms``, never below 0 nor
  below the previous turn's :class:`SpeechStopped` ``.sample``, so turns never overlap.
* **Stop.** During a turn, a voiced frame counts as speech (moves ``speech_end`` to its
  end) only if at least ``frames_to_continue = max(1, ceil(threshold * W))`` of the last
  ``W`` frames are voiced: isolated voiced frames in the silence after speech (noise) do
  not extend the turn. The turn stops at the first *unvoiced* frame ending at least
  ``silence_duration_ms`` (rounded up to whole frames) after ``speech_end``.
  :class:`SpeechStopped` ``.sample`` is ``audio_end``, the end of that frame: normally
  exactly ``speech_end + ceil(silence_duration_ms / frame_ms)`` frames, a frame or more
  later only if voiced-but-unconfirmed frames sit exactly where the silence elapses (so
  speech that resumes just as the silence runs out is not cut). This is what the Realtime
  API documents for ``audio_end_ms`` ("includes the min_silence_duration_ms"), and it is
  the moment of the decision, so the audio up to it has been seen. ``.speech_end`` is the
  end of the last speech frame, for callers that want the turn without trailing silence.
* **flush()** ends the stream: an ongoing turn stops at the last sample fed
  (``sample = samples_fed``); a trailing partial frame is not classified. Offsets keep
  counting after a flush, on a frame grid restarting there; ``reset()`` zeroes them.

Memory is bounded: one partial frame, at most ``W`` window entries, and a webrtcvad state
of fixed size; a turn may last forever without anything growing.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from agent.spiritlm.errors import InvalidArgumentError

from .audio import SAMPLE_RATE, as_float_samples, float_to_int16

__all__ = ["SpeechStarted", "SpeechStopped", "VadEvent", "TurnDetector", "FRAME_MS_CHOICES"]

FRAME_MS_CHOICES = (10, 20, 30)  # the only frame lengths webrtcvad accepts


@dataclass(frozen=True)
class SpeechStarted:
    """A turn began. Offsets are 16 kHz sample indices from the start of the stream."""

    sample: int  # audio_start: earliest voiced frame in the trigger window - prefix padding (clamped)
    speech_start: int  # start of that voiced frame, without padding
    detected_at: int  # end of the frame at which the start was decided (latency = detected_at - speech_start)

    @property
    def ms(self) -> int:
        """``sample`` in whole ms (floor): the Realtime API's ``audio_start_ms``."""
        return self.sample * 1000 // SAMPLE_RATE


@dataclass(frozen=True)
class SpeechStopped:
    """A turn ended. ``sample`` is also where it was decided (end of the silence)."""

    sample: int  # audio_end: end of the frame completing silence_duration_ms of silence; at flush, end of stream
    speech_end: int  # end of the turn's last speech frame (voiced, in a window dense enough to count)

    @property
    def ms(self) -> int:
        """``sample`` in whole ms (floor): the Realtime API's ``audio_end_ms``."""
        return self.sample * 1000 // SAMPLE_RATE


VadEvent = SpeechStarted | SpeechStopped


def _check_number(name: str, value, low: float, high: float | None = None, integer: bool = False) -> None:
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise InvalidArgumentError(f"{name} must be {kind}, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidArgumentError(f"{name} must be {bound}, got {value!r}")


class TurnDetector:
    """Streaming speech start/stop detection for the 16 kHz input stream (see module doc)."""

    def __init__(
        self,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        threshold: float = 0.5,
        silence_duration_ms: float = 500,
        prefix_padding_ms: float = 300,
        min_speech_ms: float = 0,
        window_ms: float = 300,
        min_level_dbfs: float | None = -50.0,
    ) -> None:
        _check_number("aggressiveness", aggressiveness, 0, 3, integer=True)
        if frame_ms not in FRAME_MS_CHOICES or isinstance(frame_ms, bool):
            raise InvalidArgumentError(f"frame_ms must be one of {FRAME_MS_CHOICES} (webrtcvad's frame sizes), got {frame_ms!r}")
        _check_number("threshold", threshold, 0.0, 1.0)
        _check_number("silence_duration_ms", silence_duration_ms, 0.0)
        if silence_duration_ms <= 0:
            raise InvalidArgumentError("silence_duration_ms must be > 0: a turn cannot end without any silence")
        _check_number("prefix_padding_ms", prefix_padding_ms, 0.0)
        _check_number("min_speech_ms", min_speech_ms, 0.0)
        _check_number("window_ms", window_ms, frame_ms)
        if min_level_dbfs is not None:
            _check_number("min_level_dbfs", min_level_dbfs, -120.0, 0.0)
        if min_speech_ms > window_ms:
            raise InvalidArgumentError(
                f"min_speech_ms ({min_speech_ms}) cannot exceed window_ms ({window_ms}): voiced frames are "
                "counted within the window, so raise window_ms too"
            )
        self.aggressiveness = int(aggressiveness)
        self.frame_ms = int(frame_ms)
        self.threshold = float(threshold)
        self.silence_duration_ms = float(silence_duration_ms)
        self.prefix_padding_ms = float(prefix_padding_ms)
        self.min_speech_ms = float(min_speech_ms)
        self.window_ms = float(window_ms)
        self.min_level_dbfs = None if min_level_dbfs is None else float(min_level_dbfs)

        eps = 1e-9  # so that e.g. 0.3 * 10 frames is 3, not 4
        self.frame_len = SAMPLE_RATE * self.frame_ms // 1000
        self.window_frames = math.ceil(self.window_ms / self.frame_ms - eps)
        self.frames_needed = max(
            1,
            math.ceil(self.threshold * self.window_frames - eps),
            math.ceil(self.min_speech_ms / self.frame_ms - eps),
        )
        self.frames_to_continue = max(1, math.ceil(self.threshold * self.window_frames - eps))
        self.silence_frames = max(1, math.ceil(self.silence_duration_ms / self.frame_ms - eps))
        self.prefix_padding = round(self.prefix_padding_ms * SAMPLE_RATE / 1000)
        # Sum of squared int16 samples a frame needs to be at min_level_dbfs (RMS re full scale).
        self._min_energy = (
            0.0 if self.min_level_dbfs is None
            else self.frame_len * (32768.0 * 10 ** (self.min_level_dbfs / 20)) ** 2
        )
        self._partial = np.zeros(self.frame_len, np.int16)
        self.reset()

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything, including the stream offset (next sample fed is sample 0)."""
        self.samples_fed = 0
        self._floor = 0  # starts may not be padded below this (previous stop / stream restart)
        self._restart()

    def _restart(self) -> None:
        # Fresh webrtcvad too: it adapts its noise model, so reusing it would make the
        # next stream's decisions depend on the previous one.
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._partial_len = 0
        self._frame_start = self.samples_fed  # stream offset of the (partial) frame being filled
        self._voiced: deque[int] = deque()  # starts of the voiced frames in the last window_frames frames
        self._in_speech = False
        self._last_voiced_end = 0

    @property
    def in_speech(self) -> bool:
        """Whether a turn is ongoing (started and not yet stopped)."""
        return self._in_speech

    # -- processing ----------------------------------------------------------------------
    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Add 16 kHz float32 samples (any length); return the events completed by them, in order.

        Bad input (not 1-D float, NaN/inf) raises AudioError and changes nothing.
        """
        pcm = float_to_int16(as_float_samples(samples, "VAD input"))
        events: list[VadEvent] = []
        n, pos, F = pcm.size, 0, self.frame_len
        if self._partial_len:
            take = min(F - self._partial_len, n)
            self._partial[self._partial_len:self._partial_len + take] = pcm[:take]
            self._partial_len += take
            pos = take
            if self._partial_len == F:
                self._frame(self._partial, events)
                self._partial_len = 0
        while n - pos >= F:
            self._frame(pcm[pos:pos + F], events)
            pos += F
        if pos < n:
            rest = n - pos
            self._partial[:rest] = pcm[pos:]
            self._partial_len = rest
        self.samples_fed += n
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: stop an ongoing turn at the last sample fed; drop the partial frame.

        The detector is then ready for a new stream whose offsets continue from here.
        """
        events: list[VadEvent] = []
        if self._in_speech:
            events.append(SpeechStopped(self.samples_fed, self._last_voiced_end))
        self._floor = self.samples_fed
        self._restart()
        return events

    def _frame(self, frame: np.ndarray, events: list[VadEvent]) -> None:
        start = self._frame_start
        end = start + self.frame_len
        self._frame_start = end
        # webrtcvad always sees every frame, so its adaptive state does not depend on the gate.
        voiced = self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)
        if voiced and self._min_energy:
            f = frame.astype(np.float64)
            voiced = float(f @ f) >= self._min_energy
        window_start = end - self.window_frames * self.frame_len
        if voiced:
            self._voiced.append(start)
        while self._voiced and self._voiced[0] < window_start:
            self._voiced.popleft()
        if not self._in_speech:
            if voiced and len(self._voiced) >= self.frames_needed:
                first = self._voiced[0]
                events.append(SpeechStarted(max(self._floor, first - self.prefix_padding), first, end))
                self._in_speech = True
                self._last_voiced_end = end
        elif voiced and len(self._voiced) >= self.frames_to_continue:
            self._last_voiced_end = end
        elif not voiced and end - self._last_voiced_end >= self.silence_frames * self.frame_len:
            events.append(SpeechStopped(end, self._last_voiced_end))
            self._in_speech = False
            self._floor = end
            self._voiced.clear()
