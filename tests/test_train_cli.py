"""Tests for `wavekit train` (wavekit.train.train_cli / WaveNetCLI), `evaluate`, `mulaw_entropy`
and two-process DDP training. Tiny models on a tiny generated corpus, CPU, seconds each
(the DDP test about half a minute: it starts two fresh Python processes)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from wavekit.audio import load, mulaw_decode
from wavekit.cli import main
from wavekit.model import WaveNet, WaveNetConfig
from wavekit.train import WaveNetCLI, WaveNetModule, evaluate, mulaw_entropy, train_cli

RATE = 8000
LN2 = math.log(2)
MODEL = dict(layers=2, stacks=1, residual_channels=4, gate_channels=4, skip_channels=8, sample_rate=RATE)
# split -> lengths in samples of its utterances (all different, none a multiple of 256)
CORPUS = {"train": [3000, 3500], "valid": [1100], "test": [1000, 1700]}


pytestmark = pytest.mark.usefixtures("single_thread")


def _write_manifest(directory: Path, utterances: list[tuple[str, np.ndarray, str | None, str]]) -> Path:
    """Write (name, float32 audio, speaker, split) as float WAVs plus a manifest; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, audio, speaker, split in utterances:
        sf.write(directory / f"{name}.wav", audio, RATE, subtype="FLOAT")
        entry = {"path": f"{name}.wav", "duration": len(audio) / RATE, "speaker": speaker, "split": split}
        lines.append(json.dumps(entry))
    manifest = directory / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A manifest of noisy 200 Hz tones, speakers "a"/"b" alternating; returns its path."""
    rng = np.random.default_rng(0)
    utterances = []
    for split, lengths in CORPUS.items():
        for i, n in enumerate(lengths):
            t = np.arange(n) / RATE
            audio = 0.5 * np.sin(2 * np.pi * 200 * t + i) + 0.05 * rng.standard_normal(n)
            utterances.append((f"{split}{i}", audio.astype(np.float32), "ab"[i % 2], split))
    return _write_manifest(tmp_path / "corpus", utterances)


def _config_file(tmp_path: Path, manifest: Path, name: str = "config.yaml", **overrides: dict) -> Path:
    """A recipe-format config for a 3-step run into tmp_path/run; `overrides` update whole sections."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": 3, "val_check_interval": 2, "check_val_every_n_epoch": None,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
        },
        "model": {"model": MODEL, "lr": 1e-2, "warmup_steps": 1, "lr_decay_steps": 10, "sample_seconds": 0},
        "data": {"manifest": str(manifest), "segment_samples": 256, "batch_size": 2},
        "ema": {"decay": 0.9},
        "checkpoint": {"save_last": True, "every_n_train_steps": 2},
    }  # fmt: skip
    for section, values in overrides.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_config_checkpoints_and_logs_with_overrides(tmp_path, corpus):
    config = _config_file(tmp_path, corpus)
    train_cli(["--config", str(config), "--model.lr", "0.002", "--model.model.residual_channels", "6"])
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["lr"] == 0.002 and saved["model"]["model"]["residual_channels"] == 6
    assert saved["model"]["model"]["layers"] == MODEL["layers"] and saved["data"]["batch_size"] == 2
    assert saved["resume"] is False and saved["checkpoint"]["dirpath"] == str(run / "checkpoints")
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard logs in the run directory itself

    last = _checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3  # saved at train end, after the periodic save at step 2
    assert (run / "checkpoints" / "epoch=0-step=2.ckpt").is_file()
    module = WaveNetModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert module.config == WaveNetConfig(**{**MODEL, "residual_channels": 6}) and module.hparams.lr == 0.002


def test_data_module_gets_the_model_config(tmp_path, corpus):
    cli = WaveNetCLI(["--config", str(_config_file(tmp_path, corpus)), "--model.model.layers", "4"])
    assert cli.datamodule.config is cli.model.config and cli.model.config.layers == 4


@pytest.mark.parametrize(
    "where, culprit",
    [("cli", "layerz"), ("file", "layerz"), ("cli-type", "model.model.layers"), ("file-type", "model.model.layers")],
)
def test_unknown_key_or_wrong_type_exits_2_with_one_line_naming_it(tmp_path, corpus, capsys, where, culprit):
    if where.startswith("cli"):
        args = ["--config", str(_config_file(tmp_path, corpus))]
        args += ["--model.model.layerz", "3"] if where == "cli" else ["--model.model.layers", "many"]
    else:
        bad = {"layerz": 3} if where == "file" else {"layers": "many"}
        args = ["--config", str(_config_file(tmp_path, corpus, model={"model": {**MODEL, **bad}}))]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("wavekit: error:") and err.count("\n") == 1 and culprit in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, error, message",
    [
        (["--model.model.stacks", "3"], ValueError, "multiple of stacks"),
        (["--model.lr", "0"], ValueError, "lr must be > 0"),
        (["--ema.decay", "1.5"], ValueError, "EMA decay"),
        (["--data.segment_samples", "0"], ValueError, "segment_samples"),
        (["--data.manifest", "missing/manifest.jsonl"], FileNotFoundError, "missing/manifest.jsonl"),
    ],
)
def test_bad_values_raise_clear_errors(tmp_path, corpus, args, error, message):
    with pytest.raises(error, match=message):
        train_cli(["--config", str(_config_file(tmp_path, corpus)), *args])


def test_print_config_prints_the_merged_config_and_exits(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli(["--config", str(_config_file(tmp_path, corpus)), "--model.model.layers", "6", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model"]["layers"] == 6 and printed["model"]["model"]["skip_channels"] == 8
    assert printed["ema"]["decay"] == 0.9 and printed["trainer"]["max_steps"] == 3
    assert not (tmp_path / "run").exists()


def test_lightnings_warnings_about_its_own_code_are_not_shown(tmp_path, corpus):
    """With deprecation warnings on (-W default, as under PYTHONWARNINGS or pytest), a run shows
    none of those Lightning raises about its own code: pytorch_lightning.cli calling deprecated
    jsonargparse APIs, its pytree helper a deprecated torch check."""
    config = _config_file(tmp_path, corpus)
    done = subprocess.run(
        [sys.executable, "-W", "default", "-m", "wavekit.cli", "train", "--config", str(config)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "was deprecated" not in done.stderr and "JsonargparseDeprecationWarning" not in done.stderr
    assert "LeafSpec" not in done.stderr  # Lightning's pytree helper under torch 2.14


def test_jsonargparse_deprecations_about_the_users_input_still_show(tmp_path, corpus, monkeypatch):
    """The filter is narrow: jsonargparse's deprecation of a flag the user gave still shows."""
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")  # else once per process
    with pytest.warns(DeprecationWarning, match="skip_null flag for --print_config was deprecated"):
        with pytest.raises(SystemExit):
            train_cli(["--config", str(_config_file(tmp_path, corpus)), "--print_config=skip_null"])


def test_resume_continues_and_a_rerun_without_it_is_refused(tmp_path, corpus):
    config = str(_config_file(tmp_path, corpus))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match="--resume"):
        train_cli(["--config", config, "--resume"])  # nothing to resume yet
    train_cli(["--config", config])
    first = _checkpoint(last)
    assert first["global_step"] == 3

    with pytest.raises(ValueError, match="--resume") as refused:
        train_cli(["--config", config, "--trainer.max_steps", "5"])
    assert str(last) in str(refused.value)
    assert _checkpoint(last)["global_step"] == 3  # untouched

    with pytest.raises(ValueError, match="residual_channels: 4 -> 6"):
        train_cli(["--config", config, "--resume", "--model.model.residual_channels", "6"])
    shutil.copy(last, tmp_path / "kept.ckpt")
    torch.save({"state_dict": {}}, last)  # not a wavekit checkpoint: said so, not diffed against defaults
    with pytest.raises(ValueError, match="last.ckpt: not a wavekit training checkpoint"):
        train_cli(["--config", config, "--resume"])
    shutil.copy(tmp_path / "kept.ckpt", last)

    train_cli(["--config", config, "--resume", "--trainer.max_steps", "5"])
    resumed = _checkpoint(last)
    assert resumed["global_step"] == 5
    assert not _same_weights(resumed["current_model_state"], first["current_model_state"])
    names = sorted(p.name for p in last.parent.iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt"  # one periodic checkpoint, last.ckpt overwritten in place
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 5 and saved["resume"] is False

    moved = tmp_path / "moved"  # the checkpoint records its old directory; resuming elsewhere still
    (tmp_path / "run").rename(moved)  # updates last.ckpt in place
    train_cli(["--config", config, "--resume", "--trainer.max_steps", "6", "--trainer.default_root_dir", str(moved)])
    assert _checkpoint(moved / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert not list(moved.glob("checkpoints/last-*"))


def test_seed_makes_runs_identical(tmp_path, corpus):
    config = str(_config_file(tmp_path, corpus))
    states = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        train_cli(["--config", config, "--trainer.default_root_dir", str(tmp_path / name), "--seed_everything", seed])
        ckpt = _checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")
        states.append((ckpt["state_dict"], ckpt["current_model_state"]))
    (ema_a, raw_a), (ema_b, raw_b), (ema_c, _) = states
    assert _same_weights(ema_a, ema_b) and _same_weights(raw_a, raw_b)
    assert not _same_weights(ema_a, ema_c)


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path, corpus):
    """2 ranks (gloo), each on different segments: DDP averages the gradients, so both end with
    the same (trained) weights; each rank writes its own weights from memory. An epoch is one
    step here, and every epoch draws new segments (Lightning forwards set_epoch through its
    distributed sampler wrapper since 2.6.1)."""
    ddp = {
        "accelerator": "cpu", "devices": 2, "enable_progress_bar": False,
        "strategy": {
            "class_path": "pytorch_lightning.strategies.DDPStrategy",
            "init_args": {"process_group_backend": "gloo"},
        },
    }  # fmt: skip
    config = _config_file(tmp_path, corpus, trainer=ddp, data={"samples_per_epoch": 4})
    out = tmp_path / "ranks"
    out.mkdir()
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(worker), str(out), "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["step"] == rank1["step"] == 3
    assert len(rank0["first"]) == len(rank1["first"]) == 3  # one step per epoch
    assert all(len(set(rank["first"])) == 3 for rank in (rank0, rank1))  # new segments every epoch
    assert rank0["first"][0] != rank1["first"][0]  # the ranks trained on different data...
    assert _same_weights(rank0["weights"], rank1["weights"])  # ...yet agree
    assert not _same_weights(rank0["weights"], rank0["initial"])
    ckpt = _checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    assert _same_weights({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}, rank0["weights"])


MEL_SPEAKERS = dict(
    layers=3, stacks=1, residual_channels=4, gate_channels=4, skip_channels=8, sample_rate=RATE, head="mol",
    mixtures=2, mel_channels=4, upsample_scales=(4, 4), n_fft=64, num_speakers=2, speaker_names=("a", "b"),
)  # fmt: skip


def _direct_bits(model: WaveNet, manifest: Path, split: str, segment: int | None) -> tuple[float, int]:
    """(bits/sample, samples) of `split`, each utterance (or `segment`-sample slice) scored alone."""
    cfg = model.config
    nats, samples = 0.0, 0
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    with torch.no_grad():
        for entry in (e for e in entries if e["split"] == split):
            audio = load(manifest.parent / entry["path"], RATE)
            mel = cfg.mel(audio) if cfg.mel_channels else None
            if mel is not None:
                audio = audio[: mel.shape[-1] * cfg.hop_length]
            speaker = cfg.speaker_names.index(entry["speaker"]) if cfg.num_speakers else None
            step = segment or len(audio)
            for start in range(0, len(audio), step):
                piece = audio[start : start + step][None]
                frames = slice(start // cfg.hop_length, (start + step) // cfg.hop_length)
                piece_mel = None if mel is None else mel[None, :, frames]
                nats -= model.log_prob(piece, piece_mel, speaker).double().sum().item()
                samples += piece.numel()
    return nats / samples / LN2, samples


@pytest.mark.parametrize("kind", [MODEL, MEL_SPEAKERS], ids=["mulaw", "mol-mel-speakers"])
@pytest.mark.parametrize("segment", [None, 256])
def test_evaluate_matches_log_prob_computed_directly(corpus, kind, segment):
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**kind)).train()
    expected, samples = _direct_bits(model.eval(), corpus, "test", segment)
    model.train()
    results = [evaluate(model, corpus, "test", segment_samples=segment, batch_size=b) for b in (1, 4)]
    for result in results:
        assert result["bits_per_sample"] == pytest.approx(expected, rel=1e-6)
        assert result["samples"] == samples and result["utterances"] == 2 and result["split"] == "test"
        assert 0 < result["mulaw_entropy"] < 8
    assert model.training  # mode restored
    if not kind.get("mel_channels"):  # every sample scored: same histogram as the files'
        assert samples == sum(CORPUS["test"])
        assert results[0]["mulaw_entropy"] == pytest.approx(mulaw_entropy(corpus, "test", RATE))


def test_evaluate_command_scores_segments(tmp_path, corpus, capsys):
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**MODEL))
    model.save(tmp_path / "m.safetensors")
    main(["evaluate", "--checkpoint", str(tmp_path / "m.safetensors"), "--manifest", str(corpus),
          "--segment-samples", "256"])  # fmt: skip
    expected = evaluate(model, corpus, "test", segment_samples=256)
    printed = f"test: {expected['bits_per_sample']:.4f} bits/sample over {expected['samples']:,}"
    assert capsys.readouterr().out.startswith(printed)


def test_evaluate_rejects_bad_splits_and_arguments(tmp_path, corpus):
    model = WaveNet(WaveNetConfig(**MODEL))
    with pytest.raises(ValueError, match="'dev'"):
        evaluate(model, corpus, "dev")
    only_train = _write_manifest(tmp_path / "small", [("x", np.zeros(100, np.float32), None, "train")])
    with pytest.raises(ValueError, match="'test' split"):
        evaluate(model, only_train, "test")
    with pytest.raises(ValueError, match="segment_samples"):
        evaluate(model, corpus, "test", segment_samples=0)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        evaluate(model, tmp_path / "nope.jsonl")
    mel_model = WaveNet(WaveNetConfig(**MEL_SPEAKERS))
    with pytest.raises(ValueError, match="multiple of 16"):
        evaluate(mel_model, corpus, "test", segment_samples=100)
    blip = _write_manifest(tmp_path / "blip", [("blip", np.zeros(10, np.float32), "a", "test")])
    with pytest.raises(ValueError, match=r"blip\.wav: 10 samples, shorter than one mel frame"):
        evaluate(mel_model, blip, "test")


def test_mulaw_entropy_of_known_signals(tmp_path):
    every_bin = mulaw_decode(torch.arange(256).repeat(8)).numpy()  # each of the 256 bins 8 times
    two_bins = np.repeat(mulaw_decode(torch.tensor([10, 200])).numpy(), 300)
    manifest = _write_manifest(
        tmp_path,
        [("uniform", every_bin, None, "train"), ("two", two_bins, None, "test"),
         ("zeros", np.zeros(500, np.float32), None, "valid")],
    )  # fmt: skip
    assert mulaw_entropy(manifest, "train", RATE) == pytest.approx(8.0)
    assert mulaw_entropy(manifest, "test", RATE) == pytest.approx(1.0)
    assert mulaw_entropy(manifest, "valid", RATE) == 0.0
    with pytest.raises(ValueError, match="'dev'"):
        mulaw_entropy(manifest, "dev", RATE)
