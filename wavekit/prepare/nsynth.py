"""`wavekit prepare nsynth`: the NSynth dataset (305,979 four-second notes from 1,006
instruments, 16 kHz 16-bit mono WAV) as a manifest whose "speaker" is the instrument family,
for a WaveNet globally conditioned on the family.

Each split is its own archive, ``nsynth-{train,valid,test}.jsonwav.tar.gz``, unpacking to
``nsynth-<split>/examples.json`` (an object keyed by note_str, each value holding
instrument_family_str, pitch, velocity, ...) and ``nsynth-<split>/audio/<note_str>.wav``.
The official splits are kept (train 289,205 notes, valid 12,678, test 4,096).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from wavekit.prepare.common import SourceFile, convert, fetch

__all__ = ["URLS", "MD5", "SAMPLE_RATE", "FAMILIES", "sources", "prepare"]

URLS = {
    split: f"http://download.magenta.tensorflow.org/datasets/nsynth/nsynth-{split}.jsonwav.tar.gz"
    for split in ("train", "valid", "test")
}
# Magenta publishes no checksums; these MD5s are the ones the HEAR benchmark's
# hear-preprocess (nsynth_pitch task) verifies the same archives against.
MD5 = {
    "train": "fde6665a93865503ba598b9fac388660",
    "valid": "87e94a00a19b6dbc99cf6d4c0c0cae87",
    "test": "5e6f8719bf7e16ad0a00d518b78af77d",
}
SAMPLE_RATE = 16000
# The speaker table (sorted, and in NSynth's instrument_family order): a family's id is its index.
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal")
_NOTE = re.compile(r"\w[\w-]*")


def _fetch(data_dir: Path, split: str) -> Path:
    """`data_dir`/nsynth-<split>, downloaded and unpacked first unless it is there already."""
    url, root = URLS[split], data_dir / f"nsynth-{split}"
    fetch(f"NSynth's {split} split", url, data_dir / url.rsplit("/", 1)[1], data_dir, root / "examples.json", md5=MD5[split])
    return root


def sources(root: Path, split: str) -> list[SourceFile]:
    """One `SourceFile` per note of `root`/examples.json, named ``<split>/<note_str>``, its
    speaker the note's instrument_family_str.

    Raises ValueError naming the file (and note) if it is not an object of notes, a note_str
    is not a plain name or a family is not one of `FAMILIES`.
    """
    metadata = root / "examples.json"
    try:
        with open(metadata, encoding="utf-8") as f:
            notes = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{metadata}: invalid JSON ({err})") from err
    if not isinstance(notes, dict):
        raise ValueError(f"{metadata}: expected an object keyed by note_str, got {type(notes).__name__}")
    found = []
    for note, fields in sorted(notes.items()):
        family = fields.get("instrument_family_str") if isinstance(fields, dict) else None
        if not _NOTE.fullmatch(note) or family not in FAMILIES:
            raise ValueError(f"{metadata}: note {note!r} needs a plain name and an instrument_family_str in {FAMILIES}")
        found.append(SourceFile(root / "audio" / f"{note}.wav", f"{split}/{note}", family, split))
    return found


def prepare(data_dir: Path, out_dir: Path) -> Path:
    """Fetch NSynth's three splits into `data_dir` unless there, convert them into `out_dir`;
    returns the manifest."""
    files = [source for split in URLS for source in sources(_fetch(data_dir, split), split)]
    return convert(files, out_dir, SAMPLE_RATE, workers=os.cpu_count() or 2)
