"""Expressive pitch tokens: F0 at 200 Hz (FCPE or pYAAPT) -> F0 VQ-VAE encoder -> 12.5 Hz units.

Release settings: hop 80 samples at 16 kHz, unvoiced frames interpolated, the quantizer's
config decides whether F0 is mean-normalised over the voiced frames of the utterance.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import sys
import types

import numpy as np
import torch
import yaml
from torch import nn

from .audio import SAMPLE_RATE
from .errors import AudioError
from .checkpoints import CheckpointError, CheckpointTree, F0_QUANTIZER_DIR, load_state_dict_strict, load_torch_file, require_keys

log = logging.getLogger(__name__)

F0_HOP = 80
F0_BACKBONES = ("fcpe", "pyaapt")
SUPPORTED_FEATURES = ("f0_interp,vuv", "f0,vuv", "norm_f0_interp,vuv", "norm_f0,vuv")


def _import_torchfcpe():
    """Import torchfcpe, which imports torchaudio only to resample non-16 kHz input.

    torchaudio has no wheel for this CPU torch, so when it is absent we let torchfcpe import
    against a placeholder whose Resample refuses to run; we always feed 16 kHz audio.
    """
    if "torchfcpe" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        import torchfcpe
        return torchfcpe

    class Resample:  # noqa: D401 - placeholder for torchaudio.transforms.Resample
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchfcpe was asked to resample; spiritlm-agent feeds it 16 kHz audio only")

    fake = types.ModuleType("torchaudio")
    fake.transforms = types.ModuleType("torchaudio.transforms")
    fake.transforms.Resample = Resample
    sys.modules["torchaudio"], sys.modules["torchaudio.transforms"] = fake, fake.transforms
    try:
        import torchfcpe
    finally:
        del sys.modules["torchaudio"], sys.modules["torchaudio.transforms"]
    return torchfcpe


@contextlib.contextmanager
def _quiet_stdout():
    """torchfcpe prints progress and clipping notes to stdout; keep stdout for our output."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield
    if sink.getvalue().strip():
        log.debug("torchfcpe: %s", sink.getvalue().strip())


class FCPEExtractor:
    """F0 and voicing with the FCPE model bundled in ``torchfcpe`` (release settings)."""

    def __init__(self, device: str | torch.device = "cpu"):
        with _quiet_stdout():
            self.model = _import_torchfcpe().spawn_bundled_infer_model(device=str(device))
        self.device = device

    @torch.inference_mode()
    def __call__(self, wav: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        frames = len(wav) // F0_HOP + 1
        with _quiet_stdout():
            f0, uv = self.model.infer(
                wav.float().to(self.device)[None, :, None], sr=SAMPLE_RATE, decoder_mode="local_argmax",
                threshold=0.05, f0_min=50, f0_max=1100, interp_uv=True,
                output_interp_target_length=frames, retur_uv=True,
            )
        return f0.squeeze().cpu().numpy(), (1 - uv).squeeze().cpu().numpy()


class PyaaptExtractor:
    """F0 with pYAAPT (``pip install spiritlm-agent[pyaapt]``), the release's other option."""

    def __init__(self):
        try:
            import amfm_decompy.basic_tools as basic
            import amfm_decompy.pYAAPT as pyaapt
            from scipy.interpolate import interp1d
        except ImportError:
            raise CheckpointError("the pyaapt F0 backbone needs AMFM-decompy and scipy: pip install 'spiritlm-agent[pyaapt]'") from None
        self._basic, self._pyaapt, self._interp1d = basic, pyaapt, interp1d

    def __call__(self, wav: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        audio = wav.numpy().astype(np.float64)
        audio = audio[: len(audio) // F0_HOP * F0_HOP]
        peak = np.abs(audio).max(initial=0.0)
        if peak > np.finfo(audio.dtype).tiny:
            audio = audio / peak
        pad = int(20.0 / 1000 * SAMPLE_RATE) // 2
        audio = np.pad(audio * 0.95, (pad, pad))
        pitch = self._pyaapt.yaapt(self._basic.SignalObj(audio, SAMPLE_RATE), frame_length=20.0,
                                   frame_space=F0_HOP / SAMPLE_RATE * 1000, nccf_thresh1=0.25, tda_frame_length=25.0)
        f0, vuv = pitch.samp_values, pitch.vuv
        voiced = np.flatnonzero(f0 != 0)
        if len(voiced) > 1:
            t = np.arange(len(f0))
            f0 = self._interp1d(t[voiced], f0[voiced], bounds_error=False, kind="linear", fill_value=0)(t)
            f0[: voiced[0]] = f0[voiced[0]]
            f0[voiced[-1] + 1:] = f0[voiced[-1]]
        return f0, vuv


class ResConv1DBlock(nn.Module):
    def __init__(self, n_in: int, n_state: int, dilation: int, res_scale: float):
        super().__init__()
        self.model = nn.Sequential(nn.ReLU(), nn.Conv1d(n_in, n_state, 3, 1, dilation, dilation), nn.ReLU(), nn.Conv1d(n_state, n_in, 1, 1, 0))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.model(x)


class Resnet1D(nn.Module):
    def __init__(self, width: int, depth: int, m_conv: float, growth: int, cycle: int | None, res_scale: bool):
        super().__init__()
        scale = 1.0 / math.sqrt(depth) if res_scale else 1.0
        self.model = nn.Sequential(*[
            ResConv1DBlock(width, int(m_conv * width), growth ** (d if cycle is None else d % cycle), scale)
            for d in range(depth)
        ])

    def forward(self, x):
        return self.model(x)


class EncoderConvBlock(nn.Module):
    """One level of the VQ-VAE encoder: strided convs with residual stacks, then a 3-tap conv."""

    def __init__(self, input_emb_width, output_emb_width, down_t, stride_t, width, depth, m_conv,
                 dilation_growth_rate=1, dilation_cycle=None, res_scale=False, **_unused):
        super().__init__()
        if isinstance(stride_t, (list, tuple)):
            stages = list(zip(stride_t, down_t))
            shapes = [(s * 2, s // 2) if s % 2 == 0 else (s * 2 + 1, s // 2 + 1) for s, _ in stages]
        else:
            stages, shapes = [(stride_t, down_t)], [(stride_t * 2, stride_t // 2)]
        blocks: list[nn.Module] = []
        for (stride, count), (kernel, pad) in zip(stages, shapes):
            for _ in range(count):
                blocks.append(nn.Sequential(
                    nn.Conv1d(input_emb_width if not blocks else width, width, kernel, stride, pad),
                    Resnet1D(width, depth, m_conv, dilation_growth_rate, dilation_cycle, res_scale),
                ))
        if blocks:
            blocks.append(nn.Conv1d(width, output_emb_width, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)


class F0Quantizer(nn.Module):
    """Level-0 encoder and codebook of the release's F0 VQ-VAE (``vqvae_f0_quantizer``)."""

    def __init__(self, cfg: dict):
        super().__init__()
        enc = dict(cfg["encoder_params"])
        self.features = str(cfg.get("features", "f0_interp,vuv"))
        if self.features not in SUPPORTED_FEATURES:
            raise CheckpointError(f"unsupported F0 quantizer features {self.features!r} (expected one of {SUPPORTED_FEATURES})")
        self.normalize = bool(cfg.get("speaker_norm", False)) or "norm_" in self.features
        down_t, stride_t = enc.pop("downs_t")[0], enc.pop("strides_t")[0]
        enc.pop("levels", None)
        self.encoder = EncoderConvBlock(down_t=down_t, stride_t=stride_t, **enc)
        vq = cfg["vq_params"]
        self.emb_width = int(vq["emb_width"])
        self.register_buffer("codebook", torch.zeros(int(vq["l_bins"]), self.emb_width))

    @classmethod
    def from_tree(cls, tree: CheckpointTree) -> "F0Quantizer":
        config_path = tree.file(f"{F0_QUANTIZER_DIR}/config.yaml")
        model_path = tree.file(f"{F0_QUANTIZER_DIR}/model.pt")
        try:
            cfg = yaml.safe_load(config_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CheckpointError(f"cannot read {config_path} (F0 quantizer config): {exc}") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{config_path} must hold a YAML mapping")
        require_keys(cfg, ("encoder_params", "vq_params"), config_path, "F0 quantizer config")
        try:
            model = cls(cfg)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{config_path}: invalid encoder/vq parameters ({exc!r})") from None
        state = load_torch_file(model_path, "F0 VQ-VAE", allow_pickle=True)
        weights = state.get("model") if isinstance(state, dict) else None
        if not isinstance(weights, dict):
            raise CheckpointError(f"{model_path} (F0 VQ-VAE) must be a dict with a 'model' state dict")
        ours = {f"encoder.{k[len('encoder.level_blocks.0.'):]}": v for k, v in weights.items() if k.startswith("encoder.level_blocks.0.")}
        if "vq.level_blocks.0.k" in weights:
            ours["codebook"] = weights["vq.level_blocks.0.k"]
        load_state_dict_strict(model, ours, model_path, "F0 VQ-VAE")
        return model.eval()

    @torch.inference_mode()
    def forward(self, f0: np.ndarray, vuv: np.ndarray) -> torch.Tensor:
        f0_t = torch.tensor(f0)
        vuv_t = torch.tensor(vuv)
        if self.normalize:  # mean over voiced frames of this utterance (the release has no speaker stats)
            voiced = f0_t != 0
            f0_t[voiced] = f0_t[voiced] - torch.mean(f0_t[vuv_t != 0])
        x = torch.stack([f0_t, vuv_t]).float()[None].to(self.codebook.device)
        z = self.encoder(x)  # [1, C, T/16]
        z = z.permute(0, 2, 1).reshape(-1, z.shape[1])
        if z.shape[-1] == 2 * self.emb_width:
            z = z[:, : self.emb_width] + z[:, self.emb_width:]
        k_t = self.codebook.t()
        distance = torch.sum(z ** 2, dim=-1, keepdim=True) - 2 * torch.matmul(z, k_t) + torch.sum(k_t ** 2, dim=0, keepdim=True)
        return torch.min(distance, dim=-1).indices.cpu()


class PitchEncoder:
    """Waveform chunk -> pitch units at 12.5 Hz."""

    def __init__(self, extractor, quantizer: F0Quantizer):
        self.extractor = extractor
        self.quantizer = quantizer

    @classmethod
    def from_tree(cls, tree: CheckpointTree, backbone: str = "fcpe", device: str | torch.device = "cpu") -> "PitchEncoder":
        if backbone not in F0_BACKBONES:
            raise CheckpointError(f"unknown F0 backbone {backbone!r} (choose from {F0_BACKBONES})")
        quantizer = F0Quantizer.from_tree(tree).to(device)
        extractor = FCPEExtractor(device) if backbone == "fcpe" else PyaaptExtractor()
        return cls(extractor, quantizer)

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        try:
            f0, vuv = self.extractor(wav)
        except IndexError:  # torchfcpe cannot interpolate F0 when no frame is voiced (the release fails too)
            raise AudioError("no voiced frame found in this audio (chunk); the pitch extractor needs some voiced speech") from None
        return self.quantizer(f0, vuv)
