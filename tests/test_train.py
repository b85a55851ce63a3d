"""Tests for wavekit.train: the Lightning module (steps, logging, LR schedule, checkpoints,
bf16), the EMA callback and the TensorBoard audio sample. Tiny models, CPU, a few seconds each."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from wavekit import generate, toy
from wavekit.audio import log_mel, mulaw_encode
from wavekit.model import WaveNet, WaveNetConfig
from wavekit.train import EMA, Checkpoint, WaveNetModule, ema_callback

LN2 = math.log(2)


@pytest.fixture(autouse=True)
def seeded_single_thread(single_thread):
    """Seed 0 and one intra-op thread for every test (the global RNG state is restored after)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def _config(**overrides) -> WaveNetConfig:
    """A few-channel config (hop 16, n_fft 64) that trains in milliseconds."""
    values = dict(
        layers=4, stacks=1, residual_channels=8, gate_channels=8, skip_channels=16, mixtures=2,
        upsample_scales=(4, 4), n_fft=64,
    )  # fmt: skip
    values.update(overrides)
    return WaveNetConfig(**values)


MULAW = dict(head="mulaw")
MOL_MEL_SPEAKERS = dict(head="mol", mel_channels=8, num_speakers=2)


class PeriodicDataset(Dataset):
    """Item i: a 40-sample-period signal starting at phase 7 * i, with its mel and speaker i % 2
    when the config wants them; exactly the batch format of wavekit.data."""

    def __init__(self, config: WaveNetConfig, items: int = 8, length: int = 256):
        self.config, self.items, self.length = config, items, length

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        audio = toy.periodic_signal(self.length + 7 * i)[7 * i :]
        item = {"audio": audio}
        if self.config.mel_channels:
            item["mel"] = self.config.mel(audio)
        if self.config.num_speakers:
            item["speaker"] = torch.tensor(i % self.config.num_speakers)
        return item


def _loader(config: WaveNetConfig, items: int = 8, batch_size: int = 4, length: int = 256) -> DataLoader:
    return DataLoader(PeriodicDataset(config, items, length), batch_size=batch_size)


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


class Snapshots(Callback):
    """Copies of the net's weights at the start of training and after every optimizer step."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.start_step = -1
        self.steps: list[dict[str, torch.Tensor]] = []
        self.loss_dtypes: list[torch.dtype] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = _weights(pl_module.net)
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(_weights(pl_module.net))
        self.loss_dtypes.append(outputs["loss"].dtype)


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _unprefixed(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The net's part of a WaveNetModule state dict, keyed as in the net's own."""
    return {k.removeprefix("net."): v for k, v in module_state.items()}


def _net_with(config: WaveNetConfig, weights: dict[str, torch.Tensor]) -> WaveNet:
    net = WaveNet(config)
    net.load_state_dict(weights)
    return net.eval()


def _bits(net: WaveNet, loader: DataLoader) -> float:
    """Bits per sample of `net` over every sample of `loader`."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in loader:
            log_prob = net.log_prob(b["audio"], b.get("mel"), b.get("speaker"))
            total, count = total - log_prob.sum().item(), count + log_prob.numel()
    return total / count / LN2


@pytest.mark.parametrize("kind", [MULAW, MOL_MEL_SPEAKERS], ids=["mulaw", "mol-mel-2speakers"])
def test_fast_dev_run_logs_finite_metrics(kind):
    config = _config(**kind)
    module = WaveNetModule(config, lr=1e-3, warmup_steps=10)
    before = _weights(module.net)
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(module, _loader(config), _loader(config))
    m = trainer.callback_metrics
    for key in ("train/loss", "train/bits_per_sample", "train/lr", "val/bits_per_sample"):
        assert torch.isfinite(m[key]), key
    assert m["train/bits_per_sample"].item() == pytest.approx(m["train/loss"].item() / LN2, rel=1e-6)
    assert m["train/lr"].item() == pytest.approx(1e-3 / 10)  # first warmup step
    assert trainer.global_step == 1 and _max_diff(before, _weights(module.net)) > 0


def test_validation_bits_are_weighted_by_samples():
    """Batches of 2 x 256 and 1 x 64 samples with very different likelihoods: the logged value
    is the mean over all samples, not over batches or items."""
    config = _config(**MULAW)
    module = WaveNetModule(config)
    with torch.no_grad():  # every step predicts the bin of 0.0 with probability ~1
        module.net.out2.weight.zero_()
        module.net.out2.bias.zero_()
        module.net.out2.bias[mulaw_encode(torch.tensor(0.0))] = 30.0
    signal = toy.periodic_signal(256)
    batches = [{"audio": torch.stack([signal, signal.roll(5)])}, {"audio": torch.zeros(1, 64)}]
    loader = DataLoader(batches, batch_size=None)  # yields the batches as they are
    (result,) = _trainer().validate(module, loader, verbose=False)
    expected = _bits(module.net, loader)
    assert result["val/bits_per_sample"] == pytest.approx(expected, rel=1e-5)
    high = _bits(module.net, DataLoader(batches[:1], batch_size=None))
    assert expected == pytest.approx(512 / 576 * high, rel=1e-3)


def test_training_lowers_validation_bits():
    """~40 steps on the periodic signal take an 8-bit (uniform mu-law) model below 4 bits/sample,
    with gradient clipping and EMA on; the LR follows the schedule step by step."""
    config = _config(head="mulaw", layers=6, residual_channels=16, gate_channels=16, skip_channels=32)
    module = WaveNetModule(config, lr=1e-2, warmup_steps=5, lr_decay_steps=100, sample_seconds=0)
    train, val = _loader(config, items=16, batch_size=8), _loader(config, items=4, batch_size=4)
    (before,) = _trainer().validate(module, val, verbose=False)
    trainer = _trainer(max_epochs=20, check_val_every_n_epoch=20, gradient_clip_val=1.0, callbacks=[ema_callback(0.9)])
    trainer.fit(module, train, val)
    after = trainer.callback_metrics["val/bits_per_sample"].item()
    assert before["val/bits_per_sample"] > 7.5
    assert after < 4.0, f"val bits/sample {before['val/bits_per_sample']:.2f} -> {after:.2f}"
    assert trainer.global_step == 40
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(1e-2 * module.lr_factor(40))
    assert lr < 1e-2 * 0.99


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    module = WaveNetModule(_config(**MULAW), lr=0.01, warmup_steps=4, lr_decay_steps=14, min_lr_ratio=0.1)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = {0: 0.0025, 1: 0.005, 2: 0.0075, 3: 0.01, 4: 0.01, 9: 0.01 * (0.1 + 0.9 * 0.5), 14: 0.001, 19: 0.001}
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value), step
    assert all(a > b for a, b in zip(lrs[4:14], lrs[5:15]))  # strictly decaying in between


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=0), dict(weight_decay=-1), dict(warmup_steps=10, lr_decay_steps=5), dict(min_lr_ratio=1.5),
     dict(sample_seconds=-1), dict(sample_seconds=1e-4)],
)  # fmt: skip
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        WaveNetModule(_config(**MULAW), **kwargs)


def test_checkpoint_reloads_and_resumes(tmp_path):
    config = _config(**MOL_MEL_SPEAKERS)
    module = WaveNetModule(config, lr=5e-3, warmup_steps=2, lr_decay_steps=50)
    limits = dict(limit_train_batches=3, limit_val_batches=1)  # 3 steps an epoch
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    train = _loader(config, items=12)
    trainer = _trainer(max_epochs=2, callbacks=[checkpoint], enable_checkpointing=True, **limits)
    trainer.fit(module, train, _loader(config))
    last = tmp_path / "last.ckpt"
    assert last.exists()

    raw = torch.load(last, weights_only=True)  # only plain types inside
    assert raw["global_step"] == 6
    assert raw["hyper_parameters"]["model"] == config.to_dict()

    loaded = WaveNetModule.load_from_checkpoint(last)
    assert loaded.config == config and loaded.hparams.lr == 5e-3
    assert _max_diff(_weights(loaded.net), _weights(module.net)) == 0

    snapshots = Snapshots()
    resumed = WaveNetModule(config)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "resumed", save_last=True)
    trainer = _trainer(max_epochs=3, callbacks=[snapshots, checkpoint], enable_checkpointing=True, **limits)
    trainer.fit(resumed, train, _loader(config), ckpt_path=last)
    assert snapshots.start_step == 6 and trainer.global_step == 9
    assert _max_diff(snapshots.start, _weights(module.net)) == 0
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-3 * resumed.lr_factor(9))


def test_ema_weights_in_export_validation_and_checkpoint(tmp_path):
    """EMA(0.5) over 8 steps: export(), validation and the checkpoint's "state_dict" hold the
    average of the per-step weights; "current_model_state" holds the raw last-step weights;
    a resumed fit trains from the raw weights and continues the restored average."""
    config = _config(**MULAW)
    decay = 0.5
    module = WaveNetModule(config, lr=1e-2, warmup_steps=1, sample_seconds=0)
    val = _loader(config, items=4)
    snapshots = Snapshots()
    limits = dict(limit_train_batches=2, limit_val_batches=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = _trainer(max_epochs=4, callbacks=[EMA(decay), snapshots, checkpoint], enable_checkpointing=True, **limits)
    trainer.fit(module, _loader(config), val)

    def average(steps, ema=None):
        """The EMA after `steps`, continuing `ema` or, like AveragedModel, starting at the first step."""
        if ema is None:
            ema, steps = steps[0], steps[1:]
        for weights in steps:
            ema = {k: decay * ema[k] + (1 - decay) * weights[k] for k in ema}
        return ema

    expected = average(snapshots.steps)
    raw_last = snapshots.steps[-1]
    assert len(snapshots.steps) == 8
    assert _max_diff(expected, raw_last) > 1e-3  # the average is not the last step
    exported = module.export()
    assert exported is not module.net and not exported.training and module.net.training
    assert _max_diff(_weights(exported), expected) < 1e-6
    val_bits = trainer.callback_metrics["val/bits_per_sample"].item()
    assert val_bits == pytest.approx(_bits(_net_with(config, expected), val), rel=1e-5)
    assert val_bits != pytest.approx(_bits(_net_with(config, raw_last), val), rel=1e-5)

    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert _max_diff(_unprefixed(ckpt["state_dict"]), expected) < 1e-6
    assert _max_diff(_unprefixed(ckpt["current_model_state"]), raw_last) == 0
    assert _max_diff(_weights(WaveNetModule.load_from_checkpoint(tmp_path / "last.ckpt").export()), expected) < 1e-6

    more = Snapshots()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "resumed", save_last=True)
    trainer = _trainer(max_epochs=5, callbacks=[EMA(decay), more, checkpoint], enable_checkpointing=True, **limits)
    resumed = WaveNetModule(config, lr=1e-2, warmup_steps=1, sample_seconds=0)
    trainer.fit(resumed, _loader(config), val, ckpt_path=tmp_path / "last.ckpt")
    assert _max_diff(more.start, raw_last) == 0
    assert _max_diff(_weights(resumed.export()), average(more.steps, expected)) < 1e-6


def test_checkpoint_saves_last_at_train_end_with_raw_and_averaged_weights(tmp_path):
    """5 steps, periodic saves every 2: `Checkpoint` also writes last.ckpt at step 5 (a plain
    ModelCheckpoint leaves step 4 there); with EMA its "current_model_state" is the raw step-5
    weights, not the average the module holds after fit, which is in "state_dict"."""
    config = _config(**MULAW)
    module = WaveNetModule(config, lr=1e-2, warmup_steps=1, sample_seconds=0)
    snapshots = Snapshots()
    checkpoint = Checkpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    trainer = _trainer(max_steps=5, limit_val_batches=0, callbacks=[EMA(0.5), snapshots, checkpoint],
                       enable_checkpointing=True)  # fmt: skip
    trainer.fit(module, _loader(config, items=24))
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5 and len(snapshots.steps) == 5
    assert _max_diff(_unprefixed(ckpt["current_model_state"]), snapshots.steps[-1]) == 0
    assert _max_diff(_unprefixed(ckpt["state_dict"]), _weights(module.net)) == 0
    assert _max_diff(snapshots.steps[-1], _weights(module.net)) > 1e-4


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_out_of_range_raises(decay):
    with pytest.raises(ValueError, match="EMA decay"):
        EMA(decay)


def test_bf16_mixed_precision_trains_with_float32_loss():
    config = _config(**MOL_MEL_SPEAKERS)
    module = WaveNetModule(config)
    snapshots = Snapshots()
    trainer = _trainer(fast_dev_run=True, precision="bf16-mixed", callbacks=[snapshots])
    trainer.fit(module, _loader(config), _loader(config))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert torch.isfinite(trainer.callback_metrics["val/bits_per_sample"])
    assert snapshots.loss_dtypes == [torch.float32]
    batch = next(iter(_loader(config)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the net runs in bf16, the likelihood in fp32
        assert module.net.predict(batch["audio"], batch["mel"], batch["speaker"]).dtype == torch.bfloat16
        assert module.net.log_prob(batch["audio"], batch["mel"], batch["speaker"]).dtype == torch.float32


def test_tensorboard_gets_audio_sample_and_mel_image(tmp_path):
    """One validation epoch after the sanity check -> one audio and one image event: the sample
    generated (seed 0) from the EMA weights on the first validation item's mel and speaker, and
    its normalised log-mel with low frequencies at the bottom."""
    config = _config(**MOL_MEL_SPEAKERS)
    module = WaveNetModule(config, lr=1e-2, warmup_steps=1, sample_seconds=0.02)  # 320 samples, 20 frames
    logger = TensorBoardLogger(tmp_path)
    snapshots = Snapshots()
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, logger=logger, log_every_n_steps=1,
                       callbacks=[EMA(0.5), snapshots])  # fmt: skip
    val = _loader(config, length=512)
    trainer.fit(module, _loader(config), val)

    events = EventAccumulator(logger.log_dir, size_guidance={"audio": 0, "images": 0})
    events.Reload()
    (audio_event,) = events.Audio("val/sample")
    (image_event,) = events.Images("val/sample_mel")
    assert audio_event.step == image_event.step == 2
    logged, rate = sf.read(io.BytesIO(audio_event.encoded_audio_string))
    assert rate == config.sample_rate and logged.shape == (320,)

    first = val.dataset[0]
    condition = dict(mel=first["mel"][:, :20], speaker=int(first["speaker"]), seed=0)
    expected = generate(module.export(), **condition)[0]
    assert np.abs(logged - expected.numpy()).max() < 2e-4
    from_raw = generate(_net_with(config, snapshots.steps[-1]), **condition)[0]
    assert np.abs(logged - from_raw.numpy()).max() > 1e-2  # the raw weights would sample otherwise

    image = np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)), dtype=np.float64)
    image = image[..., 0] if image.ndim == 3 else image
    spec = log_mel(expected, config.sample_rate, config.mel_channels, config.hop_length, config.n_fft)
    spec = ((spec - spec.min()) / (spec.max() - spec.min())).flip(0).numpy() * 255
    assert image.shape == (config.mel_channels, 20)
    assert np.abs(image - spec).max() <= 1.5
