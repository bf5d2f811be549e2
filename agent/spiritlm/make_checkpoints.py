"""Write a complete release-layout checkpoint tree with random weights.

Presets: ``tiny`` (small shapes, seconds to build, for tests) and ``base-7b`` /
``expressive-7b`` (the real shapes, for latency work: the LM alone is ~13.5 GB of bf16).
Files use the release's formats and parameter names, so Meta's own loaders read them too.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from torch import nn
from tqdm import tqdm

from .checkpoints import (F0_QUANTIZER_DIR, HUBERT_CKPT, HUBERT_QUANTIZER, LM_DIRS, STYLE_ENCODER_DIR, VOCODER_DIRS)
from .errors import InvalidArgumentError
from .hubert import parse_conv_layers
from .pitch import EncoderConvBlock, Resnet1D
from .vocoder import CodeHiFiGAN

log = logging.getLogger(__name__)

PRESETS = ("tiny", "base-7b", "expressive-7b")
SPECIAL_TOKENS_BASE = ["[Text]", "[Speech]"] + [f"[Hu{i}]" for i in range(501)]
SPECIAL_TOKENS_EXPRESSIVE = SPECIAL_TOKENS_BASE + [f"[Pi{i}]" for i in range(64)] + [f"[St{i}]" for i in range(100)]


@dataclass(frozen=True)
class Shapes:
    text_pieces: int
    lm: dict
    hubert: dict
    vocoder_channels: int
    vocoder_rates: tuple[int, ...]
    vocoder_kernels: tuple[int, ...]
    vocoder_embedding: int
    style_w2v2: dict
    f0_width: int
    lm_dtype: torch.dtype


TINY = Shapes(
    text_pieces=640,
    lm=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=1024),
    hubert=dict(conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 3", encoder_embed_dim=48,
                encoder_ffn_embed_dim=96, encoder_attention_heads=4, encoder_layers=12, conv_pos=16, conv_pos_groups=4),
    vocoder_channels=64, vocoder_rates=(5, 4, 4, 4, 2), vocoder_kernels=(11, 8, 8, 8, 4), vocoder_embedding=16,
    style_w2v2=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=16),
    f0_width=16, lm_dtype=torch.float32,
)
SEVEN_B = Shapes(
    text_pieces=32000,
    lm=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            max_position_embeddings=4096),
    hubert=dict(conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 3", encoder_embed_dim=768,
                encoder_ffn_embed_dim=3072, encoder_attention_heads=12, encoder_layers=12, conv_pos=128, conv_pos_groups=16),
    vocoder_channels=512, vocoder_rates=(5, 4, 4, 4, 2), vocoder_kernels=(11, 8, 8, 8, 4), vocoder_embedding=128,
    style_w2v2=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, classifier_proj_size=256),
    f0_width=128, lm_dtype=torch.bfloat16,
)


def _randn(*shape: int, std: float, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * std).to(dtype)


# ---------------------------------------------------------------- tokenizer
def build_sentencepiece(text_pieces: int, special: list[str]) -> bytes:
    """A BPE sentencepiece model like Llama 2's: <unk>, <s>, </s>, 256 byte pieces, text pieces,
    then ``special`` as user-defined pieces. Text pieces are all letter n-grams (not trained),
    so every longer piece can be reached by merges of shorter ones."""
    proto = sp_pb2.ModelProto()
    t = proto.trainer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = text_pieces + len(special)
    t.byte_fallback = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    n = proto.normalizer_spec
    n.name, n.add_dummy_prefix, n.remove_extra_whitespaces, n.escape_whitespaces = "identity", True, False, True
    Piece = sp_pb2.ModelProto.SentencePiece
    for piece, kind in (("<unk>", Piece.UNKNOWN), ("<s>", Piece.CONTROL), ("</s>", Piece.CONTROL)):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    for b in range(256):
        proto.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=Piece.BYTE)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    singles = ["▁"] + list(letters) + list("ETAOINSHRDLUCMFWYPVBGKJQXZ0123456789.,!?'-:;\"()")
    candidates = singles + ["▁" + c for c in letters]
    grams = [a + b for a in letters for b in letters]
    candidates += grams + ["▁" + g for g in grams]
    candidates += [g + c for g in grams for c in letters] + ["▁" + g + c for g in grams for c in letters]
    budget = text_pieces - len(proto.pieces)
    if budget > len(candidates):
        raise InvalidArgumentError(f"cannot make {text_pieces} text pieces")
    for rank, piece in enumerate(candidates[:budget]):
        proto.pieces.add(piece=piece, score=-float(rank), type=Piece.NORMAL)
    for piece in special:
        proto.pieces.add(piece=piece, score=0.0, type=Piece.USER_DEFINED)
    return proto.SerializeToString()


def write_lm(directory: Path, shapes: Shapes, special: list[str], gen: torch.Generator) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(build_sentencepiece(shapes.text_pieces, special))
    vocab = shapes.text_pieces + len(special)
    dtype_name = str(shapes.lm_dtype).removeprefix("torch.")
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", bos_token_id=1, eos_token_id=2, hidden_act="silu",
                  initializer_range=0.02, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, pretraining_tp=1,
                  tie_word_embeddings=False, attention_bias=False, torch_dtype=dtype_name, use_cache=True, vocab_size=vocab, **shapes.lm)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2))
    added = {str(i): dict(content=c, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
             for i, c in enumerate(["<unk>", "<s>", "</s>"])}
    (directory / "tokenizer_config.json").write_text(json.dumps(dict(
        add_bos_token=True, add_eos_token=False, added_tokens_decoder=added, bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", pad_token=None, clean_up_tokenization_spaces=False, legacy=True,
        model_max_length=shapes.lm["max_position_embeddings"], sp_model_kwargs={}, tokenizer_class="LlamaTokenizer"), indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), indent=2))
    h, f, layers = shapes.lm["hidden_size"], shapes.lm["intermediate_size"], shapes.lm["num_hidden_layers"]
    std = 0.02 if shapes is SEVEN_B else 0.15  # tiny: peaky logits, so greedy choices are robust to rounding
    dt = shapes.lm_dtype
    state = {"model.embed_tokens.weight": _randn(vocab, h, std=std * 5, gen=gen, dtype=dt)}
    for i in tqdm(range(layers), desc="LM layers", unit="layer", disable=layers < 8):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{name}.weight"] = _randn(h, h, std=std, gen=gen, dtype=dt)
        state[p + "mlp.gate_proj.weight"] = _randn(f, h, std=std, gen=gen, dtype=dt)
        state[p + "mlp.up_proj.weight"] = _randn(f, h, std=std, gen=gen, dtype=dt)
        state[p + "mlp.down_proj.weight"] = _randn(h, f, std=std, gen=gen, dtype=dt)
        state[p + "input_layernorm.weight"] = torch.ones(h, dtype=dt)
        state[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=dt)
    state["model.norm.weight"] = torch.ones(h, dtype=dt)
    state["lm_head.weight"] = _randn(vocab, h, std=std, gen=gen, dtype=dt)
    torch.save(state, directory / "pytorch_model.bin")


# ---------------------------------------------------------------- mHuBERT + quantizer
def write_hubert(root: Path, shapes: Shapes, gen: torch.Generator) -> None:
    cfg = dict(label_rate=25.0, extractor_mode="default", activation_fn="gelu", layer_type="transformer", conv_bias=False,
               layer_norm_first=False, dropout=0.1, attention_dropout=0.1, feature_grad_mult=0.1, final_dim=256, **shapes.hubert)
    task = dict(sample_rate=16000, normalize=False, label_rate=25.0)
    conv = parse_conv_layers(cfg["conv_feature_layers"])
    d, ffn, k = cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"], cfg["conv_pos"]
    w: dict[str, torch.Tensor] = {}
    in_dim = 1
    for i, (dim, kernel, _) in enumerate(conv):
        w[f"feature_extractor.conv_layers.{i}.0.weight"] = _randn(dim, in_dim, kernel, std=(2 / (in_dim * kernel)) ** 0.5, gen=gen)
        if i == 0:
            w["feature_extractor.conv_layers.0.2.weight"] = 1 + _randn(dim, std=0.1, gen=gen)
            w["feature_extractor.conv_layers.0.2.bias"] = _randn(dim, std=0.1, gen=gen)
        in_dim = dim
    w["layer_norm.weight"], w["layer_norm.bias"] = 1 + _randn(in_dim, std=0.1, gen=gen), _randn(in_dim, std=0.1, gen=gen)
    w["post_extract_proj.weight"], w["post_extract_proj.bias"] = _randn(d, in_dim, std=in_dim ** -0.5, gen=gen), _randn(d, std=0.02, gen=gen)
    w["mask_emb"] = torch.rand(d, generator=gen)
    v = _randn(d, d // cfg["conv_pos_groups"], k, std=(4 / (k * d)) ** 0.5, gen=gen)
    w["encoder.pos_conv.0.weight_v"] = v
    w["encoder.pos_conv.0.weight_g"] = v.norm(dim=(0, 1), keepdim=True)
    w["encoder.pos_conv.0.bias"] = _randn(d, std=0.02, gen=gen)
    w["encoder.layer_norm.weight"], w["encoder.layer_norm.bias"] = torch.ones(d), torch.zeros(d)
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):  # small residual updates keep frames distinct
            w[p + f"self_attn.{name}.weight"] = _randn(d, d, std=(0.3 if name == "out_proj" else 1.0) * d ** -0.5, gen=gen)
            w[p + f"self_attn.{name}.bias"] = _randn(d, std=0.02, gen=gen)
        w[p + "fc1.weight"], w[p + "fc1.bias"] = _randn(ffn, d, std=d ** -0.5, gen=gen), _randn(ffn, std=0.02, gen=gen)
        w[p + "fc2.weight"], w[p + "fc2.bias"] = _randn(d, ffn, std=0.3 * ffn ** -0.5, gen=gen), _randn(d, std=0.02, gen=gen)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            w[p + f"{ln}.weight"], w[p + f"{ln}.bias"] = 1 + _randn(d, std=0.1, gen=gen), _randn(d, std=0.01, gen=gen)
    w["final_proj.weight"], w["final_proj.bias"] = _randn(256, d, std=0.02, gen=gen), torch.zeros(256)
    path = root / HUBERT_CKPT
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_cfg": cfg, "task_cfg": task, "model_weight": w, "dictionaries_symbols": [[str(i) for i in range(500)]]}, path)

    vocab, upstream = 500, d  # dims follow the release formula: mid = upstream - (vocab + 1)
    mid = upstream - (vocab + 1)
    dims = [d, d - mid // 4, d - mid // 2, vocab + 1]
    q = {}
    for layer, (a, b) in zip((0, 2, 4), zip(dims, dims[1:])):
        q[f"{layer}.weight"], q[f"{layer}.bias"] = _randn(b, a, std=a ** -0.5 * 2, gen=gen), _randn(b, std=0.01, gen=gen)
    torch.save({"model_cfg": {"vocab_size": vocab, "dim": d, "upstream_dim": upstream}, "model_weight": q}, root / HUBERT_QUANTIZER)


# ---------------------------------------------------------------- F0 VQ-VAE
class _DecoderLevel(nn.Module):
    """The release decoder's parameter layout (written so Meta's strict loader accepts the file)."""

    def __init__(self, emb: int, down_t: int, stride_t: int, width: int, depth: int, m_conv: float, growth: int):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv1d(emb, width, 3, 1, 1)]
        for i in range(down_t):
            blocks.append(nn.Sequential(Resnet1D(width, depth, m_conv, growth, None, False),
                                        nn.ConvTranspose1d(width, emb if i == down_t - 1 else width, stride_t * 2, stride_t, stride_t // 2)))
        self.model = nn.Sequential(*blocks)


def write_f0_quantizer(root: Path, shapes: Shapes, gen: torch.Generator) -> None:
    width = shapes.f0_width
    params = dict(input_emb_width=2, output_emb_width=width, levels=1, downs_t=[4], strides_t=[2], width=width, depth=3,
                  m_conv=1.0, dilation_growth_rate=3, dilation_cycle=None, zero_out=False, res_scale=False)
    cfg = dict(features="norm_f0_interp,vuv", speaker_norm=True, encoder_params=params,
               decoder_params={**params, "reverse_decoder_dilation": True}, vq_params=dict(l_bins=64, emb_width=width, mu=0.99, levels=1))
    encoder = EncoderConvBlock(input_emb_width=2, output_emb_width=width, down_t=4, stride_t=2, width=width, depth=3, m_conv=1.0,
                               dilation_growth_rate=3)
    decoder = _DecoderLevel(width, 4, 2, width, 3, 1.0, 3)
    out = nn.Conv1d(width, 2, 3, 1, 1)
    with torch.no_grad():
        encoder.model[0][0].weight.mul_(0.02)  # raw F0 is in Hz: keep activations in a sane range
    state = {f"encoder.level_blocks.0.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"decoder.level_blocks.0.{k}": v for k, v in decoder.state_dict().items()})
    state.update({f"decoder.out.{k}": v for k, v in out.state_dict().items()})
    state["vq.level_blocks.0.k"] = _randn(64, width, std=0.5, gen=gen)
    directory = root / F0_QUANTIZER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    torch.save({"model": state}, directory / "model.pt")


# ---------------------------------------------------------------- style encoder
def write_style_encoder(root: Path, shapes: Shapes) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(num_labels=100, use_weighted_layer_sum=False, **shapes.style_w2v2)
    config.architectures = ["Wav2Vec2ForSequenceClassification"]
    model = Wav2Vec2ForSequenceClassification(config)
    state = {}
    for key, value in model.state_dict().items():  # the classic weight_g/weight_v names every loader accepts
        key = key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        state[key] = value.contiguous()
    directory = root / STYLE_ENCODER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    torch.save(state, directory / "pytorch_model.bin")


# ---------------------------------------------------------------- vocoders
def vocoder_config(shapes: Shapes, expressive: bool) -> dict:
    emb = shapes.vocoder_embedding
    cfg = dict(resblock="1", upsample_rates=list(shapes.vocoder_rates), upsample_kernel_sizes=list(shapes.vocoder_kernels),
               upsample_initial_channel=shapes.vocoder_channels, resblock_kernel_sizes=[3, 7, 11],
               resblock_dilation_sizes=[[1, 3, 5]] * 3, num_embeddings=501, embedding_dim=emb, multispkr=True, num_speakers=4,
               code_hop_size=640, sampling_rate=16000,
               dur_predictor_params=dict(encoder_embed_dim=emb, var_pred_hidden_dim=emb, var_pred_kernel_size=3, var_pred_dropout=0.5))
    if expressive:
        cfg.update(num_f0_tokens=64, f0_hop_size=1280, num_style_tokens=100, style_hop_size=16000, model_in_dim=4 * emb)
    else:
        cfg.update(multistyle=True, num_styles=10, model_in_dim=3 * emb)
    return cfg


def write_vocoder(root: Path, shapes: Shapes, expressive: bool) -> None:
    cfg = vocoder_config(shapes, expressive)
    model = CodeHiFiGAN(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and module is not model.dur_predictor:
                fan_in = module.weight[0].numel() if isinstance(module, nn.Conv1d) else module.weight.shape[0] * module.weight.shape[2] // module.stride[0]
                module.weight.normal_(0, fan_in ** -0.5)
        model.dur_predictor.proj.bias.fill_(1.4)  # about 3 frames per unit on average
    weight_normed = ("conv_pre", "ups.", "resblocks.", "conv_post")
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(".weight") and key.startswith(weight_normed):
            prefix = key[: -len(".weight")]
            state[f"{prefix}.weight_g"] = value.norm(dim=tuple(range(1, value.dim())), keepdim=True)
            state[f"{prefix}.weight_v"] = value
        else:
            state[key] = value
    directory = root / VOCODER_DIRS["expressive" if expressive else "base"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    torch.save({"generator": state}, directory / "generator.pt")
    (directory / "speakers.txt").write_text("\n".join(["ex01", "ex02", "ex03", "ex04"]) + "\n")
    if not expressive:
        styles = ["read-default", "read-whisper", "read-happy", "read-sad", "read-laughing", "conv-sad", "conv-whisper",
                  "conv-happy", "conv-default", "conv-laughing"]
        (directory / "styles.txt").write_text("\n".join(styles) + "\n")


def make_checkpoints(root: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write every file of the release layout; the 7B presets write only their own variant's LM."""
    if preset not in PRESETS:
        raise InvalidArgumentError(f"unknown preset {preset!r} (choose from {PRESETS})")
    started = time.perf_counter()
    root = Path(root)
    shapes = TINY if preset == "tiny" else SEVEN_B
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    write_hubert(root, shapes, gen)
    write_f0_quantizer(root, shapes, gen)
    write_style_encoder(root, shapes)
    write_vocoder(root, shapes, expressive=False)
    write_vocoder(root, shapes, expressive=True)
    variants = ("base", "expressive") if preset == "tiny" else (preset.removesuffix("-7b"),)
    for variant in variants:
        special = SPECIAL_TOKENS_EXPRESSIVE if variant == "expressive" else SPECIAL_TOKENS_BASE
        write_lm(root / LM_DIRS[variant], shapes, special, gen)
    log.info("wrote %s checkpoints to %s in %.1fs", preset, root, time.perf_counter() - started)
    return root
