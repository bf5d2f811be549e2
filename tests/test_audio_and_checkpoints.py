"""Bad input and bad checkpoint files: clear errors, never tracebacks."""

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from agent.spiritlm.audio import load_speech, read_audio, to_mono
from agent.spiritlm.checkpoints import CheckpointTree
from agent.spiritlm.errors import AudioError, CheckpointError
from agent.spiritlm.hubert import HubertUnitEncoder
from agent.spiritlm.model import SpiritLM
from agent.spiritlm.vocoder import CodeHiFiGAN


def test_not_audio(tmp_path):
    path = tmp_path / "x.wav"
    path.write_text("definitely not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        read_audio(path)


def test_missing_and_empty_audio(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        read_audio(tmp_path / "nope.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        read_audio(tmp_path / "empty.wav")


def test_stereo_is_averaged_unless_a_channel_is_chosen(tmp_path):
    left, right = np.full(1600, 0.5, np.float32), np.full(1600, -0.25, np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    assert torch.allclose(load_speech(tmp_path / "st.wav"), torch.full((1600,), 0.125))
    assert torch.allclose(load_speech(tmp_path / "st.wav", channel=1), torch.full((1600,), -0.25))
    with pytest.raises(AudioError, match="channel 2 does not exist"):
        load_speech(tmp_path / "st.wav", channel=2)


def test_other_rates_are_resampled_to_16k(tmp_path):
    t = np.arange(44100) / 44100
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    wav = load_speech(tmp_path / "a.wav")
    assert abs(len(wav) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / len(wav) - 440) < 2


def test_pcm16_is_scaled_like_the_release(tmp_path):
    sf.write(tmp_path / "p.wav", np.array([16384, -32768, 0], dtype=np.int16), 16000, subtype="PCM_16")
    assert load_speech(tmp_path / "p.wav").tolist() == [0.5, -1.0, 0.0]


def test_non_finite_audio():
    with pytest.raises(AudioError, match="NaN"):
        to_mono(np.array([0.0, np.nan], dtype=np.float32))


def test_no_checkpoint_dir(monkeypatch):
    monkeypatch.delenv("SPIRITLM_CHECKPOINTS_DIR", raising=False)
    with pytest.raises(CheckpointError, match="--checkpoints DIR"):
        CheckpointTree.locate(None)


@pytest.fixture
def broken(ckpt_dir, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt_dir, copy)
    return copy


def test_missing_file_names_the_file(broken):
    (broken / "speech_tokenizer/hubert_25hz/L11_quantizer_500.pt").unlink()
    with pytest.raises(CheckpointError, match="missing checkpoint file .*L11_quantizer_500.pt"):
        SpiritLM(CheckpointTree.locate(broken), "base")


def test_truncated_file_is_reported(broken):
    path = broken / "speech_tokenizer/hubert_25hz/mhubert_base_25hz.pt"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="mhubert_base_25hz.pt .*truncated"):
        HubertUnitEncoder.from_files(path, broken / "speech_tokenizer/hubert_25hz/L11_quantizer_500.pt")


def test_mismatched_vocoder_config_names_the_parameter(broken):
    import json

    config = broken / "speech_tokenizer/hifigan_spiritlm_base/config.json"
    cfg = json.loads(config.read_text())
    cfg["embedding_dim"] = 8
    config.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="parameter 'dict.weight' has shape"):
        CodeHiFiGAN.from_dir(config.parent)


def test_missing_lm_weights(broken):
    (broken / "spiritlm_model/spirit-lm-base-7b/pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="missing LM weights"):
        CheckpointTree.locate(broken).lm_dir("base")
