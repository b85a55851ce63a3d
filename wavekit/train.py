"""Training a WaveNet with PyTorch Lightning: `WaveNetModule` and the `EMA` weight-averaging callback.

    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint
    from wavekit import WaveNetConfig
    from wavekit.train import WaveNetModule, ema_callback

    module = WaveNetModule(WaveNetConfig(mel_channels=80, num_speakers=4), lr=1e-3)
    trainer = Trainer(max_steps=200_000, gradient_clip_val=1.0, precision="bf16-mixed",
                      callbacks=[ema_callback(0.9999), ModelCheckpoint(save_last=True)])
    trainer.fit(module, datamodule=data)                    # batches from wavekit.data
    trainer.fit(module, datamodule=data, ckpt_path="last")  # resume where it stopped
    WaveNetModule.load_from_checkpoint("last.ckpt").export().save("model.safetensors")

Batches are dicts: "audio" float32 [B, T] in [-1, 1], plus "mel" float32 [B, M, T // hop]
for mel-conditioned models and "speaker" int64 [B] for speaker-conditioned ones. The loss
is the negative mean log-likelihood in nats; bits per sample are logged next to it.

Gradient clipping is the Trainer's (`gradient_clip_val`, by norm); mixed precision is the
Trainer's too (`precision="bf16-mixed"`): the network runs in bfloat16 under autocast and the
output distribution promotes its parameters, so the likelihood is computed in float32.

With `EMA`, validation (metrics and the audio sample) runs on the averaged weights, and a
checkpoint holds the averaged weights under "state_dict" (what `load_from_checkpoint` and
`export` give) and the raw training weights under "current_model_state" (what a resumed
fit trains on, with the average restored alongside). After `trainer.fit` returns, the
module holds the averaged weights.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn

from wavekit.audio import log_mel
from wavekit.generation import generate
from wavekit.model import WaveNet, WaveNetConfig

__all__ = ["WaveNetModule", "EMA", "ema_callback"]

Batch = dict[str, Tensor]


class WaveNetModule(pl.LightningModule):
    """Trains `self.net`, a plain `WaveNet`, by maximum likelihood.

    Optimizer: AdamW (`weight_decay` 0 is Adam) at peak `lr`, reached by linear warmup over
    `warmup_steps`, then cosine decay to `min_lr_ratio * lr` at step `lr_decay_steps` and
    constant after. At each validation end (rank zero, with a TensorBoardLogger) up to
    `sample_seconds` of audio (0 disables it) is generated with seed 0, conditioned on the
    first validation batch's first mel / speaker, and logged with its log-mel spectrogram.
    """

    def __init__(
        self,
        model: WaveNetConfig | dict,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        lr_decay_steps: int = 200_000,
        min_lr_ratio: float = 0.05,
        sample_seconds: float = 1.0,
    ) -> None:
        super().__init__()
        config = model if isinstance(model, WaveNetConfig) else WaveNetConfig.from_dict(model)
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr} and {weight_decay}")
        if not 0 <= warmup_steps <= lr_decay_steps:
            raise ValueError(f"need 0 <= warmup_steps <= lr_decay_steps, got {warmup_steps} and {lr_decay_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if sample_seconds < 0 or 0 < sample_seconds * config.sample_rate < config.hop_length:
            raise ValueError(f"sample_seconds must be 0 (no samples) or cover one hop, got {sample_seconds}")
        model = config.to_dict()  # save_hyperparameters reads this local: plain types load with weights_only
        self.save_hyperparameters()
        self.net = WaveNet(config)
        self._sample_conditioning: tuple[Tensor | None, Tensor | None] = (None, None)

    @property
    def config(self) -> WaveNetConfig:
        """The network's config."""
        return self.net.config

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate after `step` optimizer steps."""
        hp = self.hparams
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.lr_decay_steps - hp.warmup_steps))
        return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _nll(self, batch: Batch) -> Tensor:
        """Mean negative log-likelihood of the batch's audio, in nats per sample (float32)."""
        return -self.net.log_prob(batch["audio"], batch.get("mel"), batch.get("speaker")).mean()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._nll(batch)
        size = batch["audio"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/bits_per_sample", loss / math.log(2), prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self._cache_sample_conditioning(batch)
        bits = self._nll(batch) / math.log(2)
        self.log("val/bits_per_sample", bits, prog_bar=True, sync_dist=True, batch_size=batch["audio"].numel())

    def _cache_sample_conditioning(self, batch: Batch) -> None:
        """Keep the first item's mel (cut to `sample_seconds`) and speaker for the audio sample."""
        mel, speaker = batch.get("mel"), batch.get("speaker")
        if mel is not None:
            frames = math.ceil(self.hparams.sample_seconds * self.config.sample_rate / self.config.hop_length)
            mel = mel[:1, :, :frames].clone()
        self._sample_conditioning = (mel, None if speaker is None else speaker[:1].clone())

    def on_validation_epoch_end(self) -> None:
        logger = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if self.hparams.sample_seconds > 0:
            self._log_sample(logger.experiment)

    def _log_sample(self, writer: Any) -> None:
        """Generate audio with the current weights; log it and its log-mel image to TensorBoard."""
        cfg = self.config
        mel, speaker = self._sample_conditioning
        num_samples = None if mel is not None else round(self.hparams.sample_seconds * cfg.sample_rate)
        audio = generate(self.net, num_samples, mel=mel, speaker=speaker, seed=0)[0].cpu()
        writer.add_audio("val/sample", audio.unsqueeze(0), self.global_step, sample_rate=cfg.sample_rate)
        spec = log_mel(audio, cfg.sample_rate, cfg.mel_channels or 80, cfg.hop_length, cfg.n_fft, cfg.fmin, cfg.fmax)
        image = (spec - spec.min()) / (spec.max() - spec.min()).clamp(min=1e-8)
        writer.add_image("val/sample_mel", image.flip(0), self.global_step, dataformats="HW")

    def export(self) -> WaveNet:
        """An eval-mode copy of the network for inference without Lightning.

        It has the module's current weights: the averaged ones after `trainer.fit` with `EMA`
        or after `load_from_checkpoint`; the raw ones while training.
        """
        return copy.deepcopy(self.net).eval()


class EMA(WeightAveraging):
    """Exponential moving average of the weights, updated after every optimizer step.

    Built on Lightning's `WeightAveraging` (the average's first value is the weights after
    the first step); see the module docstring for where the averaged weights end up. Unlike
    the base class, the raw weights come back at `on_validation_end` instead of at validation
    epoch end, so the module's own epoch-end hook (the audio sample) also sees the average;
    checkpoint callbacks run after it, so checkpoints are unaffected.
    """

    def __init__(self, decay: float = 0.9999) -> None:
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave the averaged weights in place until `on_validation_end`."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap the raw training weights back in."""
        if self._average_model is not None:
            self._swap_models(pl_module)


def ema_callback(decay: float = 0.9999) -> WeightAveraging:
    """An `EMA` callback with the given decay (0.9999 averages over roughly the last 10k steps)."""
    return EMA(decay)
