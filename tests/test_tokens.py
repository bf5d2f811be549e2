"""Token-string rules with worked examples."""

import random

import pytest
from hypothesis import given, strategies as st

from agent.spiritlm.errors import TokenStringError
from agent.spiritlm.tokens import (count_hubert_tokens, ends_with_speech_token, last_speech_run_start, split_segments,
                                   starts_with_speech_token, string_to_units, units_to_string)


def test_base_string_deduplicates_hubert():
    assert units_to_string({"hubert": "5 5 7 7 7 5"}) == "[Hu5][Hu7][Hu5]"


def test_expressive_merge_order_and_rates():
    # 6 HuBERT frames (25 Hz) = 3 pitch frames (12.5 Hz); style is 1 Hz and never deduplicated.
    units = {"hubert": "78 42 81 159 316 259", "pitch": "13 13 3", "style": "81 81"}
    # style frame 1 lands at t=1 s, after every unit here; pitch 3 (t=0.16) precedes Hu316 (t=4/24.99)
    assert units_to_string(units, with_pitch=True, with_style=True) == \
        "[St81][Pi13][Hu78][Hu42][Hu81][Hu159][Pi3][Hu316][Hu259][St81]"


def test_tie_between_pitch_and_hubert_puts_pitch_first():
    # pitch frame 1 (t=0.08) vs HuBERT frame 2 (t=2/24.99 > 0.08): pitch comes first
    s = units_to_string({"hubert": "1 2 3", "pitch": "7 8", "style": "4"}, with_pitch=True, with_style=True)
    assert s == "[St4][Pi7][Hu1][Hu2][Pi8][Hu3]"


def test_string_to_units_pre_duplicates_and_backfills():
    units = string_to_units("[Hu78][St81][Pi13][Hu42][Hu81][Pi3][Hu259]")
    assert units == {"hubert": "78 42 81 259", "pitch": "13 13 13 3", "style": "81 81 81 81"}


def test_string_to_units_ignores_text_and_markers():
    assert string_to_units("[Speech][Hu1] hello [Text]x[Hu2]") == {"hubert": "1 2"}


def test_missing_style_takes_a_common_style():
    random.seed(0)
    units = string_to_units("[Pi3][Hu1][Hu2]")
    assert units["pitch"] == "3 3" and units["style"].split()[0] in {"71", "68", "98"}


def test_duplicate_hubert_for_multiple_pitch():
    units = string_to_units("[Hu1][Pi3][Pi4][Hu2]", duplicate_hubert_for_multiple_pitch=True)
    assert units["hubert"] == "1 1 2" and units["pitch"] == "3 4 4"


@pytest.mark.parametrize("bad", ["[Hu12a]", "[Hu]", "[Pi-3]", "[St 4]", "[Hu1][Hu"])
def test_malformed_unit_tokens_are_errors(bad):
    with pytest.raises(TokenStringError, match="malformed unit token"):
        string_to_units(bad)


@pytest.mark.parametrize("content,expected", [
    ("abc[Speech][St1][Pi2][Hu3][Hu4][Text]hello world[", [("abc", "t"), ("[St1][Pi2][Hu3][Hu4]", "s"), ("hello world[", "t")]),
    ("[Hu5]", [("[Hu5]", "s")]),
    ("abc[]", [("abc[]", "t")]),
    ("abc[Text]def", [("abcdef", "t")]),
    ("[Hu1][Text][abc", [("[Hu1]", "s"), ("[abc", "t")]),
])
def test_split_segments(content, expected):
    assert split_segments(content) == expected


@pytest.mark.parametrize("text,starts,ends", [
    ("[Hu100]", True, True), ("[Pi9]", True, True), ("[St0]", True, True), ("]]", False, False), ("[]", False, False),
    ("abc[]", False, False), ("[Hu1][Text][abc]", True, False), ("abc[Text]def", False, False), ("[Text]x[Hu1]", False, True),
])
def test_starts_ends_with_speech(text, starts, ends):
    assert starts_with_speech_token(text) is starts
    assert ends_with_speech_token(text) is ends


def test_last_speech_run_and_hubert_count():
    prompt = "[Hu1][Hu2][Text]abc[St3][Pi4][Hu5]"
    assert last_speech_run_start(prompt) == prompt.index("[St3]")
    assert last_speech_run_start("no speech") is None
    assert count_hubert_tokens("[Hu1][Pi2][Hu3]") == 3  # the release counts split pieces


@given(st.lists(st.integers(0, 500), min_size=1, max_size=60))
def test_base_roundtrip_is_deduplicated_units(hubert):
    s = units_to_string({"hubert": " ".join(map(str, hubert))})
    dedup = [u for i, u in enumerate(hubert) if i == 0 or hubert[i - 1] != u]
    assert string_to_units(s) == {"hubert": " ".join(map(str, dedup))}


@given(st.integers(1, 80).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 500), min_size=2 * n, max_size=2 * n), st.lists(st.integers(0, 63), min_size=n, max_size=n),
    st.lists(st.integers(0, 99), min_size=max(1, n // 12), max_size=max(1, n // 12)))))
def test_expressive_roundtrip_keeps_one_pitch_and_style_per_hubert(streams):
    hubert, pitch, style = streams
    s = units_to_string({"hubert": " ".join(map(str, hubert)), "pitch": " ".join(map(str, pitch)),
                         "style": " ".join(map(str, style))}, with_pitch=True, with_style=True)
    units = string_to_units(s)
    n = len(units["hubert"].split())
    assert len(units["pitch"].split()) == n and len(units["style"].split()) == n
    assert units["style"].split()[0] == str(style[0]) and units["pitch"].split()[0] == str(pitch[0])
