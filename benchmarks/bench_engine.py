"""Reply decoding speed of one ConversationEngine, text vs spoken (not a test).

Shows where a reply's time goes without a server: a text reply costs LM steps only, a
spoken one adds the streaming vocoder (one unit per call). Greedy, after a short text turn.

    python benchmarks/bench_engine.py [--checkpoints DIR] [--model base|expressive] [--tokens 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from agent.conversation import ConversationEngine, EngineConfig
from agent.spiritlm.checkpoints import CheckpointTree
from agent.spiritlm.make_checkpoints import make_checkpoints
from agent.spiritlm.model import SpiritLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", help="checkpoint tree (default: make tiny random ones)")
    parser.add_argument("--model", default="base", choices=("base", "expressive"))
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = SpiritLM(CheckpointTree.locate(args.checkpoints or make_checkpoints(tempfile.mkdtemp(), "tiny")), args.model)
    print(f"model {args.model}, {args.tokens}-token greedy replies, best of {args.repeats}")
    for modality in ("text", "speech"):
        best = 0.0
        for _ in range(args.repeats):
            engine = ConversationEngine(model, EngineConfig(output_modality=modality, max_reply_tokens=args.tokens,
                                                            turn_detection=None))
            engine.add_user_text("hello there")
            engine.create_response()
            started, steps = time.perf_counter(), 0
            while engine.responding:
                engine.step()
                steps += 1
            best = max(best, steps / (time.perf_counter() - started))
        print(f"{modality:7s} reply: {best:6.1f} tokens/s")


if __name__ == "__main__":
    main()
