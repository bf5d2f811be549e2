"""mHuBERT 25 Hz speech encoder and its unit quantizers.

The release ships mHuBERT as an s3prl "converted" dict (``model_cfg``, ``task_cfg``,
``model_weight`` with fairseq parameter names). We run it with ``transformers.HubertModel``
after renaming parameters, keep only the layers up to the output layer (11), and quantize
its features with the release's linear (CTC-style, with blank) or k-means quantizer.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertConfig, HubertModel

from .checkpoints import CheckpointError, load_state_dict_strict, load_torch_file, require_keys

log = logging.getLogger(__name__)

OUTPUT_LAYER = 11  # 1-based transformer layer whose output is quantized


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``conv_feature_layers`` (e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``) safely."""

    def value(node: ast.AST):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression {ast.dump(node)}")

    try:
        layers = value(ast.parse(spec, mode="eval"))
        if not all(isinstance(l, tuple) and len(l) == 3 for l in layers):
            raise ValueError("each layer must be (dim, kernel, stride)")
    except (SyntaxError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot parse conv_feature_layers {spec!r}: {exc}") from None
    return layers


def _hf_config(model_cfg: dict, num_layers: int) -> HubertConfig:
    conv = parse_conv_layers(model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
    if model_cfg.get("layer_type", "transformer") != "transformer":
        raise CheckpointError(f"unsupported mHuBERT layer_type {model_cfg.get('layer_type')!r}")
    if model_cfg.get("conv_pos_batch_norm", False) or model_cfg.get("pos_conv_depth", 1) != 1:
        raise CheckpointError("unsupported mHuBERT positional convolution (batch-norm or multi-layer)")
    activation = model_cfg.get("activation_fn", "gelu")
    if activation not in ("gelu", "relu"):
        raise CheckpointError(f"unsupported mHuBERT activation {activation!r}")
    return HubertConfig(
        hidden_size=model_cfg.get("encoder_embed_dim", 768),
        num_hidden_layers=num_layers,
        num_attention_heads=model_cfg.get("encoder_attention_heads", 12),
        intermediate_size=model_cfg.get("encoder_ffn_embed_dim", 3072),
        hidden_act=activation,
        feat_extract_norm="layer" if model_cfg.get("extractor_mode", "default") == "layer_norm" else "group",
        feat_extract_activation="gelu",
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        num_conv_pos_embeddings=model_cfg.get("conv_pos", 128),
        num_conv_pos_embedding_groups=model_cfg.get("conv_pos_groups", 16),
        do_stable_layer_norm=bool(model_cfg.get("layer_norm_first", False)),
        feat_proj_layer_norm=True,
        layer_norm_eps=1e-5,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, apply_spec_augment=False,
    )


def _rename(key: str) -> str | None:
    """fairseq/s3prl parameter name -> transformers HubertModel name (None: not needed)."""
    if key.startswith(("label_embs_concat", "final_proj", "target_glu", "mask_emb")):
        return None
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(.+)", key)
    if m:
        layer, rest = m.groups()
        rest = {"0.weight": "conv.weight", "0.bias": "conv.bias", "2.weight": "layer_norm.weight",
                "2.bias": "layer_norm.bias", "2.1.weight": "layer_norm.weight", "2.1.bias": "layer_norm.bias"}.get(rest)
        return None if rest is None else f"feature_extractor.conv_layers.{layer}.{rest}"
    if key.startswith("layer_norm."):
        return "feature_projection." + key
    if key.startswith("post_extract_proj."):
        return key.replace("post_extract_proj.", "feature_projection.projection.")
    m = re.fullmatch(r"encoder\.pos_conv\.0\.(weight_g|weight_v|bias)", key)
    if m:
        return {"weight_g": "encoder.pos_conv_embed.conv.weight_g", "weight_v": "encoder.pos_conv_embed.conv.weight_v",
                "bias": "encoder.pos_conv_embed.conv.bias"}[m.group(1)]
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)
    if m:
        layer, rest = m.groups()
        for old, new in (("self_attn.", "attention."), ("self_attn_layer_norm.", "layer_norm."),
                         ("fc1.", "feed_forward.intermediate_dense."), ("fc2.", "feed_forward.output_dense."),
                         ("final_layer_norm.", "final_layer_norm.")):
            if rest.startswith(old):
                return f"encoder.layers.{layer}.{new}{rest[len(old):]}"
        return None
    if key.startswith("encoder.layer_norm."):
        return key
    return None


def _to_hf_state(fairseq_state: dict[str, torch.Tensor], model: HubertModel, path: Path) -> dict[str, torch.Tensor]:
    renamed: dict[str, torch.Tensor] = {}
    for key, value in fairseq_state.items():
        new = _rename(key)
        if new is not None:
            renamed[new] = value
    own = model.state_dict()
    # Weight-normed positional conv: transformers stores g/v either as weight_g/weight_v or
    # as parametrizations.weight.original0/1 depending on the torch version.
    for suffix, original in (("weight_g", "original0"), ("weight_v", "original1")):
        old = f"encoder.pos_conv_embed.conv.{suffix}"
        new = f"encoder.pos_conv_embed.conv.parametrizations.weight.{original}"
        if old in renamed and new in own:
            renamed[new] = renamed.pop(old)
    if "feature_projection.projection.weight" not in renamed:  # fairseq has no projection when dims match
        dim = model.config.hidden_size
        renamed["feature_projection.projection.weight"] = torch.eye(dim)
        renamed["feature_projection.projection.bias"] = torch.zeros(dim)
    for key in own:  # parameters used only in training (masking) keep their initial values
        if key.startswith("masked_spec_embed"):
            renamed[key] = own[key]
    return renamed


class LinearQuantizer(nn.Module):
    """The release's 3-layer MLP over ``vocab_size`` units + 1 blank.

    A blank frame takes the unit of the nearest non-blank frame to its left, wrapping around
    to the end of the chunk (the release rolls the whole sequence); all-blank stays blank.
    """

    def __init__(self, vocab_size: int, dim: int, upstream_dim: int):
        super().__init__()
        self.vocab_size = vocab_size
        out_dim = vocab_size + 1
        mid = upstream_dim - out_dim
        self.encoder = nn.Sequential(
            nn.Linear(dim, dim - mid // 4), nn.LeakyReLU(),
            nn.Linear(dim - mid // 4, dim - mid // 2), nn.LeakyReLU(),
            nn.Linear(dim - mid // 2, out_dim),
        )

    @classmethod
    def from_file(cls, path: Path) -> "LinearQuantizer":
        state = load_torch_file(path, "HuBERT linear quantizer")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} (HuBERT linear quantizer) is not a dict")
        require_keys(state, ("model_cfg", "model_weight"), path, "HuBERT linear quantizer")
        require_keys(state["model_cfg"], ("vocab_size", "dim", "upstream_dim"), path, "HuBERT linear quantizer model_cfg")
        cfg = state["model_cfg"]
        model = cls(int(cfg["vocab_size"]), int(cfg["dim"]), int(cfg["upstream_dim"]))
        load_state_dict_strict(model.encoder, state["model_weight"], path, "HuBERT linear quantizer")
        return model.eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[T, D]`` features -> ``[T]`` unit ids."""
        codes = F.log_softmax(self.encoder(features), dim=-1).argmax(dim=-1)
        return fill_blanks(codes, self.vocab_size)


def fill_blanks(codes: torch.Tensor, blank: int) -> torch.Tensor:
    """Replace each ``blank`` by the nearest non-blank to its left, cyclically."""
    values = codes.tolist()
    known = [v for v in values if v != blank]
    if not known or len(known) == len(values):
        return codes
    carry = known[-1]  # wraps around: a leading blank takes the last non-blank unit
    for i, v in enumerate(values):
        if v == blank:
            values[i] = carry
        else:
            carry = v
    return torch.tensor(values, dtype=codes.dtype, device=codes.device)


class KMeansQuantizer(nn.Module):
    """The release's k-means format: ``{"cluster_centers": [K, D], "n_clusters": K}``."""

    def __init__(self, centers: torch.Tensor):
        super().__init__()
        self.register_buffer("centers_t", centers.t().contiguous())  # [D, K]
        self.register_buffer("centers_norm", (self.centers_t ** 2).sum(0, keepdim=True))

    @classmethod
    def from_file(cls, path: Path) -> "KMeansQuantizer":
        state = load_torch_file(path, "HuBERT k-means quantizer", allow_pickle=True)
        if not isinstance(state, dict) or "cluster_centers" not in state or "n_clusters" not in state:
            raise CheckpointError(f"{path} is not a k-means checkpoint (needs cluster_centers and n_clusters)")
        centers = torch.as_tensor(np.asarray(state["cluster_centers"]), dtype=torch.float32)
        if centers.dim() != 2 or centers.shape[0] != int(state["n_clusters"]):
            raise CheckpointError(f"{path}: cluster_centers shape {tuple(centers.shape)} does not match n_clusters={state['n_clusters']}")
        return cls(centers).eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dist = features.pow(2).sum(1, keepdim=True) - 2 * features @ self.centers_t + self.centers_norm
        return dist.argmin(dim=1)


def load_quantizer(path: Path) -> nn.Module:
    """Pick the quantizer format from the file's content."""
    state = load_torch_file(path, "HuBERT quantizer", allow_pickle=True)
    if isinstance(state, dict) and "cluster_centers" in state:
        return KMeansQuantizer.from_file(path)
    return LinearQuantizer.from_file(path)


class HubertUnitEncoder(nn.Module):
    """Waveform (16 kHz, one chunk) -> layer-11 mHuBERT features -> units at 25 Hz."""

    def __init__(self, model: HubertModel, quantizer: nn.Module, normalize: bool, hop: int):
        super().__init__()
        self.model = model
        self.quantizer = quantizer
        self.normalize = normalize
        self.hop = hop

    @classmethod
    def from_files(cls, hubert_path: Path, quantizer_path: Path, output_layer: int = OUTPUT_LAYER) -> "HubertUnitEncoder":
        state = load_torch_file(hubert_path, "mHuBERT")
        if not isinstance(state, dict):
            raise CheckpointError(f"{hubert_path} (mHuBERT) is not a dict")
        require_keys(state, ("model_cfg", "task_cfg", "model_weight"), hubert_path, "mHuBERT converted checkpoint")
        model_cfg, task_cfg = dict(state["model_cfg"]), dict(state["task_cfg"])
        layers = int(model_cfg.get("encoder_layers", 12))
        if layers < output_layer:
            raise CheckpointError(f"{hubert_path}: mHuBERT has {layers} layers, features come from layer {output_layer}")
        config = _hf_config(model_cfg, output_layer)
        model = HubertModel(config)
        if config.do_stable_layer_norm:
            model.encoder.layer_norm = nn.Identity()  # the release reads layer 11 before the final norm
        load_state_dict_strict(model, _to_hf_state(state["model_weight"], model, hubert_path), hubert_path, "mHuBERT")
        model.eval().requires_grad_(False)
        hop = int(np.prod(config.conv_stride))
        return cls(model, load_quantizer(quantizer_path), bool(task_cfg.get("normalize", False)), hop).eval()

    @torch.inference_mode()
    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """``[T]`` samples -> ``[frames, D]`` features."""
        x = wav.to(self.model.device, torch.float32)
        if self.normalize:
            x = F.layer_norm(x, x.shape)
        return self.model(x[None]).last_hidden_state[0]

    @torch.inference_mode()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.features(wav)).cpu()
