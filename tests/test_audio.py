"""Tests for wavekit.audio: file I/O, mu-law companding and log-mel features."""

from __future__ import annotations

import math
import os
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from wavekit.audio import AudioError, check_writable, load, log_mel, mulaw_decode, mulaw_encode, save


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------- mu-law


def _mulaw_probe(dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    random = torch.rand(100_000, generator=gen, dtype=dtype) * 2 - 1
    edges = torch.tensor(
        [-1.0, 1.0, 0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1e-4, -1e-4, 0.5, -0.5,
         0.999999, -0.999999, float(np.finfo(np.float32).tiny)],
        dtype=dtype,
    )
    return torch.cat([random, edges])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [256, 16, 65536])
def test_mulaw_encode_matches_torchaudio_exactly(dtype: torch.dtype, channels: int) -> None:
    x = _mulaw_probe(dtype)
    q = mulaw_encode(x, channels)
    assert q.dtype == torch.int64
    assert torch.equal(q, AF.mu_law_encoding(x, channels))
    assert int(q.min()) >= 0 and int(q.max()) <= channels - 1


def test_mulaw_encode_edge_codes_and_clamping() -> None:
    q = mulaw_encode(torch.tensor([-1.0, 0.0, 1.0, -3.0, 2.5]))
    assert q.tolist() == [0, 128, 255, 0, 255]


def test_mulaw_decode_matches_torchaudio() -> None:
    for channels in (256, 16):
        q = torch.arange(channels)
        y = mulaw_decode(q, channels)
        assert y.dtype == torch.float32
        assert torch.equal(y, AF.mu_law_decoding(q, channels))
        assert y[0] == -1.0 and y[-1] == 1.0


def test_mulaw_decode_rejects_out_of_range_codes() -> None:
    with pytest.raises(AudioError, match="q"):
        mulaw_decode(torch.tensor([0, 256]))


def test_mulaw_round_trip_within_quantisation_step() -> None:
    # Encoding rounds F(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu) to the nearest
    # of the levels 2k/mu - 1, so |F(x) - F(x_hat)| <= 1/mu.  F^-1 has slope
    # ln(1 + mu) (1 + mu|u|) / mu, increasing in |u|, so by the mean value
    # theorem |x - x_hat| <= ln(1 + mu) (1 + mu max(|x|, |x_hat|)) / mu**2.
    channels = 256
    mu = channels - 1
    x = _mulaw_probe(torch.float64)
    x_hat = mulaw_decode(mulaw_encode(x, channels), channels).double()
    err = (x - x_hat).abs()
    bound = math.log1p(mu) * (1 + mu * torch.maximum(x.abs(), x_hat.abs())) / mu**2
    assert bool((err <= bound + 1e-6).all())
    # The bound is tight: the worst case reaches most of it.
    assert float((err / bound).max()) > 0.9
    # With an even number of channels there is no zero level: values near 0
    # decode to +-(256 ** (1 / 255) - 1) / 255 ~= 8.62e-5.
    assert float(err[x.abs() < 1e-6].max()) < 8.7e-5


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip_16bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 8000).astype(np.float32)
    x[:2] = [1.0, -1.0]
    path = tmp_path / "rt.wav"
    save(path, torch.from_numpy(x), 8000)
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, 8000)
    y = load(path, 8000)
    assert y.dtype == torch.float32 and y.shape == (8000,)
    assert np.abs(y.numpy() - x).max() <= 1 / 32768


def test_save_clips_and_writes_multichannel(tmp_path: Path) -> None:
    x = np.array([[0.25, 1.5, -2.0, 0.0], [-0.5, 0.0, 0.5, 1.0]])
    path = tmp_path / "multi.wav"
    save(str(path), x, 16000)
    data, sr = sf.read(str(path), dtype="int16")
    assert sr == 16000 and data.shape == (4, 2)
    assert data.T.tolist() == [[8192, 32767, -32768, 0], [-16384, 0, 16384, 32767]]


@pytest.mark.parametrize(
    "audio",
    [np.array([0.0, np.nan]), torch.tensor([np.inf, 0.0]), np.zeros((1, 2, 3)), np.zeros(0)],
)
def test_save_rejects_bad_audio(tmp_path: Path, audio: np.ndarray | torch.Tensor) -> None:
    path = tmp_path / "bad.wav"
    with pytest.raises(AudioError, match="audio"):
        save(path, audio, 16000)
    assert not path.exists()


def test_check_writable_refuses_a_fifo_with_no_reader_at_once(tmp_path: Path) -> None:
    """Opening a FIFO to write waits for a reader; the check must not (it fails instead)."""
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(AudioError, match="pipe.wav: cannot be written"):
        check_writable(tmp_path / "pipe.wav")


def test_save_never_removes_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save writes the file directly: no try-file made and removed first, which a concurrent
    reader of the folder (the demo's pruning) could list and then not find."""
    monkeypatch.setattr(os, "remove", lambda *a: pytest.fail("save removed a file"))
    save(tmp_path / "new.wav", np.zeros(10), 8000)
    assert sf.info(str(tmp_path / "new.wav")).frames == 10


def test_save_missing_directory_or_directory_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "out.wav"
    with pytest.raises(AudioError, match="nope"):
        save(missing, np.zeros(10), 16000)
    assert not missing.parent.exists()
    with pytest.raises(AudioError, match=str(tmp_path)):
        save(tmp_path, np.zeros(10), 16000)


def test_save_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Permission bits do not stop root (CI runs as root), so deny write access at the check.
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK)
    with pytest.raises(AudioError, match="not writable"):
        save(tmp_path / "out.wav", np.zeros(10), 16000)
    assert not (tmp_path / "out.wav").exists()


def test_save_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(AudioError, match="file.txt"):
        save(blocker / "out.wav", np.zeros(10), 16000)


@pytest.mark.parametrize("rate", [0, -16000, 16000.0])
def test_bad_sample_rate(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "ok.wav"
    sf.write(str(path), np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioError, match="sample_rate"):
        load(path, rate)
    with pytest.raises(AudioError, match="sample_rate"):
        save(tmp_path / "out.wav", np.zeros(10), rate)


def test_stereo_and_multichannel_downmix_is_channel_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for channels in (2, 3):
        x = rng.uniform(-0.9, 0.9, (4000, channels)).astype(np.float32)
        path = tmp_path / f"c{channels}.wav"
        sf.write(str(path), x, 16000, subtype="FLOAT")
        y = load(path, 16000)
        assert y.shape == (4000,)
        np.testing.assert_allclose(y.numpy(), x.mean(axis=1), atol=1e-7)
    # Opposite channels cancel: catches "take the first channel".
    left = (_sine(440, 16000, 0.25) * 32767).astype(np.int16)
    path = tmp_path / "cancel.wav"
    sf.write(str(path), np.stack([left, -left], axis=1), 16000, subtype="PCM_16")
    assert float(load(path, 16000).abs().max()) == 0.0


def test_resample_keeps_frequency_and_duration(tmp_path: Path) -> None:
    path = tmp_path / "sine44k.wav"
    sf.write(str(path), _sine(1000, 44100, 1.0), 44100, subtype="PCM_16")
    y = load(path, 16000).numpy()
    assert y.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * 16000 / len(y)
    assert abs(peak_hz - 1000) <= 1
    assert abs(np.abs(y[1000:-1000]).max() - 0.5) < 0.01


@pytest.mark.parametrize(
    ("fmt", "subtype", "ext", "tol"),
    [
        ("WAV", "PCM_U8", "wav", 1 / 64),
        ("WAV", "PCM_16", "wav", 1 / 16384),
        ("WAV", "PCM_24", "wav", 1e-6),
        ("WAV", "PCM_32", "wav", 1e-6),
        ("WAV", "FLOAT", "wav", 0.0),
        ("WAV", "DOUBLE", "wav", 1e-7),
        ("FLAC", "PCM_S8", "flac", 1 / 64),
        ("FLAC", "PCM_16", "flac", 1 / 16384),
        ("FLAC", "PCM_24", "flac", 1e-6),
        ("AIFF", "PCM_24", "aiff", 1e-6),
        ("OGG", "VORBIS", "ogg", 0.05),
    ],
)
def test_load_formats(tmp_path: Path, fmt: str, subtype: str, ext: str, tol: float) -> None:
    x = _sine(440, 16000, 0.5, amp=0.8)
    path = tmp_path / f"x_{subtype}.{ext}"
    sf.write(str(path), x, 16000, format=fmt, subtype=subtype)
    y = load(path, 16000)
    assert y.dtype == torch.float32 and y.dim() == 1
    assert len(y) == len(x)
    assert np.abs(y.numpy() - x).max() <= tol


def test_float_file_above_full_scale_is_peak_normalised(tmp_path: Path) -> None:
    x = _sine(300, 8000, 0.25, amp=2.0)
    path = tmp_path / "loud.wav"
    sf.write(str(path), x, 8000, subtype="FLOAT")
    y = load(path, 8000).numpy()
    np.testing.assert_allclose(y, x / np.abs(x).max(), atol=1e-7)
    assert np.abs(y).max() == pytest.approx(1.0)


def _valid_wav_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "src.wav"
    sf.write(str(path), _sine(440, 16000, 0.5), 16000, subtype="PCM_16")
    return path.read_bytes()


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    wav = _valid_wav_bytes(tmp_path)
    files = {
        "empty": (b"", "empty.wav"),
        "header_only": (wav[:44], "header_only.wav"),
        "cut_in_half": (wav[: len(wav) // 2], "cut_in_half.wav"),
        "cut_in_header": (wav[:20], "cut_in_header.wav"),
        "stub": (wav[:8], "stub.wav"),
        "text": (b"this is not audio\n" * 20, "notes.wav"),
    }
    out = {}
    for key, (content, name) in files.items():
        out[key] = tmp_path / name
        out[key].write_bytes(content)
    flac = tmp_path / "src.flac"
    sf.write(str(flac), _sine(440, 16000, 0.5), 16000, format="FLAC")
    out["flac_cut"] = tmp_path / "flac_cut.flac"
    out["flac_cut"].write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    out["zero_samples"] = tmp_path / "zero_samples.wav"
    sf.write(str(out["zero_samples"]), np.zeros(0, np.float32), 16000)
    out["nan"] = tmp_path / "nan.wav"
    sf.write(str(out["nan"]), np.full(100, np.nan, np.float32), 16000, subtype="FLOAT")
    out["inf"] = tmp_path / "inf.wav"
    sf.write(str(out["inf"]), np.array([0.0, np.inf, 0.0], np.float32), 16000, subtype="FLOAT")
    out["missing"] = tmp_path / "missing.wav"
    out["directory"] = tmp_path / "a_directory.wav"
    out["directory"].mkdir()
    return out


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "not found"),
        ("directory", "not a regular file"),
        ("empty", "empty"),
        ("header_only", "truncated"),
        ("cut_in_half", "truncated"),
        ("cut_in_header", "truncated"),
        ("stub", "cannot decode"),
        ("flac_cut", "cannot decode"),
        ("text", "cannot decode"),
        ("zero_samples", "zero samples"),
        ("nan", "contains NaN or infinite samples"),
        ("inf", "contains NaN or infinite samples"),
    ],
)
def test_load_bad_input_raises_audio_error(tmp_path: Path, case: str, reason: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(AudioError) as info:
        load(path, 16000)
    message = str(info.value)
    assert path.name in message
    assert reason in message
    if case == "missing" or reason == "cannot decode":
        assert info.value.__cause__ is not None  # library error chained, not swallowed


def test_load_accepts_oversized_streaming_riff_placeholder(tmp_path: Path) -> None:
    # Streaming writers leave the RIFF size as 0xFFFFFFFF; that is not truncation.
    wav = bytearray(_valid_wav_bytes(tmp_path))
    wav[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    path = tmp_path / "stream.wav"
    path.write_bytes(bytes(wav))
    assert load(path, 16000).shape == (8000,)


# ---------------------------------------------------------------- log-mel


@pytest.mark.parametrize("n_samples", [256, 300, 1000, 1024, 4097, 22050])
def test_log_mel_shape(n_samples: int) -> None:
    audio = torch.randn(n_samples) * 0.1
    mel = log_mel(audio, 22050)
    assert mel.dtype == torch.float32
    assert mel.shape == (80, n_samples // 256)


def test_log_mel_batch_dims_preserved() -> None:
    audio = torch.randn(2, 3, 5000) * 0.1
    params = {"n_mels": 40, "hop_length": 200, "n_fft": 800}
    mel = log_mel(audio, 16000, **params)
    assert mel.shape == (2, 3, 40, 25)
    torch.testing.assert_close(mel[1, 2], log_mel(audio[1, 2], 16000, **params))


def test_log_mel_too_short_and_bad_params() -> None:
    with pytest.raises(AudioError, match="hop_length"):
        log_mel(torch.zeros(255), 22050)
    with pytest.raises(AudioError, match="fmax"):
        log_mel(torch.zeros(1000), 16000, fmax=9000)
    with pytest.raises(AudioError, match="n_mels"):
        log_mel(torch.zeros(1000), 16000, n_mels=0)


def test_log_mel_silence_is_clamped() -> None:
    mel = log_mel(torch.zeros(2048), 16000)
    assert torch.equal(mel, torch.full_like(mel, math.log(1e-5)))


@pytest.mark.parametrize("band", [5, 20, 45, 70])
def test_log_mel_sine_peaks_in_its_band(band: int) -> None:
    sr, n_mels = 16000, 80
    centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=sr / 2)
    freq = float(centres[band + 1])
    mel = log_mel(torch.from_numpy(_sine(freq, sr, 0.5)), sr, n_mels=n_mels)
    assert int(mel.mean(dim=-1).argmax()) == band


def test_log_mel_matches_librosa() -> None:
    rng = np.random.default_rng(3)
    sr, hop, n_fft, n_mels = 22050, 256, 1024, 80
    y = (rng.standard_normal(sr) * 0.1 + _sine(700, sr, 1.0)).astype(np.float32)[: 20_000]
    for fmin, fmax in ((0.0, None), (80.0, 7600.0)):
        ref = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax,
            power=1.0, center=True, pad_mode="constant", htk=False, norm="slaney",
        )
        expected = np.log(np.maximum(ref, 1e-5))[:, : len(y) // hop]
        mel = log_mel(torch.from_numpy(y), sr, n_mels, hop, n_fft, fmin, fmax)
        np.testing.assert_allclose(mel.numpy(), expected, atol=1e-4)
