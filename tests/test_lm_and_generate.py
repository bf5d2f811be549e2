"""Tokenizer ids, modality forcing, cached decoding and offline generate."""

import random

import numpy as np
import pytest
import sentencepiece as spm
import torch

from agent.spiritlm.errors import InvalidArgumentError
from agent.spiritlm.lm import SamplingConfig, forward_last_logits, new_cache, next_token
from agent.spiritlm.make_checkpoints import SPECIAL_TOKENS_BASE, SPECIAL_TOKENS_EXPRESSIVE, build_sentencepiece
from agent.spiritlm.model import PromptPart


def test_seven_b_tokenizer_uses_the_release_id_layout(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(build_sentencepiece(32000, SPECIAL_TOKENS_EXPRESSIVE))
    sp = spm.SentencePieceProcessor(model_file=str(path))
    ids = {p: sp.PieceToId(p) for p in ("[Text]", "[Speech]", "[Hu0]", "[Hu500]", "[Pi0]", "[St0]", "[St99]")}
    assert ids == {"[Text]": 32000, "[Speech]": 32001, "[Hu0]": 32002, "[Hu500]": 32502, "[Pi0]": 32503, "[St0]": 32567, "[St99]": 32666}
    assert sp.GetPieceSize() == 32667 and (sp.bos_id(), sp.eos_id(), sp.unk_id()) == (1, 2, 0)


def test_prompt_ids(models):
    tok = models["base"].tokenizer
    hu12, speech = tok.token_id("[Hu12]"), tok.token_id("[Speech]")
    ids = tok.encode("[Speech][Hu12][Hu12][Text] hello")
    assert ids[0] == tok.bos_id and ids[2:5] == [speech, hu12, hu12]
    assert tok.decode(ids) == "[Speech][Hu12][Hu12][Text] hello"
    assert tok.encode("a<s>b") == [tok.bos_id] + tok.sp.EncodeAsIds("a") + [tok.bos_id] + tok.sp.EncodeAsIds("b")
    assert tok.decode(tok.encode("héllo 日本")) == "héllo 日本"  # byte fallback


def test_forbidden_ids(models):
    for variant, special in (("base", SPECIAL_TOKENS_BASE), ("expressive", SPECIAL_TOKENS_EXPRESSIVE)):
        tok = models[variant].tokenizer
        text = set(tok.forbidden_ids("text", variant == "expressive"))
        speech = set(tok.forbidden_ids("speech", variant == "expressive"))
        units = {tok.token_id(p) for p in special[2:]}
        markers = {tok.token_id("[Text]"), tok.token_id("[Speech]")}
        assert text == units | markers
        assert speech == set(range(tok.sp.GetPieceSize())) - units  # every text piece (eos too) and both markers
        assert tok.forbidden_ids("arbitrary", False) == []
    with pytest.raises(InvalidArgumentError):
        tok.forbidden_ids("video", False)


def test_cached_decoding_matches_a_full_forward(models):
    model = models["base"].model
    ids = models["base"].tokenizer.encode("[Speech][Hu1][Hu2][Hu3][Text] and so on")
    cache = new_cache()
    forward_last_logits(model, torch.tensor([ids[:5]]), cache)
    for i in range(5, len(ids)):
        step = forward_last_logits(model, torch.tensor([[ids[i]]]), cache)
    full = model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(step, full, atol=1e-4)


def test_next_token_rules():
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    assert next_token(logits, None, SamplingConfig(), None) == 1
    assert next_token(logits, torch.tensor([1]), SamplingConfig(), None) == 2
    cfg = SamplingConfig(do_sample=True, temperature=1.0, top_k=2, seed=0)
    draws = {next_token(logits, None, cfg, g) for g in [cfg.generator() for _ in range(1)] for _ in range(50)}
    assert draws <= {1, 2}
    cfg = SamplingConfig(do_sample=True, top_p=0.5, seed=0)
    assert {next_token(logits, None, cfg, cfg.generator()) for _ in range(20)} == {1}
    a = [next_token(logits, None, SamplingConfig(do_sample=True, seed=5), g) for g in [SamplingConfig(do_sample=True, seed=5).generator()] for _ in range(10)]
    b = [next_token(logits, None, SamplingConfig(do_sample=True, seed=5), g) for g in [SamplingConfig(do_sample=True, seed=5).generator()] for _ in range(10)]
    assert a == b
    with pytest.raises(InvalidArgumentError):
        SamplingConfig(do_sample=True, temperature=0)


def test_prompt_building(models, speech):
    model = models["base"]
    string = model.speech.encode_string(speech["hello"][0])
    parts = [PromptPart("speech", speech["hello"][1]), PromptPart("text", "and"), PromptPart("text", " then")]
    assert model.build_prompt(parts, "speech") == f"[Speech]{string}[Text]and then[Speech]"
    assert model.build_prompt(parts, "text") == f"[Speech]{string}[Text]and then"
    assert model.build_prompt([PromptPart("prompt", "[Speech][Hu1]")], "text") == "[Speech][Hu1]"


@pytest.mark.parametrize("variant", ["base", "expressive"])
def test_generate_each_modality(models, speech, variant):
    model = models[variant]
    parts = [PromptPart("speech", speech["weather"][1])]
    random.seed(0)  # a run with pitch but no style takes a random common style, as in the release
    result = model.generate(parts, output_modality="speech", max_new_tokens=30)
    assert len(result.token_ids) == 30 and result.generated.startswith(("[Hu", "[Pi", "[St"))
    assert all(t in model.tokenizer.unit_ids("Hu") + model.tokenizer.unit_ids("Pi") + model.tokenizer.unit_ids("St") for t in result.token_ids)
    assert [s.kind for s in result.segments] == ["speech"] and len(result.segments[0].audio) > 0
    random.seed(0)
    again = model.generate(parts, output_modality="speech", max_new_tokens=30)
    assert again.token_ids == result.token_ids and np.array_equal(again.segments[0].audio, result.segments[0].audio)

    text = model.generate([PromptPart("text", "the cat sat")], output_modality="text", max_new_tokens=12)
    assert [s.kind for s in text.segments] == ["text"]
    assert not set(text.token_ids) & set(model.tokenizer.unit_ids("Hu"))

    sampled = [model.generate([PromptPart("text", "hi")], max_new_tokens=20,
                              sampling=SamplingConfig(do_sample=True, temperature=0.9, top_p=0.95, seed=s)).token_ids for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_generate_rejects_bad_arguments(models):
    model = models["base"]
    with pytest.raises(InvalidArgumentError, match="unknown speaker"):
        model.generate([PromptPart("text", "x")], speaker=99)
    with pytest.raises(InvalidArgumentError, match="output modality"):
        model.generate([PromptPart("text", "x")], output_modality="video")
    with pytest.raises(InvalidArgumentError, match="window"):
        model.generate(prompt="[Hu1]" * 2000, max_new_tokens=5)


def test_decode_drops_a_leading_space_like_the_slow_tokenizer(models):
    tok = models["base"].tokenizer
    assert tok.decode(tok.encode(" hi")) == "hi" and tok.decode(tok.encode("  hi")) == " hi"
    assert tok.decode(tok.encode(" [Hu5]")) == "[Hu5]"


def test_speech_mode_never_bans_eos(models):
    model = models["base"]
    banned = set(model.banned_ids("speech").tolist())
    assert not banned & model.eos_ids and model.tokenizer.token_id("[Text]") in banned
