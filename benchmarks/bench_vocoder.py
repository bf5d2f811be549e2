"""Offline vs streaming vocoder: compute, real-time factor and first-audio latency.

    python benchmarks/bench_vocoder.py                      # tiny random checkpoints (made in a temp dir)
    python benchmarks/bench_vocoder.py --checkpoints DIR    # a release-layout tree
    python benchmarks/bench_vocoder.py --shapes 7b          # random weights with the 7B preset's vocoder shapes

The same ~20 s of deduplicated units (seeded random units; timing does not depend on content) is
vocoded offline (``CodeHiFiGAN.__call__``) and by ``StreamingVocoder`` fed 1, 5 and 25 units at a
time. Times are the best of ``--repeats`` runs after a warm-up run. Columns:

- ``seconds``: wall time for the whole utterance; ``ratio``: streaming / offline (same work);
- ``RTF``: seconds of compute per second of audio;
- ``first audio``: units fed before the first samples came out (and that many units' worth of
  audio in ms at the utterance's mean duration), i.e. the algorithmic lookahead plus the chunk;
- ``max err``: max |streaming - offline| (exact mode: float rounding only).

Extra rows: 1-unit feeds with ``step_frames`` (generator run on >= N frames), with
``num_threads=1`` (only when --threads > 1), and the low-latency mode (``lookahead_frames=K``,
not exact: its max err is the price). Rounds run every mode in turn and keep each mode's best,
so a busy spell of a shared machine does not land on one row only.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.spiritlm.checkpoints import CheckpointTree  # noqa: E402
from agent.spiritlm.make_checkpoints import SEVEN_B, make_checkpoints, write_vocoder  # noqa: E402
from agent.spiritlm.vocoder import CodeHiFiGAN, VocoderInput  # noqa: E402
from streaming.vocoder import StreamingVocoder  # noqa: E402

SAMPLE_RATE = 16000


def load_vocoder(args) -> CodeHiFiGAN:
    if args.shapes == "7b":
        root = Path(tempfile.mkdtemp(prefix="bench-vocoder-7b-"))
        torch.manual_seed(args.seed)
        write_vocoder(root, SEVEN_B, expressive=args.variant == "expressive")
        return CodeHiFiGAN.from_tree(CheckpointTree(root), args.variant)
    directory = args.checkpoints
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="bench-vocoder-tiny-"))
        print(f"making tiny checkpoints in {directory} ...", flush=True)
        make_checkpoints(directory, "tiny")
    return CodeHiFiGAN.from_tree(CheckpointTree.locate(directory), args.variant)


def make_units(vocoder: CodeHiFiGAN, seconds: float, seed: int) -> VocoderInput:
    """Random deduplicated units whose predicted durations add up to ``seconds`` of audio."""
    rng = random.Random(seed)
    frames_needed = seconds * SAMPLE_RATE / vocoder.upsample_factor
    hubert: list[int] = []
    while True:
        hubert += [rng.randrange(vocoder.dict.num_embeddings) for _ in range(25)]
        if int(vocoder.durations(torch.tensor(hubert)).sum()) >= frames_needed:
            break
    while len(hubert) > 1 and int(vocoder.durations(torch.tensor(hubert[:-1])).sum()) >= frames_needed:
        hubert.pop()
    if not vocoder.is_expressive:
        return VocoderInput(hubert)
    pitch = [rng.randrange(vocoder.f0_dict.num_embeddings) for _ in hubert]
    style = [rng.randrange(vocoder.style_dict.num_embeddings)] * len(hubert)
    return VocoderInput(hubert, pitch, style)


def run_stream(vocoder, inp: VocoderInput, chunk: int, **kw) -> tuple[np.ndarray, int]:
    sv = StreamingVocoder(vocoder, **kw)
    outs, first = [], None
    for start in range(0, len(inp.hubert), chunk):
        stop = start + chunk
        side = (inp.pitch[start:stop], inp.style[start:stop]) if inp.pitch is not None else (None, None)
        out = sv.feed(inp.hubert[start:stop], *side)
        if first is None and out.size:
            first = min(stop, len(inp.hubert))
        outs.append(out)
    outs.append(sv.flush())
    return np.concatenate(outs), first if first is not None else len(inp.hubert)


def best_times(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time of each function over ``repeats`` rounds, after a warm-up round (allocator,
    oneDNN primitives)."""
    results = {name: fn() for name, fn in fns.items()}
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best, results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=None, help="release-layout tree (default: make tiny ones)")
    parser.add_argument("--shapes", choices=("checkpoints", "7b"), default="checkpoints",
                        help="7b: random weights with the 7B preset's vocoder shapes instead of --checkpoints")
    parser.add_argument("--variant", choices=("base", "expressive"), default="base")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 5, 25], help="units per feed")
    parser.add_argument("--step-frames", type=int, nargs="*", default=[8],
                        help="extra rows: 1-unit feeds with StreamingVocoder(step_frames=N)")
    parser.add_argument("--low-latency", type=int, nargs="*", default=[5],
                        help="extra rows: 1-unit feeds with StreamingVocoder(lookahead_frames=K)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    vocoder = load_vocoder(args)
    inp = make_units(vocoder, args.seconds, args.seed)
    probe = StreamingVocoder(vocoder)
    rf = probe.receptive_field

    rows = [(f"streaming, {c} unit{'s' if c > 1 else ''}/feed", c, {}) for c in args.chunks]
    rows += [(f"streaming, 1 unit/feed, step_frames={s}", 1, {"step_frames": s}) for s in args.step_frames]
    if args.threads > 1:
        rows += [("streaming, 1 unit/feed, num_threads=1", 1, {"num_threads": 1})]
        rows += [(f"  same, step_frames={s}", 1, {"num_threads": 1, "step_frames": s}) for s in args.step_frames]
    rows += [(f"low-latency K={k}, 1 unit/feed", 1, {"lookahead_frames": k}) for k in args.low_latency]
    fns = {"offline": lambda: vocoder(inp).numpy()}
    for label, chunk, kw in rows:
        fns[label] = lambda chunk=chunk, kw=kw: run_stream(vocoder, inp, chunk, **kw)
    times, results = best_times(fns, args.repeats)

    ref = results["offline"]
    t_off = times["offline"]
    audio_s = len(ref) / SAMPLE_RATE
    ms_per_unit = 1000 * audio_s / len(inp.hubert)
    channels = vocoder.cfg["upsample_initial_channel"]
    print(f"vocoder: {args.variant}, {'7B-preset shapes (random weights)' if args.shapes == '7b' else 'checkpoints'}, "
          f"upsample_initial_channel={channels}, torch threads={torch.get_num_threads()}, cpu_count={os.cpu_count()}, "
          f"best of {args.repeats} rounds")
    print(f"units: {len(inp.hubert)} deduplicated units -> {len(ref) // rf.samples_per_frame} frames = {audio_s:.2f} s of audio "
          f"({ms_per_unit:.0f} ms per unit)")
    print(f"receptive field: {rf.left_frames} frames left / {rf.right_frames} right (delay {rf.delay_samples} samples = "
          f"{1000 * rf.delay_samples / SAMPLE_RATE:.1f} ms); duration predictor: {probe.dur_context_units} units left / "
          f"{probe.dur_lookahead_units} right; worst-case lookahead {probe.lookahead_units} units; "
          f"generator state {rf.state_values} floats")
    print()
    header = f"{'mode':<42}{'seconds':>9}{'ratio':>8}{'RTF':>8}{'first audio':>22}{'max err':>11}"
    print(header)
    print("-" * len(header))
    print(f"{'offline':<42}{t_off:9.3f}{1.0:8.2f}{t_off / audio_s:8.3f}{'(all units)':>22}{0.0:11.1e}")
    for label, _, _ in rows:
        out, first = results[label]
        if out.shape != ref.shape:
            raise SystemExit(f"{label}: length {out.shape} != offline {ref.shape}")
        t = times[label]
        err = float(np.abs(out - ref).max())
        first_txt = f"{first} units ({first * ms_per_unit:.0f} ms)"
        print(f"{label:<42}{t:9.3f}{t / t_off:8.2f}{t / audio_s:8.3f}{first_txt:>22}{err:11.1e}")

if __name__ == "__main__":
    main()
