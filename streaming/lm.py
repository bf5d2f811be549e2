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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LlamaForCausalLM

from agent.spiritlm.errors import InvalidArgumentError
from agent.spiritlm.lm import _CACHE_KWARG, SamplingConfig, forward_last_logits, new_cache, next_token
from streaming.units import common_prefix_len

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

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` tokens (of the last block): crop the cache, recompute the logits."""
        if n <= 0:
            return
        last = self.blocks[-1] if self.blocks else Block()
        if n > len(last.ids):
            raise InvalidArgumentError(f"cannot roll back {n} tokens: the current block holds {len(last.ids)}")
        self.replace_block(-1, last.ids[:len(last.ids) - n])

    @torch.inference_mode()
    def replace_block(self, index: int, ids: list[int], reserve: int = 0) -> int:
        """Give block ``index`` new ids (provisional units made final, a truncated reply, a new
        instruction; ``[]`` empties it). Returns how many of its old tokens were rolled back.

        The cache is cropped to the first changed position and the later blocks (the same
        ``Block`` objects) are prefilled again: the cost is what follows the change. ``reserve``
        makes room for that many more tokens, as in :meth:`append`.
        """
        index = range(len(self.blocks))[index]
        block = self.blocks[index]
        common = common_prefix_len(block.ids, ids)
        rolled = len(block.ids) - common
        later = self.blocks[index + 1:]
        tails = [b.ids for b in later]
        start = sum(len(b.ids) for b in self.blocks[:index]) + common
        removed = len(self) - start
        del block.ids[common:]
        del self.blocks[index + 1:]
        if removed and start == 0:
            self.cache, self._logits = new_cache(), None
        elif removed:
            # The logits after the kept tail are not stored: crop one more token and run it again.
            self.cache.crop(-(removed + 1))  # negative: remove that many (the form every transformers version accepts)
            self._logits = forward_last_logits(self.model, torch.tensor([[self.ids[-1]]]), self.cache)
            self.reprefilled_tokens += 1
        self.append(ids[common:], reserve=reserve)
        for b, tail in zip(later, tails):
            b.ids = []
            self.blocks.append(b)
            self.append(tail)
            self.reprefilled_tokens += len(tail)
        return rolled

    def delete_block(self, index: int) -> None:
        """Remove block ``index`` from the context (the later blocks are prefilled again)."""
        self.replace_block(index, [])
        del self.blocks[index]

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


# ---------------------------------------------------------------------- batched decoding
@torch.inference_mode()
def append_token_batch(sessions: Sequence[LMSession], tokens: Sequence[int]) -> None:
    """Append one token to each session with a single batched forward (same result as s.append([t]) for each).

    A server answering several conversations at once advances them all with one forward per
    step instead of one each: on a GPU a decode step costs about the same for 1 or 8 rows.
    The sessions' caches are left-padded into one batch cache (pads masked out, each row at its
    own positions), and each row's new key/value is then appended to its session's own cache.
    The caller makes room first (``s.make_room(1)``); nothing is dropped here.
    """
    if len(sessions) != len(tokens):
        raise InvalidArgumentError(f"{len(sessions)} sessions but {len(tokens)} tokens")
    if not sessions:
        return
    model = sessions[0].model
    if any(s.model is not model for s in sessions):
        raise InvalidArgumentError("batched sessions must share one model")
    if len({id(s) for s in sessions}) != len(sessions):
        raise InvalidArgumentError("a session appears twice in the batch")
    for s in sessions:
        if not len(s):
            raise InvalidArgumentError("a batched session must already hold a token (prefill it first)")
        if len(s) + 1 > s.max_positions:
            raise InvalidArgumentError(f"a session with {len(s)} tokens has no room for one more in its {s.max_positions}-position "
                                       "window (call make_room(1) first)")
    if len(sessions) == 1:
        sessions[0].append([tokens[0]])
        return
    positions = torch.tensor([len(s) for s in sessions], device=model.device)[:, None]  # each row's own next position
    longest = int(positions.max())
    batch = _cache_from_kv([(_left_pad([k for k, _ in layer], longest), _left_pad([v for _, v in layer], longest))
                            for layer in zip(*(_cache_kv(s.cache) for s in sessions))])
    # HF writes the new token at cache index ``longest`` for every row; the pads before each row are masked out.
    mask = (torch.arange(longest + 1, device=model.device) >= longest - positions).long()
    logits = model(input_ids=torch.tensor(tokens, device=model.device)[:, None], attention_mask=mask, position_ids=positions,
                   **{_CACHE_KWARG: batch, "use_cache": True}).logits[:, -1]
    for layer, (keys, values) in enumerate(_cache_kv(batch)):
        for row, s in enumerate(sessions):
            s.cache.update(keys[row:row + 1, :, -1:], values[row:row + 1, :, -1:], layer)
    for row, (s, token) in enumerate(zip(sessions, tokens)):
        s._logits = logits[row]
        s.blocks[-1].ids.append(token)
        s.prefilled_tokens += 1


def _cache_kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer ``(keys, values)``, each ``[batch, heads, seq, head_dim]`` (transformers 5.x and 4.x layouts)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _cache_from_kv(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = new_cache()
    for layer, (keys, values) in enumerate(kv):
        cache.update(keys, values, layer)
    return cache


def _left_pad(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """Concatenate ``[1, heads, n_i, head_dim]`` tensors into ``[rows, heads, length, head_dim]``, zeros on the left."""
    return torch.cat([F.pad(t, (0, 0, length - t.shape[-2], 0)) for t in tensors])
