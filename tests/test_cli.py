"""The `wavekit` command: the quickstart job end to end, and clean failures on bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavekit import WaveNet, WaveNetConfig, generate, toy
from wavekit.cli import main


def test_toy_job_writes_audio_and_a_reloadable_model(tmp_path, capsys):
    out = tmp_path / "toy.wav"
    main(["toy", "--out", str(out), "--steps", "30", "--seconds", "0.25"])
    wave, rate = sf.read(out)
    assert rate == toy.toy_config().sample_rate
    assert len(wave) == rate // 4
    assert wave.std() > 0.01  # not silence
    model = WaveNet.from_file(tmp_path / "toy.safetensors")
    assert model.config == toy.toy_config()
    report = capsys.readouterr().out
    before, after = map(float, re.search(r"([\d.]+) -> ([\d.]+) bits/sample on the signal", report).groups())
    assert before > 7.5  # untrained: about log2(256) = 8 bits
    assert after < before - 3  # 30 steps already learn the periodic signal
    assert "samples/s" in report and "real time" in report


def test_toy_job_is_reproducible(tmp_path):
    for name in ("a", "b"):
        main(["toy", "--out", str(tmp_path / f"{name}.wav"), "--steps", "5", "--seconds", "0.05", "--seed", "3"])
    a, _ = sf.read(tmp_path / "a.wav")
    b, _ = sf.read(tmp_path / "b.wav")
    assert torch.equal(torch.from_numpy(a), torch.from_numpy(b))


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--steps", "0"], "--steps"),
        (["--seconds", "-1"], "--seconds"),
        (["--seconds", "nan"], "--seconds"),
        (["--steps", "many"], "--steps"),
        (["--seconds", "1e-6"], "--seconds"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, culprit):
    result = subprocess.run(
        [sys.executable, "-m", "wavekit.cli", "toy", "--out", str(tmp_path / "x.wav"), *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert culprit in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1  # no usage block


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["demo", "--port", "99999"], "--port"),
        (["demo", "--host", "256.1.1.1"], "--host: 256.1.1.1"),
        (["export", "default", "voice.wav"], "voice.wav should end in .safetensors"),
        (["synth", "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "--device"),
        (["evaluate", "--checkpoint", "default"], "--manifest"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_commands_exit_2_with_one_line(args, culprit, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and culprit in err


def test_interrupt_exits_130_without_a_traceback(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("wavekit.cli.stream", interrupted)
    with pytest.raises(SystemExit) as exit_:
        main(["synth", "--mel-from", str(Path(__file__).parents[1] / "examples" / "hello.wav")])
    assert exit_.value.code == 130 and capsys.readouterr().err == "wavekit: interrupted\n"


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"wavekit {version('wavekit')}"
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "sampling temperature (< 1: sharper) (default: 1.0)" in " ".join(capsys.readouterr().out.split())


def test_unwritable_output_exits_2_naming_it(tmp_path):
    out = tmp_path / "missing-dir" / "x.wav"
    result = subprocess.run(
        [sys.executable, "-m", "wavekit.cli", "toy", "--out", str(out), "--steps", "2", "--seconds", "0.01"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "missing-dir" in result.stderr
    assert "Traceback" not in result.stderr


TINY = dict(layers=4, stacks=1, residual_channels=8, gate_channels=16, skip_channels=16)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random models: a mel + speaker vocoder, an unconditional one, and a reference WAV."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    vocoder = WaveNetConfig(**TINY, mel_channels=20, num_speakers=2, speaker_names=("ann", "bob"))
    WaveNet(vocoder).save(root / "vocoder.safetensors")
    WaveNet(WaveNetConfig(**TINY)).save(root / "plain.safetensors")
    t = torch.arange(8000) / 16000
    sf.write(root / "ref.wav", (0.5 * torch.sin(2 * torch.pi * 220 * t)).numpy(), 16000)
    (root / "text.wav").write_text("not audio")
    sf.write(root / "blip.wav", np.zeros(100, np.float32), 16000)  # shorter than one 256-sample frame
    return root


def _synth(models, *args: str) -> None:
    main(["synth", *args])


def test_synth_vocodes_a_recording_with_a_named_speaker(models, tmp_path, capsys):
    out = tmp_path / "v.wav"
    _synth(models, "--checkpoint", str(models / "vocoder.safetensors"), "--mel-from", str(models / "ref.wav"),
           "--speaker", "bob", "--out", str(out), "--seed", "4")  # fmt: skip
    wave, rate = sf.read(out)
    assert rate == 16000 and len(wave) == 8000 // 256 * 256  # the mel's frames x hop
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"wrote {out}") and "speaker bob" in summary and "x real time" in summary
    model = WaveNet.from_file(models / "vocoder.safetensors")
    mel = model.config.mel(torch.from_numpy(sf.read(models / "ref.wav", dtype="float32")[0]))
    expected = generate(model, mel=mel, speaker=1, seed=4)[0]
    assert torch.allclose(torch.from_numpy(wave).float(), expected, atol=1 / 32768)


def test_synth_seconds_cuts_the_mel_and_batch_writes_one_file_per_stream(models, tmp_path):
    _synth(models, "--checkpoint", str(models / "vocoder.safetensors"), "--mel-from", str(models / "ref.wav"),
           "--seconds", "0.1", "--batch", "3", "--out", str(tmp_path / "b.wav"))  # fmt: skip
    waves = [sf.read(tmp_path / f"b_{i}.wav")[0] for i in range(3)]
    assert all(len(w) == round(0.1 * 16000 / 256) * 256 for w in waves)
    assert not (waves[0] == waves[1]).all()  # stream b has seed + b
    assert not (tmp_path / "b.wav").exists()


def test_synth_unconditional_model_takes_seconds(models, tmp_path):
    _synth(models, "--checkpoint", str(models / "plain.safetensors"), "--seconds", "0.05",
           "--temperature", "0.5", "--out", str(tmp_path / "u.wav"))  # fmt: skip
    assert len(sf.read(tmp_path / "u.wav")[0]) == 800


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--checkpoint", "{m}/missing.ckpt"], "missing.ckpt"),
        (["--checkpoint", "{m}/text.wav"], "text.wav"),
        (["--checkpoint", "{m}/vocoder.safetensors", "--mel-from", "{m}/ref.wav", "--speaker", "carl"], "carl"),
        (["--checkpoint", "{m}/vocoder.safetensors", "--mel-from", "{m}/ref.wav", "--speaker", "7"], "--speaker"),
        (["--checkpoint", "{m}/plain.safetensors", "--mel-from", "{m}/ref.wav"], "--mel-from"),
        (["--checkpoint", "{m}/plain.safetensors", "--speaker", "ann"], "--speaker"),
        (["--checkpoint", "{m}/vocoder.safetensors"], "--mel-from"),
        (["--checkpoint", "{m}/vocoder.safetensors", "--mel-from", "{m}/text.wav"], "text.wav"),
        (["--checkpoint", "{m}/vocoder.safetensors", "--mel-from", "{m}/blip.wav"], "blip.wav: 100 samples"),
        (["--checkpoint", "{m}/plain.safetensors", "--out", "{m}/no-dir/x.wav"], "no-dir"),
        (["--checkpoint", "{m}/plain.safetensors", "--device", "cuda:0"] if not torch.cuda.is_available()
         else ["--checkpoint", "{m}/plain.safetensors", "--device", "tpu"], "--device"),
    ],
)
def test_synth_bad_input_exits_2_with_one_line(models, args, culprit, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["synth", *(a.format(m=models) for a in args)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wavekit: error:") and culprit in err


@pytest.mark.parametrize("out", ["/proc/wavekit-out.wav", "{tmp}/dangling.wav"], ids=["proc", "dangling-link"])
def test_synth_out_that_only_writing_refuses_fails_before_generating(models, tmp_path, monkeypatch, capsys, out):
    """Paths whose directory looks writable but where no file can be made (/proc as root, a link
    into a missing directory) are refused by the up-front check, not after the generation."""
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone" / "x.wav")
    out = out.format(tmp=tmp_path)
    monkeypatch.setattr("wavekit.cli._generate_timed", lambda *a, **k: pytest.fail("generated before failing"))
    with pytest.raises(SystemExit) as exit_:
        main(["synth", "--checkpoint", str(models / "plain.safetensors"), "--out", out])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"wavekit: error: {out}:")


def test_synth_out_check_leaves_files_as_they_were(models, tmp_path):
    """The check opens --out without truncating it: when synthesis then fails (here an unknown
    speaker), an existing file keeps its bytes and no new file is left behind."""
    kept = tmp_path / "kept.wav"
    kept.write_bytes(b"an earlier take")
    for out in (["--out", str(kept)], ["--out", str(tmp_path / "new.wav"), "--batch", "2"]):
        with pytest.raises(SystemExit):
            _synth(models, "--checkpoint", str(models / "vocoder.safetensors"), "--mel-from", str(models / "ref.wav"),
                   "--speaker", "carl", *out)  # fmt: skip
    assert kept.read_bytes() == b"an earlier take" and list(tmp_path.iterdir()) == [kept]


def test_synth_failure_has_no_traceback_as_a_process(models):
    result = subprocess.run(
        [sys.executable, "-m", "wavekit.cli", "synth", "--checkpoint", str(models / "vocoder.safetensors")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--mel-from" in result.stderr


def test_export_command_writes_a_loadable_model(models, tmp_path, capsys):
    main(["export", str(models / "vocoder.safetensors"), str(tmp_path / "e.safetensors")])
    assert "speakers ann, bob" in capsys.readouterr().out
    exported, original = (WaveNet.from_file(p) for p in (tmp_path / "e.safetensors", models / "vocoder.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), original.state_dict().values()))


def test_prepare_rejects_an_unknown_recipe(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "timit"])
    assert exit_.value.code == 2 and "timit" in capsys.readouterr().err
