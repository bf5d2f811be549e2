"""LMSession (prefill, rollback, decode, context policy) and the incremental unit parser."""

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from agent.spiritlm.errors import InvalidArgumentError
from agent.spiritlm.lm import SamplingConfig, next_token
from agent.spiritlm.tokens import string_to_units
from streaming.lm import ContextFullError, LMSession, append_token_batch
from streaming.speech_tokens import UnitTokenParser


@pytest.fixture(scope="module")
def base(models):
    return models["base"]


def full_logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


def test_prefill_rollback_decode_equal_a_full_forward(base):
    tok = base.tokenizer
    prefix = tok.encode("[Text]A conversation.")
    provisional = tok.encode("[Speech][Hu1][Hu2][Hu3][Hu4]", add_bos=False)
    final = tok.encode("[Speech][Hu1][Hu2][Hu9]", add_bos=False)
    session = LMSession(base.model)
    session.append(prefix)
    session.start_block()
    for i in provisional:  # prefill while "the user speaks", one unit at a time
        session.append([i])
    common = next(i for i, (a, b) in enumerate(zip(provisional, final)) if a != b)
    session.rollback(len(provisional) - common)
    session.append(final[common:])
    assert session.ids == prefix + final
    assert torch.allclose(session.logits, full_logits(base.model, prefix + final), atol=1e-4)
    generator = None
    for _ in range(5):
        session.step(None, SamplingConfig(), generator)
        assert torch.allclose(session.logits, full_logits(base.model, session.ids), atol=1e-4)


def test_decode_matches_offline_generate_ids(base):
    prompt = base.tokenizer.encode("[Speech][Hu5][Hu6][Hu7][Text] and then[Speech]")
    banned = base.banned_ids("speech")
    offline = base.generate_ids(prompt, 25, banned, SamplingConfig())
    session = LMSession(base.model)
    session.append(prompt)
    assert [session.step(banned, SamplingConfig(), None) for _ in range(25)] == offline
    sampling = SamplingConfig(do_sample=True, temperature=0.8, top_p=0.9, seed=11)
    offline = base.generate_ids(prompt, 25, banned, sampling)
    session.reset()
    session.append(prompt)
    generator = sampling.generator()
    assert [session.step(banned, sampling, generator) for _ in range(25)] == offline


def test_rollback_limits(base):
    session = LMSession(base.model)
    session.append([1, 5, 6])
    session.start_block()
    session.append([7])
    with pytest.raises(Exception, match="cannot roll back 2"):
        session.rollback(2)
    session.rollback(1)
    assert session.ids == [1, 5, 6]


def test_context_overflow_drops_oldest_turns(base):
    tok = base.tokenizer
    session = LMSession(base.model, max_positions=64)
    session.append(tok.encode("[Text]Hi."))
    prefix = len(session)
    turns = [tok.encode(f"[Speech]{''.join(f'[Hu{(t * 7 + i) % 500}]' for i in range(20))}", add_bos=False) for t in range(6)]
    for turn in turns:  # 6 x 21 tokens into a 64-position window
        session.start_block()
        session.append(turn, reserve=5)
        assert len(session) + 5 <= 64
    assert session.ids[:prefix] == tok.encode("[Text]Hi.") and session.ids[-len(turns[-1]):] == turns[-1]
    assert torch.allclose(session.logits, full_logits(base.model, session.ids), atol=1e-4)
    session.start_block()  # the reply
    for _ in range(40):  # a long reply keeps working: older turns make way
        session.step(None, SamplingConfig(), None)
        assert len(session) <= 64
    with pytest.raises(ContextFullError):
        session.start_block()
        session.append(list(range(3, 80)))


def prefilled_sessions(model, lengths, seed=0):
    rng = random.Random(seed)
    sessions = []
    for n in lengths:
        session = LMSession(model)
        session.append([rng.randrange(model.config.vocab_size) for _ in range(n)])
        session.start_block()  # the reply
        sessions.append(session)
    return sessions


def test_batched_decode_equals_one_session_at_a_time(base):
    lengths = (3, 17, 40, 9)  # every row but the longest is left-padded
    batched, single = prefilled_sessions(base.model, lengths), prefilled_sessions(base.model, lengths)
    first = [11, 500, 7, 900]
    append_token_batch(batched, first)
    for b, s, t in zip(batched, single, first):
        s.append([t])
        assert b.ids == s.ids and len(b) == len(b.ids) == b.cache.get_seq_length()
        assert torch.allclose(b.logits, s.logits, atol=1e-5)
        assert torch.allclose(b.logits, full_logits(base.model, b.ids), atol=1e-5)
    assert not torch.allclose(batched[0].logits, batched[1].logits, atol=1e-2)  # the rows really differ
    greedy = SamplingConfig()
    for _ in range(8):  # greedy replies: one batched forward per step vs one session at a time
        append_token_batch(batched, [next_token(b.logits, None, greedy, None) for b in batched])
        for s in single:
            s.step(None, greedy, None)
        for b, s in zip(batched, single):
            assert b.ids == s.ids
            assert torch.allclose(b.logits, s.logits, atol=1e-5)
    assert [len(b.blocks[-1].ids) for b in batched] == [9] * 4
    assert [b.prefilled_tokens for b in batched] == [s.prefilled_tokens for s in single] == [n + 9 for n in lengths]
    for b in batched:
        assert torch.allclose(b.logits, full_logits(base.model, b.ids), atol=1e-5)


def test_batched_decode_keeps_each_cache_usable(base):
    sessions = prefilled_sessions(base.model, (5, 30, 12), seed=1)
    for step in range(6):
        append_token_batch(sessions, [100 + step, 200 + step, 300 + step])
    for i, session in enumerate(sessions):
        session.rollback(2 + i)  # different lengths again
        session.append([42, 43])
        assert torch.allclose(session.logits, full_logits(base.model, session.ids), atol=1e-5)
    append_token_batch(sessions, [7, 8, 9])
    sessions[1].step(None, SamplingConfig(), None)
    sessions[2].start_block()
    sessions[2].replace_block(0, sessions[2].blocks[0].ids[:-1])  # crops into the tokens from before the batched steps
    for session in sessions:
        assert session.cache.get_seq_length() == len(session)
        assert torch.allclose(session.logits, full_logits(base.model, session.ids), atol=1e-5)
    append_token_batch([], [])  # no-op
    one = sessions[:1]
    append_token_batch(one, [5])
    assert one[0].ids[-1] == 5 and torch.allclose(one[0].logits, full_logits(base.model, one[0].ids), atol=1e-5)


def test_batched_decode_checks_before_touching_any_session(base, models):
    other = prefilled_sessions(models["expressive"].model, (4,))[0]
    full = LMSession(base.model, max_positions=6)
    full.append([1, 2, 3, 4, 5, 6])
    empty = LMSession(base.model)
    cases = {"share one model": [other], "no room": [full], "already hold a token": [empty], "appears twice": None}
    for message, extra in cases.items():
        sessions = prefilled_sessions(base.model, (3, 8))
        sessions += extra if extra is not None else sessions[:1]
        before = [(list(s.ids), s.cache.get_seq_length(), s.logits if len(s) else None, s.prefilled_tokens) for s in sessions]
        with pytest.raises(InvalidArgumentError, match=message):
            append_token_batch(sessions, [9] * len(sessions))
        after = [(list(s.ids), s.cache.get_seq_length(), s.logits if len(s) else None, s.prefilled_tokens) for s in sessions]
        assert all(a[:2] == b[:2] and a[2] is b[2] and a[3] == b[3] for a, b in zip(before, after))
    with pytest.raises(InvalidArgumentError, match="2 sessions but 1 tokens"):
        append_token_batch(prefilled_sessions(base.model, (3, 8)), [9])


tokens = st.one_of(st.builds(lambda v: f"[Hu{v}]", st.integers(0, 500)), st.builds(lambda v: f"[Pi{v}]", st.integers(0, 63)),
                   st.builds(lambda v: f"[St{v}]", st.integers(0, 99)))


@settings(max_examples=150, deadline=None)
@given(st.lists(tokens, min_size=1, max_size=40), st.booleans())
def test_parser_equals_offline_string_to_units(sequence, expressive):
    if expressive:
        sequence = [t for t in sequence]
    else:
        sequence = [t for t in sequence if t.startswith("[Hu")] or ["[Hu1]"]
    parser = UnitTokenParser(expressive)
    random.seed(3)
    units = [u for t in sequence for u in parser.feed(t)] + parser.flush()
    random.seed(3)
    offline = string_to_units("".join(sequence))
    assert " ".join(str(u.hubert) for u in units) == offline["hubert"]
    if expressive and "pitch" in offline and "style" in offline:
        assert " ".join(str(u.pitch) for u in units) == offline["pitch"]
        assert " ".join(str(u.style) for u in units) == offline["style"]


def test_parser_releases_units_once_pitch_and_style_are_known():
    parser = UnitTokenParser(expressive=True)
    assert parser.feed("[Hu1]") == [] and parser.feed("[Pi3]") == [] and parser.feed("[Hu2]") == []
    released = parser.feed("[St7]")
    assert [(u.hubert, u.pitch, u.style) for u in released] == [(1, 3, 7), (2, 3, 7)]
    assert [(u.hubert, u.pitch, u.style) for u in parser.feed("[Hu4]")] == [(4, 3, 7)]
    context = UnitTokenParser(expressive=True, context_pitch=9, context_style=8)
    context.feed("[Hu5]")
    assert [(u.hubert, u.pitch, u.style) for u in context.flush()] == [(5, 9, 8)]
