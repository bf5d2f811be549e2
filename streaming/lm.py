"""Incremental SpiRit-LM decoding over one conversation's KV cache.

``LMSession`` owns a transformers ``DynamicCache`` and the token ids it holds. Prefill while
the user speaks (``append``), undo a provisional tail when the final units of a turn differ
(``rollback``), then decode one token at a time (``step``). The context is kept as whole
*blocks* (a fixed prefix, then one block per turn) so that, before the model's window is
reached, the oldest turns can be dropped and the rest re-prefilled: the session never runs
past ``max_positions`` silently and never crashes on a long conversation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import LlamaForCausalLM

from agent.spiritlm.errors import InvalidArgumentError
from agent.spiritlm.lm import SamplingConfig, forward_last_logits, new_cache, next_token

log = logging.getLogger(__name__)


@dataclass
class Block:
    """A run of context tokens that is kept or dropped as a whole (the prefix is never dropped)."""

    ids: list[int] = field(default_factory=list)
    droppable: bool = True
    text: str = ""  # the caller's record of what the ids spell (kept and dropped with them)


class ContextFullError(InvalidArgumentError):
    """Nothing more can be dropped and the new tokens still do not fit the model's window."""


class LMSession:
    def __init__(self, model: LlamaForCausalLM, max_positions: int | None = None):
        self.model = model
        self.max_positions = int(max_positions or model.config.max_position_embeddings)
        self.cache = new_cache()
        self.blocks: list[Block] = []
        self._logits: torch.Tensor | None = None  # next-token logits after the last cached token
        self.prefilled_tokens = 0  # counters for benchmarks: tokens run through the model
        self.reprefilled_tokens = 0

    # ------------------------------------------------------------------ state
    @property
    def ids(self) -> list[int]:
        return [i for block in self.blocks for i in block.ids]

    def __len__(self) -> int:
        return sum(len(block.ids) for block in self.blocks)

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            raise InvalidArgumentError("the session holds no tokens yet")
        return self._logits

    def reset(self) -> None:
        self.cache = new_cache()
        self.blocks = []
        self._logits = None

    # ------------------------------------------------------------------ context
    def start_block(self, droppable: bool = True) -> None:
        """Open a new block (a turn); later ``append`` calls extend it."""
        self.blocks.append(Block(droppable=droppable))

    @torch.inference_mode()
    def append(self, ids: list[int], reserve: int = 0) -> None:
        """Prefill ``ids`` into the last block, first making room for them plus ``reserve`` tokens."""
        if not ids:
            return
        if not self.blocks:
            self.start_block(droppable=False)
        self.make_room(len(ids) + reserve)
        self._logits = forward_last_logits(self.model, torch.tensor([ids]), self.cache)
        self.blocks[-1].ids.extend(ids)
        self.prefilled_tokens += len(ids)

    @torch.inference_mode()
    def rollback(self, n: int) -> None:
        """Forget the last ``n`` tokens (of the last block): crop the cache, recompute the logits."""
        if n <= 0:
            return
        last = self.blocks[-1] if self.blocks else Block()
        if n > len(last.ids):
            raise InvalidArgumentError(f"cannot roll back {n} tokens: the current block holds {len(last.ids)}")
        keep = len(self) - n
        del last.ids[len(last.ids) - n:]
        if keep == 0:
            self.cache, self._logits = new_cache(), None
            return
        # The logits after token keep-1 are not stored: crop one more and run that token again.
        self.cache.crop(-(n + 1))  # negative: remove that many (the form every transformers version accepts)
        self._logits = forward_last_logits(self.model, torch.tensor([[self.ids[-1]]]), self.cache)
        self.reprefilled_tokens += 1

    def make_room(self, needed: int) -> None:
        """Drop the oldest droppable blocks (never the current one) until ``needed`` tokens fit."""
        if len(self) + needed <= self.max_positions:
            return
        dropped = 0
        while len(self) + needed > self.max_positions:
            index = next((i for i, b in enumerate(self.blocks[:-1]) if b.droppable and b.ids), None)
            if index is None:
                raise ContextFullError(f"{needed} more tokens do not fit the model's {self.max_positions}-position window "
                                       f"even after dropping every earlier turn ({len(self)} tokens kept)")
            dropped += len(self.blocks[index].ids)
            del self.blocks[index]
        log.info("context: dropped %d tokens of the oldest turns to stay within %d positions", dropped, self.max_positions)
        self._reprefill()

    @torch.inference_mode()
    def _reprefill(self) -> None:
        ids = self.ids
        self.cache = new_cache()
        self._logits = forward_last_logits(self.model, torch.tensor([ids]), self.cache) if ids else None
        self.reprefilled_tokens += len(ids)

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def step(self, banned: torch.Tensor | None, sampling: SamplingConfig, generator: torch.Generator | None) -> int:
        """Choose the next token from the pending logits and run it through the model."""
        token = next_token(self.logits, banned, sampling, generator)
        self.append([token])
        return token
