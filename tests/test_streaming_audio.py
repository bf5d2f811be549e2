"""Streaming audio plumbing: client rate <-> 16 kHz, PCM16 conversion, bounded FIFO."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.spiritlm.audio import resample
from agent.spiritlm.errors import AudioError, InvalidArgumentError
from streaming.audio import (
    BufferOverflowError,
    InputConverter,
    OutputConverter,
    SampleFifo,
    check_rate,
    float_to_int16,
    float_to_pcm16,
    ms_to_samples,
    pcm16_to_float,
    samples_to_ms,
)

CLIENT_RATES = (8000, 22050, 44100, 48000)


def _signal(rate: int, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    """Band-limited tones + a little noise, peak < 1, as float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1375 * t + 1.0) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _pcm(rate: int, seconds: float = 0.5, seed: int = 0) -> bytes:
    return float_to_pcm16(_signal(rate, seconds, seed))


def _chunk_sizes(total: int, seed: int, low: int, high: int) -> list[int]:
    """Random chunk sizes in [low, high] covering ``total``, with empty chunks sprinkled in."""
    rng = np.random.default_rng(seed)
    sizes, done = [], 0
    while done < total:
        n = int(rng.integers(low, high + 1))
        if rng.random() < 0.05:
            sizes.append(0)
        sizes.append(min(n, total - done))
        done += sizes[-1]
    return sizes


def _stream_in(rate: int, data: bytes | np.ndarray, sizes: list[int]) -> np.ndarray:
    """Feed ``data`` (PCM16 bytes or float samples) in chunks of ``sizes`` samples, then flush."""
    conv, out, pos = InputConverter(rate), [], 0
    step = 2 if isinstance(data, bytes) else 1
    for n in sizes:
        out.append(conv.feed(data[pos * step:(pos + n) * step]))
        pos += n
    out.append(conv.flush())
    y = np.concatenate(out)
    assert conv.samples_out == y.size and y.dtype == np.float32
    return y


# -- rates and input validation -----------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, np.int64(24000)])
def test_supported_rates(rate):
    assert check_rate(rate) == int(rate)
    InputConverter(rate), OutputConverter(rate)


@pytest.mark.parametrize("rate", [7999, 48001, 0, -16000, 16000.0, "16000", True, None])
def test_unsupported_rates_are_rejected(rate):
    with pytest.raises(AudioError, match="sample rate"):
        InputConverter(rate)
    with pytest.raises(AudioError, match="sample rate"):
        OutputConverter(rate)


def test_pcm16_decoding_convention():
    raw = np.array([0, 1, -1, 16384, -32768, 32767], "<i2").tobytes()
    x = pcm16_to_float(raw)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.array([0, 1, -1, 16384, -32768, 32767], np.float32) / 32768)
    # same as soundfile reading the bytes as raw PCM16
    ref, _ = sf.read(io.BytesIO(raw), samplerate=16000, channels=1, format="RAW", subtype="PCM_16",
                     endian="LITTLE", dtype="float32")
    np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(pcm16_to_float(bytearray(raw)), x)
    np.testing.assert_array_equal(pcm16_to_float(memoryview(raw)), x)


def test_odd_byte_chunk_is_rejected_and_leaves_state_untouched():
    data = _pcm(22050)
    clean = InputConverter(22050)
    expect = np.concatenate([clean.feed(data[:1000]), clean.feed(data[1000:]), clean.flush()])
    conv = InputConverter(22050)
    first = conv.feed(data[:1000])
    with pytest.raises(AudioError, match="odd number of bytes"):
        conv.feed(data[1000:1001])
    assert conv.samples_in == 500
    rest = conv.feed(data[1000:])
    np.testing.assert_array_equal(np.concatenate([first, rest, conv.flush()]), expect)


@pytest.mark.parametrize(
    "chunk, message",
    [
        (np.array([0.0, np.nan], np.float32), "NaN or infinite"),
        (np.array([np.inf], np.float64), "NaN or infinite"),
        (np.array([1e300]), "NaN or infinite"),  # overflows float32
        (np.zeros((2, 10), np.float32), "1-D"),
        (np.zeros(10, np.int16), "dtype int16"),
        ([0.0, 0.1], "numpy array"),
        ("abc", "numpy array"),
    ],
)
def test_bad_chunks_are_rejected(chunk, message):
    for conv in (InputConverter(16000), InputConverter(44100)):
        with pytest.raises(AudioError, match=message):
            conv.feed(chunk)
        assert conv.samples_in == conv.samples_out == 0
    with pytest.raises(AudioError, match=message):
        OutputConverter(24000).feed(chunk)


def test_empty_chunks_produce_nothing():
    for rate in (16000, 48000):
        conv = InputConverter(rate)
        for empty in (b"", bytearray(), np.zeros(0, np.float32), np.zeros(0, np.float64)):
            out = conv.feed(empty)
            assert out.dtype == np.float32 and out.size == 0
        assert conv.samples_in == conv.samples_out == 0
        assert conv.flush().size == 0
    assert OutputConverter(24000).feed_pcm16(np.zeros(0, np.float32)) == b""


# -- input resampling: streaming == one-shot, chunk invariance ----------------------------

@pytest.mark.parametrize("rate", CLIENT_RATES)
def test_pcm16_stream_equals_one_shot_soxr(rate):
    data = _pcm(rate)
    whole = pcm16_to_float(data)
    one_shot = soxr.resample(whole, rate, 16000, quality="HQ")
    streamed = _stream_in(rate, data, _chunk_sizes(whole.size, seed=rate, low=1, high=rate // 10))
    # Measured: soxr's ResampleStream reproduces soxr.resample bit for bit (max abs diff 0.0),
    # including the length, for every chunking tried.
    assert streamed.size == one_shot.size == round(whole.size * 16000 / rate)
    np.testing.assert_array_equal(streamed, one_shot)
    np.testing.assert_array_equal(streamed, resample(whole[None], rate, 16000)[0])  # the offline path


@pytest.mark.parametrize("rate", (8000, 44100))
def test_one_sample_chunks(rate):
    data = _pcm(rate, seconds=0.2)
    whole = pcm16_to_float(data)
    streamed = _stream_in(rate, data, [1] * whole.size)
    np.testing.assert_array_equal(streamed, soxr.resample(whole, rate, 16000, quality="HQ"))


@settings(max_examples=25, deadline=None)
@given(rate=st.sampled_from(CLIENT_RATES), seed=st.integers(0, 2**32 - 1), high=st.integers(1, 5000),
       as_bytes=st.booleans())
def test_chunking_does_not_change_the_output(rate, seed, high, as_bytes):
    data = _pcm(rate, seconds=0.3)
    whole = pcm16_to_float(data)
    reference = _stream_in(rate, whole, [whole.size])
    streamed = _stream_in(rate, data if as_bytes else whole, _chunk_sizes(whole.size, seed, 1, high))
    np.testing.assert_array_equal(streamed, reference)


def test_16k_input_is_passed_through():
    data = _pcm(16000)
    conv = InputConverter(16000)
    out = conv.feed(data)
    np.testing.assert_array_equal(out, pcm16_to_float(data))
    assert conv.flush().size == 0
    x = np.linspace(-1, 1, 7, dtype=np.float64)
    y = conv.feed(x)
    assert y.dtype == np.float32 and np.array_equal(y, x.astype(np.float32))
    y[0] = 5.0
    assert x[0] == -1.0  # output never aliases the caller's array


def test_counters_continue_across_flush_and_reset_zeroes_them():
    data = _pcm(48000, seconds=0.25)
    conv = InputConverter(48000)
    first = np.concatenate([conv.feed(data), conv.flush()])
    assert conv.samples_in == 12000 and conv.samples_out == first.size == 4000
    second = np.concatenate([conv.feed(data), conv.flush()])
    np.testing.assert_array_equal(first, second)  # a new stream starts from a clean filter state
    assert conv.samples_in == 24000 and conv.samples_out == 8000
    conv.feed(data[:1000])
    conv.reset()
    assert conv.samples_in == conv.samples_out == 0
    np.testing.assert_array_equal(np.concatenate([conv.feed(data), conv.flush()]), first)


# -- output: 16 kHz float -> client rate, PCM16 ------------------------------------------

def test_float_to_pcm16_scaling_clipping_and_rounding():
    x = np.array([0.0, 1.0, -1.0, 0.5, 1.5, -2.0, 1 / 32768, 0.4 / 32768, 1.5 / 32768, 2.5 / 32768, 32767.6 / 32768],
                 np.float32)
    expect = np.array([0, 32767, -32768, 16384, 32767, -32768, 1, 0, 2, 2, 32767], np.int16)
    np.testing.assert_array_equal(float_to_int16(x), expect)
    raw = float_to_pcm16(x)
    assert raw[:4] == b"\x00\x00\xff\x7f" and len(raw) == 2 * x.size  # little-endian
    np.testing.assert_array_equal(np.frombuffer(raw, "<i2"), expect)


def test_pcm16_round_trip_and_soundfile_agree():
    ints = np.random.default_rng(0).integers(-32768, 32768, 5000).astype("<i2")
    assert float_to_pcm16(pcm16_to_float(ints.tobytes())) == ints.tobytes()  # bit-exact round trip
    x = np.random.default_rng(1).uniform(-1.3, 1.3, 5000).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="RAW", subtype="PCM_16", endian="LITTLE")
    theirs, ours = np.frombuffer(buf.getvalue(), "<i2").astype(int), float_to_int16(x).astype(int)
    # Same scale (32768) and saturation as libsndfile's PCM16 writer; libsndfile 1.x floors
    # (measured) where we round to nearest, so the two differ by at most one LSB.
    assert np.abs(theirs - ours).max() <= 1
    assert theirs[x >= 1].min() == ours[x >= 1].min() == 32767 and theirs[x <= -1].max() == ours[x <= -1].max() == -32768


@pytest.mark.parametrize("rate", (24000, 16000, 48000, 8000))
def test_output_stream_matches_one_shot_and_is_chunk_invariant(rate):
    x = _signal(16000, seconds=0.5, seed=3) * 2.2  # overdriven: clipping must happen in PCM16 only
    one_shot = soxr.resample(x, 16000, rate, quality="HQ") if rate != 16000 else x
    for seed in range(3):
        conv, floats, pcm, pos = OutputConverter(rate), [], [], 0
        for n in _chunk_sizes(x.size, seed, 1, 3000):
            chunk = x[pos:pos + n]
            pos += n
            if seed % 2:
                pcm.append(conv.feed_pcm16(chunk))
            else:
                floats.append(conv.feed(chunk))
        if seed % 2:
            pcm.append(conv.flush_pcm16())
            assert b"".join(pcm) == float_to_pcm16(one_shot)
        else:
            floats.append(conv.flush())
            y = np.concatenate(floats)
            np.testing.assert_array_equal(y, one_shot)
            assert np.abs(y).max() > 1.0  # float output is not clipped
        assert conv.samples_in == x.size and conv.samples_out == one_shot.size
        assert conv.duration_ms() == pytest.approx(500.0)


def test_output_reset_drops_buffered_audio():
    x = _signal(16000, seconds=0.2)
    conv = OutputConverter(24000)
    conv.feed(x)
    conv.reset()
    assert conv.samples_in == conv.samples_out == 0
    y = np.concatenate([conv.feed(x), conv.flush()])
    np.testing.assert_array_equal(y, soxr.resample(x, 16000, 24000, quality="HQ"))


def test_ms_helpers():
    assert samples_to_ms(16000) == 1000 and samples_to_ms(15999) == 999 and samples_to_ms(24000, 24000) == 1000
    assert ms_to_samples(300) == 4800 and ms_to_samples(0.01) == 1 and ms_to_samples(30, 22050) == 662


# -- bounded FIFO ---------------------------------------------------------------------------

def test_fifo_reads_in_order_with_wraparound():
    fifo = SampleFifo(10)
    fifo.push(np.arange(7, dtype=np.float32))
    np.testing.assert_array_equal(fifo.read(5), np.arange(5))
    fifo.push(np.arange(7, 15, dtype=np.float64))  # wraps around the end of the ring
    assert len(fifo) == 10 and fifo.free == 0
    np.testing.assert_array_equal(fifo.read(3), [5, 6, 7])
    np.testing.assert_array_equal(fifo.read(100), np.arange(8, 15))  # fewer than asked
    assert fifo.read(4).size == 0 and fifo.read(0).size == 0
    assert fifo.pushed == fifo.popped == 15


def test_fifo_overflow_raises_and_pushes_nothing():
    fifo = SampleFifo(8)
    fifo.push(np.ones(6, np.float32))
    with pytest.raises(BufferOverflowError, match="nothing was pushed"):
        fifo.push(np.zeros(3, np.float32))
    assert issubclass(BufferOverflowError, AudioError)
    assert len(fifo) == 6 and fifo.pushed == 6
    fifo.push(np.zeros(2, np.float32))  # exactly at the bound is fine
    with pytest.raises(BufferOverflowError):
        fifo.push(np.zeros(1, np.float32))
    np.testing.assert_array_equal(fifo.read_all(), [1, 1, 1, 1, 1, 1, 0, 0])
    assert fifo._buf.nbytes == 8 * 4  # memory is the preallocated ring, whatever was pushed


def test_fifo_validation_clear_and_reset():
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(InvalidArgumentError, match="max_samples"):
            SampleFifo(bad)
    fifo = SampleFifo(4)
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="read size"):
            fifo.read(bad)
    with pytest.raises(AudioError, match="NaN"):
        fifo.push(np.array([np.nan], np.float32))
    with pytest.raises(AudioError, match="1-D"):
        fifo.push(np.zeros((1, 2), np.float32))
    fifo.push(np.ones(3, np.float32))
    fifo.clear()
    assert len(fifo) == 0 and fifo.popped == 3  # cleared samples count as consumed
    fifo.push(np.ones(4, np.float32))
    fifo.reset()
    assert len(fifo) == 0 and fifo.pushed == fifo.popped == 0 and fifo.free == 4


@settings(max_examples=25, deadline=None)
@given(capacity=st.integers(1, 64),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 80)), max_size=60))
def test_fifo_matches_a_list_model(capacity, ops):
    fifo, model, counter = SampleFifo(capacity), [], 0
    for is_push, n in ops:
        if is_push:
            chunk = np.arange(counter, counter + n, dtype=np.float32)
            if len(model) + n > capacity:
                with pytest.raises(BufferOverflowError):
                    fifo.push(chunk)
            else:
                fifo.push(chunk)
                model.extend(chunk.tolist())
                counter += n
        else:
            got = fifo.read(n)
            np.testing.assert_array_equal(got, np.array(model[:n], np.float32))
            del model[:n]
        assert len(fifo) == len(model) <= capacity
        assert fifo.pushed - fifo.popped == len(model)
