"""mHuBERT units, quantizers, pitch/style tokens and the vocoder on tiny checkpoints and Piper speech."""

import numpy as np
import pytest
import torch
from torch import nn

from agent.spiritlm import speech_tokenizer as st_module
from agent.spiritlm.errors import AudioError, InvalidArgumentError, TokenStringError
from agent.spiritlm.hubert import KMeansQuantizer, fill_blanks, load_quantizer, parse_conv_layers
from agent.spiritlm.vocoder import CodeHiFiGAN, VocoderInput


def test_blank_takes_the_unit_on_its_left_cyclically():
    blank = 500
    assert fill_blanks(torch.tensor([3, blank, blank, 4, blank]), blank).tolist() == [3, 3, 3, 4, 4]
    assert fill_blanks(torch.tensor([blank, 7, 8]), blank).tolist() == [8, 7, 8]  # wraps to the end
    assert fill_blanks(torch.tensor([blank, blank]), blank).tolist() == [blank, blank]


def test_conv_layer_spec_is_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 2") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    with pytest.raises(Exception, match="cannot parse"):
        parse_conv_layers("__import__('os')")


def test_kmeans_format(tmp_path):
    centers = np.array([[0.0, 0.0], [10.0, 10.0], [-5.0, 5.0]], dtype=np.float32)
    torch.save({"cluster_centers": torch.from_numpy(centers), "n_clusters": 3}, tmp_path / "km.pt")
    q = load_quantizer(tmp_path / "km.pt")
    assert isinstance(q, KMeansQuantizer)
    assert q(torch.tensor([[9.0, 9.5], [0.1, -0.2], [-4.0, 6.0]])).tolist() == [1, 0, 2]


def test_units_of_real_speech(models, speech):
    wav = speech["hello"][0]
    base = models["base"].speech.encode_units(wav)
    expressive = models["expressive"].speech.encode_units(wav)
    n = len(base["hubert"].split())
    assert n == len(wav) // 640 and len(set(base["hubert"].split())) > 5
    assert expressive["hubert"] == base["hubert"]  # same mHuBERT in both variants
    assert len(expressive["pitch"].split()) == (len(wav) // 80 + 1) // 16
    assert len(expressive["style"].split()) == -(-(len(wav) // 320) // 50)  # one per started second of w2v2 frames
    assert models["base"].speech.encode_units(wav) == base  # deterministic


def test_chunks_shorter_than_1280_samples_are_skipped(models, monkeypatch):
    tokenizer = models["base"].speech
    wav = torch.randn(4000) * 0.1
    whole = tokenizer.encode_units(wav)["hubert"].split()
    monkeypatch.setattr(st_module, "MAX_CHUNK", 2800)  # chunks 2800 + 1200: the tail is dropped
    chunked = tokenizer.encode_units(wav)["hubert"].split()
    assert len(chunked) == 2800 // 640 and len(whole) == 4000 // 640
    with pytest.raises(AudioError, match="at least 1280 samples"):
        tokenizer.encode_units(torch.zeros(1279))


def test_vocoder_folds_weight_norm_exactly(tree):
    vocoder = CodeHiFiGAN.from_tree(tree, "base")
    state = torch.load(tree.root / "speech_tokenizer/hifigan_spiritlm_base/generator.pt")["generator"]
    reference = nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(*vocoder.ups[0].weight.shape[:2], vocoder.ups[0].kernel_size[0]), dim=0)
    reference.parametrizations.weight.original0.data = state["ups.0.weight_g"]
    reference.parametrizations.weight.original1.data = state["ups.0.weight_v"]
    assert torch.allclose(reference.weight, vocoder.ups[0].weight, atol=0, rtol=1e-6)


def test_vocoder_durations_and_lengths(models):
    vocoder = models["base"].speech.vocoder
    inp = VocoderInput([5, 9, 300, 7])
    durations = vocoder.durations(torch.tensor(inp.hubert))
    assert (durations >= 1).all()
    assert len(vocoder(inp)) == int(durations.sum()) * 640
    assert len(vocoder(inp, dur_pred=False)) == 4 * 640
    assert not torch.equal(vocoder(inp, speaker=0), vocoder(inp, speaker=1))


def test_vocoder_bad_inputs(models):
    base, expressive = models["base"].speech, models["expressive"].speech
    with pytest.raises(InvalidArgumentError, match="unknown speaker 7"):
        base.decode("[Hu1]", speaker=7)
    with pytest.raises(TokenStringError, match="no HuBERT units"):
        base.decode("[Text]hello")
    with pytest.raises(TokenStringError, match="out of range"):
        base.decode({"hubert": "1 501"})
    with pytest.raises(TokenStringError, match="needs pitch and style"):
        expressive.decode({"hubert": "1 2"})


def test_expressive_resynthesis_upsamples_pitch_and_style(models, speech):
    tokenizer = models["expressive"].speech
    units = tokenizer.encode_units(speech["hello"][0])
    wav = tokenizer.decode(units)  # pitch count != hubert count: no duration prediction
    assert len(wav) == len(units["hubert"].split()) * 640
    from_string = tokenizer.decode(tokenizer.units_to_string(units))
    assert len(from_string) % 640 == 0 and np.abs(from_string).max() <= 1
