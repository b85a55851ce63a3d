"""Tests for wavekit.data: manifests, speaker tables, segment datasets and the DataModule."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavekit.audio import load
from wavekit.data import (
    SegmentDataset,
    Utterance,
    WaveNetDataModule,
    read_manifest,
    speaker_table,
    write_manifest,
)
from wavekit.model import WaveNetConfig

RATE = 8000
HOP = 16
SEGMENT = 160


def _config(**overrides) -> WaveNetConfig:
    """A tiny mel-conditioned config with hop 16 at 8 kHz; `overrides` replace any field."""
    values = dict(
        layers=2, stacks=1, residual_channels=4, gate_channels=4, skip_channels=4,
        sample_rate=RATE, mel_channels=4, upsample_scales=(4, 4), n_fft=64,
    )  # fmt: skip
    values.update(overrides)
    return WaveNetConfig(**values)


def _wav(path: Path, samples: int, seed: int) -> Path:
    """Write `samples` of seeded noise (unique, so any segment can be located in its source)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, samples).astype(np.float32)
    sf.write(path, noise, RATE, subtype="FLOAT")
    return path


def _utt(path: Path, speaker: str | None = None, split: str = "train") -> Utterance:
    return Utterance(path, 1.0, speaker, split)  # the dataset measures the audio itself


def _locate(segment: torch.Tensor, sources: list[torch.Tensor]) -> tuple[int, int]:
    """(source index, start) of the unique place `segment` occurs; fails if none or several."""
    hits = []
    for i, src in enumerate(sources):
        if len(src) >= len(segment):
            windows = src.unfold(0, len(segment), 1)
            hits += [(i, int(s)) for s in torch.nonzero((windows == segment).all(dim=1)).flatten()]
    assert len(hits) == 1, f"segment found {len(hits)} times"
    return hits[0]


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    """Three noise files of 1000, 2400 and 4000 samples."""
    return [_wav(tmp_path / "wavs" / f"{i}.wav", n, seed=i) for i, n in enumerate((1000, 2400, 4000))]


# ---------------------------------------------------------------- manifests


def test_manifest_round_trip_resolves_relative_paths(tmp_path: Path, tmp_path_factory, monkeypatch) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "far.wav"
    utterances = [
        Utterance(tmp_path / "wavs" / "a.wav", 2.31, "slt", "train"),
        Utterance(tmp_path / "wavs" / "b.wav", 0.5, None, "valid"),
        Utterance(outside, 1.0, "bdl", "test"),
    ]
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, utterances)

    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [e["path"] for e in lines] == ["wavs/a.wav", "wavs/b.wav", str(outside)]
    assert sorted(os.listdir(tmp_path)) == ["manifest.jsonl"]  # no temporary file left behind

    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # resolution is against the manifest, not the cwd
    assert read_manifest(manifest) == utterances


def test_write_manifest_is_atomic(tmp_path: Path, monkeypatch) -> None:
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, [Utterance(tmp_path / "old.wav", 1.0, None, "train")])
    before = manifest.read_text()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(manifest, [Utterance(tmp_path / "new.wav", 2.0, None, "train")])
    assert manifest.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["manifest.jsonl"]


GOOD = {"path": "a.wav", "duration": 1.5, "speaker": "s", "split": "train"}


@pytest.mark.parametrize(
    "line",
    [
        "{not json",
        "[1, 2]",
        json.dumps({k: v for k, v in GOOD.items() if k != "speaker"}),
        json.dumps({**GOOD, "gender": "f"}),
        json.dumps({**GOOD, "path": 3}),
        json.dumps({**GOOD, "path": ""}),
        json.dumps({**GOOD, "duration": "1.5"}),
        json.dumps({**GOOD, "duration": True}),
        json.dumps({**GOOD, "duration": 0}),
        json.dumps({**GOOD, "duration": -1.0}),
        '{"path": "a.wav", "duration": NaN, "speaker": "s", "split": "train"}',
        json.dumps({**GOOD, "speaker": 7}),
        json.dumps({**GOOD, "split": "dev"}),
    ],
    ids=[
        "invalid-json", "not-object", "missing-key", "unknown-key", "path-type", "empty-path", "duration-type",
        "duration-bool", "duration-zero", "duration-negative", "duration-nan", "speaker-type", "unknown-split",
    ],
)  # fmt: skip
def test_bad_manifest_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:3: "):
        read_manifest(manifest)


def test_speaker_table_sorted_distinct() -> None:
    utts = [Utterance(Path(f"{i}.wav"), 1.0, s, "train") for i, s in enumerate(["bdl", None, "awb", "bdl", "slt"])]
    assert speaker_table(utts) == ["awb", "bdl", "slt"]
    assert speaker_table([Utterance(Path("x.wav"), 1.0, None, "train")]) == []


# ---------------------------------------------------------------- segment datasets


def test_segment_samples_must_be_whole_frames(corpus: list[Path]) -> None:
    with pytest.raises(ValueError, match="segment_samples"):
        SegmentDataset([_utt(corpus[0])], _config(), SEGMENT + 1)
    with pytest.raises(ValueError, match="segment_samples"):
        SegmentDataset([_utt(corpus[0])], _config(), 0)
    assert SegmentDataset([_utt(corpus[0])], _config(mel_channels=0), SEGMENT + 1)[0]["audio"].shape == (SEGMENT + 1,)


def test_random_segments_align_audio_and_mel(corpus: list[Path]) -> None:
    config = _config()
    sources = [load(p, RATE) for p in corpus]
    mels = [config.mel(s) for s in sources]
    ds = SegmentDataset([_utt(p) for p in corpus], config, SEGMENT, seed=3)
    assert len(ds) == sum(len(m[0]) * HOP for m in mels) // SEGMENT
    for index in range(40):
        item = ds[index]
        assert set(item) == {"audio", "mel"}
        assert item["audio"].dtype == item["mel"].dtype == torch.float32
        assert item["audio"].shape == (SEGMENT,) and item["mel"].shape == (4, SEGMENT // HOP)
        source, start = _locate(item["audio"], sources)
        assert start % HOP == 0
        frame = start // HOP
        torch.testing.assert_close(item["mel"], mels[source][:, frame : frame + SEGMENT // HOP], rtol=0, atol=0)


def test_random_segments_deterministic_per_seed_and_index(corpus: list[Path]) -> None:
    utts = [_utt(p) for p in corpus]
    a, b = SegmentDataset(utts, _config(), SEGMENT, seed=1), SegmentDataset(utts, _config(), SEGMENT, seed=1)
    other = SegmentDataset(utts, _config(), SEGMENT, seed=2)
    for index in range(10):
        assert torch.equal(a[index]["audio"], b[index]["audio"]) and torch.equal(a[index]["mel"], b[index]["mel"])
    assert len({tuple(a[i]["audio"][:4].tolist()) for i in range(10)}) == 10
    assert any(not torch.equal(a[i]["audio"], other[i]["audio"]) for i in range(10))


def test_longer_files_drawn_more_often(tmp_path: Path) -> None:
    short, long = _wav(tmp_path / "short.wav", 1024, seed=1), _wav(tmp_path / "long.wav", 4096, seed=2)
    sources = [load(short, RATE), load(long, RATE)]
    ds = SegmentDataset([_utt(short), _utt(long)], _config(mel_channels=0), 64, samples_per_epoch=400)
    assert len(ds) == 400
    draws = [_locate(ds[i]["audio"], sources) for i in range(len(ds))]
    from_long = [start for source, start in draws if source == 1]
    assert 0.7 < len(from_long) / len(draws) < 0.9  # 4096 / (1024 + 4096) = 0.8
    assert min(from_long) < 500 and max(from_long) > 3500  # starts span the whole file


def test_deterministic_segments_tile_utterances_in_order(corpus: list[Path]) -> None:
    config = _config()
    sources = [load(p, RATE) for p in corpus]
    ds = SegmentDataset([_utt(p) for p in corpus], config, SEGMENT, random_segments=False)
    expected = [(i, k * SEGMENT) for i, s in enumerate(sources) for k in range(len(s) // SEGMENT)]
    assert len(ds) == len(expected) == 6 + 15 + 25
    for index, (source, start) in enumerate(expected):
        item = ds[index]
        assert torch.equal(item["audio"], sources[source][start : start + SEGMENT])
        frame = start // HOP
        torch.testing.assert_close(item["mel"], config.mel(sources[source])[:, frame : frame + 10], rtol=0, atol=0)


@pytest.mark.parametrize("random_segments", [True, False], ids=["random", "fixed"])
def test_short_utterance_padded_with_silence(tmp_path: Path, random_segments: bool) -> None:
    config = _config()
    path = _wav(tmp_path / "short.wav", 100, seed=0)  # 6 whole frames = 96 samples
    source = load(path, RATE)
    ds = SegmentDataset([_utt(path)], config, SEGMENT, random_segments=random_segments)
    assert len(ds) == 1
    item = ds[0]
    assert item["audio"].shape == (SEGMENT,) and item["mel"].shape == (4, 10)
    assert torch.equal(item["audio"][:96], source[:96]) and not item["audio"][96:].any()
    torch.testing.assert_close(item["mel"][:, :6], config.mel(source), rtol=0, atol=0)
    assert torch.all(item["mel"][:, 6:] == math.log(1e-5))


def test_unloadable_files_skipped_with_warning(tmp_path: Path, corpus: list[Path], caplog) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    (tmp_path / "corrupt.wav").write_bytes(corpus[0].read_bytes()[:30])
    tiny = _wav(tmp_path / "tiny.wav", 10, seed=9)  # shorter than one mel frame
    bad = [tmp_path / n for n in ("empty.wav", "text.wav", "corrupt.wav", "missing.wav")] + [tiny]
    utts = [_utt(corpus[0])] + [Utterance(p, 1.0, None, "train") for p in bad] + [_utt(corpus[1])]
    with caplog.at_level(logging.WARNING, logger="wavekit.data"):
        ds = SegmentDataset(utts, _config(), SEGMENT, random_segments=False)
    for path in bad:
        assert sum(str(path) in r.getMessage() for r in caplog.records) == 1, path
    assert any("5 of 7" in r.getMessage() for r in caplog.records)
    sources = [load(corpus[0], RATE), load(corpus[1], RATE)]
    assert len(ds) == 6 + 15
    for index in range(len(ds)):
        _locate(ds[index]["audio"], sources)

    with pytest.raises(ValueError, match="no usable audio"):
        SegmentDataset(utts[1:-1], _config(), SEGMENT)


def test_speaker_ids_follow_the_table(tmp_path: Path, corpus: list[Path]) -> None:
    config = _config(num_speakers=2)
    utts = [_utt(corpus[0], "bob"), _utt(corpus[1], "alice")]
    ds = SegmentDataset(utts, config, SEGMENT, speakers=speaker_table(utts), random_segments=False)
    sources = [load(p, RATE) for p in corpus[:2]]
    for index in range(len(ds)):
        item = ds[index]
        assert item["speaker"].dtype == torch.int64 and item["speaker"].shape == ()
        source, _ = _locate(item["audio"], sources)
        assert int(item["speaker"]) == [1, 0][source]  # alice = 0, bob = 1

    with pytest.raises(ValueError, match="'carol'"):
        SegmentDataset(utts + [_utt(corpus[2], "carol")], config, SEGMENT, speakers=["alice", "bob"])
    with pytest.raises(ValueError, match="speakers"):
        SegmentDataset(utts, config, SEGMENT, speakers=["alice", "bob", "carol"])


# ---------------------------------------------------------------- DataModule


def _manifest(tmp_path: Path, corpus: list[Path], valid: bool = True) -> Path:
    splits = ["train", "valid" if valid else "test", "train"]
    utts = [_utt(p, s, split) for p, s, split in zip(corpus, ["bob", "alice", "alice"], splits)]
    write_manifest(tmp_path / "manifest.jsonl", utts)
    return tmp_path / "manifest.jsonl"


def test_datamodule_batches(tmp_path: Path, corpus: list[Path]) -> None:
    config = _config(num_speakers=2, speaker_names=("bob", "alice"))  # config's names take precedence
    dm = WaveNetDataModule(str(_manifest(tmp_path, corpus)), config, segment_samples=SEGMENT, batch_size=4)
    dm.setup("fit")
    train = dm.train_dataloader()
    batch = next(iter(train))
    assert batch["audio"].shape == (4, SEGMENT) and batch["audio"].dtype == torch.float32
    assert batch["mel"].shape == (4, 4, SEGMENT // HOP) and batch["mel"].dtype == torch.float32
    assert batch["speaker"].shape == (4,) and batch["speaker"].dtype == torch.int64
    assert len(train.dataset) == (992 + 4000) // SEGMENT

    val = list(dm.val_dataloader())
    assert [len(b["audio"]) for b in val] == [4, 4, 4, 3]  # 15 segments of the 2400-sample file, none dropped
    assert all(torch.equal(b["speaker"], torch.ones(len(b["audio"]), dtype=torch.int64)) for b in val)
    source = load(corpus[1], RATE)
    assert torch.equal(torch.cat([b["audio"] for b in val]).flatten(), source[: 15 * SEGMENT])

    # set_epoch (Lightning calls it before every epoch; the DDP test checks that it does): new segments
    # each epoch, reproducibly.
    epoch0 = torch.cat([b["audio"] for b in train])
    train.sampler.set_epoch(1)
    assert not torch.equal(torch.cat([b["audio"] for b in train]), epoch0)
    train.sampler.set_epoch(0)
    assert torch.equal(torch.cat([b["audio"] for b in train]), epoch0)


def test_datamodule_without_valid_split(tmp_path: Path, corpus: list[Path], caplog) -> None:
    dm = WaveNetDataModule(str(_manifest(tmp_path, corpus, valid=False)), _config(), segment_samples=SEGMENT)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="wavekit.data"):
        assert dm.val_dataloader() == []
    assert any("valid" in r.getMessage() for r in caplog.records)


def test_datamodule_missing_manifest(tmp_path: Path) -> None:
    dm = WaveNetDataModule(str(tmp_path / "nope.jsonl"), _config())
    with pytest.raises(FileNotFoundError, match="wavekit prepare"):
        dm.setup("fit")
