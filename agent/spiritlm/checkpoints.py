"""The official SpiRit-LM checkpoint tree and safe reading of its files.

Layout (``$SPIRITLM_CHECKPOINTS_DIR`` or ``--checkpoints DIR``)::

    speech_tokenizer/
        hubert_25hz/{mhubert_base_25hz.pt, L11_quantizer_500.pt}
        hifigan_spiritlm_base/{config.json, generator.pt, speakers.txt, styles.txt}
        hifigan_spiritlm_expressive_w2v2/{config.json, generator.pt, speakers.txt}
        style_encoder_w2v2/{config.json, pytorch_model.bin}
        vqvae_f0_quantizer/{config.yaml, model.pt}
    spiritlm_model/
        spirit-lm-base-7b/      (HF Llama: config.json, pytorch_model.bin, tokenizer.model, ...)
        spirit-lm-expressive-7b/
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import CheckpointError

log = logging.getLogger(__name__)

Variant = Literal["base", "expressive"]
VARIANTS: tuple[Variant, ...] = ("base", "expressive")

HUBERT_CKPT = "speech_tokenizer/hubert_25hz/mhubert_base_25hz.pt"
HUBERT_QUANTIZER = "speech_tokenizer/hubert_25hz/L11_quantizer_500.pt"
VOCODER_DIRS = {
    "base": "speech_tokenizer/hifigan_spiritlm_base",
    "expressive": "speech_tokenizer/hifigan_spiritlm_expressive_w2v2",
}
STYLE_ENCODER_DIR = "speech_tokenizer/style_encoder_w2v2"
F0_QUANTIZER_DIR = "speech_tokenizer/vqvae_f0_quantizer"
LM_DIRS = {
    "base": "spiritlm_model/spirit-lm-base-7b",
    "expressive": "spiritlm_model/spirit-lm-expressive-7b",
}
LM_FILES = ("config.json", "tokenizer.model")


@dataclass(frozen=True)
class CheckpointTree:
    """Paths into one checkpoint directory; every accessor checks the file exists."""

    root: Path

    @classmethod
    def locate(cls, directory: str | os.PathLike | None = None) -> "CheckpointTree":
        """Use ``directory``, else ``$SPIRITLM_CHECKPOINTS_DIR``; fail clearly if neither exists."""
        chosen = directory if directory is not None else os.environ.get("SPIRITLM_CHECKPOINTS_DIR")
        if not chosen:
            raise CheckpointError(
                "no checkpoint directory: pass --checkpoints DIR or set SPIRITLM_CHECKPOINTS_DIR "
                "(make random ones with `spiritlm-agent make-checkpoints DIR --preset tiny`)"
            )
        root = Path(chosen).expanduser()
        if not root.is_dir():
            raise CheckpointError(f"checkpoint directory {root} does not exist or is not a directory")
        return cls(root)

    def file(self, relative: str) -> Path:
        path = self.root / relative
        if not path.is_file():
            raise CheckpointError(f"missing checkpoint file {path} (expected the release layout under {self.root})")
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint file {path} is empty (truncated download?)")
        return path

    def directory(self, relative: str) -> Path:
        path = self.root / relative
        if not path.is_dir():
            raise CheckpointError(f"missing checkpoint directory {path} (expected the release layout under {self.root})")
        return path

    def lm_dir(self, variant: Variant) -> Path:
        path = self.directory(LM_DIRS[variant])
        for name in LM_FILES:
            self.file(f"{LM_DIRS[variant]}/{name}")
        if not any((path / n).is_file() for n in ("pytorch_model.bin", "model.safetensors", "pytorch_model.bin.index.json", "model.safetensors.index.json")):
            raise CheckpointError(f"missing LM weights in {path}: expected pytorch_model.bin (or safetensors)")
        return path


def load_torch_file(path: Path, what: str, allow_pickle: bool = False) -> Any:
    """``torch.load`` with errors that name the file; tensors only unless ``allow_pickle``.

    ``allow_pickle`` exists for files the release itself reads with ``weights_only=False``
    (the F0 VQ-VAE): only use it on checkpoints you trust.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise CheckpointError(f"{path} ({what}) holds objects other than tensors: {exc}") from None
        log.warning("%s holds pickled objects; loading it with weights_only=False as the release does", path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({what}): truncated or not a torch checkpoint ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"cannot read {path} ({what}): {exc}") from None


def load_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} ({what}): {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} ({what}) must hold a JSON object")
    return data


def require_keys(mapping: dict, keys: list[str] | tuple[str, ...], path: Path, what: str) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise CheckpointError(f"{path} ({what}) lacks {', '.join(map(repr, missing))}")


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Copy ``state`` into ``module``; name the first missing key or shape mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{path} ({what}) lacks parameter {missing[0]!r} ({len(missing)} missing)")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path} ({what}): parameter {key!r} has shape {tuple(state[key].shape)}, "
                f"the config expects {tuple(value.shape)}"
            )
    module.load_state_dict({k: state[k] for k in own}, strict=True)
