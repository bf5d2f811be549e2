"""Audio in and out: files via soundfile, any rate to 16 kHz via soxr, channel handling."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from .errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


def read_audio(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int]:
    """Read a file (or its bytes) as float32 ``[channels, samples]`` and its rate.

    PCM is scaled to [-1, 1) as torchaudio/soundfile both do (int16 / 32768).
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise AudioError(f"audio file {name} does not exist")
    try:
        data, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{name} is not a readable audio file ({exc})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{name} holds no audio samples")
    return np.ascontiguousarray(data.T), int(rate)


def resample(wav: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``[..., samples]`` float32 with soxr's high-quality preset."""
    if rate_in == rate_out:
        return wav
    if rate_in <= 0 or rate_out <= 0:
        raise AudioError(f"invalid sample rate {rate_in} -> {rate_out}")
    out = soxr.resample(wav.T, rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def to_mono(wav: np.ndarray | torch.Tensor, channel: int | None = None) -> torch.Tensor:
    """Squeeze to 1-D: average channels (``[C, T]``) unless ``channel`` picks one."""
    x = torch.as_tensor(wav, dtype=torch.float32).squeeze()
    if x.dim() == 0:
        raise AudioError("audio is a single number, not a waveform")
    if x.dim() == 2:
        if channel is None:
            log.info("averaging %d channels (choose one with --channel)", x.shape[0])
            x = x.mean(0)
        elif not 0 <= channel < x.shape[0]:
            raise AudioError(f"channel {channel} does not exist: the audio has {x.shape[0]} channels")
        else:
            x = x[channel]
    elif x.dim() > 2:
        raise AudioError(f"audio must be [samples] or [channels, samples], got shape {tuple(x.shape)}")
    elif channel not in (None, 0):
        raise AudioError(f"channel {channel} does not exist: the audio is mono")
    if x.numel() == 0:
        raise AudioError("audio is empty")
    if not torch.isfinite(x).all():
        raise AudioError("audio contains NaN or infinite samples")
    return x.contiguous()


def load_speech(source: str | os.PathLike | bytes | np.ndarray | torch.Tensor, channel: int | None = None,
                sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Any supported input to a mono float32 16 kHz tensor.

    Arrays and tensors are taken to be at ``sample_rate`` already, as in the release.
    """
    if isinstance(source, (str, os.PathLike, bytes)):
        wav, rate = read_audio(source)
        if rate != SAMPLE_RATE:
            log.info("resampling %s from %d Hz to %d Hz", "audio" if isinstance(source, bytes) else Path(source).name, rate, SAMPLE_RATE)
            wav = resample(wav, rate, SAMPLE_RATE)
        return to_mono(wav, channel)
    wav = source.detach().cpu().float().numpy() if isinstance(source, torch.Tensor) else np.asarray(source, dtype=np.float32)
    if sample_rate != SAMPLE_RATE:
        wav = resample(wav, sample_rate, SAMPLE_RATE)
    return to_mono(wav, channel)


def write_wav(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 32-bit float WAV without requantising."""
    data = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    sf.write(str(path), data.astype(np.float32).reshape(-1), sample_rate, subtype="FLOAT")
