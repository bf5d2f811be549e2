"""agent/protocol.py: client event parsing, session merging, server event shapes, binary frames, fuzzing.

Field lists below are copied from the official SDK's GA types (github.com/openai/openai-python,
``src/openai/types/realtime/*.py``); the file each comes from is named next to it. When the
``openai`` package is importable, ``test_builders_validate_against_openai_sdk`` also checks the
builders against the SDK's pydantic models.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import protocol as p
from agent.protocol import ProtocolError, SessionConfig

PCM = struct.pack("<4h", 0, 1000, -1000, 32767)
B64 = base64.b64encode(PCM).decode()

CLIENT_CLASSES = (p.SessionUpdate, p.InputAudioBufferAppend, p.InputAudioBufferCommit, p.InputAudioBufferClear,
                  p.ConversationItemCreate, p.ConversationItemTruncate, p.ConversationItemDelete, p.ResponseCreate,
                  p.ResponseCancel)


def parse(obj):
    return p.parse_client_event(json.dumps(obj))


def fails(obj, code, param=None, *, raw=False):
    with pytest.raises(ProtocolError) as info:
        p.parse_client_event(obj) if raw else parse(obj)
    err = info.value
    assert err.code == code, (err.code, err.message)
    assert err.type == "invalid_request_error"
    if param is not None:
        assert err.param == param, (err.param, err.message)
    return err


def session(**fields):
    return {"type": "session.update", "session": {"type": "realtime", **fields}}


# GA-shaped examples (only fields the GA types define, PCM at 24 kHz)
GA_EXAMPLES = [
    {"type": "session.update", "event_id": "evt_1", "session": {
        "type": "realtime", "instructions": "Be brief.", "output_modalities": ["audio"], "max_output_tokens": 200,
        "model": "gpt-realtime", "tools": [], "tool_choice": "auto", "tracing": None,
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None,
                            "noise_reduction": None,
                            "turn_detection": {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                                               "silence_duration_ms": 700, "create_response": True,
                                               "interrupt_response": False, "idle_timeout_ms": None}},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0}}}},
    {"type": "input_audio_buffer.append", "event_id": "evt_2", "audio": B64},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear", "event_id": "evt_3"},
    {"type": "conversation.item.create", "previous_item_id": "root", "item": {
        "id": "msg_1", "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
        "content": [{"type": "input_text", "text": "hi"}, {"type": "input_audio", "audio": B64, "transcript": "hm"}]}},
    {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
    {"type": "conversation.item.delete", "item_id": "item_1"},
    {"type": "response.create", "response": {"instructions": "x", "output_modalities": ["text"],
                                             "max_output_tokens": "inf", "metadata": {"k": "v"},
                                             "conversation": "auto", "audio": {"output": {"voice": "ash"}}}},
    {"type": "response.create"},
    {"type": "response.cancel", "response_id": "resp_1"},
    {"type": "response.cancel"},
]
# plus our extensions
VALID = GA_EXAMPLES + [
    session(audio={"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None},
                   "output": {"format": {"type": "audio/pcm"}, "voice": "0"}},
            spiritlm={"speaker": 0, "output_modality": "arbitrary",
                      "prompt_template": {"instruction": "Chat.", "user_cue": "\nQ:", "assistant_cue": "\nA:"},
                      "seed": 7, "greedy": False, "temperature": 0.8, "top_p": 0.9, "top_k": 40,
                      "binary_audio": True}),
    {"type": "response.create", "response": {"spiritlm": {"output_modality": "text", "seed": None, "top_k": 0}}},
]


# ---------------------------------------------------------------------------- client events: valid
def test_every_valid_example_parses_to_its_class():
    for obj in VALID:
        ev = parse(obj)
        assert isinstance(ev, CLIENT_CLASSES)
        assert ev.TYPE == obj["type"]
        assert ev.event_id == obj.get("event_id")
    assert set(p.CLIENT_EVENT_TYPES) == {c.TYPE for c in CLIENT_CLASSES}


def test_bytes_bytearray_and_memoryview_frames():
    raw = json.dumps({"type": "input_audio_buffer.commit", "event_id": "é"}).encode()
    for data in (raw, bytearray(raw), memoryview(raw)):
        assert p.parse_client_event(data) == p.InputAudioBufferCommit(event_id="é")


def test_append_decodes_base64():
    ev = parse({"type": "input_audio_buffer.append", "audio": B64, "event_id": "e"})
    assert ev == p.InputAudioBufferAppend(audio=PCM, event_id="e")
    assert parse({"type": "input_audio_buffer.append", "audio": ""}).audio == b""


def test_session_update_patch():
    ev = parse(GA_EXAMPLES[0])
    s = ev.session
    assert s.instructions == "Be brief." and s.output_modalities == ("audio",) and s.max_output_tokens == 200
    assert s.input_rate == 24000 and s.output_rate == 24000 and s.voice == "marin"
    assert s.turn_detection == {"threshold": 0.6, "prefix_padding_ms": 200, "silence_duration_ms": 700,
                                "create_response": True, "interrupt_response": False}
    assert s.speaker is p.UNSET and s.seed is p.UNSET
    ext = parse(VALID[len(GA_EXAMPLES)]).session
    assert ext.input_rate == 16000 and ext.output_rate == 24000 and ext.turn_detection is None
    assert ext.instructions == "Chat." and ext.prompt_template == {"user_cue": "\nQ:", "assistant_cue": "\nA:"}
    assert (ext.speaker, ext.output_modality, ext.seed, ext.greedy, ext.temperature, ext.top_p, ext.top_k,
            ext.binary_audio) == (0, "arbitrary", 7, False, 0.8, 0.9, 40, True)
    assert parse(session()).session == p.SessionPatch()


def test_item_create():
    ev = parse(GA_EXAMPLES[4])
    assert ev.previous_item_id == "root"
    assert ev.item == p.UserMessage(content=(p.InputText("hi"), p.InputAudio(PCM, "hm")), id="msg_1")
    minimal = parse({"type": "conversation.item.create",
                     "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ""}]}})
    assert minimal.item.id is None and minimal.previous_item_id is None


def test_truncate_delete_cancel_create():
    assert parse(GA_EXAMPLES[5]) == p.ConversationItemTruncate(item_id="item_1", content_index=0, audio_end_ms=1500)
    assert parse(GA_EXAMPLES[6]) == p.ConversationItemDelete(item_id="item_1")
    assert parse(GA_EXAMPLES[9]) == p.ResponseCancel(response_id="resp_1")
    assert parse({"type": "response.cancel", "response_id": None}) == p.ResponseCancel()
    assert parse({"type": "response.create"}) == p.ResponseCreate()
    rc = parse(GA_EXAMPLES[7]).response
    assert rc.metadata == {"k": "v"}
    o = rc.overrides
    assert (o.instructions, o.output_modalities, o.max_output_tokens, o.voice) == ("x", ("text",), "inf", "ash")


def test_null_optional_fields_mean_absent():
    ev = parse({"type": "input_audio_buffer.commit", "event_id": None})
    assert ev.event_id is None
    s = parse(session(instructions=None, audio={"output": {"voice": None}, "input": None}, spiritlm=None)).session
    assert s == p.SessionPatch()


# ---------------------------------------------------------------------------- client events: invalid
@pytest.mark.parametrize("raw", ["", "{", "[1,", "nope", "{'a': 1}", "NaN", '{"type": NaN}', '{"x": Infinity}',
                                 "[" * 100_000 + "]" * 100_000, "1" * 5000, b"\xff\xfe", b"{\"type\": \"\xc3\x28\"}",
                                 "\ufeff{}"])
def test_invalid_json(raw):
    fails(raw, "invalid_json", raw=True)


@pytest.mark.parametrize("obj", [[], [1], "x", 1, 1.5, None, True])
def test_non_object(obj):
    fails(obj, "invalid_event")


def test_event_type_errors():
    fails({}, "missing_required_parameter", "type")
    fails({"type": 3}, "invalid_type", "type")
    err = fails({"type": "response.audio.delta", "event_id": "e9"}, "unknown_event", "type")
    assert err.event_id == "e9" and "session.update" in err.message
    fails({"type": "conversation.item.retrieve", "item_id": "x"}, "unsupported", "type")
    fails({"type": "output_audio_buffer.clear"}, "unsupported", "type")
    fails({"type": "input_audio_buffer.commit", "event_id": 5}, "invalid_type", "event_id")


def test_unknown_top_level_keys():
    err = fails({"type": "input_audio_buffer.commit", "event_id": "e1", "extra": 1}, "unknown_parameter", "extra")
    assert err.event_id == "e1" and err.message == "Unknown parameter: 'extra'."


def test_errors_carry_event_id():
    err = fails({"type": "input_audio_buffer.append", "event_id": "evt_42", "audio": "!!"}, "invalid_audio", "audio")
    assert err.event_id == "evt_42"
    event = p.error_event(err, ids=p.SequentialIds())
    assert event == {"type": "error", "event_id": "event_1", "error": {
        "type": "invalid_request_error", "code": "invalid_audio", "message": err.message, "param": "audio",
        "event_id": "evt_42"}}


@pytest.mark.parametrize("audio, code", [
    ("!!!!", "invalid_audio"),  # bad alphabet
    ("AAA", "invalid_audio"),  # bad padding
    ("AA==AA==", "invalid_audio"),  # padding in the middle
    ("AAE=\n", "invalid_audio"),  # whitespace is not base64
    ("éé==", "invalid_audio"),  # non-ASCII
    (base64.b64encode(b"\x00\x01\x02").decode(), "invalid_audio"),  # odd PCM16 byte count
    (5, "invalid_type"),
    (None, "invalid_type"),
])
def test_append_invalid_audio(audio, code):
    fails({"type": "input_audio_buffer.append", "audio": audio}, code, "audio")


def test_append_missing_and_too_large(monkeypatch):
    fails({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio")
    monkeypatch.setattr(p, "MAX_AUDIO_BYTES", 4)
    fails({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(6)).decode()}, "invalid_audio", "audio")
    fails({"type": "input_audio_buffer.append", "audio": "A" * 64}, "invalid_audio", "audio")


@pytest.mark.parametrize("fields, code, param", [
    ({"type": None}, "invalid_type", "session.type"),
    ({"type": "transcription"}, "unsupported", "session.type"),
    ({"type": "beta"}, "invalid_value", "session.type"),
    ({"instructions": 3}, "invalid_type", "session.instructions"),
    ({"output_modalities": ["audio", "text"]}, "invalid_value", "session.output_modalities"),
    ({"output_modalities": []}, "invalid_value", "session.output_modalities"),
    ({"output_modalities": ["video"]}, "invalid_value", "session.output_modalities[0]"),
    ({"output_modalities": "audio"}, "invalid_type", "session.output_modalities"),
    ({"max_output_tokens": 0}, "invalid_value", "session.max_output_tokens"),
    ({"max_output_tokens": 4097}, "invalid_value", "session.max_output_tokens"),
    ({"max_output_tokens": "infinite"}, "invalid_value", "session.max_output_tokens"),
    ({"max_output_tokens": 1.5}, "invalid_type", "session.max_output_tokens"),
    ({"max_output_tokens": True}, "invalid_type", "session.max_output_tokens"),
    ({"tools": [{"type": "function", "name": "f"}]}, "unsupported", "session.tools"),
    ({"prompt": {"id": "pmpt_1"}}, "unsupported", "session.prompt"),
    ({"model": 4}, "invalid_type", "session.model"),
    ({"tracing": "manual"}, "invalid_value", "session.tracing"),
    ({"temperature": 0.8}, "unknown_parameter", "session.temperature"),
    ({"modalities": ["text"]}, "unknown_parameter", "session.modalities"),
    ({"voice": "alloy"}, "unknown_parameter", "session.voice"),
    ({"audio": []}, "invalid_type", "session.audio"),
    ({"audio": {"inputs": {}}}, "unknown_parameter", "session.audio.inputs"),
    ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "unsupported_audio_format",
     "session.audio.input.format.type"),
    ({"audio": {"output": {"format": {"type": "audio/pcma"}}}}, "unsupported_audio_format",
     "session.audio.output.format.type"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}}, "unsupported_audio_format",
     "session.audio.input.format.rate"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": "24000"}}}}, "invalid_type",
     "session.audio.input.format.rate"),
    ({"audio": {"input": {"format": {"type": "audio/opus"}}}}, "invalid_value", "session.audio.input.format.type"),
    ({"audio": {"input": {"format": {"rate": 24000}}}}, "missing_required_parameter",
     "session.audio.input.format.type"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "bits": 16}}}}, "unknown_parameter",
     "session.audio.input.format.bits"),
    ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}, "unsupported",
     "session.audio.input.turn_detection.type"),
    ({"audio": {"input": {"turn_detection": {"threshold": 0.5}}}}, "missing_required_parameter",
     "session.audio.input.turn_detection.type"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}}, "invalid_value",
     "session.audio.input.turn_detection.threshold"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 0}}}}, "invalid_value",
     "session.audio.input.turn_detection.silence_duration_ms"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": 300.5}}}}, "invalid_type",
     "session.audio.input.turn_detection.prefix_padding_ms"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": "yes"}}}}, "invalid_type",
     "session.audio.input.turn_detection.create_response"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}}, "unsupported",
     "session.audio.input.turn_detection.idle_timeout_ms"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}}, "unknown_parameter",
     "session.audio.input.turn_detection.eagerness"),
    ({"audio": {"input": {"transcription": "whisper-1"}}}, "invalid_type", "session.audio.input.transcription"),
    ({"audio": {"output": {"voice": "bob"}}}, "invalid_value", "session.audio.output.voice"),
    ({"audio": {"output": {"voice": "-1"}}}, "invalid_value", "session.audio.output.voice"),
    ({"audio": {"output": {"voice": {"id": "voice_1234"}}}}, "unsupported", "session.audio.output.voice"),
    ({"audio": {"output": {"voice": 2}}}, "invalid_type", "session.audio.output.voice"),
    ({"audio": {"output": {"speed": 2.0}}}, "invalid_value", "session.audio.output.speed"),
    ({"spiritlm": {"speaker": -1}}, "invalid_value", "session.spiritlm.speaker"),
    ({"spiritlm": {"speaker": "2"}}, "invalid_type", "session.spiritlm.speaker"),
    ({"spiritlm": {"output_modality": "audio"}}, "invalid_value", "session.spiritlm.output_modality"),
    ({"spiritlm": {"prompt_template": {"system": "x"}}}, "unknown_parameter", "session.spiritlm.prompt_template.system"),
    ({"spiritlm": {"prompt_template": {"user_cue": 1}}}, "invalid_type", "session.spiritlm.prompt_template.user_cue"),
    ({"spiritlm": {"seed": -3}}, "invalid_value", "session.spiritlm.seed"),
    ({"spiritlm": {"seed": 2**63}}, "invalid_value", "session.spiritlm.seed"),
    ({"spiritlm": {"greedy": 1}}, "invalid_type", "session.spiritlm.greedy"),
    ({"spiritlm": {"temperature": 0}}, "invalid_value", "session.spiritlm.temperature"),
    ({"spiritlm": {"top_p": 0}}, "invalid_value", "session.spiritlm.top_p"),
    ({"spiritlm": {"top_p": 1.01}}, "invalid_value", "session.spiritlm.top_p"),
    ({"spiritlm": {"top_k": -1}}, "invalid_value", "session.spiritlm.top_k"),
    ({"spiritlm": {"binary_audio": "true"}}, "invalid_type", "session.spiritlm.binary_audio"),
    ({"spiritlm": {"speed": 1}}, "unknown_parameter", "session.spiritlm.speed"),
    ({"output_modalities": ["text"], "spiritlm": {"output_modality": "speech"}}, "invalid_value",
     "session.spiritlm.output_modality"),
    ({"instructions": "a", "spiritlm": {"prompt_template": {"instruction": "b"}}}, "invalid_value",
     "session.spiritlm.prompt_template.instruction"),
])
def test_session_update_invalid(fields, code, param):
    err = fails(session(**fields), code, param)
    assert err.message


def test_session_update_structure_errors():
    fails({"type": "session.update"}, "missing_required_parameter", "session")
    fails({"type": "session.update", "session": None}, "invalid_type", "session")
    err = fails({"type": "session.update", "session": {"instructions": "x"}}, "missing_required_parameter",
                "session.type")
    assert err.message == "Missing required parameter: 'session.type'."
    err = fails(session(temperature=1), "unknown_parameter")
    assert "spiritlm.temperature" in err.message


@pytest.mark.parametrize("item, code, param", [
    (None, "invalid_type", "item"),
    ({"role": "user", "content": []}, "missing_required_parameter", "item.type"),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "unsupported", "item.type"),
    ({"type": "msg", "role": "user", "content": []}, "invalid_value", "item.type"),
    ({"type": "message", "content": []}, "missing_required_parameter", "item.role"),
    ({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]}, "unsupported",
     "item.role"),
    ({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]}, "unsupported",
     "item.role"),
    ({"type": "message", "role": "bot", "content": []}, "invalid_value", "item.role"),
    ({"type": "message", "role": "user"}, "missing_required_parameter", "item.content"),
    ({"type": "message", "role": "user", "content": []}, "invalid_value", "item.content"),
    ({"type": "message", "role": "user", "content": {}}, "invalid_type", "item.content"),
    ({"type": "message", "role": "user", "content": ["hi"]}, "invalid_type", "item.content[0]"),
    ({"type": "message", "role": "user", "content": [{"text": "x"}]}, "missing_required_parameter",
     "item.content[0].type"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text"}]}, "missing_required_parameter",
     "item.content[0].text"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": None}]}, "invalid_type",
     "item.content[0].text"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x", "audio": B64}]},
     "unknown_parameter", "item.content[0].audio"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio"}]}, "missing_required_parameter",
     "item.content[0].audio"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "a"}]}, "invalid_audio",
     "item.content[0].audio"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": ""}]}, "invalid_audio",
     "item.content[0].audio"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAAA"}]}, "invalid_audio",
     "item.content[0].audio"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": B64, "transcript": 1}]},
     "invalid_type", "item.content[0].transcript"),
    ({"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:"}]}, "unsupported",
     "item.content[0].type"),
    ({"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]}, "invalid_value",
     "item.content[0].type"),
    ({"type": "message", "role": "user", "id": "", "content": [{"type": "input_text", "text": "x"}]}, "invalid_value",
     "item.id"),
    ({"type": "message", "role": "user", "object": "item", "content": [{"type": "input_text", "text": "x"}]},
     "invalid_value", "item.object"),
    ({"type": "message", "role": "user", "status": "done", "content": [{"type": "input_text", "text": "x"}]},
     "invalid_value", "item.status"),
    ({"type": "message", "role": "user", "name": "x", "content": [{"type": "input_text", "text": "x"}]},
     "unknown_parameter", "item.name"),
])
def test_item_create_invalid(item, code, param):
    fails({"type": "conversation.item.create", "item": item}, code, param)


def test_item_create_event_level_errors():
    fails({"type": "conversation.item.create"}, "missing_required_parameter", "item")
    good = GA_EXAMPLES[4]["item"]
    fails({"type": "conversation.item.create", "item": good, "previous_item_id": 7}, "invalid_type", "previous_item_id")


@pytest.mark.parametrize("obj, code, param", [
    ({"content_index": 0, "audio_end_ms": 0}, "missing_required_parameter", "item_id"),
    ({"item_id": "i", "audio_end_ms": 0}, "missing_required_parameter", "content_index"),
    ({"item_id": "i", "content_index": 0}, "missing_required_parameter", "audio_end_ms"),
    ({"item_id": None, "content_index": 0, "audio_end_ms": 0}, "invalid_type", "item_id"),
    ({"item_id": "i", "content_index": -1, "audio_end_ms": 0}, "invalid_value", "content_index"),
    ({"item_id": "i", "content_index": 0, "audio_end_ms": 1.5}, "invalid_type", "audio_end_ms"),
    ({"item_id": "i", "content_index": False, "audio_end_ms": 0}, "invalid_type", "content_index"),
    ({"item_id": "i", "content_index": 0, "audio_end_ms": -5}, "invalid_value", "audio_end_ms"),
    ({"item_id": "x" * 65, "content_index": 0, "audio_end_ms": 0}, "invalid_value", "item_id"),
])
def test_truncate_invalid(obj, code, param):
    fails({"type": "conversation.item.truncate", **obj}, code, param)


def test_delete_cancel_commit_invalid():
    fails({"type": "conversation.item.delete"}, "missing_required_parameter", "item_id")
    fails({"type": "conversation.item.delete", "item_id": ["x"]}, "invalid_type", "item_id")
    fails({"type": "response.cancel", "response_id": 1}, "invalid_type", "response_id")
    fails({"type": "input_audio_buffer.commit", "audio": B64}, "unknown_parameter", "audio")
    fails({"type": "input_audio_buffer.clear", "x": None}, "unknown_parameter", "x")


@pytest.mark.parametrize("response, code, param", [
    ([], "invalid_type", "response"),
    ({"modalities": ["text"]}, "unknown_parameter", "response.modalities"),
    ({"conversation": "none"}, "unsupported", "response.conversation"),
    ({"conversation": 1}, "invalid_type", "response.conversation"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "unsupported", "response.input"),
    ({"tools": [{}]}, "unsupported", "response.tools"),
    ({"output_modalities": ["text", "audio"]}, "invalid_value", "response.output_modalities"),
    ({"max_output_tokens": -1}, "invalid_value", "response.max_output_tokens"),
    ({"metadata": {"k": 1}}, "invalid_type", "response.metadata.k"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "invalid_value", "response.metadata"),
    ({"metadata": {"k" * 65: "v"}}, "invalid_value", "response.metadata"),
    ({"metadata": {"k": "v" * 513}}, "invalid_value", "response.metadata.k"),
    ({"audio": {"input": {}}}, "unknown_parameter", "response.audio.input"),
    ({"audio": {"output": {"speed": 1.0}}}, "unknown_parameter", "response.audio.output.speed"),
    ({"audio": {"output": {"format": {"type": "audio/pcm", "rate": 8000}}}}, "unsupported_audio_format",
     "response.audio.output.format.rate"),
    ({"spiritlm": {"binary_audio": True}}, "unknown_parameter", "response.spiritlm.binary_audio"),
    ({"output_modalities": ["audio"], "spiritlm": {"output_modality": "text"}}, "invalid_value",
     "response.spiritlm.output_modality"),
])
def test_response_create_invalid(response, code, param):
    fails({"type": "response.create", "response": response}, code, param)


def test_error_messages_follow_ga_style():
    assert fails(session(instructions=1), "invalid_type").message == (
        "Invalid type for 'session.instructions': expected a string, but got an integer instead.")
    assert fails(session(foo=1), "unknown_parameter").message == "Unknown parameter: 'session.foo'."
    long = fails(session(audio={"output": {"voice": "x" * 1000}}), "invalid_value").message
    assert len(long) < 400


# ---------------------------------------------------------------------------- session merging
def update(config, **fields):
    return p.apply_session_update(config, parse(session(**fields)))


def test_defaults_and_partial_update_keeps_the_rest():
    c = SessionConfig()
    assert c.instructions == p.DEFAULT_INSTRUCTION and c.output_modalities == ("audio",)
    assert (c.input_rate, c.output_rate, c.voice, c.speaker, c.max_output_tokens) == (24000, 24000, "2", 2, "inf")
    assert c.turn_detection == p.ServerVad(0.5, 300, 500, True, True)
    c2 = update(c, instructions="")
    assert c2.instructions == "" and c2.prompt_template.user_cue == "\nUser:"
    assert c2 == dataclasses.replace(c, prompt_template=p.PromptTemplateConfig(instruction=""))
    assert update(c) == c
    assert update(c, model="gpt-realtime", tool_choice="none", tools=[], include=[], truncation="disabled") == c


def test_update_full_example_and_session_dict():
    c = p.apply_session_update(SessionConfig(), parse(VALID[len(GA_EXAMPLES)]))
    assert (c.input_rate, c.output_rate, c.turn_detection, c.voice, c.speaker) == (16000, 24000, None, "0", 0)
    assert (c.output_modality, c.output_modalities, c.seed, c.greedy, c.temperature, c.top_p, c.top_k) == (
        "arbitrary", ("audio",), 7, False, 0.8, 0.9, 40)
    assert c.binary_audio and c.prompt_template == p.PromptTemplateConfig("Chat.", "\nQ:", "\nA:")
    d = p.session_to_dict(c, session_id="sess_1")
    assert d["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
    assert d["audio"]["input"]["turn_detection"] is None
    assert d["spiritlm"] == {"speaker": 0, "output_modality": "arbitrary",
                             "prompt_template": {"instruction": "Chat.", "user_cue": "\nQ:", "assistant_cue": "\nA:"},
                             "seed": 7, "greedy": False, "temperature": 0.8, "top_p": 0.9, "top_k": 40,
                             "binary_audio": True}
    assert d["instructions"] == "Chat."


def test_turn_detection_merges_and_turns_off():
    c = SessionConfig()
    c = update(c, audio={"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}})
    assert c.turn_detection == p.ServerVad(silence_duration_ms=800)
    c = update(c, audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}})
    assert c.turn_detection == p.ServerVad(threshold=0.7, silence_duration_ms=800)
    c = update(c, audio={"input": {"turn_detection": None}})
    assert c.turn_detection is None
    c = update(c, audio={"input": {"format": {"type": "audio/pcm"}}})  # no turn_detection key: unchanged
    assert c.turn_detection is None
    c = update(c, audio={"input": {"turn_detection": {"type": "server_vad", "create_response": False}}})
    assert c.turn_detection == p.ServerVad(create_response=False)  # from the defaults


def test_modalities_mapping():
    c = SessionConfig()
    t = update(c, output_modalities=["text"])
    assert (t.output_modalities, t.output_modality) == (("text",), "text")
    a = update(t, output_modalities=["audio"])
    assert (a.output_modalities, a.output_modality) == (("audio",), "speech")
    arb = update(c, spiritlm={"output_modality": "arbitrary"})
    assert (arb.output_modalities, arb.output_modality) == (("audio",), "arbitrary")
    assert update(arb, output_modalities=["audio"]).output_modality == "arbitrary"
    assert update(arb, spiritlm={"output_modality": "text"}).output_modalities == ("text",)
    assert update(c, output_modalities=["text"], spiritlm={"output_modality": "text"}).output_modality == "text"


@pytest.mark.parametrize("voice, speaker", [("alloy", 0), ("ash", 1), ("ballad", 2), ("coral", 3), ("echo", 0),
                                            ("sage", 1), ("shimmer", 2), ("verse", 3), ("marin", 0), ("cedar", 1),
                                            ("0", 0), ("3", 3), ("02", 2)])
def test_voice_mapping(voice, speaker):
    c = update(SessionConfig(), audio={"output": {"voice": voice}})
    assert (c.voice, c.speaker) == (voice, speaker)
    assert p.session_to_dict(c)["audio"]["output"]["voice"] == voice
    assert p.session_to_dict(c)["spiritlm"]["speaker"] == speaker


def test_voice_depends_on_speaker_count_and_speaker_sets_voice():
    assert p.voice_to_speaker("coral", 2) == 1 and p.voice_to_speaker("cedar", 200) == 9
    big = SessionConfig(num_speakers=10)
    assert update(big, audio={"output": {"voice": "9"}}).speaker == 9
    err = fails_apply(SessionConfig(), audio={"output": {"voice": "4"}})
    assert (err.code, err.param) == ("invalid_value", "session.audio.output.voice") and "0..3" in err.message
    err = fails_apply(SessionConfig(), spiritlm={"speaker": 4})
    assert (err.code, err.param) == ("invalid_value", "session.spiritlm.speaker")
    c = update(SessionConfig(), spiritlm={"speaker": 1})
    assert (c.voice, c.speaker) == ("1", 1)
    c = update(update(SessionConfig(), audio={"output": {"voice": "sage"}}), spiritlm={"speaker": 1})
    assert (c.voice, c.speaker) == ("sage", 1)  # same speaker: the voice name stays
    c = update(SessionConfig(), audio={"output": {"voice": "alloy"}}, spiritlm={"speaker": 0})
    assert (c.voice, c.speaker) == ("alloy", 0)
    err = fails_apply(SessionConfig(), audio={"output": {"voice": "alloy"}}, spiritlm={"speaker": 1})
    assert (err.code, err.param) == ("invalid_value", "session.spiritlm.speaker")


def fails_apply(config, *, voice_locked=False, **fields):
    ev = parse({**session(**fields), "event_id": "evt_9"})
    with pytest.raises(ProtocolError) as info:
        p.apply_session_update(config, ev, voice_locked=voice_locked)
    assert info.value.event_id == "evt_9"
    return info.value


def test_voice_lock():
    c = update(SessionConfig(), audio={"output": {"voice": "marin"}})  # speaker 0
    err = fails_apply(c, voice_locked=True, audio={"output": {"voice": "ash"}})
    assert err.code == "cannot_update_voice"
    assert err.message == "Cannot update a conversation's voice if assistant audio is present."
    assert fails_apply(c, voice_locked=True, spiritlm={"speaker": 3}).code == "cannot_update_voice"
    same = p.apply_session_update(c, parse(session(audio={"output": {"voice": "alloy"}})), voice_locked=True)
    assert same.speaker == 0 and same.voice == "alloy"
    assert p.apply_session_update(c, parse(session(instructions="x")), voice_locked=True).instructions == "x"


def test_apply_accepts_a_bare_patch():
    patch = p.SessionPatch(max_output_tokens=20, binary_audio=True)
    c = p.apply_session_update(SessionConfig(), patch)
    assert c.max_output_tokens == 20 and c.binary_audio


def test_response_config_overrides_without_persisting():
    c = SessionConfig()
    ev = parse(GA_EXAMPLES[7])
    r = p.response_config(c, ev)
    assert (r.instructions, r.output_modalities, r.output_modality, r.max_output_tokens, r.voice, r.speaker) == (
        "x", ("text",), "text", "inf", "ash", 1)
    assert c == SessionConfig()
    assert p.response_config(c, parse({"type": "response.create"})) is c
    ev = parse({"type": "response.create", "event_id": "e", "response": {"audio": {"output": {"voice": "0"}}}})
    with pytest.raises(ProtocolError) as info:
        p.response_config(c, ev, voice_locked=True)
    assert (info.value.code, info.value.param, info.value.event_id) == (
        "cannot_update_voice", "response.audio.output.voice", "e")
    r = p.response_config(c, parse(VALID[-1]))
    assert (r.output_modality, r.seed, r.top_k) == ("text", None, 0)


# ---------------------------------------------------------------------------- server events: shapes
# realtime_session_create_response.py (RealtimeSessionCreateResponse) + our "spiritlm"
SESSION_FIELDS = {"id", "object", "type", "audio", "expires_at", "include", "instructions", "max_output_tokens",
                  "model", "output_modalities", "prompt", "reasoning", "tool_choice", "tools", "tracing", "truncation"}
# realtime_response.py (RealtimeResponse)
RESPONSE_FIELDS = {"id", "audio", "conversation_id", "max_output_tokens", "metadata", "object", "output",
                   "output_modalities", "status", "status_details", "usage"}
# realtime_conversation_item_user_message.py / realtime_conversation_item_assistant_message.py
ITEM_FIELDS = {"content", "role", "type", "id", "object", "status"}
USER_CONTENT_FIELDS = {"audio", "detail", "image_url", "text", "transcript", "type"}
ASSISTANT_CONTENT_FIELDS = {"audio", "text", "transcript", "type"}
# response_content_part_added_event.py (Part)
PART_FIELDS = {"audio", "text", "transcript", "type"}
# realtime_response_usage*.py, realtime_response_status.py, realtime_error.py
USAGE_FIELDS = {"input_token_details", "input_tokens", "output_token_details", "output_tokens", "total_tokens"}
INPUT_DETAILS = {"audio_tokens", "cached_tokens", "cached_tokens_details", "image_tokens", "text_tokens"}
OUTPUT_DETAILS = {"audio_tokens", "text_tokens"}
STATUS_FIELDS = {"error", "reason", "type"}
ERROR_FIELDS = {"message", "type", "code", "event_id", "param"}
PART_REF = {"response_id", "item_id", "output_index", "content_index"}
EVENT_FIELDS = {
    "session.created": {"event_id", "session", "type"},  # session_created_event.py
    "session.updated": {"event_id", "session", "type"},  # session_updated_event.py
    "input_audio_buffer.speech_started": {"audio_start_ms", "event_id", "item_id", "type"},
    "input_audio_buffer.speech_stopped": {"audio_end_ms", "event_id", "item_id", "type"},
    "input_audio_buffer.committed": {"event_id", "item_id", "type", "previous_item_id"},
    "input_audio_buffer.cleared": {"event_id", "type"},
    "conversation.item.added": {"event_id", "item", "type", "previous_item_id"},  # conversation_item_added.py
    "conversation.item.done": {"event_id", "item", "type", "previous_item_id"},  # conversation_item_done.py
    "conversation.item.truncated": {"audio_end_ms", "content_index", "event_id", "item_id", "type"},
    "conversation.item.deleted": {"event_id", "item_id", "type"},
    "response.created": {"event_id", "response", "type"},
    "response.output_item.added": {"event_id", "item", "output_index", "response_id", "type"},
    "response.output_item.done": {"event_id", "item", "output_index", "response_id", "type"},
    "response.content_part.added": {"event_id", "part", "type"} | PART_REF,
    "response.content_part.done": {"event_id", "part", "type"} | PART_REF,
    "response.output_audio.delta": {"event_id", "delta", "type"} | PART_REF,  # response_audio_delta_event.py
    "response.output_audio.done": {"event_id", "type"} | PART_REF,  # response_audio_done_event.py
    "response.output_audio_transcript.delta": {"event_id", "delta", "type"} | PART_REF,
    "response.output_audio_transcript.done": {"event_id", "transcript", "type"} | PART_REF,
    "response.output_text.delta": {"event_id", "delta", "type"} | PART_REF,  # response_text_delta_event.py
    "response.output_text.done": {"event_id", "text", "type"} | PART_REF,  # response_text_done_event.py
    "response.done": {"event_id", "response", "type"},
    "error": {"error", "event_id", "type"},  # realtime_error_event.py
}


def all_server_events(ids=None):
    """One of each server event, as the server would send them for one audio turn."""
    ids = ids or p.SequentialIds()
    cfg = SessionConfig()
    ref = p.PartRef("resp_1", "item_2", 0, 0)
    user = p.user_message_item("item_1", [p.input_audio_content(None)])
    assistant = p.assistant_message_item("item_2")
    done_item = p.assistant_message_item("item_2", [p.output_audio_content("hi")], status="completed")
    resp = p.response_object("resp_1", cfg, conversation_id="conv_1")
    final = p.response_object("resp_1", cfg, status="completed", output=[done_item],
                              usage=p.usage(input_text_tokens=5, input_audio_tokens=50, output_text_tokens=2,
                                            output_audio_tokens=40, cached_tokens=30), conversation_id="conv_1")
    tref = p.PartRef("resp_2", "item_3", 0, 0)
    return [
        p.session_created(cfg, session_id="sess_1", ids=ids),
        p.session_updated(cfg, session_id="sess_1", ids=ids),
        p.input_audio_buffer_speech_started(audio_start_ms=120, item_id="item_1", ids=ids),
        p.input_audio_buffer_speech_stopped(audio_end_ms=1800, item_id="item_1", ids=ids),
        p.input_audio_buffer_committed(item_id="item_1", ids=ids),
        p.input_audio_buffer_cleared(ids=ids),
        p.conversation_item_added(user, ids=ids),
        p.conversation_item_done(user, ids=ids),
        p.response_created(resp, ids=ids),
        p.response_output_item_added(response_id="resp_1", output_index=0, item=assistant, ids=ids),
        p.conversation_item_added(assistant, previous_item_id="item_1", ids=ids),
        p.response_content_part_added(ref, p.audio_part(), ids=ids),
        p.response_output_audio_delta(ref, PCM, ids=ids),
        p.response_output_audio_transcript_delta(ref, "hi", ids=ids),
        p.response_output_audio_done(ref, ids=ids),
        p.response_output_audio_transcript_done(ref, "hi", ids=ids),
        p.response_content_part_done(ref, p.audio_part("hi"), ids=ids),
        p.conversation_item_done(done_item, previous_item_id="item_1", ids=ids),
        p.response_output_item_done(response_id="resp_1", output_index=0, item=done_item, ids=ids),
        p.response_done(final, latency={"first_audio_s": 0.21, "total_s": 1.5}, ids=ids),
        p.response_content_part_added(tref, p.text_part(), ids=ids),
        p.response_output_text_delta(tref, "ok", ids=ids),
        p.response_output_text_done(tref, "ok", ids=ids),
        p.response_content_part_done(tref, p.text_part("ok"), ids=ids),
        p.conversation_item_truncated(item_id="item_2", content_index=0, audio_end_ms=500, ids=ids),
        p.conversation_item_deleted(item_id="item_2", ids=ids),
        p.error_event(ProtocolError("invalid_value", "bad", param="x", event_id="evt_1"), ids=ids),
    ]


def test_every_server_event_has_the_ga_fields():
    events = all_server_events()
    assert {e["type"] for e in events} == set(EVENT_FIELDS)
    for e in events:
        assert set(e) == EVENT_FIELDS[e["type"]], e["type"]
        json.dumps(e, allow_nan=False)
    assert [e["event_id"] for e in events] == [f"event_{i}" for i in range(1, len(events) + 1)]


def test_nested_objects_match_the_ga_types():
    events = {e["type"] + str(i): e for i, e in enumerate(all_server_events())}
    for e in events.values():
        if "session" in e:
            s = e["session"]
            assert set(s) - {"spiritlm"} <= SESSION_FIELDS and s["type"] == "realtime" and s["id"] == "sess_1"
            assert set(s["audio"]) == {"input", "output"}
            assert set(s["audio"]["input"]) == {"format", "noise_reduction", "transcription", "turn_detection"}
            assert set(s["audio"]["output"]) == {"format", "speed", "voice"}
            assert set(s["audio"]["input"]["turn_detection"]) == {
                "type", "create_response", "idle_timeout_ms", "interrupt_response", "prefix_padding_ms",
                "silence_duration_ms", "threshold"}
        if "response" in e:
            r = e["response"]
            extra = {"spiritlm"} if e["type"] == "response.done" else set()
            assert set(r) == RESPONSE_FIELDS | extra and r["object"] == "realtime.response"
            assert set(r["audio"]) == {"output"} and set(r["audio"]["output"]) == {"format", "voice"}
            for item in r["output"]:
                assert set(item) == ITEM_FIELDS
        if "item" in e:
            item = e["item"]
            assert set(item) == ITEM_FIELDS and item["object"] == "realtime.item" and item["type"] == "message"
            allowed = USER_CONTENT_FIELDS if item["role"] == "user" else ASSISTANT_CONTENT_FIELDS
            for c in item["content"]:
                assert set(c) <= allowed
        if "part" in e:
            assert set(e["part"]) <= PART_FIELDS and e["part"]["type"] in ("audio", "text")
        if e["type"] == "error":
            assert set(e["error"]) == ERROR_FIELDS
    done = next(e for e in events.values() if e["type"] == "response.done")["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["spiritlm"] == {"latency": {"first_audio_s": 0.21, "total_s": 1.5}}
    u = done["usage"]
    assert set(u) == USAGE_FIELDS and set(u["input_token_details"]) == INPUT_DETAILS
    assert set(u["output_token_details"]) == OUTPUT_DETAILS
    assert (u["input_tokens"], u["output_tokens"], u["total_tokens"]) == (55, 42, 97)


def test_audio_delta_is_base64_pcm():
    e = p.response_output_audio_delta(p.PartRef("r", "i", 1, 2), PCM, ids=p.SequentialIds())
    assert e == {"type": "response.output_audio.delta", "event_id": "event_1", "response_id": "r", "item_id": "i",
                 "output_index": 1, "content_index": 2, "delta": B64}
    assert base64.b64decode(e["delta"]) == PCM


def test_status_details():
    assert p.status_details("completed") is None and p.status_details("in_progress") is None
    assert p.status_details("cancelled", "turn_detected") == {"type": "cancelled", "reason": "turn_detected"}
    assert p.status_details("incomplete", "max_output_tokens") == {"type": "incomplete", "reason": "max_output_tokens"}
    failed = p.status_details("failed", error_code="context_full")
    assert set(failed) <= STATUS_FIELDS and failed["error"] == {"type": "server_error", "code": "context_full"}
    for bad in (("cancelled", None), ("cancelled", "max_output_tokens"), ("incomplete", "client_cancelled"),
                ("exploded", None)):
        with pytest.raises(ValueError):
            p.status_details(*bad)
    with pytest.raises(ValueError):
        p.response_object("r", SessionConfig(), status="done")


def test_response_object_follows_effective_config():
    cfg = p.response_config(SessionConfig(), parse(GA_EXAMPLES[7]))
    r = p.response_object("resp_9", cfg, status="cancelled", status_details=p.status_details("cancelled",
                          "client_cancelled"), metadata={"k": "v"})
    assert r["output_modalities"] == ["text"] and r["max_output_tokens"] == "inf"
    assert r["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "ash"}
    assert r["metadata"] == {"k": "v"} and r["conversation_id"] is None and r["output"] == []


def test_session_created_matches_defaults():
    e = p.session_created(SessionConfig(model="spirit-lm-expressive-7b"), session_id="sess_x", ids=p.SequentialIds())
    s = e["session"]
    assert s["object"] == "realtime.session" and s["model"] == "spirit-lm-expressive-7b"
    assert s["output_modalities"] == ["audio"] and s["instructions"] == p.DEFAULT_INSTRUCTION
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
        "create_response": True, "interrupt_response": True, "idle_timeout_ms": None}
    assert s["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "2", "speed": 1.0}
    assert s["max_output_tokens"] == "inf" and s["tools"] == [] and s["spiritlm"]["binary_audio"] is False
    assert "id" not in p.session_to_dict(SessionConfig())
    assert p.session_to_dict(SessionConfig(), expires_at=5)["expires_at"] == 5


def test_items_from_client_messages():
    ev = parse(GA_EXAMPLES[4])
    item = p.user_item_to_dict(ev.item, "item_ignored")
    assert item == {"id": "msg_1", "object": "realtime.item", "type": "message", "status": "completed",
                    "role": "user", "content": [{"type": "input_text", "text": "hi"},
                                                {"type": "input_audio", "transcript": "hm"}]}
    anon = p.UserMessage(content=(p.InputText("x"),))
    assert p.user_item_to_dict(anon, "item_7")["id"] == "item_7"
    with pytest.raises(ValueError):
        p.user_item_to_dict(anon)
    with pytest.raises(ValueError):
        p.user_message_item("i", [], status="weird")


def test_ids():
    ids = p.SequentialIds()
    assert [ids("event"), ids("item"), ids("event")] == ["event_1", "item_1", "event_2"]
    a, b = p.new_id("event"), p.new_id("event")
    assert a != b and a.startswith("event_") and len(a) == len("event_") + 20
    assert p.input_audio_buffer_cleared()["event_id"].startswith("event_")


def test_pcm16_duration():
    assert p.pcm16_duration_ms(48_000, 24_000) == 1000 and p.pcm16_duration_ms(3, 16_000) == 0
    assert p.pcm16_duration_ms(32_000, 16_000) == 1000


def test_builders_validate_against_openai_sdk():
    realtime = pytest.importorskip("openai.types.realtime")
    from pydantic import TypeAdapter

    server = TypeAdapter(realtime.RealtimeServerEvent)
    for e in all_server_events():
        model = server.validate_python(e)
        assert model.type == e["type"]
    client = TypeAdapter(realtime.RealtimeClientEvent)
    for obj in GA_EXAMPLES:
        assert client.validate_python(obj).type == obj["type"]


# ---------------------------------------------------------------------------- binary frames
def test_binary_frames():
    off = SessionConfig()
    on = update(off, spiritlm={"binary_audio": True})
    assert p.pack_audio_frame(PCM) == PCM and p.pack_audio_frame(bytearray(PCM)) == PCM
    with pytest.raises(ValueError):
        p.pack_audio_frame(b"\x00")
    assert p.unpack_audio_frame(memoryview(PCM), on) == p.InputAudioBufferAppend(audio=PCM)
    assert p.unpack_audio_frame(b"", on).audio == b""
    with pytest.raises(ProtocolError) as info:
        p.unpack_audio_frame(PCM, off)
    assert info.value.code == "binary_audio_disabled"
    with pytest.raises(ProtocolError) as info:
        p.unpack_audio_frame(PCM + b"\x01", on)
    assert info.value.code == "invalid_audio" and info.value.param is None
    ref = p.PartRef("r", "i")
    assert p.output_audio_message(on, ref, PCM) == PCM
    msg = p.output_audio_message(off, ref, PCM, ids=p.SequentialIds())
    assert msg["type"] == "response.output_audio.delta" and base64.b64decode(msg["delta"]) == PCM
    assert p.session_to_dict(on)["spiritlm"]["binary_audio"] is True


# ---------------------------------------------------------------------------- fuzzing
def check(obj):
    """validate_client_event returns a client event or raises ProtocolError; so do the steps after it."""
    try:
        ev = p.validate_client_event(obj)
    except ProtocolError as err:
        assert isinstance(err.code, str) and isinstance(err.message, str) and err.message
        assert err.param is None or isinstance(err.param, str)
        assert err.event_id is None or isinstance(err.event_id, str)
        json.dumps(p.error_event(err))
        return None
    assert isinstance(ev, CLIENT_CLASSES)
    try:
        if isinstance(ev, p.SessionUpdate):
            cfg = p.apply_session_update(SessionConfig(), ev)
            json.dumps(p.session_to_dict(cfg), allow_nan=False)
        elif isinstance(ev, p.ResponseCreate):
            cfg = p.response_config(SessionConfig(), ev)
            json.dumps(p.response_object("r", cfg, metadata=ev.response and ev.response.metadata), allow_nan=False)
        elif isinstance(ev, p.ConversationItemCreate):
            json.dumps(p.user_item_to_dict(ev.item, "item_1"))
    except ProtocolError:
        pass
    return ev


def check_text(obj):
    try:
        text = json.dumps(obj)
    except (ValueError, TypeError, RecursionError):
        return
    try:
        ev = p.parse_client_event(text)
    except ProtocolError:
        return
    assert isinstance(ev, CLIENT_CLASSES)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                      max_size=4), max_leaves=24)
KEYS = ["type", "event_id", "session", "audio", "input", "output", "format", "rate", "turn_detection", "threshold",
        "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response", "idle_timeout_ms",
        "voice", "speed", "instructions", "output_modalities", "max_output_tokens", "tools", "tool_choice", "model",
        "spiritlm", "speaker", "output_modality", "prompt_template", "instruction", "user_cue", "assistant_cue",
        "seed", "greedy", "temperature", "top_p", "top_k", "binary_audio", "item", "content", "role", "text",
        "transcript", "id", "object", "status", "previous_item_id", "item_id", "content_index", "audio_end_ms",
        "response", "response_id", "metadata", "conversation", "transcription", "noise_reduction", "prompt"]
WORDS = list(p.CLIENT_EVENT_TYPES) + [
    "realtime", "transcription", "audio/pcm", "audio/pcmu", "server_vad", "semantic_vad", "message", "user",
    "system", "input_text", "input_audio", "input_image", "audio", "text", "speech", "arbitrary", "inf", "auto",
    "none", "alloy", "cedar", "0", "3", "7", B64, "AAA", "AAE=", "", "realtime.item", 24000, 16000, 8000, 0, 1, -1,
    4096, 0.5, 1.5, 2**63]
smart_values = st.recursive(
    st.sampled_from(WORDS) | leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(KEYS), c, max_size=4),
    max_leaves=16)
junk = st.sampled_from(WORDS) | leaf | smart_values


def maybe(valid):
    """Mostly a valid value, sometimes (1 in 10) junk, so that fuzzing reaches deep into each event."""
    return st.sampled_from([False] * 9 + [True]).flatmap(lambda bad: junk if bad else valid)


def fields(**optional):
    return st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in optional.items()})


fmt = fields(type=st.sampled_from(["audio/pcm", "audio/pcmu"]), rate=st.sampled_from([24000, 16000, 8000]))
vad = st.none() | st.fixed_dictionaries({"type": maybe(st.just("server_vad"))}, optional={
    k: maybe(v) for k, v in dict(threshold=st.floats(0, 1), prefix_padding_ms=st.integers(0, 10_000),
                                 silence_duration_ms=st.integers(1, 10_000), create_response=st.booleans(),
                                 interrupt_response=st.booleans(), idle_timeout_ms=st.none()).items()})
voices = st.sampled_from(list(p.OPENAI_VOICES) + ["0", "1", "3", "4", "17"])
spiritlm = fields(speaker=st.integers(0, 5), output_modality=st.sampled_from(["speech", "text", "arbitrary"]),
                  prompt_template=fields(instruction=st.text(max_size=8), user_cue=st.text(max_size=8),
                                         assistant_cue=st.text(max_size=8)),
                  seed=st.none() | st.integers(0, 2**63 - 1), greedy=st.booleans(),
                  temperature=st.floats(0.01, 100), top_p=st.floats(0.01, 1), top_k=st.integers(0, 100),
                  binary_audio=st.booleans())
common = dict(instructions=st.text(max_size=10), output_modalities=st.sampled_from([["audio"], ["text"]]),
              max_output_tokens=st.sampled_from(["inf", 1, 200, 4096]), tools=st.just([]), tool_choice=st.just("auto"))
near_session = st.builds(lambda kind, rest: {"type": kind, **rest}, maybe(st.just("realtime")), fields(
    **common, audio=fields(input=fields(format=fmt, turn_detection=vad, transcription=st.none()),
                           output=fields(format=fmt, voice=voices, speed=st.floats(0.25, 1.5))),
    spiritlm=spiritlm))
near_response = fields(**common, metadata=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
                       conversation=st.just("auto"), audio=fields(output=fields(format=fmt, voice=voices)),
                       spiritlm=spiritlm)
b64 = st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode())
content_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": maybe(st.text(max_size=8))}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "audio": maybe(b64)},
                          optional={"transcript": maybe(st.text(max_size=8))}))
near_item = st.fixed_dictionaries(
    {"type": maybe(st.just("message")), "role": maybe(st.just("user")),
     "content": maybe(st.lists(maybe(content_part), min_size=1, max_size=3))},
    optional={"id": maybe(st.text(min_size=1, max_size=8)), "status": maybe(st.just("completed"))})
event_id = {"event_id": maybe(st.text(min_size=1, max_size=6))}
near_events = st.one_of(
    st.fixed_dictionaries({"type": st.just("session.update"), "session": maybe(near_session)}, optional=event_id),
    st.fixed_dictionaries({"type": st.just("input_audio_buffer.append"), "audio": maybe(b64)}, optional=event_id),
    st.fixed_dictionaries({"type": st.just("conversation.item.create"), "item": maybe(near_item)},
                          optional={**event_id, "previous_item_id": maybe(st.text(min_size=1, max_size=6))}),
    st.fixed_dictionaries({"type": st.just("conversation.item.truncate"), "item_id": maybe(st.text(min_size=1, max_size=6)),
                           "content_index": maybe(st.integers(0, 3)), "audio_end_ms": maybe(st.integers(0, 10**6))},
                          optional=event_id),
    st.fixed_dictionaries({"type": st.just("response.create")}, optional={**event_id, "response": maybe(near_response)}),
    st.fixed_dictionaries({"type": st.just("response.cancel")},
                          optional={**event_id, "response_id": maybe(st.text(min_size=1, max_size=6))}),
    st.fixed_dictionaries({"type": st.just("conversation.item.delete"), "item_id": maybe(st.text(min_size=1, max_size=6))},
                          optional=event_id),
    st.fixed_dictionaries({"type": st.sampled_from(["input_audio_buffer.commit", "input_audio_buffer.clear"])},
                          optional=event_id),
)


def _positions(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            _positions(v, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            _positions(v, out)
    return out


@st.composite
def mutated_events(draw):
    ev = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        positions = _positions(ev, [])
        container, key = draw(st.sampled_from(positions))
        op = draw(st.sampled_from(["delete", "replace", "replace_smart", "add", "null"]))
        if op == "delete":
            del container[key]
        elif op == "replace":
            container[key] = draw(json_values)
        elif op == "replace_smart":
            container[key] = draw(smart_values)
        elif op == "null":
            container[key] = None
        else:
            dicts = [c for c, _ in positions if isinstance(c, dict)] + [ev]
            target = draw(st.sampled_from(dicts))
            target[draw(st.sampled_from(KEYS) | st.text(max_size=6))] = draw(smart_values)
        if not isinstance(ev, dict) or not ev:
            break
    return ev


@FUZZ
@given(st.text())
def test_fuzz_text(text):
    try:
        ev = p.parse_client_event(text)
    except ProtocolError:
        return
    assert isinstance(ev, CLIENT_CLASSES)


@FUZZ
@given(st.binary())
def test_fuzz_bytes(data):
    try:
        ev = p.parse_client_event(data)
    except ProtocolError:
        return
    assert isinstance(ev, CLIENT_CLASSES)
    on = SessionConfig(binary_audio=True)
    try:
        assert p.unpack_audio_frame(data, on).audio == data
    except ProtocolError as err:
        assert err.code == "invalid_audio"


@FUZZ
@given(json_values)
def test_fuzz_json_values(obj):
    check(obj)
    check_text(obj)


@FUZZ
@given(near_events)
def test_fuzz_near_valid_events(obj):
    check(obj)
    check_text(obj)


@FUZZ
@given(mutated_events())
def test_fuzz_mutations_of_valid_events(obj):
    check(obj)
    check_text(obj)


def test_mutation_fuzzing_reaches_deep_errors():
    """Sanity: the valid corpus really is valid and single mutations produce many kinds of error."""
    for obj in VALID:
        assert check(obj) is not None
    codes = set()
    for obj in VALID:
        for i in range(len(_positions(obj, []))):
            for junk in ({"?": 1}, "zz", -1):
                broken = copy.deepcopy(obj)
                container, key = _positions(broken, [])[i]
                container[key] = junk
                try:
                    p.validate_client_event(broken)
                except ProtocolError as err:
                    codes.add(err.code)
    assert {"invalid_type", "unknown_parameter", "invalid_value", "unknown_event", "unsupported", "invalid_audio",
            "unsupported_audio_format"} <= codes
