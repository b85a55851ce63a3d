"""`wavekit prepare ljspeech`: LJ Speech 1.1 (one speaker, 13,100 clips, about 24 h of
22,050 Hz speech) as 22,050 Hz 16-bit WAVs plus a manifest, for a mel-conditioned vocoder.

Layout after extraction: ``LJSpeech-1.1/metadata.csv`` (``id|text|normalized text`` rows,
no header, quotes are literal text) and ``LJSpeech-1.1/wavs/<id>.wav``. The corpus has no
official split: `hash_split` on the clip id puts 1% in "valid" and 1% in "test".
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from wavekit.prepare.common import SourceFile, convert, fetch, hash_split

__all__ = ["URL", "SHA256", "SAMPLE_RATE", "sources", "prepare"]

URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
SHA256 = "be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5"  # as in torchaudio.datasets.LJSPEECH
ROOT = "LJSpeech-1.1"
SAMPLE_RATE = 22050
VALID_FRACTION = 0.01
TEST_FRACTION = 0.01
_CLIP_ID = re.compile(r"\w[\w-]*")


def _fetch(data_dir: Path) -> Path:
    """`data_dir`/LJSpeech-1.1, downloaded and unpacked first unless it is there already."""
    root = data_dir / ROOT
    fetch("LJ Speech 1.1", URL, data_dir / URL.rsplit("/", 1)[1], data_dir, root / "metadata.csv", sha256=SHA256)
    return root


def sources(root: Path) -> list[SourceFile]:
    """One `SourceFile` per row of `root`/metadata.csv, named by its clip id, speaker None.

    Raises ValueError naming the file and line of a row that is not ``id|text|normalized``
    or whose id is not a plain name.
    """
    metadata = root / "metadata.csv"
    found = []
    with open(metadata, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), start=1):
            if not row:
                continue
            if len(row) != 3 or not _CLIP_ID.fullmatch(row[0]):
                raise ValueError(f"{metadata}:{number}: expected 'id|text|normalized text', got {'|'.join(row)!r}")
            clip = row[0]
            split = hash_split(clip, VALID_FRACTION, TEST_FRACTION)
            found.append(SourceFile(root / "wavs" / f"{clip}.wav", clip, None, split))
    return found


def prepare(data_dir: Path, out_dir: Path) -> Path:
    """Fetch LJ Speech into `data_dir` unless there, convert it into `out_dir`; returns the manifest."""
    files = sources(_fetch(data_dir))
    return convert(files, out_dir, SAMPLE_RATE, workers=os.cpu_count() or 2)
