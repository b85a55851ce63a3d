"""Fast WaveNet queued generation in eager PyTorch (any device, any batch).

Every dilated layer keeps a ring buffer of its last `dilation * (kernel_size - 1)` inputs,
so one step costs O(layers) small matrix products instead of a pass over the whole
receptive field. This is the portable path: the GPU's, and the reference the CPU
kernel (`numba_backend`) is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wavekit.audio import mulaw_encode
from wavekit.distributions import OutputDistribution
from wavekit.generation.backend import QueuedBackend
from wavekit.generation.weights import InferenceWeights
from wavekit.model import RESIDUAL_SCALE


class TorchQueuedBackend(QueuedBackend):
    """The backend in eager PyTorch, on the weights' device."""

    def __init__(self, weights: InferenceWeights, distribution: OutputDistribution, batch: int):
        self.w = weights
        self.distribution = distribution
        self.t = 0
        device = weights.conv_w.device
        R = weights.residual_channels
        self.queues = [
            torch.zeros(batch, d * (weights.kernel_size - 1), R, device=device) for d in weights.dilations
        ]
        self.previous = self._first_inputs(batch)

    def _first_inputs(self, count: int) -> Tensor:
        """The input before the first step of `count` streams: silence."""
        device = self.w.conv_w.device
        if self.w.head == "mulaw":
            return torch.full((count,), self.w.silence_bin, dtype=torch.long, device=device)
        return torch.zeros(count, device=device)

    @staticmethod
    def floats_per_step(weights: InferenceWeights, streams: int) -> int:
        return streams * weights.conv_b.numel()  # the per-step gate bias [B, T', L, G]

    @property
    def batch(self) -> int:
        return self.previous.shape[0]

    def add_streams(self, count: int) -> None:
        self.queues = [torch.cat([q, q.new_zeros(count, *q.shape[1:])]) for q in self.queues]
        self.previous = torch.cat([self.previous, self._first_inputs(count)])

    def keep_streams(self, indices: Sequence[int]) -> None:
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.previous.device)
        self.queues = [q.index_select(0, index) for q in self.queues]
        self.previous = self.previous.index_select(0, index)

    def _embed(self) -> Tensor:
        if self.w.head == "mulaw":
            return self.w.embed_table[self.previous]
        return self.previous.unsqueeze(1) * self.w.embed_table[0] + self.w.embed_table[1]

    def _set_previous(self, audio: Tensor) -> None:
        self.previous = mulaw_encode(audio, len(self.w.decode_table)) if self.w.head == "mulaw" else audio

    @torch.no_grad()
    def step_params(self, bias: Tensor) -> Tensor:
        """One step of the network for every stream: gate bias [B, L, G] -> params [B, C]."""
        w = self.w
        R, G, K = w.residual_channels, w.gate_channels, w.kernel_size
        half = G // 2
        x = self._embed()
        skips = w.skip_b.expand(x.shape[0], -1).clone()
        for l, (d, queue) in enumerate(zip(w.dilations, self.queues)):
            span = queue.shape[1]
            slot = self.t % span
            h = torch.addmm(bias[:, l], x, w.conv_w[l, :, (K - 1) * R :].T)
            for j in range(K - 1):  # tap j holds x[t - (K - 1 - j) * d]
                tap = queue[:, (self.t - (K - 1 - j) * d) % span]
                h.addmm_(tap, w.conv_w[l, :, j * R : (j + 1) * R].T)
            queue[:, slot] = x
            z = torch.tanh(h[:, :half]) * torch.sigmoid(h[:, half:])
            res_skip = z @ w.res_skip_w[l].T
            x = (x + res_skip[:, :R] + w.res_b[l]) * RESIDUAL_SCALE
            skips += res_skip[:, R:]
        h = torch.relu(skips * w.skip_scale)
        h = torch.relu(torch.addmm(w.out1_b, h, w.out1_w.T))
        self.t += 1
        return torch.addmm(w.out2_b, h, w.out2_w.T)

    def run(
        self,
        bias: Tensor,
        noise: Tensor | None,
        temperature: float | Sequence[float],
        forced: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        steps = forced.shape[1] if forced is not None else noise.shape[2]
        if cond is not None:
            bias = bias + self.w.mel_bias(cond)
        out = torch.empty(bias.shape[0], steps, device=bias.device)
        params = [] if forced is not None else None
        groups = self._temperature_groups(temperature, bias.shape[0], bias.device)
        for s in range(steps):
            p = self.step_params(bias[:, s if bias.shape[1] > 1 else 0])
            if forced is not None:
                params.append(p)
                sample = forced[:, s]
            elif len(groups) == 1:
                sample = self.distribution.sample_from_uniform(p, noise[:, :, s], groups[0][0])
            else:  # each row sampled on its own: the same draw as in a batch of one temperature
                sample = torch.empty(p.shape[0], device=p.device)
                for value, rows in groups:
                    sample[rows] = self.distribution.sample_from_uniform(p[rows], noise[rows, :, s], value)
            out[:, s] = sample
            self._set_previous(sample)
        return out, (torch.stack(params, dim=2) if params is not None else None)

    @staticmethod
    def _temperature_groups(
        temperature: float | Sequence[float], batch: int, device: torch.device
    ) -> list[tuple[float, Tensor | None]]:
        """[(temperature, row indices)] with one entry per distinct value (rows None: all of them)."""
        if isinstance(temperature, (int, float)):
            return [(float(temperature), None)]
        values = [float(t) for t in temperature]
        if len(values) != batch:
            raise ValueError(f"temperature: {len(values)} values for {batch} streams")
        if len(set(values)) == 1:
            return [(values[0], None)]
        return [
            (v, torch.tensor([i for i, x in enumerate(values) if x == v], device=device)) for v in sorted(set(values))
        ]
