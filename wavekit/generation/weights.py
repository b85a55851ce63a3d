"""A WaveNet's weights laid out for sample-by-sample generation.

Both queued backends (eager torch and the fused numba kernel) read this one layout:
per-layer matrices stacked along a leading layer axis, the dilated convolution's taps
flattened oldest first, and the residual and skip 1x1s fused into one matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from wavekit.audio import mulaw_encode
from wavekit.model import WaveNet


def _residual(layer: torch.nn.Module) -> torch.nn.Conv1d:
    """The layer's residual 1x1, or a zero one for the last layer (whose residual output is unused)."""
    if layer.residual is not None:
        return layer.residual
    zero = torch.nn.Conv1d(layer.skip.in_channels, layer.conv.in_channels, 1).to(layer.skip.weight)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    return zero


@dataclass
class InferenceWeights:
    """Float32 tensors of one WaveNet, on one device, ready for incremental steps."""

    head: str  # "mulaw" or "mol"
    dilations: list[int]
    kernel_size: int
    embed_table: Tensor  # mulaw: [Q, R]; mol: [2, R] (weight row, bias row)
    conv_w: Tensor  # [L, G, K * R], tap j multiplies x[t - (K - 1 - j) * d]
    conv_b: Tensor  # [L, G]
    cond_w: Tensor | None  # [L * G, M]
    speaker_w: Tensor | None  # [L * G, E]
    res_skip_w: Tensor  # [L, R + S, G / 2]
    res_b: Tensor  # [L, R]
    skip_b: Tensor  # [S], summed over layers
    skip_scale: float
    out1_w: Tensor  # [S, S]
    out1_b: Tensor  # [S]
    out2_w: Tensor  # [C, S]
    out2_b: Tensor  # [C]
    decode_table: Tensor  # mulaw: audio value of every bin; mol: unused (empty)

    @property
    def silence_bin(self) -> int:
        """Mu-law bin of a zero sample: the input before the first step (mulaw head)."""
        return int(mulaw_encode(torch.zeros(()), len(self.decode_table)).item())

    @property
    def num_layers(self) -> int:
        return len(self.dilations)

    @property
    def residual_channels(self) -> int:
        return self.res_b.shape[1]

    @property
    def gate_channels(self) -> int:
        return self.conv_b.shape[1]

    @classmethod
    def from_model(cls, model: WaveNet) -> InferenceWeights:
        """Copy `model`'s weights (on its device) into the generation layout."""
        cfg = model.config
        layers = model.layers
        with torch.no_grad():

            def copy(t: Tensor) -> Tensor:  # a float32 copy that never aliases the live weights
                return t.detach().to(torch.float32, copy=True).contiguous()

            def stack(fn) -> Tensor:
                return copy(torch.stack([fn(layer) for layer in layers]))

            if cfg.head == "mulaw":
                embed = model.embed.weight
                decode = model.distribution.bin_centers().to(embed.device)
            else:
                embed = torch.stack([model.embed.weight[:, 0, 0], model.embed.bias])
                decode = torch.empty(0, device=embed.device)
            conv_w = stack(lambda l: l.conv.weight.permute(0, 2, 1).reshape(l.conv.out_channels, -1))
            cond_w = copy(torch.cat([l.cond.weight[:, :, 0] for l in layers])) if cfg.mel_channels else None
            speaker_w = copy(torch.cat([l.speaker.weight for l in layers])) if cfg.num_speakers else None
            return cls(
                head=cfg.head,
                dilations=list(cfg.dilations),
                kernel_size=cfg.kernel_size,
                embed_table=copy(embed),
                conv_w=conv_w,
                conv_b=stack(lambda l: l.conv.bias),
                cond_w=cond_w,
                speaker_w=speaker_w,
                res_skip_w=stack(lambda l: torch.cat([_residual(l).weight[:, :, 0], l.skip.weight[:, :, 0]])),
                res_b=stack(lambda l: _residual(l).bias),
                skip_b=stack(lambda l: l.skip.bias).sum(0),
                skip_scale=math.sqrt(1.0 / len(layers)),
                out1_w=copy(model.out1.weight[:, :, 0]),
                out1_b=copy(model.out1.bias),
                out2_w=copy(model.out2.weight[:, :, 0]),
                out2_b=copy(model.out2.bias),
                decode_table=copy(decode),
            )

    def static_bias(self, speaker_embedding: Tensor | None, batch: int) -> Tensor:
        """Gate bias that is constant over time, [B, 1, L, G]: conv bias + speaker term."""
        L, G = self.conv_b.shape
        bias = self.conv_b.reshape(1, 1, L, G).expand(batch, 1, L, G)
        if speaker_embedding is not None:
            bias = bias + (speaker_embedding.float() @ self.speaker_w.T).reshape(batch, 1, L, G)
        return bias.contiguous()

    def mel_bias(self, cond: Tensor) -> Tensor:
        """Per-step gate bias of the upsampled mel `cond` [B, M, T'], [B, T', L, G]: one product for every layer."""
        L, G = self.conv_b.shape
        return torch.einsum("km,bmt->btk", self.cond_w, cond.float()).reshape(cond.shape[0], cond.shape[2], L, G)
