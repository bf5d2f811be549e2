"""Streaming vocoder: exact against the offline CodeHiFiGAN for any chunking, bounded state, errors,
receptive field from the config, and the low-latency option's measured error."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.spiritlm.errors import InvalidArgumentError, TokenStringError
from agent.spiritlm.make_checkpoints import SEVEN_B, TINY, vocoder_config
from agent.spiritlm.speech_tokenizer import to_vocoder_input
from agent.spiritlm.vocoder import CodeHiFiGAN, VocoderInput
from streaming.vocoder import (StreamingGenerator, StreamingVocoder, duration_context, generator_receptive_field,
                               receptive_field_of_config)

TOL = 1e-4
FIXTURE_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Streaming runs ~100 small ops per step; on the shared 2-core CI box a second OpenMP thread
    that has to wait for a busy core makes each of them ~8 ms slower. One thread keeps this file fast."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def vocoders(tree):
    return {variant: CodeHiFiGAN.from_tree(tree, variant) for variant in ("base", "expressive")}


@pytest.fixture(scope="module")
def real_units(models, speech):
    """Units of real (Piper) speech from the tiny mHuBERT/pitch/style encoders: raw and deduplicated."""
    tokenizer = models["expressive"].speech
    raw = tokenizer.encode_units(speech["hello"][0])  # 25 Hz HuBERT, 12.5 Hz pitch, 1 Hz style
    dedup, aligned = to_vocoder_input(tokenizer.units_to_string(raw), expressive=True)
    assert aligned and len(dedup.hubert) < len(raw["hubert"].split())
    raw_inp = VocoderInput(*(list(map(int, raw[k].split())) for k in ("hubert", "pitch", "style")))
    return {"raw": raw_inp, "dedup": dedup}


# ------------------------------------------------------------------ helpers
def random_input(rng: random.Random, vocoder: CodeHiFiGAN, n: int, dur_pred: bool) -> VocoderInput:
    hubert = [rng.randrange(vocoder.dict.num_embeddings) for _ in range(n)]
    if not vocoder.is_expressive:
        return VocoderInput(hubert)
    if dur_pred:
        counts = (n, n)
    else:  # native rates, within the offline "fits" rule (|k * rate - n| <= rate)
        counts = tuple(max(1, math.ceil(n / r) + rng.choice((-1, 0, 0, 1))) for r in (vocoder.hubert_to_f0, vocoder.hubert_to_style))
        counts = tuple(k if abs(k * r - n) <= r else math.ceil(n / r) for k, r in zip(counts, (vocoder.hubert_to_f0, vocoder.hubert_to_style)))
    pitch = [rng.randrange(vocoder.f0_dict.num_embeddings) for _ in range(counts[0])]
    style = [rng.randrange(vocoder.style_dict.num_embeddings) for _ in range(counts[1])]
    return VocoderInput(hubert, pitch, style)


def cuts(rng: random.Random, n: int, pieces: int) -> list[int]:
    """``pieces + 1`` sorted cut points from 0 to n (pieces may be empty)."""
    return [0] + sorted(rng.randint(0, n) for _ in range(pieces - 1)) + [n]


def stream(sv: StreamingVocoder, inp: VocoderInput, sizes: list[int], rng: random.Random | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Feed ``inp`` in HuBERT chunks of ``sizes``; raw pitch/style streams are cut independently."""
    bounds = np.cumsum([0] + sizes).tolist()
    parts = len(sizes)
    side = []
    for values in (inp.pitch, inp.style):
        if values is None:
            side.append(None)
        elif sv.dur_pred:
            side.append(bounds)
        else:
            side.append(cuts(rng or random.Random(0), len(values), parts))
    outs = []
    for i in range(parts):
        args = [inp.hubert[bounds[i]:bounds[i + 1]]]
        for values, b in zip((inp.pitch, inp.style), side):
            args.append(None if values is None else values[b[i]:b[i + 1]])
        outs.append(sv.feed(*args))
    outs.append(sv.flush())
    return np.concatenate(outs), outs


def chunk_sizes(rng: random.Random, n: int, largest: int) -> list[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(min(rng.randint(1, largest), n - sum(sizes)))
    return sizes


def offline(vocoder, inp, **kw) -> np.ndarray:
    return vocoder(inp, **kw).numpy()


# ------------------------------------------------------------------ receptive field and lookahead
def test_receptive_field_is_derived_from_the_config(vocoders):
    tiny = receptive_field_of_config(vocoder_config(TINY, expressive=False))
    seven_b = receptive_field_of_config(vocoder_config(SEVEN_B, expressive=True))
    for rf in (tiny, seven_b):
        assert rf["samples_per_frame"] == 640
        assert rf["right_frames"] == math.ceil(rf["delay_samples"] / 640)
        assert (rf["dur_left_units"], rf["dur_right_units"]) == (2, 2)
        assert rf["lookahead_units_worst_case"] == 2 + rf["right_frames"]
    # same kernels, dilations and rates: same context; only the cached floats scale with channels
    assert {k: v for k, v in tiny.items() if k != "state_values"} == {k: v for k, v in seven_b.items() if k != "state_values"}
    assert seven_b["state_values"] > tiny["state_values"]
    # a config with smaller kernels has a smaller field
    small = dict(vocoder_config(TINY, expressive=False), resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])
    assert receptive_field_of_config(small)["right_frames"] < tiny["right_frames"]
    assert generator_receptive_field(vocoders["base"]).right_frames == tiny["right_frames"]


def test_receptive_field_matches_the_offline_generator(vocoders):
    """Changing frame f + right changes frame f's samples, f + right + 1 does not (and the same on the left)."""
    vocoder = vocoders["base"]
    rf = generator_receptive_field(vocoder)
    spf, f, n = rf.samples_per_frame, 30, 30 + rf.right_frames + 8
    x = torch.randn(1, vocoder.conv_pre.in_channels, n, generator=torch.Generator().manual_seed(0))
    base = vocoder.generator(x)[0, 0, f * spf:(f + 1) * spf]

    def changed(frame: int) -> bool:
        y = x.clone()
        y[..., frame] += 1.0
        return not torch.equal(vocoder.generator(y)[0, 0, f * spf:(f + 1) * spf], base)

    assert changed(f + rf.right_frames) and not changed(f + rf.right_frames + 1)
    assert changed(f - rf.left_frames) and not changed(f - rf.left_frames - 1)


def test_duration_context_matches_the_predictor(vocoders):
    vocoder = vocoders["base"]
    left, right = duration_context(vocoder.dur_predictor)
    units = torch.tensor([random.Random(3).randrange(501) for _ in range(12)])
    i = 6

    def log_dur(u):
        with torch.inference_mode():
            return vocoder.dur_predictor(vocoder.dict(u)[None])[0, i]

    ref = log_dur(units)
    for j, expect in ((i + right, True), (i + right + 1, False), (i - left, True), (i - left - 1, False)):
        other = units.clone()
        other[j] = (other[j] + 1) % 501
        assert (not torch.equal(log_dur(other), ref)) == expect, j


def test_samples_are_released_exactly_when_the_lookahead_is_there(vocoders):
    """Exact mode: after each unit, the returned samples are 640 * (frames of units with final
    durations) - delay_samples, i.e. the lookahead attributes describe the real behaviour."""
    vocoder = vocoders["base"]
    sv = StreamingVocoder(vocoder)
    assert (sv.dur_context_units, sv.dur_lookahead_units) == (2, 2)
    assert sv.exact and sv.lookahead_frames == sv.exact_lookahead_frames == sv.receptive_field.right_frames
    assert sv.lookahead_units == sv.dur_lookahead_units + sv.lookahead_frames
    units = [random.Random(5).randrange(501) for _ in range(40)]
    durations = vocoder.durations(torch.tensor(units)).tolist()
    total = 0
    for n in range(1, len(units) + 1):
        total += len(sv.feed(units[n - 1:n]))
        frames = sum(durations[:max(0, n - sv.dur_lookahead_units)])
        assert total == max(0, 640 * frames - sv.receptive_field.delay_samples), n
    total += len(sv.flush())
    assert total == 640 * sum(durations)


@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=30), seed=st.integers(0, 2 ** 16))
@settings(max_examples=15, **FIXTURE_SETTINGS)
def test_streaming_generator_equals_offline_generator(vocoders, chunks, seed):
    vocoder = vocoders["base"]
    x = torch.randn(1, vocoder.conv_pre.in_channels, sum(chunks), generator=torch.Generator().manual_seed(seed))
    gen = StreamingGenerator(vocoder)
    pieces, start = [], 0
    for c in chunks:
        pieces.append(gen.push(x[..., start:start + c]))
        start += c
    pieces.append(gen.finish())
    out = torch.cat(pieces, dim=-1)
    ref = vocoder.generator(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < TOL


@pytest.mark.parametrize("changes", [
    dict(resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 2], [2, 6]]),
    dict(upsample_rates=[4, 4, 5, 8], upsample_kernel_sizes=[8, 9, 10, 16]),  # odd k - u: T * u + 1 samples
    dict(upsample_rates=[8, 8, 10], upsample_kernel_sizes=[16, 16, 20], resblock_kernel_sizes=[7], resblock_dilation_sizes=[[1, 3, 5, 7]]),
])
def test_other_generator_configs_stream_exactly(changes):
    """Nothing is tied to the release's layer sizes: context, delays and output follow the config."""
    cfg = dict(vocoder_config(TINY, expressive=False), upsample_initial_channel=32, **changes)
    torch.manual_seed(0)
    vocoder = CodeHiFiGAN(cfg).eval().requires_grad_(False)
    rf = generator_receptive_field(vocoder)
    n = 64
    x = torch.randn(1, vocoder.conv_pre.in_channels, n, generator=torch.Generator().manual_seed(1))
    ref = vocoder.generator(x)
    gen = StreamingGenerator(vocoder)
    rng, pieces, start, checked = random.Random(2), [], 0, 0
    while start < n:
        c = min(rng.randint(1, 6), n - start)
        pieces.append(gen.push(x[..., start:start + c]))
        start += c
        if start > 2 * rf.right_frames:  # past the start-up transient
            assert sum(p.shape[-1] for p in pieces) == rf.samples_per_frame * start - rf.delay_samples
            checked += 1
    pieces.append(gen.finish())
    out = torch.cat(pieces, dim=-1)
    assert out.shape == ref.shape and (out - ref).abs().max().item() < TOL
    assert checked and rf.right_frames == math.ceil(rf.delay_samples / rf.samples_per_frame)


# ------------------------------------------------------------------ exactness for any chunking
@given(n=st.integers(1, 40), largest=st.integers(1, 12), seed=st.integers(0, 2 ** 20), step=st.sampled_from([1, 1, 3]))
@settings(max_examples=8, **FIXTURE_SETTINGS)
@pytest.mark.parametrize("variant", ["base", "expressive"])
@pytest.mark.parametrize("dur_pred", [True, False])
def test_any_chunking_equals_offline(vocoders, variant, dur_pred, n, largest, seed, step):
    rng = random.Random(seed)
    vocoder = vocoders[variant]
    inp = random_input(rng, vocoder, n, dur_pred)
    speaker = rng.randrange(vocoder.spkr.num_embeddings)
    style_id = rng.randrange(vocoder.style.num_embeddings) if vocoder.style is not None else 8
    ref = offline(vocoder, inp, speaker=speaker, style_id=style_id, dur_pred=dur_pred)
    sv = StreamingVocoder(vocoder, speaker=speaker, style_id=style_id, dur_pred=dur_pred, step_frames=step)
    out, _ = stream(sv, inp, chunk_sizes(rng, n, largest), rng)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() < TOL
    assert sv.units_received == 0 and sv.samples_emitted == 0  # flush resets for the next reply


@given(largest=st.integers(1, 10), seed=st.integers(0, 2 ** 20))
@settings(max_examples=3, **FIXTURE_SETTINGS)
@pytest.mark.parametrize("variant", ["base", "expressive"])
@pytest.mark.parametrize("kind", ["dedup", "raw"])
def test_real_units_any_chunking_equals_offline(vocoders, real_units, variant, kind, largest, seed):
    vocoder = vocoders[variant]
    inp = real_units[kind]
    if variant == "base":
        inp = VocoderInput(inp.hubert)
    dur_pred = kind == "dedup"  # raw 25 Hz units are vocoded without duration prediction, as offline
    ref = offline(vocoder, inp, dur_pred=dur_pred)
    rng = random.Random(seed)
    out, _ = stream(StreamingVocoder(vocoder, dur_pred=dur_pred), inp, chunk_sizes(rng, len(inp.hubert), largest), rng)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < TOL


def test_reset_mid_reply_and_reuse(vocoders):
    vocoder = vocoders["expressive"]
    rng = random.Random(11)
    sv = StreamingVocoder(vocoder)
    first = random_input(rng, vocoder, 30, True)
    stream_part = VocoderInput(first.hubert[:20], first.pitch[:20], first.style[:20])
    sv.feed(stream_part.hubert, stream_part.pitch, stream_part.style)
    sv.reset()
    second = random_input(rng, vocoder, 25, True)
    for inp in (second, first):  # a reply after reset, then one after flush
        out, _ = stream(sv, inp, chunk_sizes(rng, len(inp.hubert), 4))
        assert np.abs(out - offline(vocoder, inp)).max() < TOL


# ------------------------------------------------------------------ bounded state
@pytest.mark.parametrize("lookahead,step,n", [(None, 1, 360), (3, 1, 180), (None, 4, 360)])
def test_state_stays_bounded_over_a_long_reply(vocoders, lookahead, step, n):
    vocoder = vocoders["expressive"]
    rng = random.Random(7)
    sv = StreamingVocoder(vocoder, lookahead_frames=lookahead, step_frames=step)
    bound = sv.receptive_field.state_values
    channels = vocoder.conv_pre.in_channels
    sizes = []
    inp = random_input(rng, vocoder, n, True)
    for i in range(0, n, 2):
        sv.feed(inp.hubert[i:i + 2], inp.pitch[i:i + 2], inp.style[i:i + 2])
        assert sv.generator.state_numel() <= bound  # per-layer caches and delay queues only
        assert len(sv._hubert) <= sv.dur_context_units + sv.dur_lookahead_units + 2
        sizes.append(sv.state_size())
    # a few units and codes, up to step_frames + one chunk of waiting frames, the last frame
    assert max(sizes) <= bound + channels * (step + 3 * 12) + 3 * 8
    assert max(sizes[n // 4:]) <= max(sizes[15:n // 4])  # no growth with the length of the reply (~20-40 s)
    sv.flush()


# ------------------------------------------------------------------ errors
def test_errors_match_offline(vocoders):
    base, expressive = vocoders["base"], vocoders["expressive"]

    def offline_error(vocoder, inp, **kw):
        with pytest.raises(Exception) as info:
            vocoder(inp, **kw)
        return info.value

    with pytest.raises(InvalidArgumentError, match="unknown speaker 7") as info:
        StreamingVocoder(base, speaker=7)
    assert str(info.value) == str(offline_error(base, VocoderInput([1]), speaker=7))
    with pytest.raises(InvalidArgumentError, match="unknown vocoder style 10"):
        StreamingVocoder(base, style_id=10)
    with pytest.raises(InvalidArgumentError, match="lookahead_frames"):
        StreamingVocoder(base, lookahead_frames=-1)
    with pytest.raises(InvalidArgumentError, match="step_frames"):
        StreamingVocoder(base, step_frames=0)
    no_dp = CodeHiFiGAN({k: v for k, v in base.cfg.items() if k != "dur_predictor_params"})
    with pytest.raises(InvalidArgumentError, match="no duration predictor"):
        StreamingVocoder(no_dp)
    StreamingVocoder(no_dp, dur_pred=False)

    sv = StreamingVocoder(base)
    with pytest.raises(TokenStringError, match="no HuBERT units") as info:
        sv.flush()
    assert str(info.value) == str(offline_error(base, VocoderInput([])))
    sv.feed([3, 4])
    with pytest.raises(TokenStringError, match="out of range") as info:
        sv.feed([5, 501])
    assert str(info.value) == str(offline_error(base, VocoderInput([5, 501])))
    with pytest.raises(TokenStringError, match="integers"):
        sv.feed(["5"])
    # a rejected feed leaves the state untouched
    out = np.concatenate([sv.feed([6, 7, 8]), sv.flush()])
    assert np.abs(out - offline(base, VocoderInput([3, 4, 6, 7, 8]))).max() < TOL

    sv = StreamingVocoder(expressive)
    with pytest.raises(TokenStringError, match="needs pitch and style") as info:
        sv.feed([1, 2])
    assert str(info.value) == str(offline_error(expressive, VocoderInput([1, 2])))
    with pytest.raises(TokenStringError, match="pitch unit 64 is out of range"):
        sv.feed([1], [64], [0])
    with pytest.raises(TokenStringError, match="style unit 100 is out of range"):
        sv.feed([1], [0], [100])
    with pytest.raises(TokenStringError, match="one pitch unit per HuBERT unit"):
        sv.feed([1, 2], [3], [4, 5])
    assert sv.units_received == 0

    raw = StreamingVocoder(expressive, dur_pred=False)
    raw.feed(list(range(10)), [1] * 9, [2])  # 9 pitch units cannot fit 10 HuBERT units at ratio 2
    with pytest.raises(TokenStringError, match="do not fit") as info:
        raw.flush()
    assert str(info.value) == str(offline_error(expressive, VocoderInput(list(range(10)), [1] * 9, [2]), dur_pred=False))
    assert raw.units_received == 0  # flush resets even when it raises
    raw.feed([1, 2], [], [3])
    with pytest.raises(TokenStringError, match="no pitch units"):
        raw.flush()


# ------------------------------------------------------------------ low-latency option
def test_low_latency_error_is_measured(vocoders, real_units, record_property):
    """Less lookahead than exactness needs: same length, earlier audio, a measured error."""
    vocoder = vocoders["expressive"]
    inp = real_units["dedup"]
    ref = offline(vocoder, inp)
    exact = StreamingVocoder(vocoder).exact_lookahead_frames
    report = {}
    first_audio = {}
    for k in (0, 2, 5, 10, exact):
        sv = StreamingVocoder(vocoder, lookahead_frames=k)
        assert sv.exact == (k >= exact)
        out, outs = stream(sv, inp, [1] * len(inp.hubert))
        assert out.shape == ref.shape
        err = float(np.abs(out - ref).max())
        assert math.isfinite(err)
        report[k] = (err, float(np.sqrt(np.mean((out - ref) ** 2))))
        first_audio[k] = next(i + 1 for i, o in enumerate(outs) if o.size)
    print("\nlow-latency max/RMS error vs offline (expressive, real units, 1-unit chunks):")
    for k, (err, rms) in report.items():
        print(f"  lookahead_frames={k:2d}: max {err:.2e}  rms {rms:.2e}  first audio after {first_audio[k]} units")
        record_property(f"low_latency_max_abs_error_k{k}", err)
    assert report[exact][0] < TOL
    assert first_audio[0] < first_audio[exact]
    assert report[0][0] >= report[10][0]
