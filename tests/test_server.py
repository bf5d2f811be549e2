"""The Realtime server end to end over real sockets, with real (Piper) speech and tiny checkpoints."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import torch

from agent.conversation import PromptTemplate
from agent.spiritlm.audio import resample
from realtime_client import Client, pcm16, pcm_diff, reply_audio
from streaming.audio import InputConverter, OutputConverter

pytestmark = pytest.mark.slow


def wire_pcm(wav16: np.ndarray, rate: int, silence_s: tuple[float, float] = (0, 0)) -> bytes:
    """Speech (16 kHz float) as PCM16 at the wire rate, with leading/trailing silence."""
    audio = resample(np.asarray(wav16, np.float32)[None], 16000, rate)[0] if rate != 16000 else np.asarray(wav16)
    pad = [np.zeros(int(s * rate), np.float32) for s in silence_s]
    return pcm16(np.concatenate([pad[0], audio, pad[1]]))


def offline_reply(model, pcm: bytes, rate: int, max_tokens: int, template=PromptTemplate()) -> tuple[bytes, list[int]]:
    """What offline ``generate`` says to the same audio, as PCM16 at the wire rate."""
    conv = InputConverter(rate)
    wav16 = np.concatenate([conv.feed(pcm), conv.flush()])
    prompt = template.prefix() + template.user_speech(model.speech.encode_string(torch.from_numpy(wav16))) \
        + template.assistant_start("speech")
    result = model.generate(prompt=prompt, output_modality="speech", max_new_tokens=max_tokens)
    audio = np.concatenate([s.audio for s in result.segments if s.kind == "speech"])
    out = OutputConverter(rate)
    return out.feed_pcm16(audio) + out.flush_pcm16(), result.token_ids


async def manual_turn(client: Client, pcm: bytes) -> list[dict]:
    await client.append(pcm)
    await client.send("input_audio_buffer.commit")
    await client.send("response.create")
    return await client.until("response.done")


@pytest.mark.parametrize("rate,binary,variant", [(24000, False, "base"), (16000, True, "base"),
                                                 (24000, False, "expressive")])
def test_spoken_reply_equals_offline_generate(start_server, models, speech, rate, binary, variant):
    model = models[variant]
    server = start_server(variant)
    pcm = wire_pcm(speech["hello"][0].numpy(), rate)

    async def talk():
        client = await Client.open(server.url)
        session = await client.update(audio={"input": {"format": {"type": "audio/pcm", "rate": rate}, "turn_detection": None},
                                             "output": {"format": {"type": "audio/pcm", "rate": rate}}},
                                      max_output_tokens=40, spiritlm={"binary_audio": binary})
        assert session["audio"]["output"]["format"]["rate"] == rate
        if binary:
            for i in range(0, len(pcm), 6400):
                await client.ws.send(pcm[i:i + 6400])
            await client.send("input_audio_buffer.commit")
            await client.send("response.create")
            events = await client.until("response.done")
        else:
            events = await manual_turn(client, pcm)
        await client.close()
        return events

    events = asyncio.run(talk())
    kinds = [e["type"] for e in events if e["type"] not in ("response.output_audio.delta", "binary")]
    assert kinds == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
                     "response.created", "response.output_item.added", "conversation.item.added",
                     "response.content_part.added", "response.output_audio.done",
                     "response.output_audio_transcript.done", "response.content_part.done",
                     "response.output_item.done", "conversation.item.done", "response.done"], kinds
    assert any(e["type"] == ("binary" if binary else "response.output_audio.delta") for e in events)
    done = events[-1]["response"]
    assert done["status"] == "incomplete" and done["status_details"]["reason"] == "max_output_tokens"
    assert done["usage"]["output_tokens"] == 40
    latency = done["spiritlm"]["latency"]
    assert latency["tokens"] == 40 and 0 <= latency["first_audio_s"] <= latency["decode_s"]
    expected, _ = offline_reply(model, pcm, rate, 40)
    assert pcm_diff(reply_audio(events), expected) <= 1  # PCM16 +-1 LSB


def test_server_vad_turn_and_text_reply(start_server, speech):
    server = start_server()
    pcm = wire_pcm(speech["weather"][0].numpy(), 24000, (0.6, 1.0))

    async def talk():
        client = await Client.open(server.url)
        await client.update(output_modalities=["text"], max_output_tokens=12)  # server VAD is the default
        await client.append(pcm, chunk_bytes=4800)  # 100 ms chunks
        events = await client.until("response.done")
        await client.close()
        return events

    events = asyncio.run(talk())
    kinds = [e["type"] for e in events]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "response.created", "response.content_part.added", "response.output_text.done", "response.done"]
    assert [k for k in kinds if k in order] == order, kinds
    started, stopped = (next(e for e in events if e["type"] == k) for k in order[:2])
    assert 0 < started["audio_start_ms"] <= 600 < 600 + len(speech["weather"][0]) // 16 - 300 <= stopped["audio_end_ms"]
    assert started["item_id"] == stopped["item_id"] == next(e for e in events if e["type"] == order[2])["item_id"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert next(e for e in events if e["type"] == "response.output_text.done")["text"] == text
    assert events[-1]["response"]["output"][0]["content"][0] == {"type": "output_text", "text": text}


def test_barge_in_cancels_and_truncate_keeps_only_heard_audio(start_server, models, speech):
    model = models["base"]
    server = start_server()
    first = wire_pcm(speech["hello"][0].numpy(), 24000, (0.5, 0.8))
    second = wire_pcm(speech["weather"][0].numpy(), 24000, (0, 1.0))

    async def talk():
        client = await Client.open(server.url)
        await client.update(max_output_tokens=250)
        await client.append(first)
        before = await client.until("response.output_audio.delta")
        item_id = next(e for e in before if e["type"] == "response.output_item.added")["item"]["id"]
        await client.append(second)  # the user talks over the reply
        cancelled = await client.until("response.done")
        heard_bytes = len(reply_audio(before + cancelled))
        heard_ms = heard_bytes // 2 * 1000 // 24000 // 2  # the user heard half of what arrived
        await client.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=heard_ms)
        rest = await client.until("conversation.item.truncated")
        rest += await client.until("response.done")  # the reply to the second turn
        state = server.call(context)
        await client.close()
        return before + cancelled, rest, heard_ms, state

    def context():
        (conn,) = server.server.connections
        engine = conn.session.engine
        reply = engine._replies[1]
        return engine.session.ids, engine.context_text, reply, engine.session.logits.clone()

    first_reply, rest, heard_ms, (ids, text, reply, logits) = asyncio.run(talk())
    kinds = [e["type"] for e in first_reply]
    assert "input_audio_buffer.speech_started" in kinds[kinds.index("response.output_audio.delta"):]
    done = first_reply[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    assert done["output"][0]["status"] == "incomplete"
    assert any(e["type"] == "input_audio_buffer.committed" for e in rest)
    assert rest[-1]["response"]["status"] in ("completed", "incomplete")

    assert len(reply.token_ids) == reply.tokens_within(heard_ms * 16) < done["usage"]["output_tokens"]
    assert ids == model.tokenizer.encode(text)  # the context is exactly the truncated conversation
    assert torch.allclose(logits, model.model(input_ids=torch.tensor([ids])).logits[0, -1], atol=1e-4)


def test_eight_concurrent_sessions_get_their_own_replies(start_server, models, speech):
    model = models["base"]
    server = start_server(max_sessions=8)
    names = ["hello", "weather"]
    inputs = [wire_pcm(speech[names[i % 2]][0].numpy()[: 16000 + 4000 * i], 24000) for i in range(8)]

    async def one(pcm):
        client = await Client.open(server.url)
        await client.update(audio={"input": {"turn_detection": None}}, max_output_tokens=30)
        events = await manual_turn(client, pcm)
        await client.close()
        return events

    async def everyone():
        return await asyncio.gather(*(one(pcm) for pcm in inputs))

    results = asyncio.run(everyone())
    for pcm, events in zip(inputs, results):
        expected, _ = offline_reply(model, pcm, 24000, 30)
        assert pcm_diff(reply_audio(events), expected) <= 1
    registry = server.server.metrics.registry
    steps = registry.get_sample_value("spiritlm_agent_decode_batch_size_count")
    batched = registry.get_sample_value("spiritlm_agent_decode_batch_size_sum")
    assert batched == 8 * 30 and steps < batched  # decode steps were shared between sessions


@pytest.mark.parametrize("vad", [False, True])
def test_official_openai_client(start_server, speech, vad):
    openai = pytest.importorskip("openai")
    server = start_server(token="sk-test")
    pcm = wire_pcm(speech["hello"][0].numpy(), 24000, (0.5, 1.0) if vad else (0, 0))

    async def talk():
        client = openai.AsyncOpenAI(api_key="sk-test", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
        kinds, audio = [], b""
        async with client.realtime.connect(model="spirit-lm") as conn:
            turn_detection = {"type": "server_vad", "silence_duration_ms": 400} if vad else None
            await conn.session.update(session={"type": "realtime", "instructions": "A friendly chat.",
                                               "audio": {"input": {"turn_detection": turn_detection},
                                                         "output": {"voice": "alloy"}},
                                               "max_output_tokens": 30})
            for i in range(0, len(pcm), 4800):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + 4800]).decode())
            if not vad:
                await conn.input_audio_buffer.commit()
                await conn.response.create()
            async for event in conn:
                kinds.append(event.type)
                if event.type == "session.updated":
                    assert event.session.instructions == "A friendly chat."
                if event.type == "response.output_audio.delta":
                    audio += base64.b64decode(event.delta)
                if event.type == "response.done":
                    return kinds, audio, event.response

    kinds, audio, response = asyncio.run(talk())
    assert "session.updated" in kinds and ("input_audio_buffer.speech_stopped" in kinds) == vad
    assert response.status == "incomplete" and response.usage.output_tokens == 30 and len(audio) > 0


def test_long_conversation_outgrows_the_window_and_keeps_going(start_server, models):
    server = start_server()
    window = models["base"].max_positions  # tiny model: 1024 positions

    async def talk():
        client = await Client.open(server.url)
        await client.update(output_modalities=["text"], max_output_tokens=60, audio={"input": {"turn_detection": None}})
        statuses = []
        for turn in range(20):  # ~20 x (user text + 60 reply tokens): past the window
            await client.send("conversation.item.create", item={"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": f"turn {turn}: tell me something about the number {turn}."}]})
            await client.send("response.create")
            events = await client.until("response.done")
            assert not [e for e in events if e["type"] == "error"], events
            statuses.append(events[-1]["response"]["status"])
        state = server.call(lambda: (len(next(iter(server.server.connections)).session.items),
                                     len(next(iter(server.server.connections)).session.engine.session)))
        await client.close()
        return statuses, state

    statuses, (items, context_tokens) = asyncio.run(talk())
    assert set(statuses) <= {"completed", "incomplete"} and len(statuses) == 20
    assert context_tokens <= window and items < 40  # old turns left the window and the item list
