"""Fused CPU generation kernel: the whole queued per-sample loop compiled with numba.

Eager PyTorch spends about a hundred kernel dispatches per sample; here one compiled
call runs a span of steps. Several streams: one thread per group of streams, and every
layer of a step is a matrix product over the group's streams (`gemm.gemm_panels`), so
each weight read from cache serves every stream of the group. One stream: its weights
are split between the cores ("parts"), each part computing its share of every product,
and the parts swap partial sums at a lock-free barrier once per layer. Exponentials
are evaluated in plain arithmetic (`_exp`), so their loops vectorize.
It computes the same float32 arithmetic as `TorchQueuedBackend` (up to summation order
and a 2-ulp exp) and draws samples with the exact algorithms in `wavekit.distributions`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from torch import Tensor

from wavekit.audio import mulaw_encode
from wavekit.distributions import DiscretizedLogisticMixture, OutputDistribution
from wavekit.generation.backend import QueuedBackend
from wavekit.generation.gemm import PANEL, gemm_panels, pack_panels
from wavekit.generation.weights import InferenceWeights
from wavekit.model import RESIDUAL_SCALE

# No `reassoc`: it would undo `_exp`'s two-constant range reduction, and nothing here needs
# it (the matrix products are LLVM IR of their own). NumPy's error model: a float division
# never raises, so the loops over `_sigmoid` and `_tanh` vectorize.
_FAST = {"contract", "arcp"}


@intrinsic
def _load_acquire(typingctx, array, index):
    """array[index] read with acquire ordering (int64 array, intp index)."""
    sig = types.int64(array, index)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]])
        return builder.load_atomic(ptr, ordering="acquire", align=8)

    return sig, codegen


@intrinsic
def _store_release(typingctx, array, index, value):
    """array[index] = value with release ordering (int64 array, intp index)."""
    sig = types.void(array, index, value)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]])
        builder.store_atomic(args[2], ptr, ordering="release", align=8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _sched_yield(typingctx):
    """Call libc's sched_yield() (an external symbol, so compiled code stays cacheable)."""
    sig = types.int32()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])

    return sig, codegen


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits`."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@numba.njit(fastmath=_FAST, inline="always", boundscheck=False, error_model="numpy")
def _exp(x):
    """expf within 2 ulp (Cephes' polynomial), in plain arithmetic so loops over it vectorize.

    libm's scalar expf and tanhf were most of the kernel's time; inlined into a loop,
    this becomes 8-wide vector code. Below about -87.7 it returns exactly 0 (the exponent
    field reaches 0), so a softmax bin whose weight underflows keeps probability 0, as in
    the reference; above 88 it saturates at exp(88).
    """
    x = np.float32(88.0) if x > np.float32(88.0) else x
    x = np.float32(-88.0) if x < np.float32(-88.0) else x
    k = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    return y * _float_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


@numba.njit(fastmath=_FAST, inline="always", boundscheck=False, error_model="numpy")
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + _exp(-x))


@numba.njit(fastmath=_FAST, inline="always", boundscheck=False, error_model="numpy")
def _tanh(x):
    """tanh as 2 sigmoid(2x) - 1: within 1e-7 of libm's (absolute), and vectorizable."""
    return np.float32(2.0) * _sigmoid(np.float32(2.0) * x) - np.float32(1.0)


_LINE = 16  # int64 counters per 128-byte line, so each part's counter has its own
_SPINS = 4000  # busy polls before yielding the core to whoever holds it (e.g. a waiting part)


@numba.njit(inline="always")
def _publish_and_wait(counters, part, parts, sequence):
    """Announce that `part` reached `sequence`, then wait until every part has."""
    if parts == 1:
        return
    _store_release(counters, part * _LINE, sequence)
    for other in range(parts):
        spins = 0
        while _load_acquire(counters, other * _LINE) < sequence:
            spins += 1
            if spins > _SPINS:
                _sched_yield()


# The parts of a split stream spin until all of them run: one split run at a time per process,
# its parts on the caller's thread and `parts - 1` pool threads, so they always run together.
_SPLIT_LOCK = threading.Lock()


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads for the parts or stream groups beyond the caller's."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wavekit-gen")


@numba.njit(boundscheck=False, error_model="numpy")
def _inverse_cdf(logits, first, count, temperature, u, weights):
    """Index in [0, count) drawn from softmax(logits[first:first+count] / T) at uniform u.

    `weights` is scratch space of at least `count` floats. IEEE arithmetic (no fast-math:
    the division and the float64 running sum round as the reference's do); the exp loop
    vectorizes.
    """
    m = np.float32(-np.inf)
    for j in range(count):
        weights[j] = logits[first + j] / temperature
        if weights[j] > m:
            m = weights[j]
    for j in range(count):
        weights[j] = _exp(weights[j] - m)
    total = 0.0
    for j in range(count):
        total += np.float64(weights[j])
    threshold = np.float64(u) * total
    cdf = 0.0
    for j in range(count):
        cdf += np.float64(weights[j])
        if cdf > threshold:
            return j
    return count - 1


@numba.njit(boundscheck=False)
def _sample_mol(params, mixtures, temperature, log_scale_min, half_levels, u0, u1, weights):
    """Bin centre drawn from a discretized logistic mixture (see DiscretizedLogisticMixture)."""
    i = _inverse_cdf(params, 0, mixtures, temperature, u0, weights)
    mean = params[mixtures + i]
    log_scale = max(params[2 * mixtures + i], log_scale_min)
    scale = np.float32(math.exp(log_scale)) * temperature
    v = min(max(u1, np.float32(1e-5)), np.float32(1.0 - 1e-5))
    logistic = np.float32(math.log(v)) - np.float32(math.log(np.float32(1.0) - v))
    x = mean + np.float32(scale * logistic)
    x = min(max(x, np.float32(-1.0)), np.float32(1.0))
    k = np.rint((x + np.float32(1.0)) * half_levels)
    return np.float32(k / half_levels - np.float32(1.0))


@numba.njit(nogil=True, fastmath=_FAST, boundscheck=False, error_model="numpy", cache=True)
def _run_group(
    part, parts, first, last, t0, steps, sync_base, is_mol, dilations, queue_offsets, kernel_size,
    embed, conv_p, bias, cond, cond_p, res_skip_p, res_b, skip_b, skip_scale,
    out1_p, out1_b, out2_p, out2_b, decode,
    mixtures, half_levels, log_scale_min, temperatures,
    queues, previous_bin, previous_value, noise, forced, forced_bins, out, params_out,
    exchange, counters, residual_scale,
):  # fmt: skip
    """Advance streams [first, last) together by `steps` samples, computing share `part` of `parts`.

    Each layer is two or three matrix products over all the group's streams at once.
    Weights come pre-split by part and packed in panels (`gemm.pack_panels`): conv_p and
    cond_p [P, L, ., K * R or M, 16] (part p's tanh rows then its sigmoid rows),
    res_skip_p [P, L, ., Hp, 16] (its gate columns), out1_p and out2_p [P, ., S, 16] (its
    rows). bias [B, 1 or T', L, P, 2 * Hp] is the gate bias without the mel term, which
    comes from the upsampled mel `cond` [B, M, T'] (M = 0: none) step by step. Every
    part keeps a full copy of the residual stream and its queues [P, Q, B, R] (slot-major,
    so a slot's rows for the group's streams are adjacent in memory); partial
    sums meet in `exchange` [P, L + 3, last - first, W], always added in part order, so all
    parts agree bit for bit. `temperatures` [B] holds each stream's sampling temperature.
    Row k is read right after barrier k, before the reader publishes barrier k + 1; a
    part rewrites row k in the next step only after passing barrier k + 1 of this one,
    that is after every part has read it: so one barrier per row is enough.
    """
    layers = conv_p.shape[1]
    taps_width = conv_p.shape[3]
    residual = res_b.shape[1]
    skip = skip_b.shape[0]
    gate_part = bias.shape[4]
    half_part = gate_part // 2
    hidden_part = out1_b.shape[0] // parts
    classes = out2_b.shape[0]
    classes_part = classes // parts
    n = last - first
    forcing = forced.shape[1] > 0
    recording = params_out.shape[2] > 0
    bias_varies = bias.shape[1] > 1
    syncs = layers + 3
    taps = np.empty((n, taps_width), np.float32)
    gates = np.empty((n, conv_p.shape[2] * PANEL), np.float32)
    z = np.empty((n, half_part), np.float32)
    res_skip = np.empty((n, res_skip_p.shape[2] * PANEL), np.float32)
    x = np.empty((n, residual), np.float32)
    skips = np.empty((n, skip), np.float32)
    hidden_mine = np.empty((n, out1_p.shape[1] * PANEL), np.float32)
    hidden = np.empty((n, out1_b.shape[0]), np.float32)
    logits_mine = np.empty((n, out2_p.shape[1] * PANEL), np.float32)
    params = np.empty((n, classes), np.float32)
    class_weights = np.empty(classes, np.float32)
    mel = cond.shape[1]
    mel_rows = np.empty((n, mel), np.float32)
    prev_bin = previous_bin[first:last].copy()
    prev_value = previous_value[first:last].copy()
    for s in range(steps):
        t = t0 + s
        sequence = sync_base + s * syncs
        bias_t = s if bias_varies else 0
        for b in range(n):
            for i in range(mel):
                mel_rows[b, i] = cond[first + b, i, s]
            for i in range(residual):
                x[b, i] = prev_value[b] * embed[0, i] + embed[1, i] if is_mol else embed[prev_bin[b], i]
        skips[:, :] = 0.0
        for l in range(layers):
            d = dilations[l]
            span = d * (kernel_size - 1)
            base = queue_offsets[l]
            newest, write = (kernel_size - 1) * residual, base + t % span
            for b in range(n):
                for j in range(kernel_size - 1):
                    slot = base + (t - (kernel_size - 1 - j) * d) % span
                    for i in range(residual):
                        taps[b, j * residual + i] = queues[part, slot, first + b, i]
                for i in range(residual):
                    taps[b, newest + i] = x[b, i]
                    queues[part, write, first + b, i] = x[b, i]
                for i in range(gate_part):
                    gates[b, i] = bias[first + b, bias_t, l, part, i]
            if mel > 0:
                gemm_panels(mel_rows, n, mel, cond_p[part, l], gates)
            gemm_panels(taps, n, taps_width, conv_p[part, l], gates)
            for b in range(n):
                for i in range(half_part):
                    z[b, i] = _tanh(gates[b, i]) * _sigmoid(gates[b, half_part + i])
            res_skip[:, :] = 0.0
            gemm_panels(z, n, half_part, res_skip_p[part, l], res_skip)
            for b in range(n):
                for i in range(residual):
                    exchange[part, l, b, i] = res_skip[b, i]
                for i in range(skip):
                    skips[b, i] += res_skip[b, residual + i]
            _publish_and_wait(counters, part, parts, sequence + l + 1)
            for b in range(n):
                for i in range(residual):
                    total = exchange[0, l, b, i]
                    for p in range(1, parts):
                        total += exchange[p, l, b, i]
                    x[b, i] = (x[b, i] + total + res_b[l, i]) * residual_scale
        for b in range(n):
            for i in range(skip):
                exchange[part, layers, b, i] = skips[b, i]
        _publish_and_wait(counters, part, parts, sequence + layers + 1)
        for b in range(n):
            for i in range(skip):
                total = exchange[0, layers, b, i]
                for p in range(1, parts):
                    total += exchange[p, layers, b, i]
                skips[b, i] = max((total + skip_b[i]) * skip_scale, np.float32(0.0))
            for i in range(hidden_part):
                hidden_mine[b, i] = out1_b[part * hidden_part + i]
        gemm_panels(skips, n, skip, out1_p[part], hidden_mine)
        for b in range(n):
            for i in range(hidden_part):
                exchange[part, layers + 1, b, i] = max(hidden_mine[b, i], np.float32(0.0))
        _publish_and_wait(counters, part, parts, sequence + layers + 2)
        for b in range(n):
            for p in range(parts):
                for i in range(hidden_part):
                    hidden[b, p * hidden_part + i] = exchange[p, layers + 1, b, i]
            for i in range(classes_part):
                logits_mine[b, i] = out2_b[part * classes_part + i]
        gemm_panels(hidden, n, hidden.shape[1], out2_p[part], logits_mine)
        for b in range(n):
            for i in range(classes_part):
                exchange[part, layers + 2, b, i] = logits_mine[b, i]
        _publish_and_wait(counters, part, parts, sequence + layers + 3)
        for b in range(n):
            for p in range(parts):
                for i in range(classes_part):
                    params[b, p * classes_part + i] = exchange[p, layers + 2, b, i]
            stream = first + b
            if forcing:
                value = forced[stream, s]
                prev_bin[b] = forced_bins[stream, s]
            elif is_mol:
                value = _sample_mol(
                    params[b], mixtures, temperatures[stream], log_scale_min, half_levels,
                    noise[stream, 0, s], noise[stream, 1, s], class_weights,
                )  # fmt: skip
            else:
                u = noise[stream, 0, s]
                prev_bin[b] = _inverse_cdf(params[b], 0, classes, temperatures[stream], u, class_weights)
                value = decode[prev_bin[b]]
            prev_value[b] = value
            if part == 0:
                out[stream, s] = value
                if recording:
                    params_out[stream, :, s] = params[b]
    if part == 0:
        previous_bin[first:last] = prev_bin
        previous_value[first:last] = prev_value


class NumbaQueuedBackend(QueuedBackend):
    """The backend as one compiled kernel, for float32 models on the CPU."""

    def __init__(self, weights: InferenceWeights, distribution: OutputDistribution, batch: int):
        self.w = weights
        self.t = 0
        self.sync = 0
        self.is_mol = weights.head == "mol"
        self.threads = torch.get_num_threads()
        spans = [d * (weights.kernel_size - 1) for d in weights.dilations]
        self.queue_offsets = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
        self.dilations = np.asarray(weights.dilations, dtype=np.int64)
        self.parts = self._parts_for(batch)
        self.queues = np.zeros((self.parts, sum(spans), batch, weights.residual_channels), np.float32)
        self.first_bin = 0 if self.is_mol else weights.silence_bin  # the input before a stream's first step
        self.previous_bin = np.full(batch, self.first_bin, np.int64)
        self.previous_value = np.zeros(batch, np.float32)
        if isinstance(distribution, DiscretizedLogisticMixture):
            half_levels = (distribution.num_bins - 1) / 2
            self.mol = (distribution.mixtures, np.float32(half_levels), distribution.log_scale_min)
        else:
            self.mol = (0, np.float32(0.0), 0.0)
        tensors = {name: getattr(weights, name) for name in _WEIGHT_NAMES}
        self.cpu = {name: t.detach().cpu().numpy() for name, t in tensors.items() if t is not None}
        self.decode = weights.decode_table.cpu().numpy() if len(weights.decode_table) else np.zeros(1, np.float32)
        self.counters = np.zeros(max(self.threads, 1) * _LINE, np.int64)
        self.layouts: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        # A run of no steps compiles the kernel (or loads it from numba's cache) now, so the
        # first timed span, and a progress bar's rate, measure generation alone.
        no_steps = torch.zeros(batch, distribution.noise_channels, 0)
        self.run(torch.zeros(batch, 1, weights.num_layers, weights.gate_channels), no_steps, 1.0)

    def _parts_for(self, batch: int) -> int:
        """How many cores share each stream: all of them for a lone stream (when its shapes split evenly)."""
        return self.threads if batch == 1 and _splittable(self.w, self.threads) else 1

    def _layout(self, parts: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(gate row order, weights split into `parts` shares and packed in panels), built once per part count."""
        if parts not in self.layouts:
            cpu, L = self.cpu, self.w.num_layers
            gate_order = _gate_order(self.w.gate_channels, parts)

            def by_part(w: np.ndarray) -> np.ndarray:  # [L, G, in] -> panels [P, L, ., in, 16]
                return pack_panels(w[:, gate_order].reshape(L, parts, -1, w.shape[2]).transpose(1, 0, 2, 3))

            cond_w = cpu["cond_w"].reshape(L, self.w.gate_channels, -1) if self.w.cond_w is not None else None
            self.layouts[parts] = gate_order, {
                "embed": cpu["embed_table"],
                "conv_p": by_part(cpu["conv_w"]),
                "cond_p": by_part(cond_w) if cond_w is not None else np.zeros((parts, L, 1, 0, PANEL), np.float32),
                "res_skip_p": pack_panels(np.stack(np.split(cpu["res_skip_w"], parts, axis=2))),
                "res_b": cpu["res_b"],
                "skip_b": cpu["skip_b"],
                "out1_p": pack_panels(np.stack(np.split(cpu["out1_w"], parts))),
                "out1_b": cpu["out1_b"],
                "out2_p": pack_panels(np.stack(np.split(cpu["out2_w"], parts))),
                "out2_b": cpu["out2_b"],
            }
        return self.layouts[parts]

    @staticmethod
    def floats_per_step(weights: InferenceWeights, streams: int) -> int:
        mel = weights.cond_w.shape[1] if weights.cond_w is not None else 0
        return streams * max(1, mel)  # only the upsampled mel [B, M, T']: the kernel adds its term itself

    @property
    def batch(self) -> int:
        return self.queues.shape[2]

    def add_streams(self, count: int) -> None:
        parts, length, _, channels = self.queues.shape
        self.queues = np.concatenate([self.queues, np.zeros((parts, length, count, channels), np.float32)], axis=2)
        self.previous_bin = np.concatenate([self.previous_bin, np.full(count, self.first_bin, np.int64)])
        self.previous_value = np.concatenate([self.previous_value, np.zeros(count, np.float32)])
        self._repartition()

    def keep_streams(self, indices: Sequence[int]) -> None:
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.queues = np.ascontiguousarray(self.queues[:, :, index])
        self.previous_bin = self.previous_bin[index]
        self.previous_value = self.previous_value[index]
        self._repartition()

    def _repartition(self) -> None:
        """Re-split the state after the batch changed size: every part holds a full copy of the queues."""
        parts = self._parts_for(self.batch)
        if parts != self.parts:
            self.queues = np.ascontiguousarray(np.repeat(self.queues[:1], parts, axis=0))
            self.parts = parts

    def run(
        self,
        bias: Tensor,
        noise: Tensor | None,
        temperature: float | Sequence[float],
        forced: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        # The mel term is a product per layer and step inside the kernel.
        batch = self.batch
        steps = forced.shape[1] if forced is not None else noise.shape[2]
        P, L = self.parts, self.w.num_layers
        gate_order, a = self._layout(P)
        classes = a["out2_b"].shape[0]
        gate_part = self.w.gate_channels // P
        bias_np = np.ascontiguousarray(bias.numpy()[..., gate_order].reshape(batch, bias.shape[1], L, P, gate_part))
        # Every array C-contiguous, so one compiled specialization serves all calls (a span
        # of the mel is a strided slice; copying it costs ~0.1 us per sample, a transpose 5x more).
        no_mel = np.zeros((batch, 0, 0), np.float32)
        cond_np = np.ascontiguousarray(cond.float().numpy()) if cond is not None else no_mel
        noise_np = noise.numpy() if noise is not None else np.zeros((batch, 2, 0), np.float32)
        not_forced = np.zeros((batch, 0), np.float32)
        forced_np = np.ascontiguousarray(forced.float().numpy()) if forced is not None else not_forced
        if forced is not None and not self.is_mol:
            forced_bins = mulaw_encode(forced, len(self.decode)).numpy()
        else:
            forced_bins = np.zeros(forced_np.shape, np.int64)
        temperatures = np.broadcast_to(np.asarray(temperature, np.float32), (batch,)).copy()
        params = np.zeros((batch, classes, steps if forced is not None else 0), np.float32)
        out = np.empty((batch, steps), np.float32)
        mixtures, half_levels, log_scale_min = self.mol

        def work(part: int, first: int, last: int, exchange: np.ndarray) -> None:
            _run_group(
                part, P, first, last, self.t, steps, self.sync, self.is_mol, self.dilations,
                self.queue_offsets, self.w.kernel_size, a["embed"], a["conv_p"], bias_np, cond_np, a["cond_p"],
                a["res_skip_p"], a["res_b"], a["skip_b"], np.float32(self.w.skip_scale),
                a["out1_p"], a["out1_b"], a["out2_p"], a["out2_b"], self.decode,
                mixtures, half_levels, np.float32(log_scale_min), temperatures,
                self.queues, self.previous_bin, self.previous_value, noise_np, forced_np, forced_bins, out, params,
                exchange, self.counters, np.float32(RESIDUAL_SCALE),
            )  # fmt: skip

        width = max(self.w.residual_channels, len(a["skip_b"]), classes)
        groups = 1 if P > 1 else max(1, min(batch, self.threads))
        bounds = np.linspace(0, batch, groups + 1).astype(int)
        exchanges = [np.zeros((P, L + 3, bounds[g + 1] - bounds[g], width), np.float32) for g in range(groups)]
        jobs = [(part, bounds[g], bounds[g + 1], exchanges[g]) for g in range(groups) for part in range(P)]
        with _SPLIT_LOCK if P > 1 else contextlib.nullcontext():
            futures = [_pool(len(jobs) - 1).submit(work, *job) for job in jobs[1:]]
            work(*jobs[0])
            for future in futures:
                future.result()
        self.t += steps
        self.sync += steps * (L + 3)
        return torch.from_numpy(out), (torch.from_numpy(params) if forced is not None else None)


_WEIGHT_NAMES = (
    "embed_table", "conv_w", "cond_w", "res_skip_w", "res_b", "skip_b", "out1_w", "out1_b", "out2_w", "out2_b",
)  # fmt: skip


def _splittable(weights: InferenceWeights, parts: int) -> bool:
    """Whether every split dimension divides evenly into `parts`."""
    dims = (weights.gate_channels // 2, weights.out1_w.shape[0], weights.out2_w.shape[0])
    return parts > 1 and all(d % parts == 0 for d in dims)


def _gate_order(gate: int, parts: int) -> np.ndarray:
    """Gate rows regrouped by part: part p's tanh rows, then its sigmoid rows, for p = 0, 1, ..."""
    half = gate // 2
    rows = np.arange(half).reshape(parts, -1)
    return np.concatenate([np.concatenate([r, r + half]) for r in rows])
