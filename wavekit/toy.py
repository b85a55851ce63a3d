"""The embedded default job: a periodic test signal, a tiny WaveNet and a minimal training loop.

Used by the README quickstart and the test-suite to show, in well under a minute on
a CPU, that a WaveNet learns to predict a waveform it has seen. The full trainer
lives elsewhere; this loop is deliberately bare.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wavekit.model import WaveNet, WaveNetConfig

__all__ = ["periodic_signal", "toy_config", "train", "bits_per_sample"]

FUNDAMENTAL_HZ = 400.0
HARMONIC_AMPLITUDES = (1.0, 0.5, 0.25)
PEAK = 0.6


def periodic_signal(num_samples: int, sample_rate: int = 16000, seed: int = 0) -> Tensor:
    """A float32 [num_samples] sum of three harmonics of ~400 Hz with peak amplitude 0.6.

    The period is a whole number of samples (40 at 16 kHz) and the phase is computed from
    `t mod period`, so the signal repeats exactly. `seed` picks the harmonics' phases.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    period = max(2, round(sample_rate / FUNDAMENTAL_HZ))
    generator = torch.Generator().manual_seed(seed)
    phases = torch.rand(len(HARMONIC_AMPLITUDES), generator=generator, dtype=torch.float64) * 2 * math.pi
    angle = 2 * math.pi * torch.arange(period, dtype=torch.float64) / period
    one_period = sum(
        a * torch.sin((k + 1) * angle + phase) for k, (a, phase) in enumerate(zip(HARMONIC_AMPLITUDES, phases))
    )
    one_period = one_period * (PEAK / one_period.abs().max())
    return one_period.repeat(num_samples // period + 1)[:num_samples].to(torch.float32)


def toy_config() -> WaveNetConfig:
    """A tiny unconditioned mu-law WaveNet (receptive field 256 samples) that trains on a CPU."""
    return WaveNetConfig(
        layers=8, stacks=1, residual_channels=32, gate_channels=64, skip_channels=64, head="mulaw"
    )


def train(
    model: WaveNet,
    audio: Tensor,
    steps: int,
    *,
    segment: int = 1024,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 0,
) -> list[float]:
    """Fit an unconditioned `model` to random segments of `audio` [T] with Adam.

    Minimises the negative mean `model.log_prob`, clipping the gradient norm at 1.
    Segment offsets come from a generator seeded with `seed`. Prints the loss every
    `log_every` steps when positive. Returns the loss of every step in bits per sample;
    the model is left in eval mode.
    """
    if audio.dim() != 1:
        raise ValueError(f"audio: expected a 1-D tensor, got shape {list(audio.shape)}")
    device = next(model.parameters()).device
    audio = audio.to(device=device, dtype=torch.float32)
    segment = min(segment, audio.numel())
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    window = torch.arange(segment)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        offsets = torch.randint(0, audio.numel() - segment + 1, (batch_size, 1), generator=generator)
        batch = audio[(offsets + window).to(device)]
        loss = -model.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item() / math.log(2))
        if log_every > 0 and step % log_every == 0:
            print(f"step {step}/{steps}: {losses[-1]:.3f} bits/sample", flush=True)
    model.eval()
    return losses


def bits_per_sample(model: WaveNet, audio: Tensor) -> float:
    """Negative mean log-likelihood of `audio` [T] or [B, T] in bits per sample, in eval mode."""
    device = next(model.parameters()).device
    batch = audio.to(device=device, dtype=torch.float32)
    if batch.dim() == 1:
        batch = batch.unsqueeze(0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        nll = -model.log_prob(batch).mean().item()
    model.train(was_training)
    return nll / math.log(2)
