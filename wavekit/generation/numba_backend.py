"""Fused CPU generation kernel: the whole queued per-sample loop compiled with numba.

Eager PyTorch spends about a hundred kernel dispatches per sample; here one compiled
call runs a chunk of steps, with the weights streamed by register-blocked float32
matrix-vector products. Several streams: one thread per group of streams. One stream:
its weights are split between the cores ("parts"), each part streaming only its share
from cache, and the parts swap partial sums at a lock-free barrier once per layer.
It computes the same float32 arithmetic as `TorchQueuedBackend` (up to summation order)
and draws samples with the exact algorithms documented in `wavekit.distributions`.
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
from wavekit.generation.weights import InferenceWeights
from wavekit.model import RESIDUAL_SCALE

_FAST = {"reassoc", "contract", "arcp"}


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
def _inverse_cdf(logits, first, count, temperature, u, weights):
    """Index in [0, count) drawn from softmax(logits[first:first+count] / T) at uniform u.

    `weights` is scratch space of at least `count` floats (each exp is computed once).
    """
    m = np.float32(-np.inf)
    for j in range(count):
        z = logits[first + j] / temperature
        if z > m:
            m = z
    total = 0.0
    for j in range(count):
        weights[j] = np.float32(math.exp(logits[first + j] / temperature - m))
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


@numba.njit(nogil=True, fastmath=_FAST, boundscheck=False, cache=True)
def _run_part(
    part, parts, first, last, t0, steps, sync_base, is_mol, dilations, queue_offsets, kernel_size,
    embed, conv_w, bias, res_skip_w, res_b, skip_b, skip_scale,
    out1_w, out1_b, out2_w, out2_b, decode,
    mixtures, half_levels, log_scale_min, temperatures,
    queues, previous_bin, previous_value, noise, forced, forced_bins, out, params_out,
    exchange, counters, residual_scale,
):  # fmt: skip
    """Advance streams [first, last) by `steps` samples, computing share `part` of `parts`.

    Weights come pre-split by part: conv_w [P, L, 2 * Hp, K * R] (part p's tanh rows then
    its sigmoid rows), res_skip_w [P, L, R + S, Hp] (its columns), out1_w [P, S / P, S]
    and out2_w [P, C / P, S] (its rows); bias [B, T', L, P, 2 * Hp]. Every part keeps a
    full copy of the residual stream and its queues [B, P, Q, R]; partial sums meet in
    `exchange` [P, L + 3, W], always added in part order, so all parts agree bit for bit.
    `temperatures` [B] holds each stream's sampling temperature.
    Row k is read right after barrier k, before the reader publishes barrier k + 1; a
    part rewrites row k in the next step only after passing barrier k + 1 of this one,
    that is after every part has read it: so one barrier per row is enough.
    """
    layers = conv_w.shape[1]
    gate_part = conv_w.shape[2]
    half_part = gate_part // 2
    taps_width = conv_w.shape[3]
    residual = res_b.shape[1]
    skip = skip_b.shape[0]
    hidden_part = out1_w.shape[1]
    classes_part = out2_w.shape[1]
    classes = classes_part * parts
    forcing = forced.shape[1] > 0
    recording = params_out.shape[2] > 0
    bias_varies = bias.shape[1] > 1
    syncs = layers + 3
    x = np.empty(residual, np.float32)
    taps = np.empty(taps_width, np.float32)
    h = np.empty(gate_part, np.float32)
    z = np.empty(half_part, np.float32)
    res_skip = np.empty(residual + skip, np.float32)
    skips = np.empty(skip, np.float32)
    hidden = np.empty(skip, np.float32)
    params = np.empty(classes, np.float32)
    class_weights = np.empty(classes, np.float32)
    for b in range(first, last):
        temperature = temperatures[b]
        prev_bin = previous_bin[b]
        prev_value = previous_value[b]
        for s in range(steps):
            t = t0 + s
            sequence = sync_base + s * syncs
            if is_mol:
                for i in range(residual):
                    x[i] = prev_value * embed[0, i] + embed[1, i]
            else:
                for i in range(residual):
                    x[i] = embed[prev_bin, i]
            skips[:] = 0.0
            bias_t = s if bias_varies else 0
            for l in range(layers):
                d = dilations[l]
                span = d * (kernel_size - 1)
                base = queue_offsets[l]
                for j in range(kernel_size - 1):
                    slot = base + (t - (kernel_size - 1 - j) * d) % span
                    for i in range(residual):
                        taps[j * residual + i] = queues[b, part, slot, i]
                for i in range(residual):
                    taps[(kernel_size - 1) * residual + i] = x[i]
                    queues[b, part, base + t % span, i] = x[i]
                h[:] = bias[b, bias_t, l, part]
                _matvec_add(conv_w[part, l], taps, h)
                for i in range(half_part):
                    z[i] = math.tanh(h[i]) / (np.float32(1.0) + math.exp(-h[half_part + i]))
                res_skip[:] = 0.0
                _matvec_add(res_skip_w[part, l], z, res_skip)
                exchange[part, l, :residual] = res_skip[:residual]
                for i in range(skip):
                    skips[i] += res_skip[residual + i]
                _publish_and_wait(counters, part, parts, sequence + l + 1)
                for i in range(residual):
                    total = exchange[0, l, i]
                    for p in range(1, parts):
                        total += exchange[p, l, i]
                    x[i] = (x[i] + total + res_b[l, i]) * residual_scale
            exchange[part, layers, :skip] = skips
            _publish_and_wait(counters, part, parts, sequence + layers + 1)
            for i in range(skip):
                total = exchange[0, layers, i]
                for p in range(1, parts):
                    total += exchange[p, layers, i]
                skips[i] = max((total + skip_b[i]) * skip_scale, np.float32(0.0))
            row = part * hidden_part
            hidden[:hidden_part] = out1_b[row : row + hidden_part]
            _matvec_add(out1_w[part], skips, hidden[:hidden_part])
            for i in range(hidden_part):
                exchange[part, layers + 1, i] = max(hidden[i], np.float32(0.0))
            _publish_and_wait(counters, part, parts, sequence + layers + 2)
            for p in range(parts):
                hidden[p * hidden_part : (p + 1) * hidden_part] = exchange[p, layers + 1, :hidden_part]
            row = part * classes_part
            params[:classes_part] = out2_b[row : row + classes_part]
            _matvec_add(out2_w[part], hidden, params[:classes_part])
            exchange[part, layers + 2, :classes_part] = params[:classes_part]
            _publish_and_wait(counters, part, parts, sequence + layers + 3)
            for p in range(parts):
                params[p * classes_part : (p + 1) * classes_part] = exchange[p, layers + 2, :classes_part]
            if forcing:
                value = forced[b, s]
                prev_bin = forced_bins[b, s]
            elif is_mol:
                value = _sample_mol(
                    params, mixtures, temperature, log_scale_min, half_levels, noise[b, 0, s], noise[b, 1, s],
                    class_weights,
                )
            else:
                prev_bin = _inverse_cdf(params, 0, classes, temperature, noise[b, 0, s], class_weights)
                value = decode[prev_bin]
            prev_value = value
            if part == 0:
                out[b, s] = value
                if recording:
                    params_out[b, :, s] = params
        if part == 0:
            previous_bin[b] = prev_bin
            previous_value[b] = prev_value


class NumbaQueuedBackend:
    """Same contract as `TorchQueuedBackend`, for float32 models on the CPU."""

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
        self.queues = np.zeros((batch, self.parts, sum(spans), weights.residual_channels), np.float32)
        self.first_bin = 0 if self.is_mol else weights.silence_bin  # the input before a stream's first step
        self.previous_bin = np.full(batch, self.first_bin, np.int64)
        self.previous_value = np.zeros(batch, np.float32)
        if isinstance(distribution, DiscretizedLogisticMixture):
            half_levels = (distribution.num_bins - 1) / 2
            self.mol = (distribution.mixtures, np.float32(half_levels), distribution.log_scale_min)
        else:
            self.mol = (0, np.float32(0.0), 0.0)
        self.cpu = {name: getattr(weights, name).detach().cpu().numpy() for name in _WEIGHT_NAMES}
        self.decode = weights.decode_table.cpu().numpy() if len(weights.decode_table) else np.zeros(1, np.float32)
        self.counters = np.zeros(max(self.threads, 1) * _LINE, np.int64)
        self.layouts: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def _parts_for(self, batch: int) -> int:
        """How many cores share each stream: all of them for a lone stream (when its shapes split evenly)."""
        return self.threads if batch == 1 and _splittable(self.w, self.threads) else 1

    def _layout(self, parts: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(gate row order, weights pre-split into `parts` shares), built once per part count."""
        if parts not in self.layouts:
            cpu, L = self.cpu, self.w.num_layers
            gate_order = _gate_order(self.w.gate_channels, parts)
            conv = cpu["conv_w"][:, gate_order].reshape(L, parts, -1, cpu["conv_w"].shape[2])
            self.layouts[parts] = gate_order, {
                "embed": cpu["embed_table"],
                "conv_w": np.ascontiguousarray(conv.transpose(1, 0, 2, 3)),
                "res_skip_w": np.ascontiguousarray(np.stack(np.split(cpu["res_skip_w"], parts, axis=2))),
                "res_b": cpu["res_b"],
                "skip_b": cpu["skip_b"],
                "out1_w": np.ascontiguousarray(np.stack(np.split(cpu["out1_w"], parts))),
                "out1_b": cpu["out1_b"],
                "out2_w": np.ascontiguousarray(np.stack(np.split(cpu["out2_w"], parts))),
                "out2_b": cpu["out2_b"],
            }
        return self.layouts[parts]

    @property
    def batch(self) -> int:
        """How many streams the state holds."""
        return self.queues.shape[0]

    def add_streams(self, count: int) -> None:
        """Append `count` fresh streams: silence before them, their first sample at the next step.

        Every queue slot a new stream reads before writing it holds zeros, the same as a
        stream started at step 0, so its samples do not depend on when it joined.
        """
        _, parts, length, channels = self.queues.shape
        self.queues = np.concatenate([self.queues, np.zeros((count, parts, length, channels), np.float32)])
        self.previous_bin = np.concatenate([self.previous_bin, np.full(count, self.first_bin, np.int64)])
        self.previous_value = np.concatenate([self.previous_value, np.zeros(count, np.float32)])
        self._repartition()

    def keep_streams(self, indices: Sequence[int]) -> None:
        """Keep only the streams at `indices`, in that order (the others are dropped)."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.queues = np.ascontiguousarray(self.queues[index])
        self.previous_bin = self.previous_bin[index]
        self.previous_value = self.previous_value[index]
        self._repartition()

    def _repartition(self) -> None:
        """Re-split the state after the batch changed size: every part holds a full copy of the queues."""
        parts = self._parts_for(self.batch)
        if parts != self.parts:
            self.queues = np.ascontiguousarray(np.repeat(self.queues[:, :1], parts, axis=1))
            self.parts = parts

    def run(
        self,
        bias: Tensor,
        noise: Tensor | None,
        temperature: float | Sequence[float],
        forced: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """See `TorchQueuedBackend.run`."""
        batch = self.batch
        steps = forced.shape[1] if forced is not None else noise.shape[2]
        P, L = self.parts, self.w.num_layers
        gate_order, a = self._layout(P)
        classes = a["out2_b"].shape[0]
        bias_np = np.ascontiguousarray(bias.numpy()[..., gate_order].reshape(batch, bias.shape[1], L, P, -1))
        noise_np = noise.numpy() if noise is not None else np.zeros((batch, 2, 0), np.float32)
        forced_np = forced.float().numpy() if forced is not None else np.zeros((batch, 0), np.float32)
        if forced is not None and not self.is_mol:
            forced_bins = mulaw_encode(forced, len(self.decode)).numpy()
        else:
            forced_bins = np.zeros(forced_np.shape, np.int64)
        temperatures = np.broadcast_to(np.asarray(temperature, np.float32), (batch,)).copy()
        params = np.zeros((batch, classes, steps if forced is not None else 0), np.float32)
        out = np.empty((batch, steps), np.float32)
        mixtures, half_levels, log_scale_min = self.mol

        def work(part: int, first: int, last: int, exchange: np.ndarray) -> None:
            _run_part(
                part, P, first, last, self.t, steps, self.sync, self.is_mol, self.dilations,
                self.queue_offsets, self.w.kernel_size, a["embed"], a["conv_w"], bias_np,
                a["res_skip_w"], a["res_b"], a["skip_b"], np.float32(self.w.skip_scale),
                a["out1_w"], a["out1_b"], a["out2_w"], a["out2_b"], self.decode,
                mixtures, half_levels, np.float32(log_scale_min), temperatures,
                self.queues, self.previous_bin, self.previous_value, noise_np, forced_np, forced_bins, out, params,
                exchange, self.counters, np.float32(RESIDUAL_SCALE),
            )  # fmt: skip

        width = max(self.w.residual_channels, len(a["skip_b"]), classes)
        groups = 1 if P > 1 else max(1, min(batch, self.threads))
        exchanges = [np.zeros((P, L + 3, width), np.float32) for _ in range(groups)]
        if P > 1:
            jobs = [(part, 0, batch, exchanges[0]) for part in range(P)]
        else:
            bounds = np.linspace(0, batch, groups + 1).astype(int)
            jobs = [(0, bounds[g], bounds[g + 1], exchanges[g]) for g in range(groups)]
        with _SPLIT_LOCK if P > 1 else contextlib.nullcontext():
            futures = [_pool(len(jobs) - 1).submit(work, *job) for job in jobs[1:]]
            work(*jobs[0])
            for future in futures:
                future.result()
        self.t += steps
        self.sync += steps * (L + 3)
        return torch.from_numpy(out), (torch.from_numpy(params) if forced is not None else None)


_WEIGHT_NAMES = ("embed_table", "conv_w", "res_skip_w", "res_b", "skip_b", "out1_w", "out1_b", "out2_w", "out2_b")


def _splittable(weights: InferenceWeights, parts: int) -> bool:
    """Whether every split dimension divides evenly into `parts`."""
    dims = (weights.gate_channels // 2, weights.out1_w.shape[0], weights.out2_w.shape[0])
    return parts > 1 and all(d % parts == 0 for d in dims)


def _gate_order(gate: int, parts: int) -> np.ndarray:
    """Gate rows regrouped by part: part p's tanh rows, then its sigmoid rows, for p = 0, 1, ..."""
    half = gate // 2
    rows = np.arange(half).reshape(parts, -1)
    return np.concatenate([np.concatenate([r, r + half]) for r in rows])
