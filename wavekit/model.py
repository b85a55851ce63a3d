"""The WaveNet network: dilated causal convolutions, gated units, residual and skip paths.

`WaveNetConfig` is the whole description of a model; it travels with the weights
(`WaveNet.save` / `WaveNet.from_file`), so a saved model reloads with nothing else.
Conditioning: a log-mel spectrogram upsampled to the sample rate (local) and a speaker
or instrument embedding added in every layer (global).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavekit.audio import AudioError, load, log_mel, mulaw_encode
from wavekit.checks import positive_int
from wavekit.distributions import DiscretizedLogisticMixture, MuLawCategorical, OutputDistribution

HEADS = ("mulaw", "mol")
RESIDUAL_SCALE = math.sqrt(0.5)  # keeps the residual stream's variance steady across layers


@dataclass
class WaveNetConfig:
    """Hyper-parameters of a WaveNet; `WaveNet(config)` builds the network.

    Layer i has dilation 2 ** (i % (layers // stacks)). `head` picks the output
    distribution: "mulaw" (softmax over `mulaw_channels` mu-law bins) or "mol"
    (discretized mixture of `mixtures` logistics over `bits`-bit audio).
    `mel_channels` > 0 enables local conditioning on a log-mel spectrogram with
    hop `prod(upsample_scales)`; `num_speakers` > 0 enables global conditioning.
    """

    layers: int = 20
    stacks: int = 2
    kernel_size: int = 2
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 256
    dropout: float = 0.0
    head: str = "mulaw"
    mulaw_channels: int = 256
    mixtures: int = 10
    bits: int = 16
    log_scale_min: float = -7.0
    sample_rate: int = 16000
    mel_channels: int = 0
    upsample_scales: tuple[int, ...] = (4, 4, 4, 4)
    n_fft: int = 1024
    fmin: float = 0.0
    fmax: float | None = None
    num_speakers: int = 0
    speaker_channels: int = 16
    speaker_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), {"int": "an integer", "float": "a number"}.get(f.type)
            number = numbers.Integral if f.type == "int" else numbers.Real
            if kind is not None and (isinstance(value, bool) or not isinstance(value, number)):
                raise ValueError(f"WaveNetConfig.{f.name} must be {kind}, got {value!r}")
        if any(isinstance(s, bool) or s != int(s) for s in self.upsample_scales):
            raise ValueError(f"WaveNetConfig.upsample_scales must be integers, got {self.upsample_scales}")
        self.upsample_scales = tuple(int(s) for s in self.upsample_scales)
        self.speaker_names = tuple(str(s) for s in self.speaker_names)
        positive = (
            "layers", "stacks", "residual_channels", "gate_channels", "skip_channels", "sample_rate",
            "mixtures", "speaker_channels", "n_fft",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"WaveNetConfig.{name} must be positive, got {getattr(self, name)}")
        if self.layers % self.stacks:
            raise ValueError(f"WaveNetConfig.layers ({self.layers}) must be a multiple of stacks ({self.stacks})")
        if self.kernel_size < 2:
            raise ValueError(f"WaveNetConfig.kernel_size must be >= 2, got {self.kernel_size}")
        if self.gate_channels % 2:
            raise ValueError(f"WaveNetConfig.gate_channels must be even, got {self.gate_channels}")
        if self.mulaw_channels < 2:
            raise ValueError(f"WaveNetConfig.mulaw_channels must be >= 2, got {self.mulaw_channels}")
        if not 1 <= self.bits <= 24:
            raise ValueError(f"WaveNetConfig.bits must be in [1, 24], got {self.bits}")
        if self.head not in HEADS:
            raise ValueError(f"WaveNetConfig.head must be one of {HEADS}, got {self.head!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"WaveNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.mel_channels < 0 or self.num_speakers < 0:
            raise ValueError("WaveNetConfig.mel_channels and num_speakers must be >= 0")
        if any(s < 1 for s in self.upsample_scales):
            raise ValueError(f"WaveNetConfig.upsample_scales must be positive, got {self.upsample_scales}")
        if not math.isfinite(self.log_scale_min):
            raise ValueError(f"WaveNetConfig.log_scale_min must be finite, got {self.log_scale_min}")
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        if self.mel_channels and not 0 <= self.fmin < fmax <= self.sample_rate / 2:
            raise ValueError(
                f"WaveNetConfig.fmin/fmax must satisfy 0 <= fmin < fmax <= sample_rate / 2, "
                f"got {self.fmin} and {self.fmax} at {self.sample_rate} Hz"
            )
        if self.speaker_names and len(self.speaker_names) != self.num_speakers:
            raise ValueError(
                f"WaveNetConfig.speaker_names has {len(self.speaker_names)} names for {self.num_speakers} speakers"
            )
        if len(set(self.speaker_names)) < len(self.speaker_names):
            repeated = sorted({s for s in self.speaker_names if self.speaker_names.count(s) > 1})
            raise ValueError(f"WaveNetConfig.speaker_names repeats {', '.join(map(repr, repeated))}")

    @property
    def dilations(self) -> list[int]:
        """Dilation of every residual layer, in order."""
        cycle = self.layers // self.stacks
        return [2 ** (i % cycle) for i in range(self.layers)]

    @property
    def hop_length(self) -> int:
        """Samples per conditioning frame."""
        return math.prod(self.upsample_scales)

    @property
    def receptive_field(self) -> int:
        """How many past samples can influence the prediction of the next one."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    @property
    def flops_per_sample(self) -> int:
        """Floating-point operations (2 per multiply-add) to generate one sample incrementally.

        The matrix products of one step: every layer's dilated conv, mel term and skip 1x1,
        every layer's but the last's residual 1x1, and the output head. (The speaker term is
        constant over a stream, and the input embedding a table lookup.)
        """
        half = self.gate_channels // 2
        layer = (self.kernel_size * self.residual_channels + self.mel_channels) * self.gate_channels
        layer += half * self.skip_channels
        residuals = (self.layers - 1) * half * self.residual_channels
        params = self.mulaw_channels if self.head == "mulaw" else 3 * self.mixtures
        head = self.skip_channels * (self.skip_channels + params)
        return 2 * (self.layers * layer + residuals + head)

    def build_distribution(self) -> OutputDistribution:
        """The output distribution this config's head describes."""
        if self.head == "mulaw":
            return MuLawCategorical(self.mulaw_channels)
        return DiscretizedLogisticMixture(self.mixtures, self.bits, self.log_scale_min)

    def mel(self, audio: Tensor) -> Tensor:
        """Log-mel features of `audio` [..., T] as this model expects them: [..., mel_channels, T // hop]."""
        if not self.mel_channels:
            raise ValueError("this model takes no mel conditioning (mel_channels = 0)")
        return log_mel(audio, self.sample_rate, self.mel_channels, self.hop_length, self.n_fft, self.fmin, self.fmax)

    def load_audio(self, path: str | os.PathLike) -> tuple[Tensor, Tensor | None]:
        """The audio of `path` [T] at this model's rate and, for a mel model, its log-mel [M, F].

        A mel model's audio is cut to whole frames (trailing samples have no frame). Raises
        AudioError naming `path` for unreadable audio or, for a mel model, audio shorter
        than one frame.
        """
        audio = load(path, self.sample_rate)
        if not self.mel_channels:
            return audio, None
        if len(audio) < self.hop_length:
            raise AudioError(f"{path}: {len(audio)} samples, shorter than one mel frame ({self.hop_length} samples)")
        mel = self.mel(audio)
        return audio[: mel.shape[-1] * self.hop_length], mel

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> WaveNetConfig:
        """Inverse of `to_dict`; an unknown key raises ValueError naming it."""
        if not isinstance(values, dict):
            raise ValueError(f"WaveNetConfig: expected a mapping of fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown WaveNetConfig keys: {', '.join(unknown)}")
        return cls(**values)


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution that sees only the present and the past (left zero padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_padding = dilation * (kernel_size - 1)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))


class ResidualLayer(nn.Module):
    """One gated layer: dilated conv + conditioning, tanh * sigmoid, then residual and skip 1x1s.

    The last layer has no residual 1x1: nothing reads its residual output.
    """

    def __init__(self, config: WaveNetConfig, dilation: int, last: bool = False):
        super().__init__()
        gate, half = config.gate_channels, config.gate_channels // 2
        self.dilation = dilation
        self.dropout = nn.Dropout(config.dropout)
        self.conv = CausalConv1d(config.residual_channels, gate, config.kernel_size, dilation)
        self.cond = nn.Conv1d(config.mel_channels, gate, 1, bias=False) if config.mel_channels else None
        self.speaker = nn.Linear(config.speaker_channels, gate, bias=False) if config.num_speakers else None
        self.skip = nn.Conv1d(half, config.skip_channels, 1)
        self.residual = None if last else nn.Conv1d(half, config.residual_channels, 1)

    def forward(self, x: Tensor, cond: Tensor | None, speaker: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.conv(self.dropout(x))
        if self.cond is not None:
            h = h + self.cond(cond)
        if self.speaker is not None:
            h = h + self.speaker(speaker).unsqueeze(-1)
        a, b = h.chunk(2, dim=1)
        z = torch.tanh(a) * torch.sigmoid(b)
        if self.residual is not None:
            x = (x + self.residual(z)) * RESIDUAL_SCALE
        return x, self.skip(z)


class ConditioningUpsampler(nn.Module):
    """Mel frames to samples: per scale, a nearest-neighbour stretch then a smoothing convolution.

    The stretch by s followed by a (2s + 1)-tap smoothing sees at most three frames per
    output sample, so it is computed in polyphase form: output sample f * s + r is
    frames f - 1, f, f + 1 weighted by three sums of the smoothing taps (zero frames
    beyond the ends, as the convolution's zero padding). That is 3 multiply-adds per
    sample instead of 2s + 1 (9 at s = 4) and one pass over the output. The taps live in
    `smoothers` (Conv2d(1, 1, (1, 2s + 1)) modules, so checkpoints keep their keys).
    """

    def __init__(self, scales: tuple[int, ...]):
        super().__init__()
        self.scales = scales
        self.smoothers = nn.ModuleList()
        for scale in scales:
            conv = nn.Conv2d(1, 1, (1, 2 * scale + 1), padding=(0, scale), bias=False)
            nn.init.constant_(conv.weight, 1.0 / (2 * scale + 1))
            self.smoothers.append(conv)

    @staticmethod
    def _phase_weights(taps: Tensor, scale: int) -> Tensor:
        """[3, scale]: how much frames f - 1, f and f + 1 weigh in output sample f * scale + r."""
        offsets = torch.arange(-scale, scale + 1, device=taps.device)  # tap j reads stretched sample t + j
        phases = torch.arange(scale, device=taps.device)
        frame = torch.div(phases[None, :] + offsets[:, None], scale, rounding_mode="floor")  # -1, 0 or 1
        which = F.one_hot(frame + 1, 3).to(taps.dtype)  # [taps, scale, 3]
        return torch.einsum("j,jrk->kr", taps, which)

    @property
    def hop(self) -> int:
        """Samples per frame."""
        return math.prod(self.scales)

    def _stage(self, c: Tensor, scale: int, smooth: nn.Module, left: Tensor | None, right: Tensor | None) -> Tensor:
        """One stage over the frames of `c`, whose outer neighbours are `left` / `right` (None: zeros)."""
        before, here, after = self._phase_weights(smooth.weight[0, 0, 0], scale)
        zero = torch.zeros_like(c[..., :1])
        frames = torch.cat([zero if left is None else left, c, zero if right is None else right], dim=-1)
        frames = frames.unsqueeze(-1)  # [..., frames + 2, 1]
        stretched = frames[..., 1:-1, :] * here  # [..., frames, scale]
        stretched = stretched.addcmul(frames[..., :-2, :], before).addcmul(frames[..., 2:, :], after)
        return stretched.flatten(-2)

    def window(self, mel: Tensor, start: int, stop: int) -> Tensor:
        """`self(mel)[..., start:stop]`, bit for bit, computing each stage only where the next needs it."""
        lengths = [mel.shape[-1]]
        for scale in self.scales:
            lengths.append(lengths[-1] * scale)
        needed = [(start, stop)]  # per resolution, from the finest: the positions to compute
        centres = []  # per stage, from the last: the input positions its needed outputs stretch
        for scale, length in zip(reversed(self.scales), reversed(lengths[:-1])):
            a, b = needed[-1]
            centres.append((a // scale, (b - 1) // scale + 1))
            needed.append((max(0, centres[-1][0] - 1), min(length, centres[-1][1] + 1)))  # and their neighbours
        needed.reverse()
        centres.reverse()
        lo = needed[0][0]
        c = mel[..., lo : needed[0][1]]
        for i, (scale, smooth) in enumerate(zip(self.scales, self.smoothers)):
            a, b = centres[i]
            left = c[..., a - lo - 1 : a - lo] if a > 0 else None
            right = c[..., b - lo : b - lo + 1] if b < lengths[i] else None
            c = self._stage(c[..., a - lo : b - lo], scale, smooth, left, right)  # positions [a * scale, b * scale)
            lo, (keep_lo, keep_hi) = a * scale, needed[i + 1]
            c, lo = c[..., keep_lo - lo : keep_hi - lo], keep_lo
        return c

    def forward(self, mel: Tensor) -> Tensor:
        """[B, M, frames] -> [B, M, frames * prod(scales)]."""
        c = mel
        for scale, smooth in zip(self.scales, self.smoothers):
            c = self._stage(c, scale, smooth, None, None)
        return c


class WaveNet(nn.Module):
    """WaveNet over raw audio in [-1, 1], predicting each sample from the ones before it."""

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        self.config = config
        self.distribution = config.build_distribution()
        r, s = config.residual_channels, config.skip_channels
        if config.head == "mulaw":
            self.embed = nn.Embedding(config.mulaw_channels, r)
        else:
            self.embed = nn.Conv1d(1, r, 1)
        self.upsampler = ConditioningUpsampler(config.upsample_scales) if config.mel_channels else None
        self.speaker_embedding = (
            nn.Embedding(config.num_speakers, config.speaker_channels) if config.num_speakers else None
        )
        last = len(config.dilations) - 1
        self.layers = nn.ModuleList(ResidualLayer(config, d, i == last) for i, d in enumerate(config.dilations))
        self.out1 = nn.Conv1d(s, s, 1)
        self.out2 = nn.Conv1d(s, self.distribution.params_channels, 1)

    @property
    def receptive_field(self) -> int:
        """How many past samples can influence the prediction of the next one."""
        return self.config.receptive_field

    def embed_input(self, previous: Tensor) -> Tensor:
        """Audio [B, T] (the samples before each prediction) -> residual stream [B, R, T]."""
        if self.config.head == "mulaw":
            return self.embed(mulaw_encode(previous, self.config.mulaw_channels)).transpose(1, 2)
        return self.embed(previous.unsqueeze(1))

    def check_conditioning(
        self, batch: int, num_samples: int | None, mel: Tensor | None, speaker: Tensor | int | None
    ) -> tuple[int, Tensor | None, Tensor | None]:
        """Validate conditioning for `batch` streams; returns (num_samples, mel [B, M, F], speaker [B]).

        With a mel, the sample count is frames * hop; `num_samples`, if given, must agree.
        Raises ValueError naming the argument at fault.
        """
        cfg = self.config
        device = next(self.parameters()).device
        if num_samples is not None:
            num_samples = positive_int("num_samples", num_samples)
        if cfg.mel_channels:
            if mel is None:
                raise ValueError(f"mel: this model is conditioned on {cfg.mel_channels}-channel log-mel frames")
            if not isinstance(mel, Tensor):
                raise ValueError(f"mel: expected a tensor [B, {cfg.mel_channels}, frames], got {type(mel).__name__}")
            if mel.dim() == 2:
                mel = mel.unsqueeze(0)
            if mel.dim() != 3 or mel.shape[1] != cfg.mel_channels or mel.shape[2] == 0:
                raise ValueError(f"mel: expected [B, {cfg.mel_channels}, frames >= 1], got {list(mel.shape)}")
            if mel.shape[0] == 1 and batch > 1:
                mel = mel.expand(batch, -1, -1)
            if mel.shape[0] != batch:
                raise ValueError(f"mel: batch {mel.shape[0]} does not match {batch} streams")
            if not torch.isfinite(mel).all():
                raise ValueError("mel: contains NaN or infinite values")
            frames_samples = mel.shape[2] * cfg.hop_length
            if num_samples is not None and num_samples != frames_samples:
                raise ValueError(
                    f"mel: {mel.shape[2]} frames x hop {cfg.hop_length} = {frames_samples} samples "
                    f"do not match num_samples / audio length {num_samples}"
                )
            num_samples = frames_samples
            mel = mel.to(device=device, dtype=torch.float32)
        elif mel is not None:
            raise ValueError("mel: this model takes no mel conditioning")
        if cfg.num_speakers:
            if speaker is None:
                raise ValueError(f"speaker: this model needs a speaker id in [0, {cfg.num_speakers})")
            speaker = self._speaker_ids(speaker, device)
            if speaker.is_floating_point() or speaker.is_complex() or speaker.dtype == torch.bool:
                raise ValueError(f"speaker: ids must be integers, got {speaker.tolist()}")
            speaker = speaker.long()
            if speaker.numel() == 1 and batch > 1:
                speaker = speaker.expand(batch)
            if speaker.numel() != batch:
                raise ValueError(f"speaker: {speaker.numel()} ids for {batch} streams")
            if (speaker < 0).any() or (speaker >= cfg.num_speakers).any():
                raise ValueError(f"speaker: ids must be in [0, {cfg.num_speakers}), got {speaker.tolist()}")
        elif speaker is not None:
            raise ValueError("speaker: this model takes no speaker conditioning")
        if num_samples is None:
            raise ValueError("num_samples: required for a model without mel conditioning")
        return num_samples, mel, speaker

    def _speaker_ids(self, speaker: Tensor | int | str | Sequence[int | str], device: torch.device) -> Tensor:
        """`speaker` (ids, or names from `config.speaker_names`) as a 1-D tensor; ValueError naming it."""
        names = self.config.speaker_names
        listed = [speaker] if isinstance(speaker, str) else speaker
        if isinstance(listed, (list, tuple)) and any(isinstance(s, str) for s in listed):
            unknown = [s for s in listed if isinstance(s, str) and s not in names]
            if unknown:
                choices = f"one of {', '.join(names)}" if names else "an id: this model's speakers have no names"
                raise ValueError(f"speaker: {unknown[0]!r} is unknown; give {choices}")
            speaker = [names.index(s) if isinstance(s, str) else s for s in listed]
        try:
            return torch.as_tensor(speaker, device=device).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"speaker: expected ids or names, got {speaker!r}") from None

    def conditioning(self, mel: Tensor | None, speaker: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Checked conditioning -> (upsampled mel [B, M, T] or None, speaker embedding [B, E] or None)."""
        cond = self.upsampler(mel) if mel is not None else None
        spk = self.speaker_embedding(speaker) if self.speaker_embedding is not None else None
        return cond, spk

    def head(self, skips: Tensor) -> Tensor:
        """Summed skip connections [B, S, T] -> distribution parameters [B, C, T]."""
        h = F.relu(skips * math.sqrt(1.0 / len(self.layers)))
        return self.out2(F.relu(self.out1(h)))

    def forward(self, previous: Tensor, cond: Tensor | None = None, speaker_embedding: Tensor | None = None) -> Tensor:
        """Distribution parameters [B, C, T] at each position, given the sample before it.

        `previous` [B, T] holds the sample preceding each position; `cond` [B, M, T] is the
        upsampled mel and `speaker_embedding` [B, E] the global conditioning (see `conditioning`).
        """
        h = self.embed_input(previous)
        skips = 0
        for layer in self.layers:
            h, skip = layer(h, cond, speaker_embedding)
            skips = skips + skip
        return self.head(skips)

    def predict(self, audio: Tensor, mel: Tensor | None = None, speaker: Tensor | int | None = None) -> Tensor:
        """Teacher forcing: distribution parameters [B, C, T] for every sample of `audio` [B, T].

        Step t sees audio[:, :t] (step 0 sees silence) and the conditioning. Like the
        conditioning, `audio` is moved to the model's device as float32.
        """
        audio = self._as_input(audio)
        _, mel, speaker = self.check_conditioning(audio.shape[0], audio.shape[1], mel, speaker)
        return self(F.pad(audio[:, :-1], (1, 0)), *self.conditioning(mel, speaker))

    def log_prob(self, audio: Tensor, mel: Tensor | None = None, speaker: Tensor | int | None = None) -> Tensor:
        """log p(x_t | x_<t, conditioning) for every sample [B, T]; bits/sample = -mean / ln 2."""
        audio = self._as_input(audio)
        return self.distribution.log_prob(self.predict(audio, mel, speaker), audio)

    def _as_input(self, audio: Tensor) -> Tensor:
        """`audio` [B, T] as float32 on the model's device; ValueError naming `audio` otherwise."""
        if not isinstance(audio, Tensor) or audio.dim() != 2 or not audio.is_floating_point():
            got = f"{audio.dtype} {list(audio.shape)}" if isinstance(audio, Tensor) else type(audio).__name__
            raise ValueError(f"audio: expected float samples [B, T], got {got}")
        return audio.to(device=next(self.parameters()).device, dtype=torch.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write weights and config to one safetensors file."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.fspath(path), metadata={"wavekit_config": json.dumps(self.config.to_dict())})

    @classmethod
    def from_file(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> WaveNet:
        """Load a model written by `save`; raises ValueError naming the file if it is not one."""
        from safetensors import SafetensorError, safe_open

        path = os.fspath(path)
        try:
            with safe_open(path, framework="pt", device=str(map_location)) as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, SafetensorError) as err:
            raise ValueError(f"{path}: not a readable wavekit model file ({err})") from err
        if "wavekit_config" not in metadata:
            raise ValueError(f"{path}: no wavekit config in the file's metadata")
        try:
            model = cls(WaveNetConfig.from_dict(json.loads(metadata["wavekit_config"])))
            model.load_state_dict(state)
        except (ValueError, TypeError, RuntimeError) as err:  # bad config JSON/values, missing/mismatched tensors
            raise ValueError(f"{path}: invalid wavekit model ({err})") from err
        return model.to(map_location).eval()
