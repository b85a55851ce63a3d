"""Fused GPU generation kernel in Triton: a span of queued steps in one launch.

Eager PyTorch launches about a hundred kernels per step; here one launch runs every step
of a span. Program p owns streams [16 p, 16 p + 16) and runs all their steps: each layer
is a few 16-row matrix products whose weights stay in the GPU's L2 cache, the queues live
in global memory, and the draw (the inverse CDF of `wavekit.distributions`) happens in
the kernel. Streams never wait on each other, so programs need no synchronisation.
Channel counts are zero-padded to powers of two (Triton's tile sizes).

Status: checked under Triton's CPU interpreter (``TRITON_INTERPRET=1``, which the tests
use) against the torch backend and `WaveNet.predict`, and compiled offline for an H100
(sm_90) within its shared memory. It has never run on, or been timed on, a GPU: none was
lent while it was written. So `backend="auto"` keeps the eager backend on CUDA; ask for
this one with `backend="triton"`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from wavekit.audio import mulaw_encode
from wavekit.distributions import DiscretizedLogisticMixture, OutputDistribution
from wavekit.generation.backend import QueuedBackend
from wavekit.generation.weights import InferenceWeights
from wavekit.model import RESIDUAL_SCALE

BLOCK = 16  # streams per program: the smallest row count of a Triton matrix product
# 8 warps, no software pipelining: for every recipe's model the kernel then compiles (for sm_90,
# offline) to about 50 KB of shared memory, within any recent GPU's, and under 1.5 KB of spills
# per thread; 4 warps spilled heavily, and pipelining needed up to 330 KB. No fused
# multiply-add, as the mixture draw's reference specifies. Untuned: no GPU was at hand.
LAUNCH = {"num_warps": 8, "num_stages": 1, "enable_fp_fusion": False}


def _tile(n: int) -> int:
    """`n` rounded up to a power of two of at least 16 (0 stays 0)."""
    return 0 if n == 0 else max(16, triton.next_power_of_2(n))


def _padded(t: Tensor, *shape: int) -> Tensor:
    """A float32 copy of `t` zero-padded at the end of every dim up to `shape`."""
    out = t.new_zeros(shape, dtype=torch.float32)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


@triton.jit
def _round_half_even(y):
    """Nearest integer of non-negative `y`, ties to even (as torch.round)."""
    floor = tl.floor(y)
    rest = y - floor
    odd = floor - 2.0 * tl.floor(floor * 0.5)
    return tl.where(rest > 0.5, floor + 1.0, tl.where(rest < 0.5, floor, floor + odd))


@triton.jit
def _inverse_cdf(logits, columns, count: tl.constexpr, temperature, u):
    """Per row, the index in [0, count) drawn from softmax(logits[:, :count] / T) at uniform u.

    The algorithm of `wavekit.distributions._inverse_cdf`: float32 weights, their running
    sum in float64, the number of cdf entries <= u * total.
    """
    valid = columns[None, :] < count
    z = tl.where(valid, logits / temperature[:, None], -float("inf"))
    weights = tl.where(valid, tl.exp(z - tl.max(z, axis=1)[:, None]), 0.0)
    cdf = tl.cumsum(weights.to(tl.float64), axis=1)
    threshold = u.to(tl.float64) * tl.max(cdf, axis=1)
    index = tl.sum((valid & (cdf <= threshold[:, None])).to(tl.int32), axis=1)
    return tl.minimum(index, count - 1)


@triton.jit(do_not_specialize=["batch", "t0", "steps", "bias_steps", "bias_step"])  # no rebuild per size
def _run_steps(
    queue, previous_bin, previous_value,
    embed, conv, cond_w, bias, mel, res, res_b, skip, skip_b, out1, out1_b, out2, out2_b, decode,
    dilations, queue_offsets,
    noise, temperatures, forced, forced_bins, out, params,
    batch, t0, steps, queue_len, bias_steps, bias_step, skip_scale, residual_scale, log_scale_min, half_levels,
    LAYERS: tl.constexpr, TAPS: tl.constexpr, R: tl.constexpr, H: tl.constexpr, S: tl.constexpr,
    HID: tl.constexpr, C: tl.constexpr, CLASSES: tl.constexpr, M: tl.constexpr, MIXTURES: tl.constexpr,
    NOISE: tl.constexpr, IS_MOL: tl.constexpr, FORCING: tl.constexpr, RECORDING: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Advance streams [BLOCK p, BLOCK p + BLOCK) by `steps` samples (p = this program).

    Layouts (float32, channel dims padded with zeros): queue [B, queue_len, R]; conv
    [L, TAPS, R, 2, H] (tap, input, tanh / sigmoid half, output); cond_w [L, M, 2, H];
    bias [B, bias_steps, L, 2, H] (step s reads row s * bias_step); mel [B, M, steps];
    res [L, H, R]; skip [L, H, S]; out1 [S, HID]; out2 [HID, C]; noise [B, NOISE, steps];
    params [B, CLASSES, steps]. A layer's gates and the head's hidden units go CHUNK at a
    time, each chunk adding its share to the products it feeds: no weight tile is larger
    than CHUNK x max(R, M, S, C) floats, which keeps them within shared memory and registers.
    """
    first = tl.program_id(0) * BLOCK
    rows = first + tl.arange(0, BLOCK)
    live = rows < batch
    rows = tl.where(live, rows, first).to(tl.int64)  # rows past the batch redo the first one and store nothing
    r = tl.arange(0, R)
    k = tl.arange(0, S)
    j = tl.arange(0, CHUNK)
    c = tl.arange(0, C)
    prev_bin = tl.load(previous_bin + rows)
    prev_value = tl.load(previous_value + rows)
    temperature = tl.load(temperatures + rows)
    for s in range(steps):
        t = t0.to(tl.int64) + s  # 64 bits: a serving engine's step count outgrows 32
        if IS_MOL:
            x = prev_value[:, None] * tl.load(embed + r)[None, :] + tl.load(embed + R + r)[None, :]
        else:
            x = tl.load(embed + prev_bin[:, None] * R + r[None, :])
        skip_sum = tl.zeros([BLOCK, S], tl.float32)
        bias_row = (rows * bias_steps + s * bias_step) * LAYERS
        if M > 0:
            m = tl.arange(0, M)
            mel_s = tl.load(mel + (rows[:, None] * M + m[None, :]) * steps + s)
        for layer in range(LAYERS):
            d = tl.load(dilations + layer)
            span = d * (TAPS - 1)
            base = tl.load(queue_offsets + layer)
            residual = tl.zeros([BLOCK, R], tl.float32)
            for n in range(0, H, CHUNK):  # (names of their own: Triton keeps a loop variable's shape)
                gate = (bias_row[:, None] + layer) * 2 * H + n + j[None, :]
                a = tl.load(bias + gate)
                g = tl.load(bias + gate + H)
                w_now = conv + ((layer * TAPS + TAPS - 1) * R + r[:, None]) * 2 * H + n + j[None, :]
                a += tl.dot(x, tl.load(w_now), input_precision="ieee")
                g += tl.dot(x, tl.load(w_now + H), input_precision="ieee")
                for tap in tl.static_range(TAPS - 1):  # this tap holds x[t - (TAPS - 1 - tap) d]
                    slot = base + (t + span - (TAPS - 1 - tap) * d) % span
                    past = tl.load(queue + (rows[:, None] * queue_len + slot) * R + r[None, :])
                    w_tap = conv + ((layer * TAPS + tap) * R + r[:, None]) * 2 * H + n + j[None, :]
                    a += tl.dot(past, tl.load(w_tap), input_precision="ieee")
                    g += tl.dot(past, tl.load(w_tap + H), input_precision="ieee")
                if M > 0:
                    w_mel = cond_w + (layer * M + m[:, None]) * 2 * H + n + j[None, :]
                    a += tl.dot(mel_s, tl.load(w_mel), input_precision="ieee")
                    g += tl.dot(mel_s, tl.load(w_mel + H), input_precision="ieee")
                z = (2.0 * tl.sigmoid(2.0 * a) - 1.0) * tl.sigmoid(g)
                w_skip = skip + (layer * H + n + j[:, None]) * S + k[None, :]
                skip_sum += tl.dot(z, tl.load(w_skip), input_precision="ieee")
                w_res = res + (layer * H + n + j[:, None]) * R + r[None, :]
                residual += tl.dot(z, tl.load(w_res), input_precision="ieee")
            tl.debug_barrier()  # every read of the oldest slot is done before it is overwritten
            tl.store(queue + (rows[:, None] * queue_len + base + t % span) * R + r[None, :], x, mask=live[:, None])
            x = (x + residual + tl.load(res_b + layer * R + r)[None, :]) * residual_scale
        hidden_in = tl.maximum((skip_sum + tl.load(skip_b + k)[None, :]) * skip_scale, 0.0)
        logits = tl.zeros([BLOCK, C], tl.float32) + tl.load(out2_b + c)[None, :]
        for n in range(0, HID, CHUNK):  # the hidden layer, CHUNK units at a time
            w_hidden = out1 + k[:, None] * HID + n + j[None, :]
            hidden = tl.dot(hidden_in, tl.load(w_hidden), input_precision="ieee") + tl.load(out1_b + n + j)[None, :]
            hidden = tl.maximum(hidden, 0.0)
            logits += tl.dot(hidden, tl.load(out2 + (n + j[:, None]) * C + c[None, :]), input_precision="ieee")
        if RECORDING:
            at = (rows[:, None] * CLASSES + c[None, :]) * steps + s
            tl.store(params + at, logits, mask=live[:, None] & (c[None, :] < CLASSES))
        u = tl.load(noise + rows * NOISE * steps + s)
        if FORCING:
            value = tl.load(forced + rows * steps + s)
            prev_bin = tl.load(forced_bins + rows * steps + s)
        elif IS_MOL:  # DiscretizedLogisticMixture._sample_from_uniform
            i = _inverse_cdf(logits, c, MIXTURES, temperature, u)
            mean = tl.sum(tl.where(c[None, :] == (MIXTURES + i)[:, None], logits, 0.0), axis=1)
            log_scale = tl.sum(tl.where(c[None, :] == (2 * MIXTURES + i)[:, None], logits, 0.0), axis=1)
            scale = tl.exp(tl.maximum(log_scale, log_scale_min)) * temperature
            v = tl.minimum(tl.maximum(tl.load(noise + (rows * NOISE + 1) * steps + s), 1e-5), 1.0 - 1e-5)
            sample = tl.minimum(tl.maximum(mean + scale * (tl.log(v) - tl.log(1.0 - v)), -1.0), 1.0)
            value = _round_half_even((sample + 1.0) * half_levels) / half_levels - 1.0
        else:
            prev_bin = _inverse_cdf(logits, c, CLASSES, temperature, u).to(tl.int64)
            value = tl.load(decode + prev_bin)
        prev_value = value
        tl.store(out + rows * steps + s, value, mask=live)
        tl.debug_barrier()  # this step's queue writes are seen by the next step's reads
    tl.store(previous_bin + rows, prev_bin, mask=live)
    tl.store(previous_value + rows, prev_value, mask=live)


class TritonQueuedBackend(QueuedBackend):
    """The backend as one Triton kernel launch per span, for float32 models on a CUDA device."""

    def __init__(self, weights: InferenceWeights, distribution: OutputDistribution, batch: int):
        self.w = weights
        self.t = 0
        self.device = weights.conv_w.device
        R, G = weights.residual_channels, weights.gate_channels
        half, skip, hidden = G // 2, len(weights.skip_b), len(weights.out1_b)
        classes, mel = len(weights.out2_b), weights.cond_w.shape[1] if weights.cond_w is not None else 0
        self.sizes = dict(R=_tile(R), H=_tile(half), S=_tile(skip), HID=_tile(hidden), C=_tile(classes), M=_tile(mel))
        self.classes, self.mel = classes, mel
        self.is_mol = isinstance(distribution, DiscretizedLogisticMixture)
        self.mixtures = distribution.mixtures if self.is_mol else 0
        self.half_levels = (distribution.num_bins - 1) / 2 if self.is_mol else 0.0
        self.log_scale_min = distribution.log_scale_min if self.is_mol else 0.0
        self.noise_channels = distribution.noise_channels
        spans = [d * (weights.kernel_size - 1) for d in weights.dilations]
        self.queue_offsets = torch.tensor([0, *spans[:-1]], device=self.device).cumsum(0)
        self.dilations = torch.tensor(weights.dilations, device=self.device)
        self.queue_len = sum(spans)
        self.first_bin = 0 if self.is_mol else weights.silence_bin
        self.queue = torch.zeros(batch, self.queue_len, self.sizes["R"], device=self.device)
        self.previous_bin = torch.full((batch,), self.first_bin, dtype=torch.long, device=self.device)
        self.previous_value = torch.zeros(batch, device=self.device)
        self.packed = self._pack(weights)

    def _pack(self, w: InferenceWeights) -> dict[str, Tensor]:
        """The weights in the kernel's padded layouts (see `_run_steps`)."""
        n = self.sizes
        L, K, R, G = w.num_layers, w.kernel_size, w.residual_channels, w.gate_channels
        R_, H_, S_, HID_, C_, M_ = (n[key] for key in ("R", "H", "S", "HID", "C", "M"))
        conv = w.conv_w.reshape(L, 2, G // 2, K, R).permute(0, 3, 4, 1, 2)  # [L, K, R, 2, G / 2]
        cond = w.cond_w.reshape(L, 2, G // 2, -1).permute(0, 3, 1, 2) if w.cond_w is not None else None
        return {
            "embed": _padded(w.embed_table, len(w.embed_table), R_),
            "conv": _padded(conv, L, K, R_, 2, H_),
            "cond_w": _padded(cond, L, M_, 2, H_) if cond is not None else conv.new_zeros(1),
            "res": _padded(w.res_skip_w[:, :R].transpose(1, 2), L, H_, R_),
            "res_b": _padded(w.res_b, L, R_),
            "skip": _padded(w.res_skip_w[:, R:].transpose(1, 2), L, H_, S_),
            "skip_b": _padded(w.skip_b, S_),
            "out1": _padded(w.out1_w.T, S_, HID_),
            "out1_b": _padded(w.out1_b, HID_),
            "out2": _padded(w.out2_w.T, HID_, C_),
            "out2_b": _padded(w.out2_b, C_),
            "decode": _padded(w.decode_table, C_),
        }

    @staticmethod
    def floats_per_step(weights: InferenceWeights, streams: int) -> int:
        mel = weights.cond_w.shape[1] if weights.cond_w is not None else 0
        return streams * max(1, mel + _tile(mel))  # the upsampled mel and its padded copy

    @property
    def batch(self) -> int:
        return self.queue.shape[0]

    def add_streams(self, count: int) -> None:
        self.queue = torch.cat([self.queue, self.queue.new_zeros(count, *self.queue.shape[1:])])
        fresh = torch.full((count,), self.first_bin, dtype=torch.long, device=self.device)
        self.previous_bin = torch.cat([self.previous_bin, fresh])
        self.previous_value = torch.cat([self.previous_value, self.previous_value.new_zeros(count)])

    def keep_streams(self, indices: Sequence[int]) -> None:
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        self.queue = self.queue.index_select(0, index).contiguous()
        self.previous_bin = self.previous_bin.index_select(0, index).contiguous()
        self.previous_value = self.previous_value.index_select(0, index).contiguous()

    def run(
        self,
        bias: Tensor,
        noise: Tensor | None,
        temperature: float | Sequence[float],
        forced: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        n, batch, L = self.sizes, self.batch, self.w.num_layers
        steps = forced.shape[1] if forced is not None else noise.shape[2]
        if (cond is None) != (self.mel == 0):
            raise ValueError(f"cond: this model {'needs' if self.mel else 'takes no'} an upsampled mel")
        temperatures = torch.as_tensor(temperature, dtype=torch.float32, device=self.device).reshape(-1)
        if len(temperatures) not in (1, batch):
            raise ValueError(f"temperature: {len(temperatures)} values for {batch} streams")
        half = self.w.gate_channels // 2
        gate_bias = _padded(bias.reshape(batch, bias.shape[1], L, 2, half), batch, bias.shape[1], L, 2, n["H"])
        mel = _padded(cond, batch, n["M"], steps) if cond is not None else None
        if noise is None:
            noise = torch.zeros(batch, self.noise_channels, steps, device=self.device)
        if forced is not None:
            forced = forced.float().contiguous()
            bins = mulaw_encode(forced, self.classes) if not self.is_mol else torch.zeros_like(forced, dtype=torch.long)
        out = torch.empty(batch, steps, device=self.device)
        params = torch.empty(batch, self.classes, steps if forced is not None else 0, device=self.device)
        if batch:
            p = self.packed
            on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
            with on_device:  # Triton launches on the current device, not on the tensors'
                _run_steps[(triton.cdiv(batch, BLOCK),)](
                    self.queue, self.previous_bin, self.previous_value,
                    p["embed"], p["conv"], p["cond_w"], gate_bias, mel if mel is not None else out,
                    p["res"], p["res_b"], p["skip"], p["skip_b"], p["out1"], p["out1_b"], p["out2"], p["out2_b"],
                    p["decode"], self.dilations, self.queue_offsets,
                    noise.float().contiguous(), temperatures.expand(batch).contiguous(),
                    forced if forced is not None else out,
                    bins if forced is not None else self.previous_bin, out, params,
                    batch, self.t, steps, self.queue_len, gate_bias.shape[1], int(gate_bias.shape[1] > 1),
                    self.w.skip_scale, RESIDUAL_SCALE, self.log_scale_min, self.half_levels,
                    LAYERS=L, TAPS=self.w.kernel_size, CLASSES=self.classes, MIXTURES=self.mixtures,
                    NOISE=self.noise_channels, IS_MOL=self.is_mol, FORCING=forced is not None,
                    RECORDING=forced is not None, BLOCK=BLOCK, CHUNK=min(32, n["H"], n["HID"]),
                    **LAUNCH, **n,
                )  # fmt: skip
        self.t += steps
        return out, (params if forced is not None else None)
