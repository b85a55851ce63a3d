"""The `wavekit` command: the quickstart job end to end, and clean failures on bad input."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from wavekit import WaveNet, toy
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
    assert "Traceback" not in result.stderr


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
