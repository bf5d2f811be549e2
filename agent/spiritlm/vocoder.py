"""Unit HiFi-GAN (CodeHiFiGAN) from the release format, split into conditioning and generator.

``conditioning()`` turns units (+ duration prediction, pitch/style tokens, speaker/style
embeddings) into the generator's input frames at 25 Hz; ``generator()`` upsamples frames to
16 kHz samples (product of ``upsample_rates`` = 640). The streaming vocoder reuses both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, CheckpointTree, VOCODER_DIRS, Variant, load_json, load_torch_file, require_keys
from .errors import InvalidArgumentError, TokenStringError

log = logging.getLogger(__name__)

LRELU_SLOPE = 0.1
DEFAULT_SPEAKER = 2
DEFAULT_STYLE = 8  # "conv-default" style of the base vocoder


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, 1, _padding(kernel, d), dilation=d) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, 1, _padding(kernel)) for _ in dilations)

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class DurationPredictor(nn.Module):
    """Predicts log(1 + frames) per deduplicated unit (the release pads conv2 by 1 whatever its kernel)."""

    def __init__(self, in_dim: int, hidden: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(in_dim, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x):  # [B, T, C] -> [B, T]
        x = self.ln1(self.conv1(x.transpose(1, 2)).transpose(1, 2))
        x = self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2))
        return self.proj(x).squeeze(2)


@dataclass
class VocoderInput:
    """Units for one utterance; pitch/style are per HuBERT unit when ``dur_pred`` is on."""

    hubert: list[int]
    pitch: list[int] | None = None
    style: list[int] | None = None


class CodeHiFiGAN(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        rates, kernels = cfg["upsample_rates"], cfg["upsample_kernel_sizes"]
        ch0 = cfg["upsample_initial_channel"]
        self.num_kernels = len(cfg["resblock_kernel_sizes"])
        self.conv_pre = nn.Conv1d(cfg.get("model_in_dim", 80), ch0, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(ch0 // 2 ** i, ch0 // 2 ** (i + 1), k, u, padding=(k - u) // 2) for i, (u, k) in enumerate(zip(rates, kernels))
        )
        self.resblocks = nn.ModuleList(
            ResBlock(ch0 // 2 ** (i + 1), k, d) for i in range(len(rates))
            for k, d in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"])
        )
        self.conv_post = nn.Conv1d(ch0 // 2 ** len(rates), 1, 7, 1, padding=3)

        dim = cfg["embedding_dim"]
        self.dict = nn.Embedding(cfg["num_embeddings"], dim)
        self.f0_dict = nn.Embedding(cfg["num_f0_tokens"], dim) if cfg.get("num_f0_tokens") else None
        self.style_dict = nn.Embedding(cfg["num_style_tokens"], dim) if cfg.get("num_style_tokens") else None
        self.hubert_to_f0 = round(cfg["f0_hop_size"] / cfg["code_hop_size"]) if self.f0_dict is not None else None
        self.hubert_to_style = round(cfg["style_hop_size"] / cfg["code_hop_size"]) if self.style_dict is not None else None
        if cfg.get("embedder_params") or cfg.get("f0") or cfg.get("f0_quant_num_bin"):
            raise CheckpointError("vocoder config uses continuous F0 or speaker embedders, which SpiRit-LM does not ship")
        self.spkr = nn.Embedding(cfg.get("num_speakers", 200), dim) if cfg.get("multispkr") else None
        self.style = nn.Embedding(cfg.get("num_styles", 100), dim) if cfg.get("multistyle") else None
        dp = cfg.get("dur_predictor_params")
        self.dur_predictor = DurationPredictor(dp["encoder_embed_dim"], dp["var_pred_hidden_dim"], dp["var_pred_kernel_size"]) if dp else None
        self.upsample_factor = 1
        for u in rates:
            self.upsample_factor *= u
        self.speakers: list[str] = []
        self.styles: list[str] = []

    @classmethod
    def from_dir(cls, directory: Path) -> "CodeHiFiGAN":
        tree = CheckpointTree(directory)
        config_path, weights_path = tree.file("config.json"), tree.file("generator.pt")
        cfg = load_json(config_path, "vocoder config")
        require_keys(cfg, ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock_kernel_sizes",
                           "resblock_dilation_sizes", "num_embeddings", "embedding_dim"), config_path, "vocoder config")
        try:
            model = cls(cfg)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise CheckpointError(f"{config_path}: invalid vocoder config ({exc!r})") from None
        state = load_torch_file(weights_path, "vocoder")
        if not isinstance(state, dict) or not isinstance(state.get("generator"), dict):
            raise CheckpointError(f"{weights_path} (vocoder) must be a dict with a 'generator' state dict")
        model.load_weight_normed(state["generator"], weights_path)
        for name, attr in (("speakers.txt", "speakers"), ("styles.txt", "styles")):
            if (directory / name).is_file():
                setattr(model, attr, [line.strip() for line in (directory / name).read_text().splitlines()])
        return model.eval().requires_grad_(False)

    @classmethod
    def from_tree(cls, tree: CheckpointTree, variant: Variant) -> "CodeHiFiGAN":
        return cls.from_dir(tree.directory(VOCODER_DIRS[variant]))

    def load_weight_normed(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """Fold ``weight_g``/``weight_v`` pairs into plain weights, then load strictly."""
        folded = dict(state)
        for key in [k for k in state if k.endswith(".weight_g")]:
            prefix = key[: -len(".weight_g")]
            if f"{prefix}.weight_v" not in state:
                raise CheckpointError(f"{path} (vocoder): {key} has no matching weight_v")
            folded[f"{prefix}.weight"] = torch._weight_norm(state[f"{prefix}.weight_v"], state[key], 0)
            del folded[key], folded[f"{prefix}.weight_v"]
        from .checkpoints import load_state_dict_strict

        load_state_dict_strict(self, folded, path, "vocoder")

    @property
    def is_expressive(self) -> bool:
        return self.f0_dict is not None

    def check_speaker(self, speaker: int) -> None:
        if self.spkr is None:
            return
        count = self.spkr.num_embeddings
        if not isinstance(speaker, int) or not 0 <= speaker < count:
            names = f" ({', '.join(self.speakers[:count])})" if self.speakers else ""
            raise InvalidArgumentError(f"unknown speaker {speaker!r}: this vocoder has speakers 0..{count - 1}{names}")

    def _check_range(self, values: list[int], table: nn.Embedding, what: str) -> None:
        bad = [v for v in values if not 0 <= v < table.num_embeddings]
        if bad:
            raise TokenStringError(f"{what} unit {bad[0]} is out of range: the vocoder knows 0..{table.num_embeddings - 1}")

    def _upsample_codes(self, codes: torch.Tensor, n: int, rate: int, what: str) -> torch.Tensor:
        """Repeat coarse codes to the HuBERT rate; pad with the last code (release rule)."""
        k = codes.numel()
        if abs(k * rate - n) / rate > 1:
            raise TokenStringError(f"{k} {what} units do not fit {n} HuBERT units at ratio {rate}")
        up = torch.repeat_interleave(codes, rate)
        if up.numel() < n:
            up = torch.cat([up, up[-1:].expand(n - up.numel())])
        return up[:n]

    @torch.inference_mode()
    def durations(self, units: torch.Tensor) -> torch.Tensor:
        """Frames per (deduplicated) unit from the duration predictor, at least 1."""
        log_dur = self.dur_predictor(self.dict(units)[None])
        return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)[0]

    @torch.inference_mode()
    def conditioning(self, inp: VocoderInput, speaker: int = DEFAULT_SPEAKER, style_id: int = DEFAULT_STYLE,
                     dur_pred: bool = True, durations: torch.Tensor | None = None) -> torch.Tensor:
        """Units -> generator input ``[1, model_in_dim, frames]``.

        ``durations`` (frames per unit) may be given to reuse a prediction; otherwise they are
        predicted when ``dur_pred`` is on.
        """
        if not inp.hubert:
            raise TokenStringError("no HuBERT units to vocode")
        self._check_range(inp.hubert, self.dict, "HuBERT")
        self.check_speaker(speaker)
        if dur_pred and self.dur_predictor is None:
            raise InvalidArgumentError("this vocoder has no duration predictor: use --no-dur-pred")
        if self.is_expressive and (inp.pitch is None or inp.style is None):
            raise TokenStringError("the expressive vocoder needs pitch and style units as well as HuBERT units")
        device = self.dict.weight.device
        code = torch.tensor(inp.hubert, dtype=torch.long, device=device)
        n = code.numel()
        parts = [self.dict(code).t()[None]]  # [1, C, n]
        if dur_pred and durations is None:
            durations = self.durations(code)
        streams = []
        if self.f0_dict is not None:
            streams.append((inp.pitch, self.f0_dict, self.hubert_to_f0, "pitch"))
        if self.style_dict is not None:
            streams.append((inp.style, self.style_dict, self.hubert_to_style, "style"))
        for values, table, rate, what in streams:
            self._check_range(values, table, what)
            codes = torch.tensor(values, dtype=torch.long, device=device)
            if dur_pred:
                if codes.numel() != n:
                    raise TokenStringError(f"with duration prediction there must be one {what} unit per HuBERT unit ({codes.numel()} vs {n})")
            else:
                codes = self._upsample_codes(codes, n, rate, what)
            parts.append(table(codes).t()[None])
        x = torch.cat(parts, dim=1)
        if durations is not None:
            x = torch.repeat_interleave(x, durations.to(device), dim=2)
        for table, index in ((self.spkr, speaker), (self.style, style_id)):
            if table is not None:
                if not 0 <= index < table.num_embeddings:
                    raise InvalidArgumentError(f"unknown vocoder style {index}: choose 0..{table.num_embeddings - 1}")
                emb = table.weight[index][None, :, None]
                x = torch.cat([x, emb.expand(1, -1, x.shape[-1])], dim=1)
        return x

    @torch.inference_mode()
    def generator(self, x: torch.Tensor) -> torch.Tensor:
        """``[1, C, frames]`` -> ``[1, 1, frames * 640]`` samples in [-1, 1]."""
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))  # default slope (0.01) here, as released

    def forward(self, inp: VocoderInput, speaker: int = DEFAULT_SPEAKER, style_id: int = DEFAULT_STYLE,
                dur_pred: bool = True) -> torch.Tensor:
        return self.generator(self.conditioning(inp, speaker, style_id, dur_pred)).reshape(-1).cpu()
