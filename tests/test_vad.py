"""Turn detection: exact state-machine semantics on scripted frames, then real Piper speech."""

from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streaming.vad as vad_module
from agent.spiritlm.errors import AudioError, InvalidArgumentError
from streaming.vad import SpeechStarted, SpeechStopped, TurnDetector

SR = 16000
MS = SR // 1000


def _run(detector: TurnDetector, x: np.ndarray, sizes: list[int] | None = None, flush: bool = True) -> list:
    """Feed ``x`` in chunks of ``sizes`` samples (one chunk if None), optionally flush."""
    events, pos = [], 0
    for n in sizes if sizes is not None else [x.size]:
        events += detector.feed(x[pos:pos + n])
        pos += n
    assert pos == x.size
    return events + (detector.flush() if flush else [])


def _sizes(total: int, seed: int, low: int, high: int) -> list[int]:
    rng, out, done = np.random.default_rng(seed), [], 0
    while done < total:
        out.append(min(int(rng.integers(low, high + 1)), total - done))
        done += out[-1]
    return out


# -- exact semantics with a scripted "VAD" (a frame is voiced iff it is loud) ---------------

class _LoudnessVad:
    """Stand-in for webrtcvad.Vad: voiced iff the frame's mean |int16| exceeds 10 (-70 dBFS)."""

    def __init__(self, mode: int) -> None:
        assert 0 <= mode <= 3

    def is_speech(self, frame: bytes, rate: int) -> bool:
        assert rate == SR and len(frame) in (320, 640, 960)
        return bool(np.abs(np.frombuffer(frame, "<i2").astype(int)).mean() > 10)


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(vad_module, "webrtcvad", types.SimpleNamespace(Vad=_LoudnessVad))


def _frames(pattern: str, frame_ms: int = 30) -> np.ndarray:
    """'#' = a loud (voiced) frame, '.' = a silent one, '-' = "voiced" but at -60 dBFS."""
    n = frame_ms * MS
    level = {"#": 0.5, ".": 0.0, "-": 0.001}
    return np.concatenate([np.full(n, level[c], np.float32) for c in pattern])


F = 480  # 30 ms frame


def test_start_and_stop_offsets_are_exact(scripted):
    det = TurnDetector()  # threshold 0.5 of a 300 ms window -> 5 voiced 30 ms frames; 500 ms -> 17 frames
    assert (det.window_frames, det.frames_needed, det.frames_to_continue, det.silence_frames, det.prefix_padding) == (
        10, 5, 5, 17, 4800)
    events = _run(det, _frames("." * 20 + "#" * 12 + "." * 20))
    assert events == [
        SpeechStarted(sample=20 * F - 4800, speech_start=20 * F, detected_at=25 * F),
        SpeechStopped(sample=(32 + 17) * F, speech_end=32 * F),
    ]
    assert events[0].ms == 300 and events[1].ms == 1470  # audio_start_ms / audio_end_ms


def test_threshold_is_the_voiced_fraction_of_the_window(scripted):
    alternating = _frames("." * 5 + "#." * 20 + "." * 30)  # at most 5 voiced frames in any 10
    events = _run(TurnDetector(threshold=0.5, prefix_padding_ms=0), alternating)
    assert events[0] == SpeechStarted(sample=5 * F, speech_start=5 * F, detected_at=14 * F)
    assert _run(TurnDetector(threshold=0.6), alternating) == []
    assert _run(TurnDetector(threshold=0.0, prefix_padding_ms=0), _frames("..#" + "." * 30))[0].detected_at == 3 * F


@pytest.mark.parametrize(
    "kwargs, window, needed",
    [
        ({}, 10, 5),
        ({"threshold": 0.0}, 10, 1),
        ({"threshold": 1.0}, 10, 10),
        ({"threshold": 0.3}, 10, 3),  # 0.3 * 10 is 3, not 4, despite float rounding
        ({"min_speech_ms": 250}, 10, 9),
        ({"frame_ms": 10}, 30, 15),
        ({"frame_ms": 20, "window_ms": 200, "threshold": 0.25}, 10, 3),
        ({"window_ms": 100, "threshold": 0.9}, 4, 4),  # 100 ms of 30 ms frames: 4 frames
    ],
)
def test_threshold_mapping(kwargs, window, needed):
    det = TurnDetector(**kwargs)
    assert (det.window_frames, det.frames_needed) == (window, needed)


def test_silence_duration_is_rounded_up_to_whole_frames(scripted):
    speech = "#" * 10
    det = TurnDetector(silence_duration_ms=500, prefix_padding_ms=0)  # 17 frames of 30 ms = 510 ms
    assert [type(e) for e in _run(det, _frames(speech + "." * 16 + speech), flush=False)] == [SpeechStarted]
    det.reset()
    events = _run(det, _frames(speech + "." * 17 + speech), flush=False)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped, SpeechStarted]
    assert events[1] == SpeechStopped(sample=27 * F, speech_end=10 * F)
    assert events[2].sample == 27 * F  # padding clamped at the previous stop: turns never overlap


def test_isolated_voiced_frames_after_speech_do_not_extend_the_turn(scripted):
    det = TurnDetector(prefix_padding_ms=0)
    # Noise frames 8 and 16 frames after the speech: too sparse to be speech (< 5 of 10 voiced).
    events = _run(det, _frames("#" * 10 + "." * 8 + "#" + "." * 7 + "#" + "." * 20))
    # Silence elapses at the end of frame 26 (10 + 17 frames) but frame 26 is voiced, so the
    # stop waits for the next unvoiced frame; speech_end stays at the end of the real speech.
    assert events[1] == SpeechStopped(sample=28 * F, speech_end=10 * F)


def test_speech_resuming_as_the_silence_runs_out_keeps_the_turn(scripted):
    det = TurnDetector(prefix_padding_ms=0)
    # 14 silent frames, then speech again: frames 24..27 are voiced but not yet confirmed
    # (< 5 voiced in the window) while the 17-frame silence elapses at frame 26.
    events = _run(det, _frames("#" * 10 + "." * 14 + "#" * 10 + "." * 20))
    assert events == [SpeechStarted(0, 0, 5 * F), SpeechStopped((34 + 17) * F, 34 * F)]


def test_frames_below_the_level_gate_are_silence(scripted):
    pattern = "." * 3 + "#" * 10 + "-" * 30 + "." * 20
    events = _run(TurnDetector(prefix_padding_ms=0), _frames(pattern))
    assert events == [SpeechStarted(3 * F, 3 * F, 8 * F), SpeechStopped(30 * F, 13 * F)]
    events = _run(TurnDetector(prefix_padding_ms=0, min_level_dbfs=None), _frames(pattern))
    assert events == [SpeechStarted(3 * F, 3 * F, 8 * F), SpeechStopped(60 * F, 43 * F)]
    assert _run(TurnDetector(min_level_dbfs=-59.9), _frames("-" * 20)) == []
    assert len(_run(TurnDetector(min_level_dbfs=-60.1), _frames("-" * 20))) == 2


def test_padding_is_clamped_at_zero_and_at_the_previous_stop(scripted):
    det = TurnDetector(prefix_padding_ms=2000, silence_duration_ms=90)  # 3 frames of silence end a turn
    events = _run(det, _frames("..#####....######..."))
    assert events == [
        SpeechStarted(0, 2 * F, 7 * F),
        SpeechStopped(10 * F, 7 * F),
        SpeechStarted(10 * F, 11 * F, 16 * F),
        SpeechStopped(20 * F, 17 * F),  # 3 silent frames after the last voiced one
    ]


def test_flush_stops_an_ongoing_turn_at_the_end_of_the_stream(scripted):
    det = TurnDetector(prefix_padding_ms=0)
    x = np.concatenate([_frames("...#######.."), np.full(100, 0.5, np.float32)])  # ends in a partial frame
    events = _run(det, x, flush=False)
    assert events == [SpeechStarted(3 * F, 3 * F, 8 * F)] and det.in_speech
    assert det.flush() == [SpeechStopped(sample=12 * F + 100, speech_end=10 * F)]
    assert not det.in_speech and det.flush() == []
    # Offsets continue after a flush; the frame grid restarts at the flush point.
    assert _run(det, _frames("#####....")) == [
        SpeechStarted(12 * F + 100, 12 * F + 100, 17 * F + 100),
        SpeechStopped(21 * F + 100, 17 * F + 100),
    ]
    det.reset()
    assert det.samples_fed == 0
    assert _run(det, _frames("#####"))[0] == SpeechStarted(0, 0, 5 * F)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"aggressiveness": 4}, "aggressiveness"),
        ({"aggressiveness": -1}, "aggressiveness"),
        ({"aggressiveness": 1.5}, "aggressiveness"),
        ({"aggressiveness": True}, "aggressiveness"),
        ({"frame_ms": 25}, "frame_ms"),
        ({"frame_ms": True}, "frame_ms"),
        ({"threshold": 1.2}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
        ({"silence_duration_ms": 0}, "silence_duration_ms"),
        ({"silence_duration_ms": -10}, "silence_duration_ms"),
        ({"prefix_padding_ms": -1}, "prefix_padding_ms"),
        ({"min_speech_ms": -1}, "min_speech_ms"),
        ({"min_speech_ms": 400}, "cannot exceed window_ms"),
        ({"window_ms": 20}, "window_ms"),
        ({"window_ms": float("inf")}, "window_ms"),
        ({"min_level_dbfs": 3}, "min_level_dbfs"),
        ({"min_level_dbfs": -200}, "min_level_dbfs"),
        ({"min_level_dbfs": "loud"}, "min_level_dbfs"),
    ],
)
def test_parameters_are_validated(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        TurnDetector(**kwargs)


def test_bad_audio_is_rejected_without_changing_state():
    det = TurnDetector()
    det.feed(np.zeros(100, np.float32))
    for bad, message in [(np.array([0.0, np.nan], np.float32), "NaN"), (np.zeros((2, 3), np.float32), "1-D"),
                         (np.zeros(3, np.int16), "dtype"), (b"\x00\x00", "numpy array")]:
        with pytest.raises(AudioError, match=message):
            det.feed(bad)
    assert det.samples_fed == 100 and det.feed(np.zeros(0, np.float32)) == []


# -- real speech ------------------------------------------------------------------------------

def _active_bounds(x: np.ndarray, rel_db: float = -40.0) -> tuple[int, int]:
    """First/last 10 ms of ``x`` within ``rel_db`` of its loudest 10 ms: the true speech span."""
    m = x.size // (10 * MS)
    rms = np.sqrt((x[:m * 10 * MS].reshape(m, -1).astype(np.float64) ** 2).mean(1))
    active = np.nonzero(20 * np.log10(rms / rms.max() + 1e-12) > rel_db)[0]
    return int(active[0]) * 10 * MS, (int(active[-1]) + 1) * 10 * MS


@pytest.fixture(scope="module")
def dialogue(speech):
    """1 s silence + A + 1.5 s silence + B + 1 s silence: name -> (signal, [(start, end)] true spans)."""
    a, b = speech["hello"][0].numpy(), speech["weather"][0].numpy()
    silences = [np.zeros(n, np.float32) for n in (SR, 3 * SR // 2, SR)]
    clean = np.concatenate([silences[0], a, silences[1], b, silences[2]])
    (a0, a1), (b0, b1) = _active_bounds(a), _active_bounds(b)
    offset_b = SR + a.size + 3 * SR // 2
    truth = [(SR + a0, SR + a1), (offset_b + b0, offset_b + b1)]

    rng = np.random.default_rng(1234)
    speech_rms = np.sqrt(np.mean(np.concatenate([a[a0:a1], b[b0:b1]]) ** 2))
    noise = rng.standard_normal(clean.size).astype(np.float32)
    noisy = clean + noise * speech_rms / 10  # white noise at 20 dB SNR everywhere
    in_gaps = np.ones(clean.size, bool)
    in_gaps[SR:SR + a.size] = in_gaps[offset_b:offset_b + b.size] = False
    floor = 10 ** (-60 / 20)  # -60 dBFS: a quiet microphone's noise floor
    quiet_gaps = clean + np.where(in_gaps, noise * floor, 0).astype(np.float32)  # noise only between utterances
    quiet_everywhere = clean + noise * floor
    return {"clean": (clean, truth), "noisy_20db": (noisy, truth), "quiet_noise_in_gaps": (quiet_gaps, truth),
            "quiet_noise_everywhere": (quiet_everywhere, truth)}


# Measured over several Piper syntheses (they vary run to run): speech_start within -30..+30 ms
# of the true start; speech_end within -120..+160 ms of the true end (webrtcvad's hangover when
# noise is above the level gate, and how much of a word's quiet tail counts as "true" speech).
START_TOLERANCE = 100 * MS  # |speech_start - true start|
END_TOLERANCE = 200 * MS  # |speech_end - true end|


def _check_turns(events: list, truth: list[tuple[int, int]], det: TurnDetector) -> None:
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * len(truth), events
    floor = 0
    for (start, stop), (t0, t1) in zip(zip(events[::2], events[1::2]), truth):
        assert abs(start.speech_start - t0) <= START_TOLERANCE, (start, t0)
        assert start.sample == max(floor, start.speech_start - det.prefix_padding)
        assert start.speech_start < start.detected_at <= start.speech_start + 400 * MS
        assert abs(stop.speech_end - t1) <= END_TOLERANCE, (stop, t1)
        assert stop.speech_end + det.silence_frames * det.frame_len <= stop.sample
        assert stop.sample <= stop.speech_end + (det.silence_frames + 2) * det.frame_len
        floor = stop.sample


@pytest.mark.parametrize("kind", ["clean", "noisy_20db", "quiet_noise_in_gaps", "quiet_noise_everywhere"])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_two_turns_are_found_at_the_right_offsets(dialogue, kind, frame_ms):
    x, truth = dialogue[kind]
    det = TurnDetector(frame_ms=frame_ms)
    _check_turns(_run(det, x), truth, det)


@pytest.mark.parametrize("aggressiveness", [0, 1, 3])
def test_two_turns_at_other_aggressiveness(dialogue, aggressiveness):
    x, truth = dialogue["noisy_20db"]
    det = TurnDetector(aggressiveness=aggressiveness)
    _check_turns(_run(det, x), truth, det)


@pytest.mark.parametrize("chunk_ms", [1, 7, 200])
def test_fixed_chunk_sizes_give_identical_events(dialogue, chunk_ms):
    x, _ = dialogue["noisy_20db"]
    reference = _run(TurnDetector(), x)
    n = chunk_ms * MS
    assert _run(TurnDetector(), x, [min(n, x.size - i) for i in range(0, x.size, n)]) == reference


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["clean", "noisy_20db"]), frame_ms=st.sampled_from([10, 20, 30]),
       seed=st.integers(0, 2**32 - 1), low_ms=st.integers(1, 200), span_ms=st.integers(0, 200))
def test_random_chunkings_give_identical_events(dialogue, kind, frame_ms, seed, low_ms, span_ms):
    x, _ = dialogue[kind]
    reference = _run(TurnDetector(frame_ms=frame_ms), x)
    low = max(1, low_ms * MS - int(np.random.default_rng(seed).integers(0, MS)))  # not just whole ms
    sizes = _sizes(x.size, seed, low, min(200 * MS, low + span_ms * MS))
    assert _run(TurnDetector(frame_ms=frame_ms), x, sizes) == reference


# -- clicks, blips, pauses ------------------------------------------------------------------

def _tone(ms: int) -> np.ndarray:
    t = np.arange(ms * MS) / SR
    x = 0.5 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 880 * t)
    ramp = np.minimum(1.0, np.minimum(np.arange(t.size), np.arange(t.size)[::-1]) / (5 * MS))
    return (x * ramp).astype(np.float32)


def _in_silence(burst: np.ndarray, lead_ms: int = 1013) -> np.ndarray:
    return np.concatenate([np.zeros(lead_ms * MS, np.float32), burst, np.zeros(SR, np.float32)])


NOISE = np.random.default_rng(7).standard_normal(3 * SR).astype(np.float32) * 0.01  # -40 dBFS


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("noisy", [False, True])
def test_clicks_and_pops_do_not_start_a_turn(frame_ms, noisy):
    click = np.zeros(3 * MS, np.float32)
    click[:3] = [0.95, -0.8, 0.5]
    t = np.arange(10 * MS)
    pop = (0.9 * np.exp(-t / 20) * np.sin(2 * np.pi * 1000 * t / SR)).astype(np.float32)
    for burst in (click, pop):
        x = _in_silence(burst)
        assert _run(TurnDetector(frame_ms=frame_ms), x + NOISE[:x.size] * noisy) == []


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_a_100ms_blip_needs_min_speech_ms_to_be_ignored(speech, frame_ms):
    a = speech["hello"][0].numpy()
    a0, _ = _active_bounds(a)
    ramp = np.minimum(1.0, np.minimum(np.arange(100 * MS), np.arange(100 * MS)[::-1]) / (5 * MS))
    speech_blip = (a[a0 + 150 * MS:a0 + 250 * MS] * ramp).astype(np.float32)
    for blip in (_tone(100), speech_blip):
        for lead_ms in (1000, 1013, 1027):  # different alignments with the frame grid
            x = _in_silence(blip, lead_ms)
            for noisy in (False, True):
                assert _run(TurnDetector(frame_ms=frame_ms, min_speech_ms=250), x + NOISE[:x.size] * noisy) == []
    # In noise above the level gate, webrtcvad's hangover stretches the 100 ms tone to ~200 ms
    # of voiced frames, which the default (150 ms voiced in 300 ms) accepts: min_speech_ms is
    # what rejects it.
    x = _in_silence(_tone(100))
    assert len(_run(TurnDetector(frame_ms=frame_ms), x + NOISE[:x.size])) == 2


def test_min_speech_ms_still_finds_real_turns(dialogue):
    x, truth = dialogue["noisy_20db"]
    det = TurnDetector(min_speech_ms=250)
    _check_turns(_run(det, x), truth, det)


def test_a_short_pause_does_not_end_the_turn(speech):
    a, b = speech["hello"][0].numpy(), speech["weather"][0].numpy()
    (a0, a1), (b0, b1) = _active_bounds(a), _active_bounds(b)
    pause = np.zeros(300 * MS, np.float32)
    x = _in_silence(np.concatenate([a[a0:a1], pause, b[b0:b1]]), lead_ms=1000)
    det = TurnDetector(silence_duration_ms=500)
    events = _run(det, x)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    _check_turns(events, [(SR, SR + (a1 - a0) + pause.size + (b1 - b0))], det)
    # The pause is real silence to the VAD: a shorter silence_duration_ms splits the turn there
    # (and at the shorter pauses inside the utterances).
    events = _run(TurnDetector(silence_duration_ms=150), x)
    assert len(events) >= 4
    assert any(abs(e.speech_end - (SR + a1 - a0)) <= END_TOLERANCE for e in events if isinstance(e, SpeechStopped))
