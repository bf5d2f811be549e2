"""Speech <-> units <-> token strings, with the release's chunking rules.

Audio is cut into chunks of at most 100 s; a chunk shorter than 1280 samples (80 ms, the
pitch model's minimum) is skipped. Each chunk is encoded independently by every stream.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .checkpoints import HUBERT_CKPT, HUBERT_QUANTIZER, CheckpointTree, Variant
from .errors import AudioError, TokenStringError
from .hubert import HubertUnitEncoder
from .pitch import PitchEncoder
from .style import StyleEncoder
from .tokens import Units, parse_unit_ids, string_to_units, units_to_string
from .vocoder import DEFAULT_SPEAKER, CodeHiFiGAN, VocoderInput

log = logging.getLogger(__name__)

MAX_CHUNK = 100 * SAMPLE_RATE
MIN_CHUNK = 1280


class SpeechTokenizer:
    def __init__(self, hubert: HubertUnitEncoder, vocoder: CodeHiFiGAN, pitch: PitchEncoder | None = None,
                 style: StyleEncoder | None = None):
        self.hubert, self.vocoder, self.pitch, self.style = hubert, vocoder, pitch, style

    @classmethod
    def from_tree(cls, tree: CheckpointTree, variant: Variant, f0_backbone: str = "fcpe", device: str = "cpu") -> "SpeechTokenizer":
        started = time.perf_counter()
        hubert = HubertUnitEncoder.from_files(tree.file(HUBERT_CKPT), tree.file(HUBERT_QUANTIZER)).to(device)
        vocoder = CodeHiFiGAN.from_tree(tree, variant).to(device)
        pitch = style = None
        if variant == "expressive":
            pitch = PitchEncoder.from_tree(tree, f0_backbone, device)
            style = StyleEncoder.from_tree(tree, device)
        log.info("loaded %s speech tokenizer and vocoder in %.1fs", variant, time.perf_counter() - started)
        return cls(hubert, vocoder, pitch, style)

    @property
    def expressive(self) -> bool:
        return self.pitch is not None

    def encode_units(self, wav: torch.Tensor) -> Units:
        """Mono 16 kHz waveform -> ``{"hubert": "...", "pitch": ..., "style": ...}`` (not deduplicated)."""
        if wav.dim() != 1:
            raise AudioError(f"expected a mono waveform, got shape {tuple(wav.shape)}")
        if len(wav) < MIN_CHUNK:
            raise AudioError(f"audio is {len(wav)} samples long; at least {MIN_CHUNK} samples "
                             f"({MIN_CHUNK / SAMPLE_RATE * 1000:.0f} ms) at {SAMPLE_RATE} Hz are needed")
        streams: dict[str, list[str]] = {"hubert": []}
        if self.expressive:
            streams["pitch"], streams["style"] = [], []
        for start in range(0, len(wav), MAX_CHUNK):
            chunk = wav[start:start + MAX_CHUNK]
            if len(chunk) < MIN_CHUNK:
                continue
            streams["hubert"] += [str(u) for u in self.hubert(chunk).tolist()]
            if self.expressive:
                streams["pitch"] += [str(u) for u in self.pitch(chunk).tolist()]
                streams["style"] += [str(u) for u in self.style(chunk).tolist()]
        return {key: " ".join(values) for key, values in streams.items()}

    def units_to_string(self, units: Units) -> str:
        return units_to_string(units, with_pitch=self.expressive, with_style=self.expressive)

    def encode_string(self, wav: torch.Tensor) -> str:
        return self.units_to_string(self.encode_units(wav))

    def decode(self, code: str | Units, speaker: int = DEFAULT_SPEAKER, dur_pred: bool = True) -> np.ndarray:
        """Vocode a token string or unit dict to 16 kHz float32 samples."""
        return vocode(self.vocoder, code, speaker, dur_pred)


def to_vocoder_input(code: str | Units, expressive: bool) -> tuple[VocoderInput, bool]:
    """Token string or unit dict -> vocoder input, and whether duration prediction applies.

    Duration prediction is turned off when pitch units do not match HuBERT units one to one
    (raw 25/12.5/1 Hz units from ``encode_units``: a resynthesis), as in the release.
    """
    if isinstance(code, str):
        units = string_to_units(code)
    elif isinstance(code, dict):
        units = code
    else:
        raise TokenStringError("units must be a token string or a dict like {'hubert': '1 2 3'}")
    if "hubert" not in units:
        raise TokenStringError("units lack the 'hubert' stream")
    hubert = parse_unit_ids(units["hubert"], "hubert")
    if not hubert:
        raise TokenStringError("no HuBERT units to vocode (a [HuN] token is needed)")
    pitch = parse_unit_ids(units["pitch"], "pitch") if expressive and "pitch" in units else None
    style = parse_unit_ids(units["style"], "style") if expressive and "style" in units else None
    aligned = pitch is None or len(pitch) == len(hubert)
    return VocoderInput(hubert, pitch, style), aligned


def vocode(vocoder: CodeHiFiGAN, code: str | Units, speaker: int = DEFAULT_SPEAKER, dur_pred: bool = True) -> np.ndarray:
    inp, aligned = to_vocoder_input(code, vocoder.is_expressive)
    return vocoder(inp, speaker=speaker, dur_pred=dur_pred and aligned).numpy()


def parse_units_json(text: str) -> Units:
    """The ``--units`` argument: a JSON object like ``encode_units`` prints."""
    try:
        units = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenStringError(f"--units is not valid JSON: {exc}") from None
    if not isinstance(units, dict) or not all(isinstance(v, str) for v in units.values()):
        raise TokenStringError('--units must be a JSON object of strings, e.g. {"hubert": "12 7 7"}')
    return units
