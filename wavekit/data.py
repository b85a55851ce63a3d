"""Training data for WaveNet: JSONL corpus manifests, fixed-length segment datasets and a
LightningDataModule that turns a manifest into train and validation loaders.

A manifest has one utterance per line:
``{"path": "wavs/x.wav", "duration": 2.31, "speaker": "slt", "split": "train"}``
(`path` relative to the manifest's directory or absolute; `speaker` a string or null;
`split` one of "train", "valid", "test").
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from wavekit.audio import AudioError
from wavekit.model import WaveNetConfig

__all__ = [
    "SPLITS",
    "Utterance",
    "read_manifest",
    "write_manifest",
    "speaker_table",
    "SegmentDataset",
    "WaveNetDataModule",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SILENCE_MEL = math.log(1e-5)  # log_mel's clamp floor: the log-mel of digital silence
_KEYS = {"path", "duration", "speaker", "split"}


@dataclass(frozen=True)
class Utterance:
    """One manifest entry: an audio file, its duration in seconds, speaker name (or None) and split."""

    path: Path
    duration: float
    speaker: str | None
    split: str


def _parse_line(line: str, base: Path) -> Utterance:
    """One manifest line -> Utterance; raises ValueError saying what is wrong with it."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err})") from err
    if not isinstance(entry, dict):
        raise ValueError(f"expected a JSON object, got {type(entry).__name__}")
    if missing := sorted(_KEYS - entry.keys()):
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    if unknown := sorted(entry.keys() - _KEYS):
        raise ValueError(f"unknown key(s) {', '.join(unknown)}")
    path, duration, speaker, split = (entry[k] for k in ("path", "duration", "speaker", "split"))
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must be a non-empty string, got {path!r}")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ValueError(f"duration must be a number, got {duration!r}")
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be positive and finite, got {duration!r}")
    if speaker is not None and not isinstance(speaker, str):
        raise ValueError(f"speaker must be a string or null, got {speaker!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Utterance(base / path, float(duration), speaker, split)


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are resolved against the manifest's directory.

    Blank lines are skipped. Raises ValueError naming the file and line of the first bad line
    (invalid JSON, missing or unknown key, wrong type, unknown split, non-positive duration).
    """
    path = Path(path)
    base = path.absolute().parent
    utterances = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                utterances.append(_parse_line(line, base))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
    return utterances


def write_manifest(path: str | os.PathLike, utterances: Sequence[Utterance]) -> None:
    """Write `utterances` as a JSONL manifest, atomically (a temporary file, then os.replace).

    Audio paths under the manifest's directory are written relative to it, others absolute.
    """
    path = Path(path)
    base = path.absolute().parent
    lines = []
    for u in utterances:
        audio = Path(u.path).absolute()
        name = audio.relative_to(base).as_posix() if audio.is_relative_to(base) else str(audio)
        entry = {"path": name, "duration": u.duration, "speaker": u.speaker, "split": u.split}
        lines.append(json.dumps(entry) + "\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def speaker_table(utterances: Sequence[Utterance]) -> list[str]:
    """Sorted distinct speaker names (nulls ignored); a name's index is its speaker id."""
    return sorted({u.speaker for u in utterances if u.speaker is not None})


class SegmentDataset(Dataset):
    """Fixed-length segments of in-memory utterances, as dicts the default collate batches.

    An item holds ``"audio"`` float32 [segment_samples], plus ``"mel"`` float32
    [mel_channels, segment_samples // hop] for mel models (sliced from the log-mel of the whole
    utterance, computed once, so it matches what the model sees at inference) and ``"speaker"``
    int64 scalar (the index of the utterance's speaker in `speakers`) for speaker models.

    Files that fail to load, or are shorter than one hop for a mel model, are skipped with a
    warning naming each. For mel models the audio is trimmed to whole frames, since trailing
    samples have no frame. An utterance shorter than a segment yields the segment zero-padded
    at the end, its mel padded with the log-mel of silence (`SILENCE_MEL`).

    With `random_segments` (training) an item is a random segment of an utterance drawn with
    probability proportional to its length; starts are hop-aligned for mel models. The draw
    is seeded by (`seed`, index) only, so it is reproducible for any number of workers, and
    any non-negative index is valid: indices past ``len(self)`` give fresh draws, which the
    training loader uses to vary segments across epochs. There are `samples_per_epoch` items
    (default: total samples // segment_samples, at least 1).

    Otherwise (validation) the items are the non-overlapping segments tiling each utterance
    from its start, in order, with the last partial segment dropped.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        config: WaveNetConfig,
        segment_samples: int,
        *,
        speakers: Sequence[str] = (),
        random_segments: bool = True,
        samples_per_epoch: int | None = None,
        seed: int = 0,
    ):
        hop = config.hop_length
        if segment_samples <= 0 or (config.mel_channels and segment_samples % hop):
            need = f"a positive multiple of hop_length {hop}" if config.mel_channels else "positive"
            raise ValueError(f"segment_samples must be {need}, got {segment_samples}")
        if samples_per_epoch is not None and (not random_segments or samples_per_epoch <= 0):
            raise ValueError(f"samples_per_epoch must be positive and needs random_segments, got {samples_per_epoch}")
        if config.num_speakers:
            if len(speakers) != config.num_speakers:
                raise ValueError(f"speakers: {len(speakers)} names for a {config.num_speakers}-speaker model")
            for u in utterances:
                if u.speaker not in speakers:
                    raise ValueError(f"{u.path}: speaker {u.speaker!r} is not in the speaker table {list(speakers)}")
        self.config = config
        self.segment_samples = segment_samples
        self.random_segments = random_segments
        self.seed = seed
        self._step = hop if config.mel_channels else 1
        self.audio: list[Tensor] = []
        self.mels: list[Tensor] = []
        self.speaker_ids: list[int] = []
        for u in utterances:
            try:
                audio, mel = config.load_audio(u.path)
            except AudioError as err:
                log.warning("skipping %s: %s", u.path, err)
                continue
            self.audio.append(audio)
            if mel is not None:
                self.mels.append(mel)
            if config.num_speakers:
                self.speaker_ids.append(speakers.index(u.speaker))
        if skipped := len(utterances) - len(self.audio):
            log.warning("skipped %d of %d audio files that failed to load", skipped, len(utterances))
        if not self.audio:
            raise ValueError(f"no usable audio among {len(utterances)} utterance(s)")

        lengths = np.array([len(a) for a in self.audio])
        if random_segments:
            self._weights = lengths / lengths.sum()
            self._length = samples_per_epoch or max(1, int(lengths.sum()) // segment_samples)
        else:
            self._segments = [
                (i, k * segment_samples) for i, n in enumerate(lengths) for k in range(max(1, n // segment_samples))
            ]
            self._length = len(self._segments)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if self.random_segments:
            rng = np.random.default_rng((self.seed, index))
            utt = int(rng.choice(len(self.audio), p=self._weights))
            starts = max(0, len(self.audio[utt]) - self.segment_samples) // self._step + 1
            start = int(rng.integers(starts)) * self._step
        else:
            utt, start = self._segments[index]
        return self._segment(utt, start)

    def _segment(self, utt: int, start: int) -> dict[str, Tensor]:
        """The segment of utterance `utt` starting at sample `start`, padded if the utterance ends first."""
        n = self.segment_samples
        audio = self.audio[utt][start : start + n]
        item = {"audio": F.pad(audio, (0, n - len(audio)))}
        if self.config.mel_channels:
            hop = self.config.hop_length
            mel = self.mels[utt][:, start // hop : (start + n) // hop]
            item["mel"] = F.pad(mel, (0, n // hop - mel.shape[-1]), value=SILENCE_MEL)
        if self.config.num_speakers:
            item["speaker"] = torch.tensor(self.speaker_ids[utt], dtype=torch.int64)
        return item


class _EpochSampler(Sampler[int]):
    """Indices ``epoch * n .. epoch * n + n - 1``; Lightning calls `set_epoch` before every epoch,
    so a randomly segmenting dataset draws fresh, reproducible segments each epoch."""

    def __init__(self, n: int):
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))


class WaveNetDataModule(pl.LightningDataModule):
    """Train ("train" split, random segments) and validation ("valid" split, fixed segments)
    loaders over a manifest. Speaker ids come from `config.speaker_names`, else from the
    sorted speakers of the whole manifest. Batches are dicts: audio [B, T], mel [B, M, T // hop],
    speaker [B]."""

    def __init__(
        self,
        manifest: str,
        config: WaveNetConfig,
        segment_samples: int = 8000,
        batch_size: int = 8,
        num_workers: int = 0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.manifest = manifest
        self.config = config
        self.segment_samples = segment_samples
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.train_set: SegmentDataset | None = None
        self.val_set: SegmentDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest and load the train and validation audio (once)."""
        if self.train_set is not None:
            return
        if not os.path.isfile(self.manifest):
            raise FileNotFoundError(f"{self.manifest}: manifest not found; run `wavekit prepare <recipe>` first")
        utterances = read_manifest(self.manifest)
        speakers = self.config.speaker_names or speaker_table(utterances)
        train = [u for u in utterances if u.split == "train"]
        valid = [u for u in utterances if u.split == "valid"]
        if not train:
            raise ValueError(f"{self.manifest}: no utterances in the 'train' split")
        args = (self.config, self.segment_samples)
        self.train_set = SegmentDataset(
            train, *args, speakers=speakers, samples_per_epoch=self.samples_per_epoch, seed=self.seed
        )
        if valid:
            self.val_set = SegmentDataset(valid, *args, speakers=speakers, random_segments=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=_EpochSampler(len(self.train_set)),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader, or an empty list (with a warning) if the manifest has no "valid" split."""
        if self.val_set is None:
            log.warning("%s: no 'valid' utterances; skipping validation", self.manifest)
            return []
        return DataLoader(
            self.val_set, batch_size=self.batch_size, shuffle=False, drop_last=False, num_workers=self.num_workers
        )
