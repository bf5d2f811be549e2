"""Streaming vs offline LM compute for the same conversation turn (not a test).

Offline (the release's flow): after the user stops, prefill the whole prompt at once, then
decode the reply. Streaming: prefill the user's units in chunks *while they speak*, roll back
the provisional tail that exact re-encoding changed, prefill the final tail, decode the same
reply. Reports tokens run through the model (the compute that scales to a GPU), wall time
on this machine, and the part of it left after the user stops (what the user waits for).

    python benchmarks/bench_lm.py [--checkpoints DIR] [--model base|expressive]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from agent.spiritlm.checkpoints import CheckpointTree
from agent.spiritlm.lm import SamplingConfig
from agent.spiritlm.make_checkpoints import make_checkpoints
from agent.spiritlm.model import SpiritLM
from streaming.lm import LMSession


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", help="checkpoint tree (default: make tiny random ones)")
    parser.add_argument("--model", default="base", choices=("base", "expressive"))
    parser.add_argument("--turn-seconds", type=float, default=8.0)
    parser.add_argument("--reply-tokens", type=int, default=100)
    parser.add_argument("--rollback", type=int, default=6, help="provisional tokens replaced at end of turn")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    directory = args.checkpoints or make_checkpoints(tempfile.mkdtemp(), "tiny")
    model = SpiritLM(CheckpointTree.locate(directory), args.model)
    tok = model.tokenizer
    rng = random.Random(0)
    units = [rng.randrange(500) for _ in range(int(args.turn_seconds * 25 * 0.6))]  # ~60% left after deduplication
    final = units[:-args.rollback] + [rng.randrange(500) for _ in range(args.rollback)]
    prefix = "[Text]A conversation between a user and an assistant.[Text]\nUser:[Speech]"
    final_prompt = tok.encode(prefix + "".join(f"[Hu{u}]" for u in final) + "[Text]\nAssistant:[Speech]")
    banned = model.banned_ids("speech")
    greedy = SamplingConfig()

    def offline():
        return model.generate_ids(final_prompt, args.reply_tokens, banned, greedy)

    def streaming(chunk_tokens: int):
        session = LMSession(model.model)
        started = time.perf_counter()
        prefix_ids = tok.encode(prefix)
        session.append(prefix_ids)
        provisional = tok.encode(prefix + "".join(f"[Hu{u}]" for u in units))[len(prefix_ids):]
        for i in range(0, len(provisional), chunk_tokens):
            session.append(provisional[i:i + chunk_tokens])
        during_speech = time.perf_counter() - started
        after = time.perf_counter()
        session.rollback(args.rollback)
        session.append(final_prompt[len(session):])
        assert session.ids == final_prompt
        reply = [session.step(banned, greedy, None) for _ in range(args.reply_tokens)]
        after_stop = time.perf_counter() - after
        return reply, session.prefilled_tokens + session.reprefilled_tokens, during_speech, after_stop

    reference = offline()
    best_offline = min(_timed(offline) for _ in range(args.repeats))
    offline_tokens = len(final_prompt) + args.reply_tokens - 1
    print(f"model {args.model} ({sum(p.numel() for p in model.model.parameters()) / 1e6:.1f}M params), prompt {len(final_prompt)} tokens, "
          f"reply {args.reply_tokens} tokens, rollback {args.rollback} tokens, torch threads {torch.get_num_threads()}")
    print(f"{'mode':<28}{'tokens run':>11}{'x offline':>10}{'wall s':>9}{'x offline':>10}{'after stop s':>14}")
    print(f"{'offline (release flow)':<28}{offline_tokens:>11}{1.0:>10.2f}{best_offline:>9.3f}{1.0:>10.2f}{best_offline:>14.3f}")
    for chunk in (1, 5, 12, 25):
        runs = [streaming(chunk) for _ in range(args.repeats)]
        reply, tokens_run, _, _ = runs[0]
        assert reply == reference, "streaming reply differs from offline"
        wall = min(r[2] + r[3] for r in runs)
        after_stop = min(r[3] for r in runs)
        print(f"{f'streaming, prefill x{chunk}':<28}{tokens_run:>11}{tokens_run / offline_tokens:>10.2f}{wall:>9.3f}"
              f"{wall / best_offline:>10.2f}{after_stop:>14.3f}")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
