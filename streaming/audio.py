"""Streaming audio plumbing: client audio <-> 16 kHz float32, and a bounded sample FIFO.

Everything here is a pure state object (no I/O, no threads): ``feed`` a chunk, get what
can be produced now; ``flush`` at end of stream for the tail; ``reset`` to start over.

Conventions, shared with the offline stack (:mod:`agent.spiritlm.audio`):

* float audio is float32 in [-1, 1); PCM16 is little-endian int16;
* PCM16 -> float divides by 32768 (as soundfile/torchaudio do on read);
* float -> PCM16 clips to [-1, 1], multiplies by 32768, rounds to nearest (ties to
  even) and saturates at 32767. This is the exact inverse of the read convention, so a
  PCM16 stream decoded and re-encoded at the same rate comes back bit-identical; the
  only asymmetry is that +1.0 maps to 32767 (int16 cannot hold +32768).

Sample offsets: :class:`InputConverter` counts the 16 kHz samples it has produced
(``samples_out``); the VAD and the unit extractor index the 16 kHz stream with these.
Counters keep running across ``flush`` (a flush ends one stream and the next one
continues the same timeline, like the Realtime API's session-wide ``audio_*_ms``);
``reset`` zeroes them.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

from agent.spiritlm.audio import SAMPLE_RATE
from agent.spiritlm.errors import AudioError, InvalidArgumentError

__all__ = [
    "MIN_CLIENT_RATE",
    "MAX_CLIENT_RATE",
    "SAMPLE_RATE",
    "BufferOverflowError",
    "InputConverter",
    "OutputConverter",
    "SampleFifo",
    "check_rate",
    "float_to_int16",
    "float_to_pcm16",
    "pcm16_to_float",
    "as_float_samples",
    "ms_to_samples",
    "samples_to_ms",
]

MIN_CLIENT_RATE = 8_000
MAX_CLIENT_RATE = 48_000
_QUALITY = "HQ"  # same preset as the offline ``resample``, so streaming == offline output

BytesLike = bytes | bytearray | memoryview


class BufferOverflowError(AudioError):
    """A push would make a :class:`SampleFifo` exceed its bound; nothing was pushed."""


def check_rate(rate: int) -> int:
    """Validate a client sample rate (8-48 kHz, integer Hz) and return it as ``int``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise AudioError(f"sample rate must be an integer number of Hz, got {rate!r}")
    if not MIN_CLIENT_RATE <= rate <= MAX_CLIENT_RATE:
        raise AudioError(f"sample rate {rate} Hz is not supported: use {MIN_CLIENT_RATE}-{MAX_CLIENT_RATE} Hz")
    return int(rate)


def pcm16_to_float(data: BytesLike) -> np.ndarray:
    """Little-endian PCM16 bytes -> float32 samples (int16 / 32768).

    An odd byte count is rejected instead of carrying a half sample to the next chunk:
    clients send whole samples, and silently re-aligning would turn every following
    sample into noise.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(f"PCM16 audio must be bytes, got {type(data).__name__}")
    nbytes = memoryview(data).nbytes
    if nbytes % 2:
        raise AudioError(
            f"PCM16 chunk has an odd number of bytes ({nbytes}): each sample is 2 bytes, "
            "so the chunk was cut inside a sample; the chunk was rejected and nothing of it was used"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples -> int16 array (clip to [-1, 1], x * 32768, round half to even, saturate)."""
    x = as_float_samples(samples)
    scaled = np.rint(np.clip(x, -1.0, 1.0) * np.float32(32768.0))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples -> little-endian PCM16 bytes, scaled as :func:`float_to_int16`."""
    return float_to_int16(samples).astype("<i2", copy=False).tobytes()


def as_float_samples(samples: np.ndarray, what: str = "audio chunk") -> np.ndarray:
    """Validate a 1-D finite float array and return it as contiguous float32 (no copy if already)."""
    if not isinstance(samples, np.ndarray):
        raise AudioError(f"{what} must be a 1-D float numpy array or PCM16 bytes, got {type(samples).__name__}")
    if samples.ndim != 1:
        raise AudioError(f"{what} must be 1-D (mono samples), got shape {samples.shape}")
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(
            f"{what} has dtype {samples.dtype}; float arrays are expected (pass integer PCM16 as bytes)"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, rejected below
        x = np.ascontiguousarray(samples, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        raise AudioError(f"{what} contains NaN or infinite samples")
    return x


def _as_input_samples(chunk: BytesLike | np.ndarray) -> np.ndarray:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return pcm16_to_float(chunk)
    return as_float_samples(chunk)


class _Resampler:
    """Streaming soxr resampler, or identity when the rates match; restartable."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in, self.rate_out = rate_in, rate_out
        self._stream: soxr.ResampleStream | None = None
        self._new_stream()

    def _new_stream(self) -> None:
        # A fresh object rather than ``clear()``: guarantees the next stream starts from the
        # same state as the very first one.
        if self.rate_in != self.rate_out:
            self._stream = soxr.ResampleStream(self.rate_in, self.rate_out, 1, dtype="float32", quality=_QUALITY)

    def process(self, x: np.ndarray) -> np.ndarray:
        if self._stream is None or x.size == 0:
            return x.copy() if self._stream is None else np.zeros(0, np.float32)
        return self._stream.resample_chunk(x)

    def finish(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self._new_stream()
        return tail

    def reset(self) -> None:
        self._new_stream()


class InputConverter:
    """Client audio (PCM16 bytes or float32, 8-48 kHz, any chunk size) -> 16 kHz float32.

    The soxr filter state is kept across chunks, so the concatenated output does not
    depend on how the input was chunked and equals ``soxr.resample`` of the whole signal
    (measured bit-identical for soxr 1.x, HQ; see tests). soxr has a group delay, so
    output lags input by a few ms until :meth:`flush` drains the tail.

    Memory: the persistent state is soxr's fixed-size filter state; each call allocates
    only O(chunk) temporaries. Nothing grows with the length of the stream.
    """

    def __init__(self, rate: int) -> None:
        self.rate = check_rate(rate)
        self._resampler = _Resampler(self.rate, SAMPLE_RATE)
        self.samples_in = 0  # client-rate samples accepted so far
        self.samples_out = 0  # 16 kHz samples returned so far: the offset of the next one

    def feed(self, chunk: BytesLike | np.ndarray) -> np.ndarray:
        """Convert one chunk; returns the 16 kHz samples available now (maybe none).

        A rejected chunk (odd PCM16 length, NaN, wrong shape/dtype) raises
        :class:`AudioError` and leaves the state untouched, so the stream can go on.
        """
        x = _as_input_samples(chunk)
        out = self._resampler.process(x)
        self.samples_in += x.size
        self.samples_out += out.size
        return out

    def flush(self) -> np.ndarray:
        """End of input: return the resampler's tail. Later feeds start a new stream
        whose offsets continue after this one."""
        tail = self._resampler.finish()
        self.samples_out += tail.size
        return tail

    def reset(self) -> None:
        """Drop buffered audio and zero the counters."""
        self._resampler.reset()
        self.samples_in = self.samples_out = 0


class OutputConverter:
    """16 kHz float32 (model/vocoder output) -> client rate, as float32 or PCM16 bytes.

    ``feed``/``flush`` return float (not clipped: resampling may overshoot +-1 slightly);
    ``feed_pcm16``/``flush_pcm16`` return PCM16 bytes via :func:`float_to_pcm16`, which
    clips. Both can be mixed on one stream: the PCM16 conversion is per sample.
    Memory is bounded exactly as in :class:`InputConverter`.
    """

    def __init__(self, rate: int) -> None:
        self.rate = check_rate(rate)
        self._resampler = _Resampler(SAMPLE_RATE, self.rate)
        self.samples_in = 0  # 16 kHz samples accepted
        self.samples_out = 0  # client-rate samples returned

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Resample a 16 kHz float chunk; returns client-rate float32 available now."""
        x = as_float_samples(samples)
        out = self._resampler.process(x)
        self.samples_in += x.size
        self.samples_out += out.size
        return out

    def feed_pcm16(self, samples: np.ndarray) -> bytes:
        """As :meth:`feed`, encoded as PCM16 little-endian bytes."""
        return float_to_pcm16(self.feed(samples))

    def flush(self) -> np.ndarray:
        """End of output stream: the resampler's tail (float). Counters keep running."""
        tail = self._resampler.finish()
        self.samples_out += tail.size
        return tail

    def flush_pcm16(self) -> bytes:
        """As :meth:`flush`, encoded as PCM16 bytes."""
        return float_to_pcm16(self.flush())

    def reset(self) -> None:
        """Drop buffered audio (e.g. on barge-in) and zero the counters."""
        self._resampler.reset()
        self.samples_in = self.samples_out = 0

    def duration_ms(self) -> float:
        """Milliseconds of client audio produced so far (for truncation / audio_end_ms)."""
        return 1000.0 * self.samples_out / self.rate


class SampleFifo:
    """Bounded first-in-first-out queue of float32 samples (a preallocated ring buffer).

    Memory is fixed at ``4 * max_samples`` bytes whatever the push pattern (the
    buffer is allocated with ``np.zeros``, so untouched pages cost nothing on Linux).
    At the bound, :meth:`push` raises :class:`BufferOverflowError` and pushes nothing:
    the caller decides whether to drop, read, or fail the session.

    ``pushed``/``popped`` count samples ever pushed/read, so ``popped`` is the stream
    offset of the next sample :meth:`read` returns.
    """

    def __init__(self, max_samples: int) -> None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
            raise InvalidArgumentError(f"max_samples must be a positive integer, got {max_samples!r}")
        self.max_samples = int(max_samples)
        self._buf = np.zeros(self.max_samples, np.float32)
        self._head = 0  # index of the oldest sample
        self._size = 0
        self.pushed = 0
        self.popped = 0

    def __len__(self) -> int:
        return self._size

    @property
    def free(self) -> int:
        """How many samples can still be pushed."""
        return self.max_samples - self._size

    def push(self, samples: np.ndarray) -> None:
        """Append samples (copied). Raises BufferOverflowError if they do not all fit."""
        x = as_float_samples(samples)
        n = x.size
        if n > self.free:
            raise BufferOverflowError(
                f"sample FIFO overflow: pushing {n} samples onto {self._size} of at most "
                f"{self.max_samples}; nothing was pushed (read faster or raise the bound)"
            )
        tail = (self._head + self._size) % self.max_samples
        first = min(n, self.max_samples - tail)
        self._buf[tail:tail + first] = x[:first]
        self._buf[:n - first] = x[first:]
        self._size += n
        self.pushed += n

    def read(self, n: int) -> np.ndarray:
        """Remove and return the oldest ``min(n, len(self))`` samples (a new array)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidArgumentError(f"read size must be a non-negative integer, got {n!r}")
        n = min(int(n), self._size)
        first = min(n, self.max_samples - self._head)
        out = np.concatenate([self._buf[self._head:self._head + first], self._buf[:n - first]])
        self._head = (self._head + n) % self.max_samples
        self._size -= n
        self.popped += n
        return out

    def read_all(self) -> np.ndarray:
        """Remove and return everything buffered."""
        return self.read(self._size)

    def clear(self) -> None:
        """Drop buffered samples; counters advance as if they had been read."""
        self.popped += self._size
        self._head = self._size = 0

    def reset(self) -> None:
        """Empty the FIFO and zero the counters."""
        self._head = self._size = 0
        self.pushed = self.popped = 0


def samples_to_ms(samples: int, rate: int = SAMPLE_RATE) -> int:
    """Sample offset -> whole milliseconds (floor), for the Realtime API's ``*_ms`` fields."""
    return (int(samples) * 1000) // int(rate)


def ms_to_samples(ms: float, rate: int = SAMPLE_RATE) -> int:
    """Milliseconds -> samples, rounded up so a duration is never shortened."""
    return math.ceil(ms * rate / 1000 - 1e-9)
