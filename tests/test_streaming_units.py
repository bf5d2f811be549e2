"""Incremental speech units: provisional windows while speaking, exact units at end of turn."""

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from agent.spiritlm import speech_tokenizer as st_module
from agent.spiritlm.errors import AudioError, InvalidArgumentError
from agent.spiritlm.tokens import units_to_string
from streaming.units import (IncrementalUnitEncoder, StreamStateError, _count_before, _fill_blanks_from,
                             common_prefix_len, common_prefix_tokens, split_string_tokens)

VARIANTS = ("base", "expressive")
# Coarse steps keep the provisional passes (FCPE above all) cheap on a 2-core machine.
SETTINGS = dict(left_context_s=1.0, lookahead_s=0.3, step_s=0.5)
HUGE = dict(left_context_s=1000.0, lookahead_s=1000.0, step_s=0.2)


def feed_in_chunks(encoder, wav, sizes):
    updates, start, k = [], 0, 0
    while start < len(wav):
        n = sizes[k % len(sizes)]
        updates.append(encoder.feed(wav[start:start + n]))
        start, k = start + n, k + 1
    return updates


def as_lists(units):
    return {key: [int(v) for v in value.split()] for key, value in units.items()}


@pytest.fixture(scope="module")
def wav(speech):
    return speech["hello"][0]


@pytest.fixture(scope="module")
def offline(models, wav):
    return {v: models[v].speech.encode_units(wav) for v in VARIANTS}


@pytest.fixture(scope="module")
def reference(models, wav):
    """Encoders fed the whole turn in one call (not finished; tests only read them)."""
    out = {}
    for v in VARIANTS:
        out[v] = IncrementalUnitEncoder(models[v].speech, **SETTINGS)
        out[v].feed(wav)
    return out


# -- helpers ---------------------------------------------------------------------------------------

def test_common_prefix_in_string_tokens():
    assert split_string_tokens("[St3][Pi1][Hu5][Text]hi") == ["[St3]", "[Pi1]", "[Hu5]", "[Text]", "h", "i"]
    assert common_prefix_tokens("[Hu1][Hu2][Hu3]", "[Hu1][Hu2][Hu4]") == 2
    assert common_prefix_tokens("[Hu1][Hu2]", "[Hu1][Hu23]") == 1  # character prefix, different token
    assert common_prefix_tokens("[St3][Pi1][Hu5]", "[St3][Pi1][Hu5][Hu6]") == 3  # a prefix: its length
    assert common_prefix_tokens("[St3][Pi1][Hu5]", "[St3][Hu5]") == 1
    assert common_prefix_tokens("", "[Hu1]") == 0 and common_prefix_tokens("[Hu1]", "[Hu1]") == 1
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([1, 2, 3], [1, 2]) == 2 and common_prefix_len([], [7]) == 0


def test_window_blank_rule():
    b = 500
    assert _fill_blanks_from([b, 3, b, 4, b], b, None) == [4, 3, 3, 4, 4]  # as the offline cyclic rule
    assert _fill_blanks_from([b, 3, b], b, 7) == [7, 3, 3]  # the unit left of the window carries in
    assert _fill_blanks_from([b, b], b, None) == [b, b]


@given(n=st.integers(0, 300), rate=st.sampled_from([24.99, 12.5, 1.0]), horizon=st.floats(0, 20))
@settings(max_examples=50, deadline=None)
def test_count_before_matches_token_times(n, rate, horizon):
    assert _count_before(n, rate, horizon) == sum(1 for i in range(n) if i / rate < horizon)


# -- exactness -------------------------------------------------------------------------------------

@given(variant=st.sampled_from(VARIANTS), sizes=st.lists(st.integers(160, 8000), min_size=1, max_size=6))
@example(variant="expressive", sizes=[160]).via("10 ms chunks")
@example(variant="base", sizes=[8000, 160, 3333]).via("mixed")
@settings(max_examples=3, deadline=None)
def test_finish_equals_offline_for_any_chunking(models, wav, offline, reference, variant, sizes):
    encoder = IncrementalUnitEncoder(models[variant].speech, **SETTINGS)
    updates = feed_in_chunks(encoder, wav, sizes)
    final = encoder.finish()
    assert final.units == offline[variant]  # exactly the offline stack
    assert final.string == models[variant].speech.units_to_string(offline[variant])
    # provisional units depend on the audio only, not on how it was cut
    assert (final.emitted, final.emitted_string) == (reference[variant].emitted, reference[variant].emitted_string)
    # updates are contiguous pieces of what was emitted, and the stable string only grows
    for name, units in final.emitted.items():
        pieces = [u.streams()[name] for u in updates]
        assert [i for p in pieces for i in p.indices] == list(range(len(units)))
        assert [x for p in pieces for x in p.units] == units
    assert "".join(u.text for u in updates) == final.emitted_string
    assert updates[-1].string_tokens == final.emitted_string_tokens == len(split_string_tokens(final.emitted_string))
    lists = as_lists(offline[variant])
    for name, units in final.emitted.items():
        assert 0 < len(units) <= len(lists[name])
        assert final.first_divergence[name] == common_prefix_len(units, lists[name])
    assert final.string_first_divergence == common_prefix_tokens(final.emitted_string, final.string)
    assert final.tail_string() == "".join(split_string_tokens(final.string)[final.string_first_divergence:])


def test_stable_string_is_a_prefix_of_the_emitted_units_string(models, reference):
    emitted, string = reference["expressive"].emitted, reference["expressive"].emitted_string
    assert string and units_to_string({k: " ".join(map(str, v)) for k, v in emitted.items()},
                                      with_pitch=True, with_style=True).startswith(string)
    assert split_string_tokens(string)[0].startswith("[St")


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_turn_window_gives_the_final_units(models, wav, offline, variant):
    """Left context and lookahead covering the turn: nothing is ready while speaking; the
    flush window is the whole turn, so provisional == final and nothing is rolled back."""
    encoder = IncrementalUnitEncoder(models[variant].speech, **HUGE)
    assert not any(feed_in_chunks(encoder, wav, [1234]))
    assert encoder.flush()
    final = encoder.finish()
    assert final.units == offline[variant]
    assert final.emitted == final.final
    assert final.first_divergence == {k: len(v) for k, v in final.final.items()}
    assert final.string.startswith(final.emitted_string)
    assert final.string_first_divergence == final.emitted_string_tokens > 0 and final.rollback_tokens == 0
    assert all(s.passes == 1 for s in final.stats.streams.values())
    assert final.stats.overhead("hubert") == 1.0 and final.stats.exact_samples == len(wav)


@pytest.mark.parametrize("variant", VARIANTS)
def test_offline_chunk_boundaries_and_skipped_tail(models, wav, monkeypatch, variant):
    """Windows follow the offline chunking (non-grid chunk size, a tail < 1280 samples skipped)."""
    chunk = 12000 + 300
    monkeypatch.setattr(st_module, "MAX_CHUNK", chunk)
    assert len(wav) >= 2 * chunk + 1000
    audio = wav[:2 * chunk + 1000]
    tokenizer = models[variant].speech
    offline = tokenizer.encode_units(audio)
    encoder = IncrementalUnitEncoder(tokenizer, **HUGE)
    feed_in_chunks(encoder, audio[:chunk], [5000])
    # the first chunk is complete: all its units are out, from one window over exactly that chunk
    assert encoder.emitted["hubert"] == [int(u) for u in tokenizer.encode_units(audio[:chunk])["hubert"].split()]
    feed_in_chunks(encoder, audio[chunk:], [777])
    encoder.flush()
    final = encoder.finish()
    assert final.units == offline
    assert final.emitted == final.final  # global indices line up across chunks
    windowed = IncrementalUnitEncoder(tokenizer, left_context_s=0.5, lookahead_s=0.2, step_s=0.3)
    feed_in_chunks(windowed, audio, [2000])
    result = windowed.finish()
    assert result.units == offline
    assert all(len(v) <= len(final.final[k]) for k, v in result.emitted.items())


# -- divergence bookkeeping on constructed finals ---------------------------------------------------

def _emitted_encoder(tokenizer, wav):
    encoder = IncrementalUnitEncoder(tokenizer, **HUGE)
    encoder.feed(wav)
    encoder.flush()
    return encoder


def test_first_divergence_on_constructed_finals(models, wav, monkeypatch):
    tokenizer = models["base"].speech
    emitted = _emitted_encoder(tokenizer, wav).emitted["hubert"]
    n = len(emitted)

    def finish_with(final_units):
        encoder = _emitted_encoder(tokenizer, wav)
        monkeypatch.setattr(tokenizer, "encode_units", lambda _wav: {"hubert": " ".join(map(str, final_units))})
        return encoder.finish()

    for k in (0, 1, n // 2, n - 1):
        changed = emitted[:k] + [9999] + emitted[k + 1:]
        result = finish_with(changed)
        assert result.first_divergence == {"hubert": k}
        # string tokens: the deduplicated tokens of the first k units are shared, then [Hu9999] differs
        shared = len(split_string_tokens(units_to_string({"hubert": " ".join(map(str, emitted[:k]))})))
        assert result.string_first_divergence == shared
        assert result.rollback_tokens == result.emitted_string_tokens - shared
        assert result.tail_string().startswith("[Hu9999]")
    longer = finish_with(emitted + [9999, 9998])
    assert longer.first_divergence == {"hubert": n} and longer.rollback_tokens == 0
    assert longer.tail_string() == "[Hu9999][Hu9998]"
    shorter = finish_with(emitted[:n - 3])
    assert shorter.first_divergence == {"hubert": n - 3}


# -- limits, errors, reset ---------------------------------------------------------------------------

def test_turn_length_limits(models, wav):
    tokenizer = models["base"].speech
    encoder = IncrementalUnitEncoder(tokenizer, max_turn_s=0.5)
    encoder.feed(wav[:6400])
    with pytest.raises(AudioError, match=r"more than max_turn_s=0.5 s"):
        encoder.feed(wav[6400:9600])
    assert encoder.audio_s == 0.4  # the refused samples were not taken
    assert encoder.finish().units == tokenizer.encode_units(wav[:6400])
    assert len(encoder._buf) <= 8000  # the buffer never grows past max_turn_s

    short = IncrementalUnitEncoder(tokenizer)
    short.feed(wav[:1000])
    with pytest.raises(AudioError, match=r"1000 samples .*at least 1280 samples"):
        short.finish()
    short.feed(wav[1000:2000])  # still open: more audio makes it long enough
    assert short.finish().units == tokenizer.encode_units(wav[:2000])


def test_bad_input_and_arguments(models):
    tokenizer = models["base"].speech
    encoder = IncrementalUnitEncoder(tokenizer)
    with pytest.raises(AudioError, match="1-D"):
        encoder.feed(np.zeros((1, 320), dtype=np.float32))
    with pytest.raises(AudioError, match="NaN"):
        encoder.feed(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError, match="int16"):
        encoder.feed(np.zeros(320, dtype=np.int16))
    assert encoder.audio_s == 0 and not encoder.feed(np.zeros(0, dtype=np.float32))
    for bad in (dict(step_s=0), dict(left_context_s=-1), dict(lookahead_s=float("nan")), dict(max_turn_s=0)):
        with pytest.raises(InvalidArgumentError):
            IncrementalUnitEncoder(tokenizer, **bad)


def test_reset_and_finished_state(models, wav):
    tokenizer = models["base"].speech
    encoder = IncrementalUnitEncoder(tokenizer, **SETTINGS)
    encoder.feed(wav.numpy())
    first = encoder.finish()
    assert encoder.finish() is first
    with pytest.raises(StreamStateError, match="reset"):
        encoder.feed(wav[:320])
    encoder.reset()
    assert encoder.audio_s == 0 and encoder.emitted == {"hubert": []}
    assert encoder.emitted_string == "" and encoder.stats.streams["hubert"].passes == 0
    encoder.feed(wav)
    second = encoder.finish()
    assert (second.units, second.emitted, second.emitted_string) == (first.units, first.emitted, first.emitted_string)


def test_windows_are_bounded_and_counted(models, wav, reference):
    encoder = reference["expressive"]
    stats = encoder.stats
    lookahead = round(SETTINGS["lookahead_s"] * 16000)
    for s in encoder._streams:
        bound = (s.left + s.step) * s.hop + s.span + lookahead
        assert 0 < s.stats.max_window_samples <= bound
        assert s.stats.encoded_samples <= s.stats.passes * s.stats.max_window_samples
    assert stats.turn_samples == len(wav) and stats.overhead("hubert") > 1 and stats.overhead("style") > 0
    # style: one unit per complete second (50 wav2vec2 frames, 16080 samples) plus lookahead
    assert len(encoder.emitted["style"]) == (len(wav) - 80 - lookahead) // 16000


def test_prefix_of_the_audio_gives_a_prefix_of_the_units_and_style_can_wait(models, wav, reference):
    """The schedule depends on the audio only: feeding a prefix emits a prefix of the units."""
    full = reference["expressive"].emitted
    no_style = IncrementalUnitEncoder(models["expressive"].speech, provisional_style=False, **SETTINGS)
    no_style.feed(wav[:len(wav) * 2 // 3])
    assert "style" not in no_style.stats.streams and no_style.emitted["style"] == []
    for name in ("hubert", "pitch"):
        emitted = no_style.emitted[name]
        # (Piper's speech differs from run to run: the prefix may or may not end a step short)
        assert 0 < len(emitted) <= len(full[name]) and emitted == full[name][:len(emitted)]
    assert no_style.emitted_string and "[St" not in no_style.emitted_string
    final = no_style.finish()
    assert final.first_divergence["style"] == 0 and final.string_first_divergence == 0  # St tokens come first
