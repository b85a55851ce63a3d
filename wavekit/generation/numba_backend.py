"""Fused CPU generation kernel: the whole queued per-sample loop compiled with numba.

Eager PyTorch spends about a hundred kernel dispatches per sample; here one compiled
call runs a chunk of steps for every stream, with the weights streamed from cache by
register-blocked float32 matrix-vector products and one thread per group of streams.
It computes the same float32 arithmetic as `TorchQueuedBackend` (up to summation order)
and draws samples with the exact algorithms documented in `wavekit.distributions`.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from torch import Tensor

from wavekit.audio import mulaw_encode
from wavekit.distributions import DiscretizedLogisticMixture, OutputDistribution
from wavekit.generation.weights import InferenceWeights

_FAST = {"reassoc", "contract", "arcp"}


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Worker threads for stream groups (the kernel releases the GIL)."""
    return ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="wavekit-gen")


@numba.njit(fastmath=_FAST, inline="always", boundscheck=False)
def _matvec_add(w, x, out):
    """out += w @ x, four output rows at a time so each x[i] load feeds four FMAs."""
    rows, cols = w.shape
    o = 0
    while o + 4 <= rows:
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for i in range(cols):
            xi = x[i]
            a0 += w[o, i] * xi
            a1 += w[o + 1, i] * xi
            a2 += w[o + 2, i] * xi
            a3 += w[o + 3, i] * xi
        out[o] += a0
        out[o + 1] += a1
        out[o + 2] += a2
        out[o + 3] += a3
        o += 4
    while o < rows:
        acc = np.float32(0.0)
        for i in range(cols):
            acc += w[o, i] * x[i]
        out[o] += acc
        o += 1


@numba.njit(boundscheck=False)
def _inverse_cdf(logits, first, count, temperature, u):
    """Index in [0, count) drawn from softmax(logits[first:first+count] / T) at uniform u."""
    m = np.float32(-np.inf)
    for j in range(count):
        z = logits[first + j] / temperature
        if z > m:
            m = z
    total = 0.0
    for j in range(count):
        total += np.float64(np.float32(math.exp(logits[first + j] / temperature - m)))
    threshold = np.float64(u) * total
    cdf = 0.0
    for j in range(count):
        cdf += np.float64(np.float32(math.exp(logits[first + j] / temperature - m)))
        if cdf > threshold:
            return j
    return count - 1


@numba.njit(boundscheck=False)
def _sample_mol(params, mixtures, temperature, log_scale_min, half_levels, u0, u1):
    """Bin centre drawn from a discretized logistic mixture (see DiscretizedLogisticMixture)."""
    i = _inverse_cdf(params, 0, mixtures, temperature, u0)
    mean = params[mixtures + i]
    log_scale = max(params[2 * mixtures + i], log_scale_min)
    scale = np.float32(math.exp(log_scale)) * temperature
    v = min(max(u1, np.float32(1e-5)), np.float32(1.0 - 1e-5))
    logistic = np.float32(math.log(v)) - np.float32(math.log(np.float32(1.0) - v))
    x = mean + np.float32(scale * logistic)
    x = min(max(x, np.float32(-1.0)), np.float32(1.0))
    k = np.rint((x + np.float32(1.0)) * half_levels)
    return np.float32(k / half_levels - np.float32(1.0))


@numba.njit(nogil=True, fastmath=_FAST, boundscheck=False, cache=True)
def _run_streams(
    first, last, t0, steps, is_mol, dilations, queue_offsets, kernel_size,
    embed, conv_w, bias, res_skip_w, res_b, skip_b, skip_scale,
    out1_w, out1_b, out2_w, out2_b, decode,
    mixtures, half_levels, log_scale_min, temperature,
    queues, previous_bin, previous_value, noise, forced, forced_bins, out, params_out,
):  # fmt: skip
    """Advance streams [first, last) by `steps` samples each; releases the GIL."""
    layers, gate, taps_width = conv_w.shape
    residual = res_b.shape[1]
    half = gate // 2
    skip = skip_b.shape[0]
    classes = out2_b.shape[0]
    forcing = forced.shape[1] > 0
    recording = params_out.shape[2] > 0
    bias_varies = bias.shape[1] > 1
    for b in range(first, last):
        x = np.empty(residual, np.float32)
        taps = np.empty(taps_width, np.float32)
        h = np.empty(gate, np.float32)
        z = np.empty(half, np.float32)
        res_skip = np.empty(residual + skip, np.float32)
        skips = np.empty(skip, np.float32)
        hidden = np.empty(skip, np.float32)
        params = np.empty(classes, np.float32)
        for s in range(steps):
            t = t0 + s
            if is_mol:
                for i in range(residual):
                    x[i] = previous_value[b] * embed[0, i] + embed[1, i]
            else:
                for i in range(residual):
                    x[i] = embed[previous_bin[b], i]
            skips[:] = skip_b
            bias_t = s if bias_varies else 0
            for l in range(layers):
                d = dilations[l]
                span = d * (kernel_size - 1)
                base = queue_offsets[l]
                for j in range(kernel_size - 1):
                    slot = base + (t - (kernel_size - 1 - j) * d) % span
                    for i in range(residual):
                        taps[j * residual + i] = queues[b, slot, i]
                for i in range(residual):
                    taps[(kernel_size - 1) * residual + i] = x[i]
                    queues[b, base + t % span, i] = x[i]
                h[:] = bias[b, bias_t, l]
                _matvec_add(conv_w[l], taps, h)
                for i in range(half):
                    z[i] = math.tanh(h[i]) / (np.float32(1.0) + math.exp(-h[half + i]))
                res_skip[:] = 0.0
                _matvec_add(res_skip_w[l], z, res_skip)
                for i in range(residual):
                    x[i] = (x[i] + res_skip[i] + res_b[l, i]) * np.float32(0.7071067811865476)
                for i in range(skip):
                    skips[i] += res_skip[residual + i]
            for i in range(skip):
                skips[i] = max(skips[i] * skip_scale, np.float32(0.0))
            hidden[:] = out1_b
            _matvec_add(out1_w, skips, hidden)
            for i in range(skip):
                hidden[i] = max(hidden[i], np.float32(0.0))
            params[:] = out2_b
            _matvec_add(out2_w, hidden, params)
            if recording:
                params_out[b, :, s] = params
            if forcing:
                value = forced[b, s]
                previous_bin[b] = forced_bins[b, s]
            elif is_mol:
                value = _sample_mol(
                    params, mixtures, temperature, log_scale_min, half_levels, noise[b, 0, s], noise[b, 1, s]
                )
            else:
                k = _inverse_cdf(params, 0, classes, temperature, noise[b, 0, s])
                previous_bin[b] = k
                value = decode[k]
            if is_mol:
                previous_value[b] = value
            out[b, s] = value


class NumbaQueuedBackend:
    """Same contract as `TorchQueuedBackend`, for float32 models on the CPU."""

    def __init__(self, weights: InferenceWeights, distribution: OutputDistribution, batch: int):
        self.w = weights
        self.t = 0
        self.is_mol = weights.head == "mol"
        spans = [d * (weights.kernel_size - 1) for d in weights.dilations]
        self.queue_offsets = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
        self.dilations = np.asarray(weights.dilations, dtype=np.int64)
        self.queues = np.zeros((batch, sum(spans), weights.residual_channels), np.float32)
        self.previous_bin = np.zeros(batch, np.int64)
        self.previous_value = np.zeros(batch, np.float32)
        if not self.is_mol:
            self.previous_bin[:] = mulaw_encode(torch.zeros(()), len(weights.decode_table)).item()
        if isinstance(distribution, DiscretizedLogisticMixture):
            self.mol = (distribution.mixtures, np.float32(distribution._half_levels), distribution.log_scale_min)
        else:
            self.mol = (0, np.float32(0.0), 0.0)
        names = ("embed_table", "conv_w", "res_skip_w", "res_b", "skip_b", "out1_w", "out1_b", "out2_w", "out2_b")
        self.arrays = {name: getattr(weights, name).detach().cpu().numpy() for name in names}
        self.decode = weights.decode_table.cpu().numpy()
        if not len(self.decode):
            self.decode = np.zeros(1, np.float32)

    def run(
        self, bias: Tensor, noise: Tensor | None, temperature: float, forced: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """See `TorchQueuedBackend.run`."""
        batch = self.queues.shape[0]
        steps = forced.shape[1] if forced is not None else noise.shape[2]
        classes = self.arrays["out2_b"].shape[0]
        empty2 = np.zeros((batch, 0), np.float32)
        noise_np = noise.numpy() if noise is not None else np.zeros((batch, 2, 0), np.float32)
        forced_np = forced.float().numpy() if forced is not None else empty2
        forced_bins = np.zeros(forced_np.shape, np.int64)
        if forced is not None and not self.is_mol:
            forced_bins = mulaw_encode(forced, len(self.decode)).numpy()
        params = np.zeros((batch, classes, steps if forced is not None else 0), np.float32)
        out = np.empty((batch, steps), np.float32)
        a = self.arrays
        mixtures, half_levels, log_scale_min = self.mol
        args = (
            self.t, steps, self.is_mol, self.dilations, self.queue_offsets, self.w.kernel_size,
            a["embed_table"], a["conv_w"], bias.numpy(), a["res_skip_w"], a["res_b"], a["skip_b"],
            np.float32(self.w.skip_scale), a["out1_w"], a["out1_b"], a["out2_w"], a["out2_b"], self.decode,
            mixtures, half_levels, np.float32(log_scale_min), np.float32(temperature),
            self.queues, self.previous_bin, self.previous_value, noise_np, forced_np, forced_bins, out, params,
        )  # fmt: skip
        bounds = np.linspace(0, batch, min(batch, torch.get_num_threads()) + 1).astype(int)
        if len(bounds) == 2:
            _run_streams(0, batch, *args)
        else:
            list(_pool().map(lambda i: _run_streams(bounds[i], bounds[i + 1], *args), range(len(bounds) - 1)))
        self.t += steps
        return torch.from_numpy(out), (torch.from_numpy(params) if forced is not None else None)
