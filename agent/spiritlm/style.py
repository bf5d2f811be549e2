"""Expressive style tokens: a wav2vec2 classifier over 1 s windows (50 frames) -> 1 Hz units."""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

from .audio import SAMPLE_RATE
from .checkpoints import CheckpointError, CheckpointTree, STYLE_ENCODER_DIR, load_json, load_state_dict_strict, load_torch_file

log = logging.getLogger(__name__)

POOL_FRAMES = 50  # wav2vec2 runs at 50 Hz: one style token per second


def local_feature_extractor() -> Wav2Vec2FeatureExtractor:
    """The input normalisation of facebook/wav2vec2-base, built here instead of downloaded."""
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=False)


class StyleEncoder:
    def __init__(self, model: Wav2Vec2ForSequenceClassification):
        self.model = model
        self.feature_extractor = local_feature_extractor()

    @classmethod
    def from_tree(cls, tree: CheckpointTree, device: str | torch.device = "cpu") -> "StyleEncoder":
        config_path = tree.file(f"{STYLE_ENCODER_DIR}/config.json")
        weights_path = tree.file(f"{STYLE_ENCODER_DIR}/pytorch_model.bin")
        try:
            config = Wav2Vec2Config(**load_json(config_path, "style encoder config"))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{config_path}: invalid wav2vec2 config ({exc})") from None
        model = Wav2Vec2ForSequenceClassification(config)
        state = load_torch_file(weights_path, "style encoder")
        if not isinstance(state, dict):
            raise CheckpointError(f"{weights_path} (style encoder) is not a state dict")
        own = model.state_dict()
        # weight-normed positional conv may be stored either way round
        for suffix, original in (("weight_g", "original0"), ("weight_v", "original1")):
            old, new = f"wav2vec2.encoder.pos_conv_embed.conv.{suffix}", f"wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.{original}"
            if old in state and new in own:
                state[new] = state.pop(old)
            elif new in state and old in own:
                state[old] = state.pop(new)
        for key in own:  # training-only parameters
            if key.startswith("wav2vec2.masked_spec_embed") and key not in state:
                state[key] = own[key]
        load_state_dict_strict(model, state, weights_path, "style encoder")
        return cls(model.to(device).eval().requires_grad_(False))

    @torch.inference_mode()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        inputs = self.feature_extractor(wav.numpy().astype(np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        hidden = self.model.wav2vec2(inputs.to(self.model.device))[0]
        hidden = self.model.projector(hidden)  # [1, frames, P]
        pooled = torch.stack([hidden[0, i:i + POOL_FRAMES].mean(dim=0) for i in range(0, hidden.shape[1], POOL_FRAMES)])
        logits = self.model.classifier(pooled)
        return torch.log_softmax(logits, dim=-1).argmax(dim=-1).cpu()
