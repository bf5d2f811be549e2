"""Offline SpiRit-LM: interleaved text/speech prompt -> generated text and speech.

Mirrors the release's ``Spiritlm.generate``: prompt building with ``[Text]``/``[Speech]``
markers, output-modality forcing by banned ids, and the decoding of the generated string
into text and speech segments (speech shorter than 25 HuBERT tokens after the first
segment is dropped; a continuation of prompt speech is vocoded together with the prompt's
last speech run and the prompt's share of samples is cut off).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .audio import load_speech
from .checkpoints import CheckpointTree, Variant, load_json
from .errors import InvalidArgumentError, TokenStringError
from .lm import DTYPES, OUTPUT_MODALITIES, SamplingConfig, SpiritTokenizer, forward_last_logits, load_llama, new_cache, next_token
from .speech_tokenizer import SpeechTokenizer
from .tokens import (SPEECH_MARKER, TEXT_MARKER, count_hubert_tokens, ends_with_speech_token, last_speech_run_start,
                     split_segments, starts_with_speech_token)
from .vocoder import DEFAULT_SPEAKER

log = logging.getLogger(__name__)

MIN_NEW_SPEECH_HUBERT_TOKENS = 25


@dataclass
class PromptPart:
    """One input: ``text``, ``speech`` (path, bytes or 16 kHz array) or a raw token ``prompt`` string."""

    kind: Literal["text", "speech", "prompt"]
    content: object


@dataclass
class Segment:
    kind: Literal["text", "speech"]
    text: str | None = None
    audio: np.ndarray | None = None


@dataclass
class GenerationResult:
    prompt: str
    generated: str
    token_ids: list[int]
    segments: list[Segment] = field(default_factory=list)


class SpiritLM:
    def __init__(self, tree: CheckpointTree, variant: Variant = "base", device: str = "cpu",
                 dtype: str = "float32", f0_backbone: str = "fcpe"):
        if dtype not in DTYPES:
            raise InvalidArgumentError(f"unknown dtype {dtype!r} (choose from {tuple(DTYPES)})")
        self.variant = variant
        self.device = device
        lm_dir = tree.lm_dir(variant)
        self.tokenizer = SpiritTokenizer(lm_dir)
        self.speech = SpeechTokenizer.from_tree(tree, variant, f0_backbone, device)
        self.model = load_llama(lm_dir, DTYPES[dtype], device)
        gen_cfg_path = lm_dir / "generation_config.json"
        eos = load_json(gen_cfg_path, "generation config").get("eos_token_id") if gen_cfg_path.is_file() else None
        eos = self.tokenizer.eos_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.max_positions = int(self.model.config.max_position_embeddings)

    def build_prompt(self, parts: list[PromptPart], output_modality: str) -> str:
        """Interleave inputs, opening each modality run with its marker; end on the output's marker."""
        if output_modality not in OUTPUT_MODALITIES:
            raise InvalidArgumentError(f"unknown output modality {output_modality!r} (choose from {OUTPUT_MODALITIES})")
        pieces: list[str] = []
        previous = None
        for part in parts:
            if part.kind == "speech":
                if previous != "s":
                    pieces.append(SPEECH_MARKER)
                pieces.append(self.speech.encode_string(load_speech(part.content)))
                previous = "s"
            elif part.kind == "text":
                if previous != "t":
                    pieces.append(TEXT_MARKER)
                pieces.append(str(part.content))
                previous = "t"
            elif part.kind == "prompt":
                pieces.append(str(part.content))
                previous = "s" if ends_with_speech_token(str(part.content)) else "t"
            else:
                raise InvalidArgumentError(f"unknown prompt part kind {part.kind!r}")
        if all(p.kind == "prompt" for p in parts):
            return "".join(pieces)  # a raw prompt is used as given, like the release's prompt=
        if output_modality == "text" and previous != "t":
            pieces.append(TEXT_MARKER)
        elif output_modality == "speech" and previous != "s":
            pieces.append(SPEECH_MARKER)
        return "".join(pieces)

    def banned_ids(self, output_modality: str, force: bool = True) -> torch.Tensor:
        """Forbidden ids as ``generate`` applies them: transformers never bans the EOS id, so a
        forced speech reply can still end."""
        ids = self.tokenizer.forbidden_ids(output_modality, self.speech.expressive) if force else []
        return torch.tensor([i for i in ids if i not in self.eos_ids], dtype=torch.long)

    @torch.inference_mode()
    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, banned: torch.Tensor,
                     sampling: SamplingConfig) -> list[int]:
        """Cached-KV decoding: prefill the prompt, then one token per step until EOS or the limit."""
        if not prompt_ids:
            raise InvalidArgumentError("empty prompt")
        room = self.max_positions - len(prompt_ids)
        if room <= 0:
            raise InvalidArgumentError(f"prompt is {len(prompt_ids)} tokens; the model's window is {self.max_positions}")
        if max_new_tokens > room:
            log.warning("max_new_tokens %d capped to %d by the model's %d-position window", max_new_tokens, room, self.max_positions)
            max_new_tokens = room
        generator = sampling.generator()
        cache = new_cache()
        logits = forward_last_logits(self.model, torch.tensor([prompt_ids]), cache)
        generated: list[int] = []
        for _ in range(max_new_tokens):
            token = next_token(logits, banned, sampling, generator)
            generated.append(token)
            if token in self.eos_ids or len(generated) == max_new_tokens:
                break
            logits = forward_last_logits(self.model, torch.tensor([[token]]), cache)
        return generated

    def generate(self, parts: list[PromptPart] | None = None, prompt: str | None = None, output_modality: str = "arbitrary",
                 max_new_tokens: int = 200, sampling: SamplingConfig | None = None, speaker: int = DEFAULT_SPEAKER,
                 force_output_modality: bool = True) -> GenerationResult:
        sampling = sampling or SamplingConfig()
        if max_new_tokens < 1:
            raise InvalidArgumentError("max_new_tokens must be at least 1")
        self.speech.vocoder.check_speaker(speaker)
        if prompt is None:
            if not parts:
                raise InvalidArgumentError("give at least one input (text, speech or a prompt string)")
            prompt = self.build_prompt(parts, output_modality)
        elif output_modality not in OUTPUT_MODALITIES:
            raise InvalidArgumentError(f"unknown output modality {output_modality!r} (choose from {OUTPUT_MODALITIES})")
        prompt_ids = self.tokenizer.encode(prompt)
        started = time.perf_counter()
        new_ids = self.generate_ids(prompt_ids, max_new_tokens, self.banned_ids(output_modality, force_output_modality), sampling)
        log.info("generated %d tokens in %.2fs", len(new_ids), time.perf_counter() - started)
        full = self.tokenizer.decode(prompt_ids + new_ids)
        generated = full[len(prompt):].strip()
        segments = self.decode_output(output_modality, full, prompt, speaker)
        return GenerationResult(prompt=prompt, generated=generated, token_ids=new_ids, segments=segments)

    def _with_expressive_context(self, segment: str, context: str) -> str:
        """Give an expressive speech segment with no pitch token the last pitch (and, if it has
        no style either, the last style) seen before it, so it can be vocoded. The release
        fails on such segments; segments with pitch are left as the release decodes them."""
        if not self.speech.expressive or "[Pi" in segment:
            return segment
        prefix = ""
        for kind in ("St", "Pi"):
            if f"[{kind}" not in segment:
                last = re.findall(rf"\[{kind}\d+\]", context)
                prefix += last[-1] if last else ""
        return prefix + segment

    def decode_output(self, output_modality: str, full: str, prompt: str, speaker: int) -> list[Segment]:
        new = full[len(prompt):].strip()
        if output_modality == "text":
            return [Segment("text", text=new)]
        if output_modality == "speech":
            if "[Hu" not in new:  # e.g. EOS first: nothing to say (the release fails to vocode it)
                return []
            return [Segment("speech", audio=self.speech.decode(self._with_expressive_context(new, prompt), speaker=speaker))]
        continues_prompt_speech = ends_with_speech_token(prompt) and starts_with_speech_token(new)
        prompt_speech_start = 0
        if continues_prompt_speech:
            prompt_speech_start = last_speech_run_start(prompt)
            new = full[prompt_speech_start:]
        segments: list[Segment] = []
        seen = prompt
        for index, (content, kind) in enumerate(split_segments(new)):
            context, seen = seen, seen + content
            if kind == "t":
                segments.append(Segment("text", text=content))
                continue
            content = self._with_expressive_context(content, context)
            hubert_count = count_hubert_tokens(content)
            if index == 0 and continues_prompt_speech:
                prompt_count = count_hubert_tokens(prompt[prompt_speech_start:]) - 1
                if hubert_count - prompt_count < MIN_NEW_SPEECH_HUBERT_TOKENS:
                    continue
            elif index > 0 and hubert_count < MIN_NEW_SPEECH_HUBERT_TOKENS:
                continue
            try:
                audio = self.speech.decode(content, speaker=speaker)
            except TokenStringError as exc:  # e.g. expressive speech with no pitch token at all
                log.warning("dropping a generated speech segment that cannot be vocoded: %s", exc)
                continue
            if index == 0 and continues_prompt_speech:
                audio = audio[math.ceil(audio.size * prompt_count / hubert_count):]
            segments.append(Segment("speech", audio=audio))
        return segments
