"""Audio I/O, mu-law companding and log-mel features for wavekit.

Everything that touches raw audio goes through this module: files are read
and written with soundfile (libsndfile), resampled with soxr, and mel
features are computed with torchaudio.  Bad input raises :class:`AudioError`.
"""

from __future__ import annotations

import functools
import numbers
import os
import stat

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

__all__ = ["AudioError", "load", "save", "check_writable", "to_pcm16", "mulaw_encode", "mulaw_decode", "log_mel"]

# RIFF/FORM size fields that streaming writers leave as "unknown".
_UNKNOWN_CONTAINER_SIZES = (0, 0xFFFFFFFF)


class AudioError(ValueError):
    """Invalid audio input; the message names the offending file or argument."""


def _check_sample_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")


def _check_not_truncated(path: str) -> None:
    """Raise if a WAV/AIFF header declares more bytes than the file holds.

    libsndfile silently reads whatever is left of a truncated WAV or AIFF
    file, so the outer RIFF/FORM chunk size is checked here.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        actual = os.fstat(f.fileno()).st_size
    if len(header) < 12:
        return
    if header[:4] == b"RIFF" and header[8:12] == b"WAVE":
        field = int.from_bytes(header[4:8], "little")
    elif header[:4] == b"FORM" and header[8:12] in (b"AIFF", b"AIFC"):
        field = int.from_bytes(header[4:8], "big")
    else:
        return
    # One byte of slack: some writers omit the final chunk's pad byte.
    if field not in _UNKNOWN_CONTAINER_SIZES and actual + 1 < field + 8:
        raise AudioError(
            f"{path}: file is truncated (header declares {field + 8} bytes, "
            f"file has {actual})"
        )


def load(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """Read an audio file as a 1-D float32 mono tensor at ``sample_rate``.

    Any format libsndfile reads is accepted (WAV, FLAC, OGG, AIFF; integer
    or float samples).  Channels are averaged; other rates are resampled
    with soxr (high quality).  The result lies in [-1, 1]: if its peak
    exceeds 1 (a float file may legitimately go above full scale, and
    resampling can overshoot) the whole signal is divided by the peak, so
    the waveform is never clipped.

    Raises:
        AudioError: ``sample_rate`` is not positive, or the file is missing,
            empty, truncated, corrupt, not audio, has no samples, or
            contains NaN or infinite samples.
    """
    _check_sample_rate(sample_rate)
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError as e:
        raise AudioError(f"{path}: file not found") from e
    except OSError as e:
        raise AudioError(f"{path}: cannot access file ({e.strerror})") from e
    if not stat.S_ISREG(info.st_mode):
        raise AudioError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    try:
        _check_not_truncated(path)
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, OSError) as e:
        raise AudioError(
            f"{path}: cannot decode audio (corrupt, truncated or unsupported format): {e}"
        ) from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: file contains zero samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    mono = data.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
        if mono.size == 0:
            raise AudioError(
                f"{path}: {data.shape[0]} samples at {file_rate} Hz leave none "
                f"after resampling to {sample_rate} Hz"
            )
    peak = float(np.abs(mono).max())
    if peak > 1.0:
        mono = mono / peak
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def _check_output_path(path: str) -> None:
    """Raise AudioError naming `path` if its directory is missing or read-only, or it is a directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise AudioError(f"{path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory")
    if not os.access(directory, os.W_OK):
        raise AudioError(f"{path}: directory {directory} is not writable")


def check_writable(path: str | os.PathLike) -> None:
    """Raise AudioError naming `path` unless a file can be written there (its directory exists
    and is writable, the path is not a directory, and opening it for writing works: tried for
    real, since permission bits do not tell for root, /proc or a dangling link). Lets callers
    fail before long work. An existing file is opened to append and keeps its contents; a file
    the try creates is removed again."""
    path = os.fspath(path)
    _check_output_path(path)
    target = os.path.realpath(path)  # a link's target, which writing creates if the link dangles
    try:  # create it, and know atomically that this call did; else open what is there to append
        fd, created = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL), True
    except FileExistsError:
        try:  # non-blocking: a FIFO with no reader fails here instead of waiting for one
            fd, created = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK), False
        except OSError as e:
            raise AudioError(f"{path}: cannot be written: {e.strerror}") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot be written: {e.strerror}") from None
    os.close(fd)
    if created:
        os.remove(target)


def save(path: str | os.PathLike, audio: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write ``audio`` as a 16-bit PCM WAV file.

    ``audio`` is 1-D (mono) or ``[channels, time]``.  Samples are clipped to
    [-1, 1] and quantised as ``round(x * 32768)`` (saturating at 32767), the
    inverse of the ``/ 32768`` scaling used when reading, so a save/load
    round trip is exact to within one LSB.  No directories are created.

    Raises:
        AudioError: bad ``sample_rate`` or ``audio`` (wrong shape, empty, NaN
            or infinite samples), or the file cannot be written.
    """
    _check_sample_rate(sample_rate)
    path = os.fspath(path)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    array = np.asarray(audio, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise AudioError(f"audio must be 1-D or [channels, time], got shape {array.shape}")
    if array.size == 0:
        raise AudioError(f"audio has no samples (shape {array.shape})")
    if not np.isfinite(array).all():
        raise AudioError("audio contains NaN or infinite samples")
    pcm = to_pcm16(array)

    _check_output_path(path)
    try:
        sf.write(path, pcm.T, sample_rate, format="WAV", subtype="PCM_16")
    except (sf.LibsndfileError, OSError) as e:
        raise AudioError(f"{path}: cannot write audio file: {e}") from e


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples as int16 PCM: clipped to [-1, 1], times 32768, rounded (no peak normalisation)."""
    return np.clip(np.round(np.clip(samples, -1.0, 1.0) * 32768.0), -32768, 32767).astype(np.int16)


def mulaw_encode(x: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """Mu-law encode ``x`` (clamped to [-1, 1]) to int64 codes in [0, channels).

    Identical, element for element, to
    ``torchaudio.functional.mu_law_encoding(x, channels)``.
    """
    if channels < 2:
        raise AudioError(f"channels must be >= 2, got {channels}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    return AF.mu_law_encoding(x.clamp(-1.0, 1.0), channels)


def mulaw_decode(q: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """Decode mu-law codes in [0, channels) to float32 samples in [-1, 1].

    Agrees with ``torchaudio.functional.mu_law_decoding(q, channels)``.
    """
    if channels < 2:
        raise AudioError(f"channels must be >= 2, got {channels}")
    if q.numel() and (q.min() < 0 or q.max() > channels - 1):
        raise AudioError(f"q must lie in [0, {channels - 1}] for channels={channels}")
    return AF.mu_law_decoding(q.to(torch.float32), channels)


@functools.lru_cache(maxsize=16)
def _mel_transform(
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float,
    fmax: float,
    device: torch.device,
) -> AT.MelSpectrogram:
    return AT.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        f_min=fmin,
        f_max=fmax,
        n_mels=n_mels,
        power=1.0,
        center=True,
        pad_mode="constant",
        norm="slaney",
        mel_scale="slaney",
    ).to(device)


def log_mel(
    audio: torch.Tensor,
    sample_rate: int,
    n_mels: int = 80,
    hop_length: int = 256,
    n_fft: int = 1024,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> torch.Tensor:
    """Log-mel magnitude spectrogram: ``[..., T]`` -> ``[..., n_mels, T // hop_length]``.

    Uses a periodic Hann window of ``n_fft`` samples, centred frames with
    zero padding, the STFT *magnitude* (power=1), and a Slaney-scale,
    Slaney-normalised mel filterbank (librosa's defaults); the result is
    ``log(max(mel, 1e-5))`` in float32.  Frame ``i`` is centred on sample
    ``i * hop_length`` and conditions samples ``[i * hop, (i + 1) * hop)``;
    the final centred frame is dropped so ``frames * hop_length`` samples are
    covered (trailing ``T % hop_length`` samples have no frame).
    ``fmax=None`` means ``sample_rate / 2``.

    Raises:
        AudioError: invalid parameters, or audio shorter than one hop.
    """
    _check_sample_rate(sample_rate)
    for name, value in (("n_mels", n_mels), ("hop_length", hop_length), ("n_fft", n_fft)):
        if value <= 0:
            raise AudioError(f"{name} must be positive, got {value}")
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0.0 <= fmin < fmax <= sample_rate / 2:
        raise AudioError(
            f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}"
        )
    n_samples = audio.shape[-1] if audio.dim() else 0
    if n_samples < hop_length:
        raise AudioError(
            f"audio has {n_samples} samples, fewer than hop_length={hop_length}"
        )
    transform = _mel_transform(
        sample_rate, n_fft, hop_length, n_mels, float(fmin), float(fmax), audio.device
    )
    mel = transform(audio.to(torch.float32))[..., : n_samples // hop_length]
    return torch.log(torch.clamp(mel, min=1e-5))
