"""Streaming unit HiFi-GAN: units in, final 16 kHz samples out, equal to the offline vocoder.

``StreamingVocoder`` wraps an offline :class:`~agent.spiritlm.vocoder.CodeHiFiGAN` and keeps an
explicit, bounded state. Units (deduplicated, as the LM emits them) are fed a few at a time;
each :meth:`StreamingVocoder.feed` returns the samples that are final, :meth:`flush` the rest.
For any chunking, ``concat(feed(...)..., flush())`` equals ``vocoder(VocoderInput(all units))``
(fp32: within float rounding, ~1e-6; tested to 1e-4). The one way rounding could show: the
duration predictor runs on windows instead of the whole reply, so its float output can differ in
the last bits, and a duration within ~1e-6 of a rounding boundary (x.5 frames) could round the
other way; no such case has come up in testing.

How it stays exact
------------------
*Conditioning.* Embeddings are per unit (pitch/style per HuBERT unit with duration prediction;
speaker/style id constant), so only the durations need context. The duration predictor is two
convolutions over unit embeddings; unit ``i``'s duration depends on units ``i - L .. i + R``
(``L = p1 + p2``, ``R = (k1 - 1 - p1) + (k2 - 1 - p2)``: 2 and 2 for the release's kernel 3).
Units are turned into frames once ``R`` later units have arrived, by running the predictor
over a window that starts ``L`` units earlier (or at the true start): LayerNorm/ReLU/Linear are
per position, so the window edges do not reach the units we keep. At :meth:`flush` the true
end is known and the last ``R`` units get their durations.

*Generator* (design "b" of the issue: stateful streaming convolutions, ~1.0x offline compute).
Every layer of ``CodeHiFiGAN.generator`` becomes a streaming op:

- ``Conv1d`` (stride 1, kernel k, dilation d, padding p): keeps the last ``(k-1)d`` samples of
  its (activated) input; the state starts as ``p`` zeros (the left zero padding) and
  :meth:`finish` appends ``p`` zeros (the right padding). Its output lags its input by
  ``(k-1)d - p`` samples; nothing is ever recomputed.
- ``ConvTranspose1d`` (stride u, kernel k, padding p): overlap-add; the partial sums of the last
  ``k - u`` output samples are cached and completed by the next input; the first ``p`` outputs
  are cropped at the start and the last ``p`` at the end (in :meth:`finish`).
- residual ``x + branch(x)``: the skip path is a FIFO that releases ``x`` as the branch output
  comes out (so it holds exactly the branch delay); the mean over ResBlocks keeps per-branch
  queues and releases the common prefix.
- leaky ReLU / tanh are pointwise.

Each op therefore emits an output sample as soon as every input it depends on has arrived. The
resulting lag, the receptive field and the lookahead are computed from the modules' own kernel
sizes, dilations, paddings and strides (see :func:`generator_receptive_field`), never hard-coded.

Lookahead
---------
``ReceptiveField.right_frames`` is the number of later frames the samples of a frame need
(20 for the release/7B-preset config: kernels 3/7/11 with dilations 1/3/5 at every stage;
``delay_samples`` = 12652 samples = 791 ms); ``StreamingVocoder.lookahead_units`` is the
worst-case number of later units (duration predictor lookahead, 2, + one frame per unit) before
a unit's samples are final. With ~3-4 frames per unit the first audio comes after ~6-8 units.

Compute
-------
No output is computed twice, but each generator call has a fixed cost (about a hundred small
convolutions to dispatch, all the weights streamed from memory, short GEMMs): with the 7B-preset
shapes on 2 CPU cores, 1-unit feeds (~4 frames) cost ~1.4-2.5x offline, 5-unit feeds ~1.0-1.3x,
25-unit feeds <1x (offline's long tensors fall out of cache). ``step_frames`` batches the
generator calls (up to ``step_frames - 1`` frames of extra latency) and ``num_threads=1`` avoids
OpenMP fork/joins on ops that are too small to gain from them.

Low-latency option: ``lookahead_frames=K`` below ``exact_lookahead_frames`` releases the samples
of a frame once ``K`` later frames (of units whose durations are final) have arrived. The
missing right context is filled speculatively (units already received but whose durations are
not final yet, with durations predicted as if the reply ended there, then the last frame
repeated) on a snapshot of the state that is thrown away after use; the exact pipeline goes on
and its samples for already released positions are dropped. The output length is unchanged,
the samples differ from the offline ones near each chunk edge (measured by the tests and
``benchmarks/bench_vocoder.py``), and the speculative pass costs extra compute per feed.

Raw units (``dur_pred=False``): one frame per HuBERT unit; pitch/style streams come at their
own rates (12.5 Hz / 1 Hz, repeated ``hubert_to_f0``/``hubert_to_style`` times, the last code
padding the end as offline) and may be fed in chunks independent of the HuBERT chunks; a frame
is released when its pitch and style codes have arrived. Their count check (offline: "do not
fit") can only happen at :meth:`flush`.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agent.spiritlm.checkpoints import CheckpointError
from agent.spiritlm.errors import InvalidArgumentError, TokenStringError
from agent.spiritlm.vocoder import DEFAULT_SPEAKER, DEFAULT_STYLE, LRELU_SLOPE, CodeHiFiGAN, DurationPredictor

__all__ = [
    "ReceptiveField",
    "StreamingGenerator",
    "StreamingVocoder",
    "duration_context",
    "generator_receptive_field",
    "receptive_field_of_config",
]

_DEFAULT_SLOPE = 0.01  # F.leaky_relu's default, used before conv_post by the release
# PyTorch runs a float CPU Conv1d (batch 1) through oneDNN only above this many input values;
# below it, our own im2col GEMM is much faster than ATen's fallback kernels.
_MKLDNN_MIN_NUMEL = 20480
_STEADY = 1 << 20  # an input length past every start-up transient (for delay arithmetic)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _time(x: torch.Tensor) -> int:
    return x.shape[-1]


@contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` intra-op threads (restored afterwards); ``None`` leaves the setting alone."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------ streaming ops
# Ops work on 2-D ``[channels, time]`` tensors (batch 1 dropped: fewer dispatches per step).
class _Op:
    """A streaming sequence op.

    ``step(x)`` consumes the next input samples and returns the outputs that are final;
    ``finish(x)`` consumes the last inputs, applies the end of the sequence and resets.
    ``emitted(n)``: outputs released after ``n`` inputs (no finish); ``reach(lo, hi)``: the input
    index range the outputs ``lo..hi`` depend on (zero padding counts as inputs outside 0..n-1).
    State tensors are never modified in place, so ``get_state()`` references are a snapshot.
    """

    out_channels: int

    def step(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def get_state(self):
        raise NotImplementedError

    def set_state(self, state) -> None:
        raise NotImplementedError

    def state_numel(self) -> int:
        raise NotImplementedError

    def emitted(self, n: int) -> int:
        raise NotImplementedError

    def reach(self, lo: int, hi: int) -> tuple[int, int]:
        raise NotImplementedError

    def state_bound(self) -> int:
        """The most values held between steps (reached once the delays have filled)."""
        raise NotImplementedError

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(self.out_channels, 0)


def _keep(buf: torch.Tensor, start: int) -> torch.Tensor:
    """``buf[:, start:]`` without keeping a much larger tensor alive (bounded memory)."""
    tail = buf[:, start:]
    return tail.clone() if start > tail.shape[-1] + 64 else tail


class _Pointwise(_Op):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], channels: int):
        self.fn, self.out_channels = fn, channels

    def step(self, x):
        return self.fn(x)

    finish = step

    def reset(self):
        pass

    def get_state(self):
        return None

    def set_state(self, state):
        pass

    def state_numel(self):
        return 0

    def emitted(self, n):
        return n

    def reach(self, lo, hi):
        return lo, hi

    def state_bound(self):
        return 0


class _Conv(_Op):
    """Stride-1 ``Conv1d`` with an optional leaky ReLU on its input; caches ``(k-1)*d`` inputs."""

    def __init__(self, conv: nn.Conv1d, slope: float | None):
        if conv.stride[0] != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NotImplementedError("streaming Conv1d needs stride 1 and numeric zero padding")
        self.conv, self.slope = conv, slope
        self.kernel, self.dilation, self.pad = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
        self.context = (self.kernel - 1) * self.dilation
        if not 0 <= self.pad <= self.context:
            raise NotImplementedError(f"streaming Conv1d needs 0 <= padding <= (k-1)*d, got {self.pad} > {self.context}")
        self.out_channels = conv.out_channels
        w = conv.weight
        self._gemm = conv.groups == 1 and w.device.type == "cpu"
        self._w2 = w.reshape(w.shape[0], -1) if self._gemm else None  # [out, in * k], (in, k) order
        self._b2 = None if conv.bias is None else conv.bias[:, None]
        self.reset()

    def reset(self):
        self.buf = self.conv.weight.new_zeros(self.conv.in_channels, self.pad)  # the left zero padding

    def _run(self, buf: torch.Tensor) -> torch.Tensor:
        n = buf.shape[-1]
        m = n - self.context
        if m <= 0:
            self.buf = buf
            return self._empty(buf)
        if self._gemm and buf.numel() <= _MKLDNN_MIN_NUMEL:
            # one GEMM over an im2col view: F.conv1d picks ATen's slow fallback kernels for short
            # inputs on CPU (several times slower, dilated ones especially)
            channels = buf.shape[0]
            cols = buf.as_strided((channels, self.kernel, m), (n, self.dilation, 1)).reshape(channels * self.kernel, m)
            y = self._w2 @ cols if self._b2 is None else torch.addmm(self._b2, self._w2, cols)
        else:
            c = self.conv
            y = F.conv1d(buf[None], c.weight, c.bias, 1, 0, self.dilation, c.groups)[0]
        self.buf = _keep(buf, m)
        return y

    def _act(self, x):
        return x if self.slope is None else F.leaky_relu(x, self.slope)

    def step(self, x):
        if x.shape[-1] == 0:
            return self._empty(x)
        return self._run(torch.cat([self.buf, self._act(x)], dim=1))

    def finish(self, x):
        right = self.buf.new_zeros(self.buf.shape[0], self.pad)  # the right zero padding
        y = self._run(torch.cat([self.buf, self._act(x), right], dim=1))
        self.reset()
        return y

    def get_state(self):
        return self.buf

    def set_state(self, state):
        self.buf = state

    def state_numel(self):
        return self.buf.numel()

    def emitted(self, n):
        return max(0, n + self.pad - self.context)

    def reach(self, lo, hi):
        return lo - self.pad, hi - self.pad + self.context

    def state_bound(self):
        return self.conv.in_channels * self.context


class _ConvTranspose(_Op):
    """``ConvTranspose1d`` as overlap-add with a cached tail of partial sums (``k - u`` samples)."""

    def __init__(self, conv: nn.ConvTranspose1d, slope: float | None):
        u, k, p = conv.stride[0], conv.kernel_size[0], conv.padding[0]
        if conv.dilation[0] != 1 or conv.output_padding[0] != 0 or conv.groups != 1:
            raise NotImplementedError("streaming ConvTranspose1d needs dilation 1, output_padding 0, groups 1")
        if k < u or not 0 <= p <= k - u:
            raise NotImplementedError(f"streaming ConvTranspose1d needs kernel >= stride and 0 <= padding <= kernel - stride (k={k}, u={u}, p={p})")
        self.conv, self.slope, self.stride, self.kernel, self.pad = conv, slope, u, k, p
        self.out_channels = conv.out_channels
        w = conv.weight  # [in, out, k]
        self._gemm = w.device.type == "cpu"
        self._blocks = _ceil_div(k, u)  # input i reaches output blocks i .. i + blocks - 1 (of u samples)
        self.tail_len = k - u  # partial sums of the outputs after the last input's block
        if self._gemm:  # [out * blocks * u, in]: zero-padded kernel, so every block has u taps
            padded = F.pad(w, (0, self._blocks * u - k))
            self._wt = padded.permute(1, 2, 0).reshape(-1, w.shape[0])
        self._bias = None if conv.bias is None else conv.bias[:, None]
        self.reset()

    def reset(self):
        self.tail = self.conv.weight.new_zeros(self.out_channels, self.tail_len)
        self.crop = self.pad  # outputs still to drop at the start
        self.fed = 0

    def _add_bias(self, y):
        return y if self._bias is None else y + self._bias

    def _crop(self, y):
        if self.crop:
            c = min(self.crop, y.shape[-1])
            y, self.crop = y[:, c:], self.crop - c
        return y

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """Transposed conv of ``x`` without padding or bias: ``m*u + k - u`` samples."""
        m, u, nb = x.shape[-1], self.stride, self._blocks
        if not self._gemm:
            return F.conv_transpose1d(x[None], self.conv.weight, None, stride=u)[0]
        z = (self._wt @ x).view(self.out_channels, nb, u, m).permute(0, 1, 3, 2)  # [out, block, i, r]
        out = z[:, 0].reshape(self.out_channels, m * u)
        if nb == 1:
            return out
        full = F.pad(out, (0, (nb - 1) * u))
        for b in range(1, nb):
            full[:, b * u:b * u + m * u] += z[:, b].reshape(self.out_channels, m * u)
        return full[:, :m * u + self.tail_len]  # the rest are the zero taps of the padded kernel

    def step(self, x):
        m = x.shape[-1]
        if m == 0:
            return self._empty(x)
        if self.slope is not None:
            x = F.leaky_relu(x, self.slope)
        z = self._full(x)
        if self.tail_len:
            z[:, :self.tail_len] += self.tail  # z is a fresh tensor: in place is safe
        self.tail = _keep(z, m * self.stride)
        self.fed += m
        return self._crop(self._add_bias(z[:, :m * self.stride]))

    def finish(self, x):
        y = self.step(x)
        if self.fed:
            end = self._crop(self._add_bias(self.tail[:, :self.kernel - self.stride - self.pad]))
            y = torch.cat([y, end], dim=1)
        self.reset()
        return y

    def get_state(self):
        return self.tail, self.crop, self.fed

    def set_state(self, state):
        self.tail, self.crop, self.fed = state

    def state_numel(self):
        return self.tail.numel()

    def emitted(self, n):
        return max(0, n * self.stride - self.pad)

    def reach(self, lo, hi):
        u, k, p = self.stride, self.kernel, self.pad
        return _ceil_div(lo + p - k + 1, u), (hi + p) // u

    def state_bound(self):
        return self.out_channels * self.tail_len


class _Chain(_Op):
    def __init__(self, ops: Sequence[_Op]):
        self.ops = list(ops)
        self.out_channels = self.ops[-1].out_channels

    def step(self, x):
        for op in self.ops:
            if x.shape[-1] == 0:
                return self._empty(x)
            x = op.step(x)
        return x

    def finish(self, x):
        for op in self.ops:
            x = op.finish(x)
        return x

    def reset(self):
        for op in self.ops:
            op.reset()

    def get_state(self):
        return [op.get_state() for op in self.ops]

    def set_state(self, state):
        for op, s in zip(self.ops, state):
            op.set_state(s)

    def state_numel(self):
        return sum(op.state_numel() for op in self.ops)

    def emitted(self, n):
        for op in self.ops:
            n = op.emitted(n)
        return n

    def reach(self, lo, hi):
        for op in reversed(self.ops):
            lo, hi = op.reach(lo, hi)
        return lo, hi

    def state_bound(self):
        return sum(op.state_bound() for op in self.ops)


class _Residual(_Op):
    """``x + branch(x)``; the skip path is a FIFO holding the branch's delay."""

    def __init__(self, branch: _Op, channels: int):
        self.branch, self.out_channels = branch, channels
        self.reset()

    def reset(self):
        self.branch.reset()
        self.skip: torch.Tensor | None = None

    def _add(self, x, y):
        skip = x if self.skip is None else torch.cat([self.skip, x], dim=1)
        m = y.shape[-1]
        out = skip[:, :m] + y
        self.skip = _keep(skip, m)
        return out

    def step(self, x):
        if x.shape[-1] == 0:
            return self._empty(x)
        return self._add(x, self.branch.step(x))

    def finish(self, x):
        out = self._add(x, self.branch.finish(x))
        if self.skip is not None and self.skip.shape[-1]:
            raise AssertionError("residual branch and skip path lengths differ")
        self.reset()
        return out

    def get_state(self):
        return self.skip, self.branch.get_state()

    def set_state(self, state):
        self.skip, branch = state
        self.branch.set_state(branch)

    def state_numel(self):
        return (0 if self.skip is None else self.skip.numel()) + self.branch.state_numel()

    def emitted(self, n):
        return min(n, self.branch.emitted(n))

    def reach(self, lo, hi):
        blo, bhi = self.branch.reach(lo, hi)
        return min(lo, blo), max(hi, bhi)

    def state_bound(self):
        n = _STEADY
        return self.out_channels * (n - self.emitted(n)) + self.branch.state_bound()


class _Mean(_Op):
    """``(b0(x) + b1(x) + ...) / n`` (the release's summation order), with per-branch queues."""

    def __init__(self, branches: Sequence[_Op]):
        self.branches = list(branches)
        self.out_channels = self.branches[0].out_channels
        self.reset()

    def reset(self):
        for b in self.branches:
            b.reset()
        self.queues: list[torch.Tensor | None] = [None] * len(self.branches)

    def _combine(self, ys):
        qs = [y if q is None or q.shape[-1] == 0 else torch.cat([q, y], dim=1) for q, y in zip(self.queues, ys)]
        m = min(q.shape[-1] for q in qs)
        out = qs[0][:, :m]
        for q in qs[1:]:
            out = out + q[:, :m]
        self.queues = [_keep(q, m) for q in qs]
        return out / len(qs)

    def step(self, x):
        if x.shape[-1] == 0:
            return self._empty(x)
        return self._combine([b.step(x) for b in self.branches])

    def finish(self, x):
        out = self._combine([b.finish(x) for b in self.branches])
        if any(q.shape[-1] for q in self.queues):
            raise AssertionError("parallel branches produced different lengths")
        self.reset()
        return out

    def get_state(self):
        return list(self.queues), [b.get_state() for b in self.branches]

    def set_state(self, state):
        queues, branches = state
        self.queues = list(queues)
        for b, s in zip(self.branches, branches):
            b.set_state(s)

    def state_numel(self):
        return sum(0 if q is None else q.numel() for q in self.queues) + sum(b.state_numel() for b in self.branches)

    def emitted(self, n):
        return min(b.emitted(n) for b in self.branches)

    def reach(self, lo, hi):
        ranges = [b.reach(lo, hi) for b in self.branches]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def state_bound(self):
        n, m = _STEADY, self.emitted(_STEADY)
        return sum(self.out_channels * (b.emitted(n) - m) + b.state_bound() for b in self.branches)


def _build_generator_ops(vocoder: CodeHiFiGAN) -> _Chain:
    """Mirror ``CodeHiFiGAN.generator`` op for op."""
    ops: list[_Op] = [_Conv(vocoder.conv_pre, None)]
    nk = vocoder.num_kernels
    for i, up in enumerate(vocoder.ups):
        ops.append(_ConvTranspose(up, LRELU_SLOPE))
        blocks = []
        for block in vocoder.resblocks[i * nk:(i + 1) * nk]:
            pairs = [_Residual(_Chain([_Conv(c1, LRELU_SLOPE), _Conv(c2, LRELU_SLOPE)]), c2.out_channels)
                     for c1, c2 in zip(block.convs1, block.convs2)]
            blocks.append(_Chain(pairs))
        ops.append(_Mean(blocks))
    ops.append(_Conv(vocoder.conv_post, _DEFAULT_SLOPE))
    ops.append(_Pointwise(torch.tanh, vocoder.conv_post.out_channels))
    return _Chain(ops)


# ------------------------------------------------------------------ receptive field
@dataclass(frozen=True)
class ReceptiveField:
    """Context of the generator, from the layers' kernel sizes, dilations, paddings and strides.

    ``left_frames``/``right_frames``: how many frames before/after frame ``f`` change its
    ``samples_per_frame`` output samples (``right_frames`` is the exact lookahead).
    ``delay_samples`` (= ``right_samples``): after ``n`` frames, ``samples_per_frame * n -
    delay_samples`` output samples are final, i.e. output sample ``s`` needs the frames that cover
    output positions up to ``s + delay_samples`` (``right_frames == ceil(delay_samples /
    samples_per_frame)``). ``left_samples``: likewise, output sample ``s`` depends on frames from
    the one covering output position ``s - left_samples`` on.
    ``state_values``: the most floats the streaming generator holds between calls (per-layer input
    caches, transposed-conv tails, skip/branch queues as long as the layer delays): O(receptive
    field), independent of the length of the stream.
    """

    samples_per_frame: int
    left_frames: int
    right_frames: int
    delay_samples: int
    left_samples: int
    state_values: int

    @property
    def right_samples(self) -> int:
        """An output sample is final once the frames covering output samples up to ``+ right_samples`` are in."""
        return self.delay_samples

    @property
    def frames(self) -> int:
        """Total frames one frame's samples depend on (itself included)."""
        return self.left_frames + 1 + self.right_frames


def _receptive_field(ops: _Chain, samples_per_frame: int) -> ReceptiveField:
    lefts, rights = [], []
    for f in range(4):  # the map is periodic in f; a few frames guard against odd paddings
        lo, hi = ops.reach(f * samples_per_frame, (f + 1) * samples_per_frame - 1)
        lefts.append(f - lo)
        rights.append(hi - f)
    n = _STEADY
    delay = samples_per_frame * n - ops.emitted(n)
    left_samples = max(s + 1 - samples_per_frame * (ops.reach(s, s)[0] + 1) for s in range(samples_per_frame))
    return ReceptiveField(samples_per_frame, max(lefts), max(rights), delay, left_samples, ops.state_bound())


_RF_CACHE: "weakref.WeakKeyDictionary[CodeHiFiGAN, ReceptiveField]" = weakref.WeakKeyDictionary()


def generator_receptive_field(vocoder: CodeHiFiGAN) -> ReceptiveField:
    """Receptive field of ``vocoder.generator`` (cached per vocoder: its layers never change)."""
    rf = _RF_CACHE.get(vocoder)
    if rf is None:
        rf = _RF_CACHE[vocoder] = _receptive_field(_build_generator_ops(vocoder), vocoder.upsample_factor)
    return rf


def duration_context(predictor: DurationPredictor) -> tuple[int, int]:
    """(left, right) units that a unit's predicted duration depends on, from the two convs."""
    left = right = 0
    for conv in (predictor.conv1[0], predictor.conv2[0]):
        k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
        if conv.stride[0] != 1 or 2 * p != (k - 1) * d:
            raise CheckpointError(
                f"the duration predictor's conv (kernel {k}, padding {p}) does not keep the sequence length, so the "
                "offline vocoder cannot use it either (the release pads conv2 by 1: var_pred_kernel_size must be 3)")
        left += p
        right += (k - 1) * d - p
    return left, right


def receptive_field_of_config(cfg: dict) -> dict:
    """Receptive field and lookahead numbers for a vocoder config (built on the meta device: no weights)."""
    with torch.device("meta"):
        vocoder = CodeHiFiGAN(cfg)
    rf = generator_receptive_field(vocoder)
    out = dict(samples_per_frame=rf.samples_per_frame, left_frames=rf.left_frames, right_frames=rf.right_frames,
               left_samples=rf.left_samples, delay_samples=rf.delay_samples, state_values=rf.state_values)
    if vocoder.dur_predictor is not None:
        out["dur_left_units"], out["dur_right_units"] = duration_context(vocoder.dur_predictor)
        out["lookahead_units_worst_case"] = out["dur_right_units"] + rf.right_frames
    return out


# ------------------------------------------------------------------ generator
class StreamingGenerator:
    """``CodeHiFiGAN.generator`` over a stream of frames (``[1, model_in_dim, m]`` chunks)."""

    def __init__(self, vocoder: CodeHiFiGAN):
        self.vocoder = vocoder
        self.ops = _build_generator_ops(vocoder)
        self.receptive_field = generator_receptive_field(vocoder)
        self.samples_per_frame = vocoder.upsample_factor

    def push(self, frames: torch.Tensor) -> torch.Tensor:
        """Next frames ``[1, C, m]`` (or ``[C, m]``) -> the samples ``[1, 1, k]`` (``[1, k]``) now final."""
        with torch.inference_mode():
            if frames.dim() == 3:
                return self.ops.step(frames[0])[None]
            return self.ops.step(frames)

    def finish(self, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Last frames (optional, as in :meth:`push`) -> the remaining samples; the state is reset."""
        with torch.inference_mode():
            if frames is None:
                frames = self.vocoder.conv_pre.weight.new_zeros(1, self.vocoder.conv_pre.in_channels, 0)
            if frames.dim() == 3:
                return self.ops.finish(frames[0])[None]
            return self.ops.finish(frames)

    def reset(self) -> None:
        self.ops.reset()

    def snapshot(self):
        """The state (tensors are never modified in place, so references are enough)."""
        return self.ops.get_state()

    def restore(self, state) -> None:
        self.ops.set_state(state)

    def state_numel(self) -> int:
        return self.ops.state_numel()


# ------------------------------------------------------------------ vocoder
def _check_ints(values, what: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TokenStringError(f"{what} units must be a list of integers")
    out = list(values)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TokenStringError(f"{what} units must be integers, got {v!r}")
    return [int(v) for v in out]


class StreamingVocoder:
    """Incremental ``CodeHiFiGAN``: ``feed(units) -> final samples``, ``flush() -> the rest``.

    Parameters mirror the offline call (``speaker``, ``style_id``, ``dur_pred``), plus:

    - ``lookahead_frames``: ``None`` (or >= ``exact_lookahead_frames``) is exact; a smaller value
      is the low-latency mode (module doc): not equal to offline, and each feed that releases
      audio early also runs the generator over about ``exact_lookahead_frames - lookahead_frames``
      made-up frames.
    - ``step_frames``: run the generator only once this many frames are waiting (flush runs
      the rest). Exact either way; it trades up to ``step_frames - 1`` frames (40 ms each) of
      extra latency for fewer, larger generator calls: each call has a fixed cost (about 100
      small convolutions to dispatch, and all generator weights to stream from memory), so
      one-frame calls cost several times more per frame than offline (see the benchmark).
    - ``num_threads``: torch intra-op threads while feeding/flushing (restored afterwards);
      ``None`` leaves the setting alone. The per-step ops are small: with 1 thread they never
      wait for a busy second core (measured here: an OpenMP fork/join waiting for a core that
      another process holds costs ~8 ms, per op).

    Attributes (all derived from the checkpoint's config):
    ``receptive_field`` (:class:`ReceptiveField`), ``exact_lookahead_frames`` (generator frames
    needed after a frame), ``lookahead_frames`` (the frames this instance waits for),
    ``dur_context_units``/``dur_lookahead_units`` (units before/after a unit that its duration
    depends on; 0 without duration prediction), ``lookahead_units`` (worst case number of later
    units before a unit's samples are released: ``dur_lookahead_units + lookahead_frames``, as a
    unit lasts at least one frame), ``samples_per_frame``.

    The state is bounded by the receptive field: a few units, the generator's per-layer caches
    (``receptive_field.state_values`` floats), and queues no longer than the layer delays.
    """

    def __init__(self, vocoder: CodeHiFiGAN, speaker: int = DEFAULT_SPEAKER, style_id: int = DEFAULT_STYLE,
                 dur_pred: bool = True, lookahead_frames: int | None = None, step_frames: int = 1,
                 num_threads: int | None = None):
        vocoder.check_speaker(speaker)
        if dur_pred and vocoder.dur_predictor is None:
            raise InvalidArgumentError("this vocoder has no duration predictor: use --no-dur-pred")
        const = []
        for table, index in ((vocoder.spkr, speaker), (vocoder.style, style_id)):
            if table is not None:
                if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < table.num_embeddings:
                    raise InvalidArgumentError(f"unknown vocoder style {index}: choose 0..{table.num_embeddings - 1}")
                const.append(table.weight[int(index)].detach())
        self.vocoder, self.speaker, self.style_id, self.dur_pred = vocoder, speaker, style_id, dur_pred
        self.device = vocoder.dict.weight.device
        self._const = torch.cat(const) if const else None
        self.generator = StreamingGenerator(vocoder)
        self.receptive_field = self.generator.receptive_field
        self.samples_per_frame = self.generator.samples_per_frame
        self.exact_lookahead_frames = self.receptive_field.right_frames
        if lookahead_frames is None:
            lookahead_frames = self.exact_lookahead_frames
        if isinstance(lookahead_frames, bool) or not isinstance(lookahead_frames, int) or lookahead_frames < 0:
            raise InvalidArgumentError(f"lookahead_frames must be a non-negative integer or None, got {lookahead_frames!r}")
        self.lookahead_frames = min(lookahead_frames, self.exact_lookahead_frames)
        if isinstance(step_frames, bool) or not isinstance(step_frames, int) or step_frames < 1:
            raise InvalidArgumentError(f"step_frames must be a positive integer, got {step_frames!r}")
        self.step_frames = step_frames
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1):
            raise InvalidArgumentError(f"num_threads must be a positive integer or None, got {num_threads!r}")
        self.num_threads = num_threads
        self.exact = self.lookahead_frames >= self.exact_lookahead_frames
        if dur_pred:
            self.dur_context_units, self.dur_lookahead_units = duration_context(vocoder.dur_predictor)
        else:
            self.dur_context_units = self.dur_lookahead_units = 0
        self.lookahead_units = self.dur_lookahead_units + self.lookahead_frames
        self.expressive = vocoder.is_expressive
        # (embedding table, units per code at the HuBERT rate (raw units only), name) of the per-unit streams
        self._streams: list[tuple[nn.Embedding, int, str]] = []
        if vocoder.f0_dict is not None:
            self._streams.append((vocoder.f0_dict, vocoder.hubert_to_f0, "pitch"))
        if vocoder.style_dict is not None:
            self._streams.append((vocoder.style_dict, vocoder.hubert_to_style, "style"))
        self.reset()

    # -------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the current reply (units, caches, counters)."""
        self.generator.reset()
        self._hubert: list[int] = []  # HuBERT units from index self._hubert_base on
        self._hubert_base = 0
        self._n_units = 0  # HuBERT units received
        self._codes: list[list[int]] = [[] for _ in self._streams]  # per stream, from self._code_base[i] on
        self._code_base = [0] * len(self._streams)
        self._n_codes = [0] * len(self._streams)
        self._next = 0  # first unit (dur_pred) / frame (raw) not yet turned into frames
        self._frames = 0  # frames pushed to the generator
        self._held: torch.Tensor | None = None  # frames waiting for step_frames
        self._generated = 0  # samples the exact generator has produced
        self._emitted = 0  # samples returned to the caller
        self._last_frame: torch.Tensor | None = None
        # Frames of each unit turned into frames so far; a new list after each reset, so a reference
        # taken before flush() keeps the whole reply's (the caller maps played audio back to units).
        self.unit_frames: list[int] = []

    def state_size(self) -> int:
        """Units, codes and floats held: bounded by the receptive field, not by the reply length."""
        held = len(self._hubert) + sum(len(c) for c in self._codes) + (0 if self._held is None else self._held.numel())
        return held + self.generator.state_numel() + (0 if self._last_frame is None else self._last_frame.numel())

    @property
    def units_received(self) -> int:
        return self._n_units

    @property
    def samples_emitted(self) -> int:
        return self._emitted

    # -------------------------------------------------------------- input
    def feed(self, hubert: Sequence[int], pitch: Sequence[int] | None = None, style: Sequence[int] | None = None) -> np.ndarray:
        """Add units; return the float32 samples that are now final (possibly none).

        With duration prediction, ``pitch``/``style`` (expressive vocoder) hold one code per HuBERT
        unit of this call. With raw units they are the 12.5 Hz / 1 Hz streams and may be chunked
        independently of ``hubert``. Bad input raises before the state changes.
        """
        hubert = _check_ints(hubert, "HuBERT")
        extra = []
        if self._streams:
            given = {"pitch": pitch, "style": style}
            if any(given[what] is None for _, _, what in self._streams):
                raise TokenStringError("the expressive vocoder needs pitch and style units as well as HuBERT units")
            extra = [_check_ints(given[what], what) for _, _, what in self._streams]
        self.vocoder._check_range(hubert, self.vocoder.dict, "HuBERT")
        for values, (table, _, what) in zip(extra, self._streams):
            self.vocoder._check_range(values, table, what)
            if self.dur_pred and len(values) != len(hubert):
                raise TokenStringError(f"with duration prediction there must be one {what} unit per HuBERT unit "
                                       f"({len(values)} vs {len(hubert)})")
        self._hubert += hubert
        self._n_units += len(hubert)
        for i, values in enumerate(extra):
            self._codes[i] += values
            self._n_codes[i] += len(values)
        with torch.inference_mode(), _torch_threads(self.num_threads):
            frames = self._take_frames(final=False)
            out = self._push(frames)
            if not self.exact:
                out = self._speculate(out)
        return out

    def flush(self) -> np.ndarray:
        """End of the reply: the remaining samples. The state is reset (also when it raises)."""
        try:
            if self._n_units == 0:
                raise TokenStringError("no HuBERT units to vocode")
            if not self.dur_pred:
                for i, (_, rate, what) in enumerate(self._streams):
                    k, n = self._n_codes[i], self._n_units
                    if k == 0:
                        raise TokenStringError(f"no {what} units for {n} HuBERT units")
                    if abs(k * rate - n) / rate > 1:
                        raise TokenStringError(f"{k} {what} units do not fit {n} HuBERT units at ratio {rate}")
            with torch.inference_mode(), _torch_threads(self.num_threads):
                frames = [f for f in (self._held, self._take_frames(final=True)) if f is not None]
                y = self.generator.finish(torch.cat(frames, dim=1) if frames else None)
                return self._release(y)
        finally:
            self.reset()

    # -------------------------------------------------------------- units -> frames
    def _embed(self, hubert: list[int], codes: list[list[int]]) -> torch.Tensor:
        """Per-unit conditioning ``[C, len(hubert)]``, in the offline channel order."""
        v = self.vocoder
        parts = [v.dict.weight[torch.tensor(hubert, dtype=torch.long, device=self.device)]]
        for (table, _, _), values in zip(self._streams, codes):
            parts.append(table.weight[torch.tensor(values, dtype=torch.long, device=self.device)])
        if self._const is not None:
            parts.append(self._const[None].expand(len(hubert), -1))
        return torch.cat(parts, dim=1).t()  # [C, units]

    def _take_frames(self, final: bool, commit: bool = True) -> torch.Tensor | None:
        """Frames whose values are known (all of them when ``final``); ``commit`` advances the state."""
        if self.dur_pred:
            return self._take_frames_dur(final, commit)
        return self._take_frames_raw(final, commit)

    def _take_frames_dur(self, final: bool, commit: bool) -> torch.Tensor | None:
        n, start = self._n_units, self._next
        stop = n if final else n - self.dur_lookahead_units
        if stop <= start:
            return None
        first = max(0, start - self.dur_context_units)  # window [first, n): exact for [start, stop)
        b = self._hubert_base
        window = self._hubert[first - b:n - b]
        durations = self.vocoder.durations(torch.tensor(window, dtype=torch.long, device=self.device))
        durations = durations[start - first:stop - first]
        units = self._hubert[start - b:stop - b]
        codes = [c[start - cb:stop - cb] for c, cb in zip(self._codes, self._code_base)]
        frames = torch.repeat_interleave(self._embed(units, codes), durations, dim=1)
        if commit:
            self.unit_frames += durations.tolist()
            self._next = stop
            keep = max(0, stop - self.dur_context_units)  # the next window's first unit
            self._hubert = self._hubert[keep - b:]
            self._hubert_base = keep
            for i, cb in enumerate(self._code_base):
                self._codes[i] = self._codes[i][stop - cb:]
                self._code_base[i] = stop
        return frames

    def _take_frames_raw(self, final: bool, commit: bool) -> torch.Tensor | None:
        start, stop = self._next, self._n_units
        if not final:
            for i, (_, rate, _) in enumerate(self._streams):
                stop = min(stop, self._n_codes[i] * rate)
        elif any(k == 0 for k in self._n_codes):
            return None  # (speculation only: flush has checked this)
        if stop <= start:
            return None
        b = self._hubert_base
        units = self._hubert[start - b:stop - b]
        codes = []
        for i, (_, rate, _) in enumerate(self._streams):
            last, cb = self._n_codes[i] - 1, self._code_base[i]
            codes.append([self._codes[i][min(j // rate, last) - cb] for j in range(start, stop)])
        frames = self._embed(units, codes)
        if commit:
            self.unit_frames += [1] * len(units)
            self._next = stop
            self._hubert = self._hubert[stop - b:]
            self._hubert_base = stop
            for i, (_, rate, _) in enumerate(self._streams):
                keep = min(stop // rate, self._n_codes[i] - 1)  # the code of the next frame, or the last one
                if keep > self._code_base[i]:
                    self._codes[i] = self._codes[i][keep - self._code_base[i]:]
                    self._code_base[i] = keep
        return frames

    # -------------------------------------------------------------- frames -> samples
    def _push(self, frames: torch.Tensor | None) -> np.ndarray:
        if frames is not None and _time(frames):
            self._last_frame = frames[:, -1:]
            self._held = frames if self._held is None else torch.cat([self._held, frames], dim=1)
        if self._held is None or _time(self._held) < self.step_frames:
            return np.zeros(0, dtype=np.float32)
        frames, self._held = self._held, None
        self._frames += _time(frames)
        return self._release(self.generator.push(frames))

    def _release(self, y: torch.Tensor) -> np.ndarray:
        """Exact generator output (positions ``_generated..``) -> the part not yet returned."""
        y = y.reshape(-1)
        begin = self._generated
        self._generated += y.numel()
        skip = min(y.numel(), max(0, self._emitted - begin))
        y = y[skip:]
        self._emitted += y.numel()
        return y.cpu().numpy().astype(np.float32, copy=False)

    def _speculate(self, out: np.ndarray) -> np.ndarray:
        """Low-latency mode: release up to ``lookahead_frames`` frames before the exact output."""
        spf = self.samples_per_frame
        target = spf * (self._frames - self.lookahead_frames)
        begin = max(self._emitted, self._generated)
        if target <= begin or self._last_frame is None:
            return out
        needed = _ceil_div(target + self.receptive_field.delay_samples, spf) - self._frames  # frames of made-up context
        pending = [f for f in (self._held, self._take_frames(final=True, commit=False)) if f is not None]
        spec = [torch.cat(pending, dim=1)[:, :needed]] if pending else []
        have = sum(_time(s) for s in spec)
        if have < needed:
            last = spec[-1][:, -1:] if spec else self._last_frame
            spec.append(last.expand(-1, needed - have))
        state = self.generator.snapshot()
        try:
            y = self.generator.push(torch.cat(spec, dim=1)).reshape(-1)
        finally:
            self.generator.restore(state)
        # y covers positions self._generated.. ; release [begin, target)
        part = y[begin - self._generated:target - self._generated]
        self._emitted = begin + part.numel()
        extra = part.cpu().numpy().astype(np.float32, copy=False)
        return np.concatenate([out, extra]) if out.size else extra
