"""Decode throughput across concurrent sessions: one batched forward per step vs one forward per session.

    python benchmarks/bench_batch.py                          # tiny random checkpoints (made in a temp dir)
    python benchmarks/bench_batch.py --checkpoints DIR        # a release-layout tree
    python benchmarks/bench_batch.py --shapes 7b --layers 2   # random weights, the 7B preset's layer shapes and vocabulary
    python benchmarks/bench_batch.py --shapes 7b --layers 32 --device cuda --dtype bfloat16   # the real 7B size on a GPU

N sessions share one model, each holding a ~``--context``-token conversation (lengths differ by a few
tokens, so the batch is padded), and each decodes ``--steps`` greedy tokens: ``one-by-one`` calls
``LMSession.step`` on each session in turn, ``batched`` calls ``append_token_batch`` once per step.
Every run starts from copies of the same prefilled sessions; times are the best of ``--repeats``
after a warm-up (``next_token`` reads each step's choice back, so GPU times include the sync).
Columns: tokens/s over all sessions, batched / one-by-one, the largest logit difference between the
two modes and whether they chose the same tokens.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.spiritlm.checkpoints import CheckpointTree  # noqa: E402
from agent.spiritlm.lm import DTYPES, SamplingConfig, load_llama, next_token  # noqa: E402
from agent.spiritlm.make_checkpoints import SEVEN_B, SPECIAL_TOKENS_BASE, make_checkpoints  # noqa: E402
from streaming.lm import LMSession, append_token_batch  # noqa: E402

GREEDY = SamplingConfig()


def load_model(args) -> LlamaForCausalLM:
    if args.shapes == "7b":
        torch.manual_seed(args.seed)
        config = LlamaConfig(**{**SEVEN_B.lm, "num_hidden_layers": args.layers},
                             vocab_size=SEVEN_B.text_pieces + len(SPECIAL_TOKENS_BASE))
        with torch.device(args.device):
            return LlamaForCausalLM(config).to(DTYPES[args.dtype]).eval().requires_grad_(False)
    directory = args.checkpoints or make_checkpoints(tempfile.mkdtemp(prefix="bench-batch-"), "tiny")
    return load_llama(CheckpointTree.locate(directory).lm_dir(args.model), DTYPES[args.dtype], args.device)


def decode(sessions: list[LMSession], steps: int, batched: bool) -> tuple[float, list[list[int]]]:
    """Decode ``steps`` greedy tokens in every session; return the wall time and the tokens chosen."""
    started = time.perf_counter()
    for _ in range(steps):
        if batched:
            append_token_batch(sessions, [next_token(s.logits, None, GREEDY, None) for s in sessions])
        else:
            for s in sessions:
                s.step(None, GREEDY, None)
    return time.perf_counter() - started, [s.ids[-steps:] for s in sessions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", help="checkpoint tree (default: make tiny random ones)")
    parser.add_argument("--model", default="base", choices=("base", "expressive"))
    parser.add_argument("--shapes", default="tiny", choices=("tiny", "7b"), help="7b: random weights, 7B layer shapes")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers with --shapes 7b (the release has 32)")
    parser.add_argument("--sessions", default="1,2,4,8", help="comma-separated numbers of concurrent sessions")
    parser.add_argument("--context", type=int, default=300, help="tokens each session holds before decoding")
    parser.add_argument("--steps", type=int, default=16, help="tokens decoded per session")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args)
    counts = [int(n) for n in args.sessions.split(",")]
    rng = random.Random(args.seed)
    prefilled = []
    started = time.perf_counter()
    for i in range(max(counts)):
        session = LMSession(model)
        session.append([rng.randrange(model.config.vocab_size) for _ in range(args.context - 7 * i)])
        session.start_block()
        prefilled.append(session)
    prefill_s = time.perf_counter() - started
    for batched in (False, True):  # warm-up
        decode([copy.deepcopy(s, {id(model): model}) for s in prefilled[:2]], 2, batched)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"shapes {args.shapes} ({model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, {params:.1f}M params, "
          f"{args.dtype}, {args.device}), "
          f"contexts {args.context - 7 * (max(counts) - 1)}-{args.context} tokens, {args.steps} steps, best of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}, prefill {prefill_s:.1f}s\n")
    print("| sessions | one-by-one tok/s | batched tok/s | speedup | max abs logit diff | same tokens |")
    print("|---|---|---|---|---|---|")
    for n in counts:
        best, chosen, logits = {}, {}, {}
        for _ in range(args.repeats):
            for batched in (False, True):
                sessions = [copy.deepcopy(s, {id(model): model}) for s in prefilled[:n]]
                seconds, chosen[batched] = decode(sessions, args.steps, batched)
                best[batched] = min(best.get(batched, seconds), seconds)
                logits[batched] = torch.stack([s.logits for s in sessions])
        rate = {b: n * args.steps / best[b] for b in best}
        diff = (logits[True] - logits[False]).abs().max().item()
        print(f"| {n} | {rate[False]:.1f} | {rate[True]:.1f} | {rate[True] / rate[False]:.2f}x | {diff:.1e} | "
              f"{'yes' if chosen[True] == chosen[False] else 'no'} |")


if __name__ == "__main__":
    main()
