"""Sampling audio from a WaveNet: `generate`, `stream` and the naive reference.

`stream` runs the Fast WaveNet queued algorithm (Paine et al. 2016) over a batch of
independent streams and yields audio chunks as they are produced; `generate` collects
them. On the CPU a fused numba kernel runs the per-sample loop (backend "numba"); the
eager PyTorch backend ("torch") serves other devices. A fused Triton kernel ("triton")
is there for CUDA devices on request, not yet by default (see its module). Stream b draws
its noise from its own generator seeded with `seed + b`, so its samples do not depend
on which other streams share the batch. Its noise does not depend on the backend either;
its samples do only where a uniform lands within rounding of a bin edge, since the
backends sum in different orders.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wavekit.checks import positive_int
from wavekit.distributions import OutputDistribution
from wavekit.generation.backend import QueuedBackend
from wavekit.generation.numba_backend import NumbaQueuedBackend
from wavekit.generation.torch_backend import TorchQueuedBackend
from wavekit.generation.weights import InferenceWeights
from wavekit.model import ConditioningUpsampler, WaveNet

__all__ = ["generate", "stream", "naive_generate", "teacher_forced_params", "BACKENDS"]


def _triton_backend(weights: InferenceWeights, distribution: OutputDistribution, batch: int) -> QueuedBackend:
    """The Triton backend, imported when first asked for: triton is heavy, and its kernel
    decorator reads TRITON_INTERPRET (the CPU interpreter the tests use) at import."""
    try:
        from wavekit.generation.triton_backend import TritonQueuedBackend
    except ImportError as err:
        raise ValueError(f"backend: 'triton' needs the triton package ({err}); pip install triton") from None

    return TritonQueuedBackend(weights, distribution, batch)


BACKENDS = {"torch": TorchQueuedBackend, "numba": NumbaQueuedBackend, "triton": _triton_backend}
SPAN_BUDGET = 1 << 22  # floats a backend holds at once for a span of mel-conditioned steps
MAX_SEED = 2**63 - 1  # stream b seeds torch.Generator with seed + b, an int64
CHUNK_SIZE = 16000  # samples per chunk `stream` yields by default

Progress = bool | Callable[[int, int], None]


@dataclass
class _Batch:
    """A validated batch of streams, ready for any generator."""

    lengths: list[int]
    mel: Tensor | None  # mel frames [B, M, F], each stream's zero padded to the longest
    mel_frames: list[int]  # each stream's own number of frames
    upsampler: ConditioningUpsampler | None
    speaker_embedding: Tensor | None  # [B, E]
    generators: list[torch.Generator]
    temperature: float

    @property
    def size(self) -> int:
        return len(self.lengths)

    @property
    def total(self) -> int:
        return max(self.lengths)

    def cond(self, start: int, stop: int) -> Tensor | None:
        """The upsampled mel of steps [start, stop), [B, M, stop - start], or None without a mel.

        Upsampled span by span from just the frames a span depends on, so memory follows
        the span, not the utterance; bit for bit a slice of the whole upsampled mel. Mels
        of different lengths are upsampled one by one (zeros past a stream's own end), so
        padding never smooths into a shorter stream.
        """
        if self.mel is None:
            return None
        with torch.no_grad():
            if len(set(self.mel_frames)) == 1:
                return self.upsampler.window(self.mel, start, stop)
            cond = self.mel.new_zeros(self.size, self.mel.shape[1], stop - start)
            hop = self.upsampler.hop
            for b, frames in enumerate(self.mel_frames):
                end = min(stop, frames * hop)
                if start < end:
                    cond[b, :, : end - start] = self.upsampler.window(self.mel[b, :, :frames], start, end)
            return cond

    def noise(self, channels: int, steps: int, device: torch.device) -> Tensor:
        """The next `steps` uniforms of every stream: [B, channels, steps]."""
        draws = [torch.rand(steps, channels, generator=g) for g in self.generators]
        return torch.stack(draws).transpose(1, 2).contiguous().to(device)

    def mask(self, audio: Tensor, start: int) -> Tensor:
        """Zero the samples of `audio` [B, steps] (starting at `start`) past each stream's length."""
        positions = torch.arange(start, start + audio.shape[1], device=audio.device)
        lengths = torch.tensor(self.lengths, device=audio.device).unsqueeze(1)
        return audio.masked_fill(positions >= lengths, 0.0)


def _speaker_count(speaker: int | str | Sequence[int | str] | Tensor) -> int:
    """How many streams `speaker` (an id or name, or one per stream: a list, array or tensor) gives one each."""
    if isinstance(speaker, str):
        return 1
    if isinstance(speaker, Tensor):
        return speaker.numel()
    return len(speaker) if isinstance(speaker, (list, tuple, range)) else int(np.size(speaker))


def _batch_size(batch_size: int, *sizes: int | None) -> int:
    positive_int("batch_size", batch_size)
    given = {s for s in sizes if s is not None and s > 1}
    if batch_size > 1:
        given.add(batch_size)
    if len(given) > 1:
        raise ValueError(f"batch_size: mel, speaker, num_samples and batch_size disagree on the batch ({sorted(given)})")
    return given.pop() if given else 1


def _prepare(
    model: WaveNet,
    num_samples: int | Sequence[int] | None,
    mel: Tensor | Sequence[Tensor] | None,
    speaker: int | str | Sequence[int | str] | Tensor | None,
    batch_size: int,
    temperature: float,
    seed: int | None,
) -> _Batch:
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise ValueError(f"temperature: must be a finite number > 0, got {temperature!r}")
    hop, channels = model.config.hop_length, model.config.mel_channels
    if mel is not None and not isinstance(mel, (Tensor, list, tuple)):
        raise ValueError(f"mel: expected a tensor [B, M, frames] or [M, frames], or a list, got {type(mel).__name__}")
    mel_list = None
    if isinstance(mel, (list, tuple)):
        if num_samples is not None:
            raise ValueError("num_samples: leave it out when mel is a list (each mel sets its stream's length)")
        for i, m in enumerate(mel):
            if not isinstance(m, Tensor) or m.dim() != 2 or m.shape[0] != channels or m.shape[1] == 0:
                shape = list(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"mel[{i}]: expected [{channels}, frames >= 1], got {shape}")
        if not mel:
            raise ValueError("mel: the list is empty")
        mel_list, num_samples = list(mel), [m.shape[1] * hop for m in mel]
        frames = max(m.shape[1] for m in mel)
        mel = torch.stack([F.pad(m, (0, frames - m.shape[1])) for m in mel])
    lengths = None
    if isinstance(num_samples, (list, tuple)):
        if not num_samples:
            raise ValueError("num_samples: the list is empty")
        lengths = [positive_int(f"num_samples[{i}]", n) for i, n in enumerate(num_samples)]
        num_samples = max(lengths)
    mel_batch = mel.shape[0] if mel is not None and mel.dim() == 3 else None
    speaker_batch = _speaker_count(speaker) if speaker is not None else None
    batch = _batch_size(batch_size, mel_batch, speaker_batch, len(lengths) if lengths else None)
    total, mel, speaker = model.check_conditioning(batch, num_samples, mel, speaker)
    lengths = lengths if lengths and len(lengths) == batch else [total] * batch
    with torch.no_grad():
        _, speaker_embedding = model.conditioning(None, speaker)
    if mel_list is not None:
        mel_frames = [m.shape[1] for m in mel_list]
    else:
        mel_frames = [mel.shape[2] if mel is not None else 0] * batch
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED - batch:
        raise ValueError(f"seed: must be an integer from 0 to 2^63 - 1 - batch size, got {seed!r}")
    generators = [torch.Generator().manual_seed(seed + b) for b in range(batch)]
    return _Batch(lengths, mel, mel_frames, model.upsampler, speaker_embedding, generators, float(temperature))


def _backend_name(name: str, device: torch.device) -> str:
    """Resolve `name` ("auto": numba on the CPU, torch elsewhere, or a key of BACKENDS) for `device`."""
    if name == "auto":
        name = "numba" if device.type == "cpu" else "torch"
    if name not in BACKENDS:
        raise ValueError(f"backend: must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")
    if name == "numba" and device.type != "cpu":
        raise ValueError(f"backend: 'numba' runs on the CPU, the model is on {device}")
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend: 'triton' runs on CUDA (or under TRITON_INTERPRET=1), the model is on {device}")
    return name


def _backend(model: WaveNet, weights: InferenceWeights, batch: int, name: str) -> QueuedBackend:
    name = _backend_name(name, weights.conv_w.device)
    return BACKENDS[name](weights, model.distribution, batch)


def _spans(batch: _Batch, per_step: int, start: int, stop: int) -> Iterator[tuple[int, int, Tensor | None]]:
    """(span start, span stop, upsampled mel of the span or None) pieces covering [start, stop).

    With a mel, spans hold at most SPAN_BUDGET floats at `per_step` floats per step (the
    backend's `floats_per_step`).
    """
    if batch.mel is None:
        yield start, stop, None
        return
    step = max(1, SPAN_BUDGET // per_step)
    for a in range(start, stop, step):
        b = min(stop, a + step)
        yield a, b, batch.cond(a, b)


def _progress_callback(
    progress: Progress, total: int, batch: int, sample_rate: int
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(update(done), close()) for a bool (a bar with samples/s and real-time factor) or a callback(done, total)."""
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    if not progress:
        return (lambda done: None), (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="sample", unit_scale=True, desc=f"generating {batch} stream(s)")
    started = time.perf_counter()

    def update(done: int) -> None:
        bar.update(done - bar.n)
        rate = done * batch / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{rate:,.0f} samples/s in all, {rate / sample_rate:.1f}x real time")

    return update, bar.close


def stream(
    model: WaveNet,
    num_samples: int | Sequence[int] | None = None,
    *,
    mel: Tensor | Sequence[Tensor] | None = None,
    speaker: int | str | Sequence[int | str] | Tensor | None = None,
    batch_size: int = 1,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: Progress = False,
    chunk_size: int = CHUNK_SIZE,
    backend: str = "auto",
) -> Iterator[Tensor]:
    """Yield audio chunks [B, <= chunk_size] in [-1, 1] as the queued sampler produces them.

    `num_samples` is one length or one per stream; with `mel` ([M, F], [B, M, F] or a
    list of [M, F_b]) each stream's length is its frames x hop. `speaker` is one id or
    name (`config.speaker_names`), or one per stream. Samples past a stream's length are
    zeros. `progress` is True for a progress bar or a callback(done, total). Bad arguments
    raise ValueError naming them.
    """
    positive_int("chunk_size", chunk_size)
    batch = _prepare(model, num_samples, mel, speaker, batch_size, temperature, seed)
    weights = InferenceWeights.from_model(model)
    runner = _backend(model, weights, batch.size, backend)
    return _chunks(batch, weights, runner, model.distribution.noise_channels, chunk_size, progress, model.config.sample_rate)


def _chunks(
    batch: _Batch,
    weights: InferenceWeights,
    runner,
    noise_channels: int,
    chunk_size: int,
    progress: Progress,
    sample_rate: int,
) -> Iterator[Tensor]:
    """The generator behind `stream`, started only after every argument was checked."""
    update, close = _progress_callback(progress, batch.total, batch.size, sample_rate)
    bias = weights.static_bias(batch.speaker_embedding, batch.size)
    try:
        for start in range(0, batch.total, chunk_size):
            stop = min(batch.total, start + chunk_size)
            pieces = []
            for a, b, cond in _spans(batch, runner.floats_per_step(weights, batch.size), start, stop):
                noise = batch.noise(noise_channels, b - a, bias.device)
                pieces.append(runner.run(bias, noise, batch.temperature, cond=cond)[0])
            update(stop)
            yield batch.mask(torch.cat(pieces, dim=1), start)
    finally:
        close()


def generate(
    model: WaveNet,
    num_samples: int | Sequence[int] | None = None,
    *,
    mel: Tensor | Sequence[Tensor] | None = None,
    speaker: int | str | Sequence[int | str] | Tensor | None = None,
    batch_size: int = 1,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: Progress = False,
    backend: str = "auto",
) -> Tensor:
    """Generate audio [B, T] in [-1, 1] with the queued sampler; arguments as in `stream`."""
    chunks = stream(
        model, num_samples, mel=mel, speaker=speaker, batch_size=batch_size,
        temperature=temperature, seed=seed, progress=progress, backend=backend,
    )  # fmt: skip
    return torch.cat(list(chunks), dim=1)


@torch.no_grad()
def teacher_forced_params(
    model: WaveNet, audio: Tensor, *, mel: Tensor | None = None, speaker=None, backend: str = "auto"
) -> Tensor:
    """Per-step distribution params [B, C, T] of the queued sampler fed `audio` [B, T].

    Must equal `model.predict(audio, mel, speaker)`: the check that a backend is exact.
    """
    batch = _prepare(model, audio.shape[1], mel, speaker, audio.shape[0], 1.0, 0)
    weights = InferenceWeights.from_model(model)
    runner = _backend(model, weights, batch.size, backend)
    bias = weights.static_bias(batch.speaker_embedding, batch.size)
    params = []
    for a, b, cond in _spans(batch, runner.floats_per_step(weights, batch.size), 0, batch.total):
        params.append(runner.run(bias, None, 1.0, forced=audio[:, a:b].to(bias.device, bias.dtype), cond=cond)[1])
    return torch.cat(params, dim=2)


@torch.no_grad()
def naive_generate(
    model: WaveNet,
    num_samples: int | Sequence[int] | None = None,
    *,
    mel: Tensor | Sequence[Tensor] | None = None,
    speaker: int | str | Sequence[int | str] | Tensor | None = None,
    batch_size: int = 1,
    temperature: float = 1.0,
    seed: int | None = None,
) -> Tensor:
    """Reference sampler: a full forward pass over the receptive field for every sample.

    O(receptive field) per sample; kept for tests and benchmarks. Same noise as `generate`.
    """
    if model.training:
        raise ValueError("model: switch it to eval mode (model.eval()) before generating")
    batch = _prepare(model, num_samples, mel, speaker, batch_size, temperature, seed)
    device = next(model.parameters()).device
    field = model.receptive_field
    previous = torch.zeros(batch.size, batch.total + 1, device=device)  # previous[:, t] precedes step t
    noise = batch.noise(model.distribution.noise_channels, batch.total, device)
    for t in range(batch.total):
        start = max(0, t - field + 1)
        cond = batch.cond(start, t + 1)
        params = model(previous[:, start : t + 1], cond, batch.speaker_embedding)[:, :, -1]
        previous[:, t + 1] = model.distribution.sample_from_uniform(params, noise[:, :, t], batch.temperature)
    return batch.mask(previous[:, 1:], 0)
