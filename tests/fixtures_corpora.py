"""Tiny stand-ins for the real corpora (LJ Speech, VCTK, MAESTRO, NSynth): each builder writes
the corpus's on-disk layout after extraction, with a few short recordings in the real file
format, rate and channel count, metadata in the real format (tricky rows included) and some
bad files; `pack` turns the tree into the archive the recipe downloads, in the real format.
"""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from wavekit.prepare import ljspeech, nsynth, vctk
from wavekit.prepare.common import hash_split


@dataclass
class Corpus:
    """A built fixture: `expected` maps each output WAV (relative to the out dir) to its
    (speaker, split, seconds); `bad` lists the source files that must be skipped."""

    expected: dict[str, tuple[str | None, str, float]] = field(default_factory=dict)
    bad: list[Path] = field(default_factory=list)


def tone(path: Path, seconds: float, rate: int, *, channels: int = 1, subtype: str = "PCM_16", seed: int = 0) -> None:
    """Write a short noisy tone (distinct per seed) in the given format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * (150 + 20 * seed) * t) + 0.01 * rng.standard_normal(len(t))
    sf.write(path, np.repeat(mono[:, None], channels, axis=1), rate, subtype=subtype)


def bad_file(path: Path, kind: str, rate: int) -> Path:
    """Write an unusable file of `kind`: empty, truncated, not-audio, nan or too-short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        tone(path, 0.3, rate)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not-audio":
        path.write_text("<html>404 Not Found</html>\n")
    elif kind == "nan":
        samples = np.full(round(0.3 * rate), 0.1, dtype=np.float32)
        samples[100] = np.nan
        sf.write(path, samples, rate, subtype="FLOAT")
    elif kind == "too-short":
        tone(path, 0.05, rate)
    else:
        raise ValueError(kind)
    return path


def build_ljspeech(data_dir: Path) -> Corpus:
    """LJSpeech-1.1/metadata.csv + wavs/: good clips (quotes in the text, a stereo, an 8-bit
    and a 16 kHz one, which get converted) and one of each unusable kind plus a missing file."""
    root = data_dir / ljspeech.ROOT
    wavs = root / "wavs"
    corpus = Corpus()
    rows = [
        ("LJ001-0001", "Printing, in the only sense with which we are at present concerned,"),
        ("LJ001-0012", "in being comparatively modern."),
        ("LJ001-0141", '"The Doves Press," he said, "is the last of them."'),
        ("LJ002-0026", '"A lone opening quote that never closes.'),
        ("LJ001-0022", "It was ninety feet long; 1829."),
    ]
    for seed, (clip, _) in enumerate(rows):
        tone(wavs / f"{clip}.wav", 0.3 + 0.05 * seed, ljspeech.SAMPLE_RATE, seed=seed)
        corpus.expected[f"wavs/{clip}.wav"] = (None, hash_split(clip, 0.01, 0.01), 0.3 + 0.05 * seed)
    rate = ljspeech.SAMPLE_RATE
    converted = {  # clip -> (rate, format): stereo, 8-bit, 16 kHz
        "LJ004-0001": (rate, {"channels": 2}),
        "LJ004-0002": (rate, {"subtype": "PCM_U8"}),
        "LJ004-0003": (16000, {}),
    }
    for seed, (clip, (file_rate, options)) in enumerate(converted.items(), start=10):
        tone(wavs / f"{clip}.wav", 0.4, file_rate, seed=seed, **options)
        rows.append((clip, "Converted, not skipped."))
        corpus.expected[f"wavs/{clip}.wav"] = (None, hash_split(clip, 0.01, 0.01), 0.4)
    for number, kind in enumerate(["empty", "truncated", "not-audio", "nan", "too-short", "missing"]):
        clip = f"LJ005-{number:04d}"
        rows.append((clip, f"A {kind} file."))
        if kind != "missing":
            bad_file(wavs / f"{clip}.wav", kind, ljspeech.SAMPLE_RATE)
        corpus.bad.append(wavs / f"{clip}.wav")
    lines = [f"{clip}|{text}|{text.replace('1829', 'eighteen twenty-nine')}\n" for clip, text in rows]
    (root / "metadata.csv").write_text("".join(lines), encoding="utf-8")
    (root / "README").write_text("LJ Speech Dataset\n")
    return corpus


def build_vctk(data_dir: Path) -> Corpus:
    """VCTK-Corpus-0.92/: 48 kHz 16-bit FLAC for mic1 and mic2 (none of mic2 for p280 and
    p315), transcripts (none for p315), speaker-info.txt, an undecodable FLAC and a folder
    that is no VCTK speaker."""
    root = data_dir / vctk.ROOT
    audio = root / vctk.AUDIO
    corpus = Corpus()
    utterances = {"p225_001": True, "p225_006": True, "p280_001": False, "p315_001": False, "s5_016": True}
    for seed, (utterance, has_mic2) in enumerate(utterances.items()):
        speaker = utterance.split("_")[0]
        for mic in ("mic1", "mic2") if has_mic2 else ("mic1",):
            tone(audio / speaker / f"{utterance}_{mic}.flac", 0.25 + 0.05 * seed, 48000, seed=seed)
        if speaker != "p315":
            (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
            (root / "txt" / speaker / f"{utterance}.txt").write_text("Please call Stella.\n")
        split = hash_split(utterance, 0.01, 0.01)
        corpus.expected[f"wavs/{speaker}/{utterance}.wav"] = (speaker, split, 0.25 + 0.05 * seed)
    corpus.bad.append(bad_file(audio / "p225" / "p225_003_mic1.flac", "not-audio", 48000))
    tone(audio / "p999" / "p999_001_mic1.flac", 0.3, 48000)
    (root / "speaker-info.txt").write_text(
        "ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n"
        "p225  23  F    English    Southern  England\n"
        "p280  25  F    France     (mic2 files unavailable)\n"
        "p315  18  M    American    New  England (Text unavailable)\n"
        "s5  22  F    British    Scotland\n"
    )
    return corpus


MAESTRO_ROWS = [  # (composer, title, split, year, stem, rate)
    ("Alban Berg", "Sonata Op. 1", "train", 2018, "MIDI-Unprocessed_Chamber3_MID--AUDIO_10_R3_2018_wav--1", 44100),
    ("Frédéric Chopin", 'Sonata No. 2 in B-flat Minor, Op. 35, "Funeral March"', "train", 2004,
     "MIDI-Unprocessed_XP_22_R2_2004_01_ORIG_MID--AUDIO_22_R2_2004_04_Track04_wav", 44100),
    ("Johann Sebastian Bach", "Prelude and Fugue in A Minor, WTC I, BWV 865", "validation", 2017,
     "MIDI-Unprocessed_066_PIANO066_MID--AUDIO-split_07-07-17_Piano-e_3-02_wav--3", 48000),
    ("Franz Liszt", "Mephisto Waltz", "test", 2009,
     "MIDI-Unprocessed_07_R1_2009_04-05_ORIG_MID--AUDIO_07_R1_2009_07_R1_2009_05_WAV", 44100),
]  # fmt: skip


def build_maestro(data_dir: Path) -> Corpus:
    """maestro-v3.0.0/ with its CSV (quoted titles with commas) and stereo 44.1/48 kHz WAVs,
    plus a listed performance whose WAV is empty and one whose WAV is missing."""
    root = data_dir / "maestro-v3.0.0"
    root.mkdir(parents=True)
    corpus = Corpus()
    split_names = {"train": "train", "validation": "valid", "test": "test"}
    rows = []
    for seed, (composer, title, split, year, stem, rate) in enumerate(MAESTRO_ROWS):
        tone(root / str(year) / f"{stem}.wav", 0.3 + 0.05 * seed, rate, channels=2, seed=seed)
        (root / str(year) / f"{stem}.midi").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0")
        rows.append((composer, title, split, year, f"{year}/{stem}.midi", f"{year}/{stem}.wav", 0.3 + 0.05 * seed))
        corpus.expected[f"wavs/{year}/{stem}.wav"] = (None, split_names[split], 0.3 + 0.05 * seed)
    corpus.bad.append(bad_file(root / "2011" / "MIDI-Unprocessed_empty.wav", "empty", 44100))
    corpus.bad.append(root / "2011" / "MIDI-Unprocessed_missing.wav")
    for bad in corpus.bad:
        rows.append(("Claude Debussy", "Images", "train", 2011, f"2011/{bad.stem}.midi", f"2011/{bad.name}", 300.1))
    with open(root / "maestro-v3.0.0.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration"]
        )
        writer.writerows(rows)
    (root / "maestro-v3.0.0.json").write_text(json.dumps({"split": {str(i): r[2] for i, r in enumerate(rows)}}))
    return corpus


NSYNTH_NOTES = {  # split -> [(note_str, family)]
    "train": [("guitar_acoustic_010-060-127", "guitar"), ("bass_synthetic_033-022-050", "bass"),
              ("keyboard_electronic_001-021-075", "keyboard")],
    "valid": [("mallet_acoustic_047-094-075", "mallet"), ("guitar_electronic_022-050-100", "guitar")],
    "test": [("keyboard_acoustic_004-061-025", "keyboard")],
}  # fmt: skip


def _note_fields(note: str, family: str) -> dict:
    instrument, pitch, velocity = note.rsplit("-", 2)
    source = instrument.split("_")[1]
    return {
        "note": 201034, "sample_rate": 16000, "pitch": int(pitch), "velocity": int(velocity),
        "instrument_source": ["acoustic", "electronic", "synthetic"].index(source),
        "instrument_source_str": source, "instrument_family": nsynth.FAMILIES.index(family),
        "instrument_family_str": family, "instrument_str": instrument, "instrument": 219,
        "note_str": note, "qualities": [0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "qualities_str": ["dark"],
    }  # fmt: skip


def build_nsynth(data_dir: Path) -> Corpus:
    """nsynth-{train,valid,test}/examples.json + audio/<note_str>.wav (16 kHz 16-bit mono),
    plus a NaN note in valid and a too-short one in test."""
    corpus = Corpus()
    for split, notes in NSYNTH_NOTES.items():
        root = data_dir / f"nsynth-{split}"
        examples = {}
        for seed, (note, family) in enumerate(notes):
            tone(root / "audio" / f"{note}.wav", 0.4, 16000, seed=seed)
            examples[note] = _note_fields(note, family)
            corpus.expected[f"wavs/{split}/{note}.wav"] = (family, split, 0.4)
        bad = {"valid": ("string_acoustic_012-040-050", "nan"), "test": ("vocal_synthetic_003-070-127", "too-short")}
        if split in bad:
            note, kind = bad[split]
            corpus.bad.append(bad_file(root / "audio" / f"{note}.wav", kind, 16000))
            examples[note] = _note_fields(note, note.split("_")[0])
        (root / "examples.json").write_text(json.dumps(examples, indent=4))
    return corpus


def pack(recipe: str, data_dir: Path) -> list[Path]:
    """Replace the extracted tree in `data_dir` with the archive(s) the recipe downloads, in
    the real format and layout; returns the archives."""
    if recipe == "ljspeech":
        trees = {"LJSpeech-1.1.tar.bz2": ("LJSpeech-1.1", "w:bz2")}
    elif recipe == "vctk":  # the real zip has no top folder
        trees = {"VCTK-Corpus-0.92.zip": ("VCTK-Corpus-0.92", None)}
    elif recipe == "maestro":
        trees = {"maestro-v3.0.0.zip": ("maestro-v3.0.0", "top")}
    else:
        trees = {f"nsynth-{s}.jsonwav.tar.gz": (f"nsynth-{s}", "w:gz") for s in nsynth.URLS}
    archives = []
    for name, (folder, mode) in trees.items():
        archive, tree = data_dir / name, data_dir / folder
        if mode in (None, "top"):
            base = tree if mode is None else data_dir
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
                for path in sorted(tree.rglob("*")):
                    z.write(path, path.relative_to(base).as_posix())
        else:
            with tarfile.open(archive, mode) as t:
                t.add(tree, arcname=folder)
        shutil.rmtree(tree)
        archives.append(archive)
    return archives
