"""The conversation engine against the offline stack: prompts, replies, barge-in, long conversations."""

import numpy as np
import torch
import pytest

from agent.conversation import (AudioDelta, ConversationEngine, EngineConfig, ErrorEvent, PromptTemplate, ResponseDone,
                                ResponseStarted, TranscriptDelta, TurnCommitted)


def run_response(engine):
    events = engine.create_response()
    assert isinstance(events[0], ResponseStarted)
    prompt = engine.context_text
    while engine.responding:
        events += engine.step()
    done = [e for e in events if isinstance(e, ResponseDone)]
    audio = [e.samples for e in events if isinstance(e, AudioDelta)]
    return prompt, done[-1], np.concatenate(audio) if audio else np.zeros(0, np.float32), events


@pytest.mark.parametrize("variant", ["base", "expressive"])
def test_speech_reply_equals_offline_generate(models, speech, variant):
    model = models[variant]
    engine = ConversationEngine(model, EngineConfig(output_modality="speech", max_reply_tokens=40))
    engine.begin_user_turn()
    committed = engine.commit_user_speech(model.speech.encode_string(speech["hello"][0]))
    assert isinstance(committed, TurnCommitted)
    assert engine.session.ids == model.tokenizer.encode(engine.context_text)  # (a) block-wise ids == offline prompt ids
    prompt, done, audio, _ = run_response(engine)
    assert prompt.endswith("[Text]\nAssistant:[Speech]")
    offline = model.generate(prompt=prompt, output_modality="speech", max_new_tokens=40)
    assert done.token_ids == offline.token_ids  # (d) token for token
    assert done.reason == "max_tokens" and len(audio) == len(offline.segments[0].audio)
    assert np.abs(audio - offline.segments[0].audio).max() <= 1e-4  # sample for sample
    assert engine.session.ids == model.tokenizer.encode(prompt) + offline.token_ids


def test_second_turn_and_text_reply(models, speech):
    model = models["base"]
    engine = ConversationEngine(model, EngineConfig(output_modality="speech", max_reply_tokens=15))
    engine.begin_user_turn()
    engine.commit_user_speech(model.speech.encode_string(speech["hello"][0]))
    run_response(engine)
    engine.config.output_modality = "text"
    engine.add_user_text("what did you say?")
    prompt, done, audio, events = run_response(engine)
    offline = model.generate(prompt=prompt, output_modality="text", max_new_tokens=15)
    assert done.token_ids == offline.token_ids and len(audio) == 0
    transcript = "".join(e.text for e in events if isinstance(e, TranscriptDelta))
    assert transcript.strip() == offline.generated.strip()


def test_provisional_units_are_rolled_back_exactly(models):
    model = models["base"]
    engine = ConversationEngine(model)
    engine.begin_user_turn()
    engine.update_user_speech("[Hu1][Hu2][Hu3][Hu4]")
    committed = engine.commit_user_speech("[Hu1][Hu2][Hu9]")
    assert committed.rolled_back == 2
    assert engine.session.ids == model.tokenizer.encode(engine.context_text)


def test_barge_in_keeps_only_delivered_tokens(models):
    model = models["base"]
    engine = ConversationEngine(model, EngineConfig(max_reply_tokens=30))
    engine.add_user_text("hello")
    engine.create_response()
    for _ in range(10):
        engine.step()
    before = list(engine.session.ids)
    events = engine.cancel(keep_tokens=4)
    assert isinstance(events[-1], ResponseDone) and events[-1].status == "cancelled" and len(events[-1].token_ids) == 4
    assert engine.session.ids == before[:len(before) - 6]
    assert engine.session.ids == model.tokenizer.encode(engine.context_text)
    assert not engine.responding and engine.create_response()[0].__class__ is ResponseStarted


def test_only_one_response_at_a_time(models):
    engine = ConversationEngine(models["base"])
    engine.add_user_text("hi")
    engine.create_response()
    assert isinstance(engine.create_response()[0], ErrorEvent)


def test_conversation_longer_than_the_window_keeps_working(models, speech):
    model = models["base"]  # tiny model: 1024 positions
    engine = ConversationEngine(model, EngineConfig(max_reply_tokens=60, output_modality="text",
                                                    template=PromptTemplate(instruction="Talk.")))
    units = model.speech.encode_string(speech["weather"][0])
    for turn in range(12):  # ~12 x (user units + 60 reply tokens): well past the window
        engine.begin_user_turn()
        engine.commit_user_speech(units)
        _, done, _, _ = run_response(engine)
        assert done.status != "cancelled" and len(done.token_ids) > 0
        assert len(engine.session) <= model.max_positions
    assert engine.context_text.startswith("[Text]Talk.")
    # text replies keep the ids the model chose (not always sentencepiece's own split of their
    # text), so check the cache itself: it must equal a fresh forward over the kept ids
    ids = engine.session.ids
    assert torch.allclose(engine.session.logits, model.model(input_ids=torch.tensor([ids])).logits[0, -1], atol=1e-4)


def chunks(wav, ms):
    step = 16 * ms
    return [wav[i:i + step] for i in range(0, len(wav), step)]


def test_server_vad_turn_end_to_end(models, speech):
    """Silence, a real utterance, silence: one turn whose committed units equal the offline ones for its audio."""
    model = models["base"]
    wav = speech["hello"][0].numpy()
    stream = np.concatenate([np.zeros(16000, np.float32), wav, np.zeros(16000, np.float32)])
    engine = ConversationEngine(model, EngineConfig(max_reply_tokens=10))
    events = []
    for chunk in chunks(stream, 20):
        events += engine.feed_audio(chunk)
    names = [type(e).__name__ for e in events]
    assert names[:4] == ["SpeechStarted", "SpeechStopped", "TurnCommitted", "ResponseStarted"], names
    started, stopped = events[0], events[1]
    assert 16000 - 16 * 400 <= started.sample <= 16000 and stopped.sample >= 16000 + len(wav) - 16 * 300
    offline = model.speech.encode_string(torch.from_numpy(stream[started.sample:stopped.sample]))
    assert events[2].content == PromptTemplate().user_speech(offline)  # (a) exact mode
    assert engine.session.ids == model.tokenizer.encode(engine.context_text)
    while engine.responding:
        engine.step()


def test_manual_commit_and_barge_in(models, speech):
    model = models["base"]
    engine = ConversationEngine(model, EngineConfig(turn_detection=None, max_reply_tokens=50))
    wav = speech["weather"][0].numpy()
    for chunk in chunks(wav, 100):
        assert engine.feed_audio(chunk) == []
    committed = engine.commit_audio()[0]
    assert committed.content.endswith(model.speech.encode_string(torch.from_numpy(wav)))
    engine.create_response()
    for _ in range(5):
        engine.step()
    done = engine.cancel(keep_tokens=3)[-1]
    assert done.status == "cancelled" and engine.session.ids == model.tokenizer.encode(engine.context_text)
    assert isinstance(engine.commit_audio()[0], ErrorEvent)  # nothing pending


def test_bad_turn_audio_is_an_error_event_and_loses_nothing(models):
    engine = ConversationEngine(models["base"], EngineConfig(turn_detection=None))
    before = list(engine.session.ids)
    engine.feed_audio(np.zeros(100, np.float32))  # shorter than the 1280-sample minimum
    events = engine.commit_audio()
    assert isinstance(events[0], ErrorEvent) and "1280" in events[0].message
    assert engine.session.ids == before and engine.context_text == PromptTemplate().prefix()


def test_stop_rules(models):
    model = models["base"]
    engine = ConversationEngine(model, EngineConfig(output_modality="text", max_reply_tokens=40))
    engine.add_user_text("hello")
    _, done, _, _ = run_response(engine)
    stop = model.tokenizer.decode(done.token_ids[:3])[-2:]  # ends on a token boundary
    assert len(stop) == 2 and len(done.token_ids) > 3
    engine2 = ConversationEngine(model, EngineConfig(output_modality="text", max_reply_tokens=40, stop_strings=(stop,)))
    engine2.add_user_text("hello")
    _, done2, _, _ = run_response(engine2)
    assert done2.reason == "stop_string" and len(done2.token_ids) <= 3
    assert engine2.session.ids == model.tokenizer.encode(engine2.context_text)


def assert_cache_matches(engine, model):
    ids = engine.session.ids
    assert ids == model.tokenizer.encode(engine.context_text)
    full = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(engine.session.logits, full, atol=1e-4)


def test_truncate_a_finished_reply_keeps_only_heard_units(models, speech):
    model = models["base"]
    engine = ConversationEngine(model, EngineConfig(max_reply_tokens=40))
    engine.begin_user_turn()
    engine.commit_user_speech(model.speech.encode_string(speech["hello"][0]))
    _, done, audio, _ = run_response(engine)
    engine.add_user_text("and then?")  # a later turn: truncating must re-prefill it after the cut
    reply = engine._replies[done.response_id]
    heard = len(audio) // 3
    ends = np.cumsum(reply.unit_frames) * reply.samples_per_frame
    units_heard = int((ends <= heard).sum())
    assert 0 < units_heard < len(reply.unit_tokens)
    expected = done.token_ids[:reply.unit_tokens[units_heard]]  # up to the first unit not fully heard
    engine.truncate(done.response_id, heard)
    assert reply.token_ids == expected and len(expected) < len(done.token_ids)
    assert engine.context_text.endswith("[Text]\nUser: and then?")
    assert_cache_matches(engine, model)


def test_audio_during_a_reply_waits_for_its_end(models, speech):
    model = models["base"]
    engine = ConversationEngine(model, EngineConfig(turn_detection=None, max_reply_tokens=20))
    engine.add_user_text("hello")
    engine.create_response()
    engine.step()
    wav = speech["weather"][0].numpy()
    for chunk in chunks(wav, 100):
        assert engine.feed_audio(chunk) == []
    assert engine.commit_audio() == []  # held: committed when the reply ends
    assert isinstance(engine.create_response()[0], ErrorEvent)
    events = []
    while engine.responding:
        events += engine.step()
    names = [type(e).__name__ for e in events]
    assert names.index("TurnCommitted") > names.index("ResponseDone")
    committed = next(e for e in events if isinstance(e, TurnCommitted))
    assert committed.content == PromptTemplate().user_speech(model.speech.encode_string(torch.from_numpy(wav)))
    assert_cache_matches(engine, model)


def test_instruction_change_message_parts_and_delete(models, speech):
    model = models["base"]
    engine = ConversationEngine(model, EngineConfig(max_reply_tokens=5))  # (a text reply's ids need not re-encode)
    first = engine.add_user_text("hi")[0]
    run_response(engine)
    wav = speech["hello"][0].numpy()
    mixed = engine.add_user_message([("text", "listen:"), ("audio", wav), ("text", "ok?")])[0]
    units = model.speech.encode_string(torch.from_numpy(wav))
    assert mixed.content == f"[Text]\nUser: listen:[Speech]{units}[Text] ok?"
    engine.configure(EngineConfig(template=PromptTemplate(instruction="Be brief.")))
    assert engine.context_text.startswith("[Text]Be brief.[Text]\nUser: hi")
    assert_cache_matches(engine, model)
    assert engine.delete_block(first.block) and "User: hi" not in engine.context_text
    assert_cache_matches(engine, model)
    assert not engine.delete_block(first.block)  # already gone
