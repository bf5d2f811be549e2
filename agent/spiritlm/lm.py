"""The SpiRit-LM language model: HF Llama weights + the release's sentencepiece tokenizer.

Token ids equal those of the slow ``LlamaTokenizer(add_bos_token=True)`` of the release:
the speech/modality tokens are pieces of ``tokenizer.model`` itself, so a prompt is
``[<s>] + sentencepiece.encode(prompt)``; literal ``<s>``, ``</s>``, ``<unk>`` in the text
are split out as their special ids first (each text chunk keeps sentencepiece's dummy prefix,
the slow tokenizer's legacy behaviour). Any extra added tokens listed in
``tokenizer_config.json`` beyond the sentencepiece vocabulary are split out the same way.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from .checkpoints import CheckpointError, load_json
from .errors import InvalidArgumentError

log = logging.getLogger(__name__)

_UNIT_PIECE = re.compile(r"\[(Hu|Pi|St)\d+\]")
OUTPUT_MODALITIES = ("text", "speech", "arbitrary")


class SpiritTokenizer:
    def __init__(self, directory: Path):
        model_path = directory / "tokenizer.model"
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read {model_path} (sentencepiece tokenizer): {exc}") from None
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.piece_to_id = {self.sp.IdToPiece(i): i for i in range(self.sp.GetPieceSize())}
        added: dict[str, int] = {}
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            for index, entry in load_json(config_path, "tokenizer config").get("added_tokens_decoder", {}).items():
                content = entry.get("content") if isinstance(entry, dict) else None
                if content and int(index) >= self.sp.GetPieceSize():
                    added[content] = int(index)
        self.added = added
        self.special = {p: i for p, i in (("<s>", self.bos_id), ("</s>", self.eos_id), ("<unk>", self.unk_id)) if i >= 0}
        splitters = sorted({**self.special, **self.added}, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, splitters)) + ")") if splitters else None
        self.id_to_added = {i: p for p, i in self.added.items()}
        self.vocab_size = self.sp.GetPieceSize() + len(self.added)

    def token_id(self, piece: str) -> int:
        """Id of a whole token such as ``[Hu12]`` (KeyError if the vocabulary lacks it)."""
        if piece in self.added:
            return self.added[piece]
        return self.piece_to_id[piece]

    def has(self, piece: str) -> bool:
        return piece in self.added or piece in self.piece_to_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        chunks = self._split.split(text) if self._split else [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.special:
                ids.append(self.special[chunk])
            elif chunk in self.added:
                ids.append(self.added[chunk])
            else:
                ids.extend(self.sp.EncodeAsIds(chunk))
        return ids

    def encode_block(self, text: str) -> list[int]:
        """Ids of ``text`` as it tokenizes after earlier context (no BOS, no dummy-prefix piece).

        ``text`` must start with a modality marker: sentencepiece keeps such pieces whole, so
        ``encode(a + text) == encode(a) + encode_block(text)`` and a conversation can be
        tokenized block by block.
        """
        if not text.startswith(("[Text]", "[Speech]")):
            raise InvalidArgumentError("a context block must start with [Text] or [Speech]")
        ids = self.encode(text, add_bos=False)
        space = self.piece_to_id.get("\u2581")
        return ids[1:] if ids and ids[0] == space else ids

    def decode(self, ids: list[int]) -> str:
        """Decode like the slow tokenizer with ``skip_special_tokens=True``.

        ``<s>``/``</s>``/``<unk>`` are skipped, and the first piece loses its leading ``▁``
        before sentencepiece (which also drops the dummy-prefix space) decodes the pieces, so
        text that starts with a space loses that space, as in the release.
        """
        out, run = [], []
        skip = set(self.special.values())

        def flush():
            if run:
                if not out and run[0].startswith("\u2581"):
                    run[0] = run[0][1:]
                out.append(self.sp.DecodePieces(run))
                run.clear()

        for i in ids:
            if i in skip:
                continue
            if i in self.id_to_added:
                flush()
                out.append(self.id_to_added[i])
            else:
                run.append(self.sp.IdToPiece(i))
        flush()
        return "".join(out)

    def unit_ids(self, prefix: str) -> list[int]:
        """All ids of ``[<prefix>N]`` tokens (prefix Hu, Pi or St)."""
        pieces = {**self.piece_to_id, **self.added}
        return sorted(i for p, i in pieces.items() if p.startswith(f"[{prefix}") and _UNIT_PIECE.fullmatch(p))

    def forbidden_ids(self, output_modality: str, expressive: bool) -> list[int]:
        """Ids banned when forcing an output modality (looked up by token string).

        text: the modality markers and every HuBERT token (and pitch/style for Expressive);
        speech: the markers and every text piece; arbitrary: nothing.
        """
        if output_modality not in OUTPUT_MODALITIES:
            raise InvalidArgumentError(f"unknown output modality {output_modality!r} (choose from {OUTPUT_MODALITIES})")
        if output_modality == "arbitrary":
            return []
        markers = [self.token_id(m) for m in ("[Text]", "[Speech]")]
        if output_modality == "text":
            banned = self.unit_ids("Hu") + (self.unit_ids("Pi") + self.unit_ids("St") if expressive else [])
        else:
            speech = set(self.unit_ids("Hu") + self.unit_ids("Pi") + self.unit_ids("St")) | set(markers)
            banned = [i for i in range(self.sp.GetPieceSize()) if i not in speech]
        return sorted(set(markers + banned))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_llama(directory: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LlamaForCausalLM:
    """Load the HF Llama checkpoint from a local directory only (never the hub)."""
    started = time.perf_counter()
    config_data = load_json(directory / "config.json", "LM config")
    try:
        config = LlamaConfig(**{k: v for k, v in config_data.items() if k not in ("architectures", "transformers_version", "torch_dtype", "dtype")})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: invalid Llama config ({exc})") from None
    try:
        model = LlamaForCausalLM.from_pretrained(directory, config=config, dtype=dtype, local_files_only=True)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = LlamaForCausalLM.from_pretrained(directory, config=config, torch_dtype=dtype, local_files_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot load the LM from {directory}: {exc}") from None
    model = model.to(device).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    log.info("loaded LM %s (%.2fB parameters, %s, %s) in %.1fs", directory.name, params / 1e9, str(dtype).removeprefix("torch."),
             device, time.perf_counter() - started)
    return model


_FORWARD_PARAMS = inspect.signature(LlamaForCausalLM.forward).parameters
_CACHE_KWARG = "cache" if "cache" in _FORWARD_PARAMS else "past_key_values"  # renamed in transformers 5.x
_KEEP_KWARG = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in _FORWARD_PARAMS), None)


def new_cache() -> DynamicCache:
    return DynamicCache()


def forward_last_logits(model: LlamaForCausalLM, ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Run ``ids`` ``[1, n]`` through the model, appending to ``cache``; return last-position logits ``[vocab]``."""
    kwargs = {_CACHE_KWARG: cache, "use_cache": True}
    if _KEEP_KWARG:
        kwargs[_KEEP_KWARG] = 1
    return model(input_ids=ids.to(model.device), **kwargs).logits[0, -1]


@dataclass
class SamplingConfig:
    """Greedy when ``do_sample`` is False; otherwise HF's temperature -> top-k -> top-p order."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise InvalidArgumentError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise InvalidArgumentError("top-p must be in (0, 1]")
        if self.top_k < 0:
            raise InvalidArgumentError("top-k must be >= 0")

    def generator(self) -> torch.Generator | None:
        if not self.do_sample:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else torch.seed())
        return g


def next_token(logits: torch.Tensor, banned: torch.Tensor | None, sampling: SamplingConfig,
               generator: torch.Generator | None) -> int:
    """Pick the next id from last-position logits ``[vocab]`` the way HF ``generate`` does."""
    scores = logits.float().clone()
    if banned is not None and banned.numel():
        scores[banned] = -float("inf")
    if not sampling.do_sample:
        return int(scores.argmax())
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.numel())
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][-1], -float("inf"))
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        remove = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= 1 - sampling.top_p
        remove[-1:] = False
        scores = scores.masked_fill(remove.scatter(0, order, remove), -float("inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs[None], 1, generator=generator)[0, 0])
