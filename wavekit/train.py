"""Training a WaveNet with PyTorch Lightning: the `wavekit train` command (LightningCLI),
`WaveNetModule`, the `EMA` weight-averaging callback and likelihood evaluation.

    wavekit train --config recipes/flite-speech/config.yaml                   # train a recipe
    wavekit train --config recipes/flite-speech/config.yaml --trainer.max_steps 1000 --model.lr 3e-4
    wavekit train --config recipes/flite-speech/config.yaml --resume          # continue from last.ckpt
    wavekit train --config recipes/flite-speech/config.yaml --print_config    # merged config, then exit
    wavekit train --help                                                      # every option
    python -m wavekit.train --config ...                                      # the same without the CLI

A run directory is `trainer.default_root_dir`: the merged config goes to `config.yaml`, the
TensorBoard events beside it, and checkpoints (`last.ckpt` plus periodic ones) to
`checkpoints/` (unless `checkpoint.dirpath` says otherwise). `--resume` continues from
`checkpoints/last.ckpt`; without it, a run directory that already has one is refused.
Multi-GPU and multi-node launches (torchrun, SLURM) are in docs/training.md.

From Python:

    from pytorch_lightning import Trainer
    from wavekit import WaveNetConfig
    from wavekit.train import Checkpoint, WaveNetModule, ema_callback

    module = WaveNetModule(WaveNetConfig(mel_channels=80, num_speakers=4), lr=1e-3)
    trainer = Trainer(max_steps=200_000, gradient_clip_val=1.0, precision="bf16-mixed",
                      callbacks=[ema_callback(0.9999), Checkpoint(save_last=True)])
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

import contextlib
import copy
import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentError
from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm import tqdm

from wavekit.audio import load, log_mel, mulaw_encode
from wavekit.checks import positive_int
from wavekit.data import SPLITS, Utterance, WaveNetDataModule, read_manifest, speaker_table
from wavekit.generation import generate
from wavekit.hub import read_checkpoint
from wavekit.model import WaveNet, WaveNetConfig

__all__ = [
    "WaveNetModule", "EMA", "ema_callback", "Checkpoint", "WaveNetCLI", "train_cli", "evaluate", "mulaw_entropy",
]  # fmt: skip

Batch = dict[str, Tensor]


class WaveNetModule(pl.LightningModule):
    """Trains `self.net`, a plain `WaveNet`, by maximum likelihood.

    Optimizer: AdamW (`weight_decay` 0 is Adam) at peak `lr`, reached by linear warmup over
    `warmup_steps`, then cosine decay to `min_lr_ratio * lr` at step `lr_decay_steps` and
    constant after. At each validation end (rank zero, with a TensorBoardLogger) up to
    `sample_seconds` of audio (0 disables it) is generated with seed 0, conditioned on the
    first validation batch's first mel / speaker, and logged with its log-mel spectrogram.

    `model` is the network's config; a dict of its fields (as checkpoints store it) works too.
    """

    def __init__(
        self,
        model: WaveNetConfig,
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
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay
        self._final_weights: dict[str, Tensor] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._final_weights = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the raw weights for a checkpoint saved at train end (`Checkpoint`), then load the average."""
        self._final_weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._final_weights is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._final_weights

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave the averaged weights in place until `on_validation_end`."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap the raw training weights back in."""
        if self._average_model is not None:
            self._swap_models(pl_module)


def ema_callback(decay: float = 0.9999) -> WeightAveraging:
    """An `EMA` callback with the given decay (0.9999 averages over roughly the last 10k steps)."""
    return EMA(decay)


class Checkpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes last.ckpt (with `save_last`) when training ends after
    the last periodic save (e.g. at `max_time`, or `max_steps` not a multiple of
    `every_n_train_steps`), so a resumed run starts exactly where the previous one stopped."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# Warnings Lightning raises about its own code, nothing a wavekit user can change: its CLI calls
# deprecated jsonargparse APIs (jsonargparse >= 4.49, which heads its first such warning with a
# note), and its pytree helper a LeafSpec check that torch 2.14 deprecated. (message, category, module)
_LIGHTNING_OWN_WARNINGS = (
    (
        r"\s*(``ArgumentParser\.add_instantiator``|``instantiate_classes``|skip_none parameter) was deprecated"
        r"|\s*By default only one JsonargparseDeprecationWarning",
        DeprecationWarning,
        r"pytorch_lightning\.cli",
    ),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
)


@contextlib.contextmanager
def _lightning_own_warnings_hidden() -> Iterator[None]:
    """Ignore, inside the block, `_LIGHTNING_OWN_WARNINGS`. Every other warning still shows,
    jsonargparse's about our code or the user's config included."""
    with warnings.catch_warnings():
        for message, category, module in _LIGHTNING_OWN_WARNINGS:
            warnings.filterwarnings("ignore", message, category, module)
        yield


class _SaveConfig(SaveConfigCallback):
    """Saves the merged config to the run directory with `resume` off: resuming stays a
    command-line decision, whatever config file a later run starts from."""

    def __init__(self, parser: LightningArgumentParser, config: Any, **kwargs: Any) -> None:
        config = config.clone()
        config.resume = False
        super().__init__(parser, config, **kwargs)


class WaveNetCLI(LightningCLI):
    """`wavekit train`: a LightningCLI over `WaveNetModule` and `WaveNetDataModule` that always fits.

    Config sections: `seed_everything`, `trainer`, `model`, `data` (its `config` is the model's,
    linked at instantiation), `ema` (`EMA`) and `checkpoint` (`Checkpoint`), plus the `--resume` flag.
    Constructing it parses `args`, seeds and builds everything; `fit()` trains.
    """

    def __init__(self, args: Sequence[str] | None = None) -> None:
        with _lightning_own_warnings_hidden():  # `wavekit train ...` passes args while sys.argv is set too
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().__init__(
                WaveNetModule,
                WaveNetDataModule,
                save_config_callback=_SaveConfig,
                save_config_kwargs={"overwrite": True},  # fit() refuses to reuse a run directory without --resume
                trainer_defaults={"default_root_dir": "runs/default"},
                seed_everything_default=0,
                parser_kwargs={
                    "prog": "wavekit train", "description": "Train a WaveNet (see wavekit.train).",
                    "exit_on_error": False,  # train_cli reports parse errors in one line, like every bad input
                },  # fmt: skip
                args=None if args is None else list(args),
                run=False,
                auto_configure_optimizers=False,
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--resume", action="store_true", help="Continue from last.ckpt in the checkpoint directory of this run."
        )
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        # no "last-v1.ckpt" beside a last.ckpt whose recorded path differs (a moved run directory):
        # --resume must always find the newest state in last.ckpt
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.enable_version_counter": False})
        parser.link_arguments("model", "data.config", compute_fn=lambda module: module.config, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Checkpoints go to `<default_root_dir>/checkpoints` unless `checkpoint.dirpath` is set."""
        if self.config.trainer.default_root_dir is None:  # Lightning's meaning of null
            self.config.trainer.default_root_dir = os.getcwd()
        if self.config.checkpoint.dirpath is None:
            self.config.checkpoint.dirpath = os.path.join(str(self.config.trainer.default_root_dir), "checkpoints")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The Trainer, logging to TensorBoard in the run directory itself unless a logger is configured."""
        if self.config_init.trainer.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(str(self.config_init.trainer.default_root_dir), name="", version="")
        return super().instantiate_trainer(**kwargs)

    @property
    def last_checkpoint(self) -> Path:
        """Where this run's last.ckpt is (or will be)."""
        return Path(self.config.checkpoint.dirpath) / "last.ckpt"

    def fit(self) -> None:
        """Train, resuming from `last_checkpoint` with `--resume`; refuse to overwrite a run without it."""
        last = self.last_checkpoint
        if self.config.resume and not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
        if self.config.resume:
            self._check_same_model(last)
        if not self.config.resume and last.exists():
            raise ValueError(
                f"{last} already exists: pass --resume to continue that run, "
                "or set another --trainer.default_root_dir to start a new one"
            )
        manifest = self.datamodule.manifest
        if not os.path.isfile(manifest):
            raise FileNotFoundError(f"data.manifest: {manifest} not found; run `wavekit prepare <recipe>` first")
        with _lightning_own_warnings_hidden():  # restores the filters as they were before fit
            self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=str(last) if self.config.resume else None)

    def _check_same_model(self, checkpoint: Path) -> None:
        """Raise ValueError naming the fields if the model config differs from the checkpoint's."""
        _, saved = read_checkpoint(checkpoint)
        current = self.model.config
        changed = [
            f"{f.name}: {getattr(saved, f.name)!r} -> {getattr(current, f.name)!r}"
            for f in dataclasses.fields(current)
            if getattr(saved, f.name) != getattr(current, f.name)
        ]
        if changed:
            raise ValueError(f"--resume: model.model differs from {checkpoint}'s ({'; '.join(changed)})")


def train_cli(args: Sequence[str] | None = None) -> None:
    """`wavekit train ARGS...` (see the module docstring; `--help` lists every option).

    Bad config values raise ValueError / FileNotFoundError with the culprit named, unknown keys
    and wrong types too (jsonargparse's message); `--help` and `--print_config` exit with 0.
    """
    try:
        cli = WaveNetCLI(args)
    except ArgumentError as err:
        raise ValueError(f"{' '.join(str(err).split())} (see wavekit train --help)") from None
    cli.fit()


def _split_utterances(manifest: str | os.PathLike, split: str) -> tuple[list[Utterance], list[Utterance]]:
    """(every utterance of `manifest`, those of `split`); ValueError for an unknown or empty split."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"{manifest}: manifest not found")
    everything = read_manifest(manifest)
    chosen = [u for u in everything if u.split == split]
    if not chosen:
        raise ValueError(f"{manifest}: no utterances in the {split!r} split")
    return everything, chosen


def _entropy_bits(counts: Tensor) -> float:
    """Entropy in bits of the distribution proportional to `counts`."""
    p = counts[counts > 0].double() / counts.sum()
    return abs(float((p * p.log2()).sum()))


def mulaw_entropy(manifest: str | os.PathLike, split: str, sample_rate: int, channels: int = 256) -> float:
    """Entropy in bits of the histogram of `split`'s audio (loaded at `sample_rate`) over
    `channels` mu-law bins: the bits/sample of the best context-free mu-law model, 8 at most
    for 256 bins. The recipes aim at validation bits/sample <= half of it."""
    _, utterances = _split_utterances(manifest, split)
    counts = torch.zeros(channels, dtype=torch.int64)
    for u in utterances:
        counts += torch.bincount(mulaw_encode(load(u.path, sample_rate), channels), minlength=channels)
    return _entropy_bits(counts)


Piece = tuple[Tensor, Tensor | None, int | None]  # audio [T], mel [M, T // hop] or None, speaker id or None


def _pieces(
    model: WaveNet, utterances: Sequence[Utterance], speakers: Sequence[str], segment: int | None
) -> Iterator[Piece]:
    """The scored pieces of each utterance: all of it, or consecutive `segment`-sample pieces
    tiling it (the last one shorter). Mel models score whole frames only and slice the mel of
    the whole utterance, as in training."""
    cfg = model.config
    for u in utterances:
        audio, mel = cfg.load_audio(u.path)
        speaker = None
        if cfg.num_speakers:
            if u.speaker not in speakers:
                raise ValueError(f"{u.path}: speaker {u.speaker!r} is not in the speaker table {list(speakers)}")
            speaker = list(speakers).index(u.speaker)
        if not cfg.mel_channels:
            yield from ((a, None, speaker) for a in audio.split(segment or len(audio)))
            continue
        frames = (segment or len(audio)) // cfg.hop_length
        yield from zip(audio.split(frames * cfg.hop_length), mel.split(frames, dim=-1), [speaker] * len(audio))


def _batches(pieces: Iterator[Piece], batch_size: int, segment: int | None) -> Iterator[list[Piece]]:
    """Full `segment`-sample pieces in batches of up to `batch_size`, any other piece alone (no padding)."""
    full: list[Piece] = []
    for piece in pieces:
        if len(piece[0]) != segment:
            yield [piece]
            continue
        full.append(piece)
        if len(full) == batch_size:
            yield full
            full = []
    if full:
        yield full


def evaluate(
    model: WaveNet,
    manifest: str | os.PathLike,
    split: str = "test",
    segment_samples: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Negative log-likelihood of `model` on every utterance of a manifest split, in bits per sample.

    Whole utterances by default; with `segment_samples`, non-overlapping segments tiling each
    utterance (the last one shorter), each scored on its own: its first samples see silence
    before them, which usually costs a little over whole utterances, less the longer the
    segments are compared with the receptive field. Mel models score whole frames only (the trailing
    `len % hop` samples have no frame, as in training). Speaker ids follow
    `WaveNetDataModule`. Full segments are scored `batch_size` at a time; whole utterances and
    shorter last segments one at a time (nothing is padded, so `batch_size` does not change the
    result). Runs in float32 on the model's device, in eval mode. Memory grows with the longest
    piece scored (about 8 KB per sample for the maestro model), so long-form corpora want
    `segment_samples`. `progress` shows a bar over the utterances.

    Returns {"bits_per_sample": mean over all scored samples, "samples", "utterances", "split",
    "mulaw_entropy": entropy in bits of the scored audio's 256-bin mu-law histogram}.
    Raises ValueError for an unknown or empty split or a bad argument, FileNotFoundError for
    a missing manifest, AudioError for unreadable audio.
    """
    cfg = model.config
    hop = cfg.hop_length if cfg.mel_channels else 1
    if segment_samples is not None and (segment_samples <= 0 or segment_samples % hop):
        raise ValueError(f"segment_samples: must be a positive multiple of {hop} (or None), got {segment_samples}")
    positive_int("batch_size", batch_size)
    everything, utterances = _split_utterances(manifest, split)
    speakers = cfg.speaker_names or speaker_table(everything)
    device = next(model.parameters()).device
    nats, samples, counts = 0.0, 0, torch.zeros(256, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # scoring only: no autograd graph over whole utterances
            shown = tqdm(utterances, desc=f"scoring {split}", unit="utterance", disable=not progress)
            for batch in _batches(_pieces(model, shown, speakers, segment_samples), batch_size, segment_samples):
                audio = torch.stack([p[0] for p in batch]).to(device)
                mel = torch.stack([p[1] for p in batch]).to(device) if cfg.mel_channels else None
                speaker = torch.tensor([p[2] for p in batch], device=device) if cfg.num_speakers else None
                nats -= model.log_prob(audio, mel, speaker).double().sum().item()
                samples += audio.numel()
                counts += torch.bincount(mulaw_encode(audio.cpu().flatten()), minlength=256)
    finally:
        model.train(was_training)
    return {
        "bits_per_sample": nats / samples / math.log(2),
        "samples": samples,
        "utterances": len(utterances),
        "split": split,
        "mulaw_entropy": _entropy_bits(counts),
    }


if __name__ == "__main__":
    from wavekit.cli import main as _main  # the importable module's classes, not __main__'s; its error handling

    _main(["train", *sys.argv[1:]])
