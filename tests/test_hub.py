"""wavekit.load / export: every kind of model source, and refusals that never unpickle."""

from __future__ import annotations

import pickle
import shutil

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from wavekit import hub, load
from wavekit.model import WaveNet, WaveNetConfig
from wavekit.train import WaveNetModule, ema_callback

TINY = dict(layers=4, stacks=1, residual_channels=8, gate_channels=16, skip_channels=16)


pytestmark = pytest.mark.usefixtures("single_thread")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A real Lightning checkpoint of a speaker-conditioned model trained 6 steps with EMA."""
    torch.manual_seed(0)
    config = WaveNetConfig(**TINY, num_speakers=2, speaker_names=("ann", "bob"))
    batches = [{"audio": torch.rand(64) * 2 - 1, "speaker": torch.tensor(i % 2)} for i in range(12)]
    trainer = pl.Trainer(
        max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[ema_callback(0.5)],
    )  # fmt: skip
    trainer.fit(WaveNetModule(config, lr=1e-2, warmup_steps=0, sample_seconds=0), DataLoader(batches, batch_size=2))
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def test_checkpoint_loads_its_ema_weights_in_eval_mode(checkpoint):
    model = load(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    ema = {k.removeprefix("net."): v for k, v in saved["state_dict"].items()}
    raw = {k.removeprefix("net."): v for k, v in saved["current_model_state"].items()}
    assert not model.training
    assert model.config.speaker_names == ("ann", "bob")
    state = model.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in state)
    assert any(not torch.equal(state[k], raw[k]) for k in state)  # the average, not the raw weights


def test_a_checkpoint_under_another_name_is_still_a_checkpoint(checkpoint, tmp_path):
    renamed = tmp_path / "model.pt"
    shutil.copy(checkpoint, renamed)
    assert _same_weights(load(renamed), load(checkpoint))


def test_export_writes_what_load_reads(checkpoint, tmp_path):
    out = tmp_path / "voice.safetensors"
    exported = hub.export(checkpoint, out)
    again = load(out)
    assert _same_weights(again, exported) and _same_weights(again, load(checkpoint))
    assert again.config == exported.config


def test_exported_model_file_round_trips(tmp_path):
    model = WaveNet(WaveNetConfig(**TINY, mel_channels=20))
    model.save(tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert _same_weights(loaded, model) and loaded.config.mel_channels == 20


def test_bundled_default_model_loads():
    model = load("default")
    cfg = model.config
    assert cfg.mel_channels > 0 and cfg.num_speakers == len(cfg.speaker_names) == 4
    assert not model.training


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="mps is usable here")
def test_unusable_device_is_named():
    with pytest.raises(ValueError, match="^device: mps is not usable here"):
        load("default", device="mps")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        load(tmp_path / "nowhere.ckpt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", bytes(range(256)) * 4])
def test_corrupt_files_raise_value_error_naming_them(tmp_path, content):
    for name in ("bad.ckpt", "bad.safetensors"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=name):
            load(tmp_path / name)


@pytest.mark.parametrize(
    "content",
    [
        {"state_dict": {"layer.weight": torch.zeros(2)}},
        torch.zeros(3),
        [1, 2],
        {"hyper_parameters": {"model": {}}, "state_dict": torch.zeros(2)},
    ],
    ids=["other-model", "tensor", "list", "state-dict-not-a-dict"],
)
def test_checkpoint_of_something_else_is_refused(tmp_path, content):
    torch.save(content, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt: not a wavekit training checkpoint"):
        load(tmp_path / "other.ckpt")


class _Payload:
    """Unpickling this would create the file `target`: proof that code ran."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_malicious_pickle_is_never_executed(tmp_path):
    target = tmp_path / "pwned"
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": _Payload(str(target))}, f)
    with pytest.raises(ValueError, match="evil.ckpt: .*it holds something other than tensors and plain data"):
        load(tmp_path / "evil.ckpt")
    assert not target.exists()
